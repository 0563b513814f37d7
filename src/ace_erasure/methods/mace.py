"""MACE — Mass Concept Erasure (Lu et al., CVPR'24), from the paper, in three steps:

1. **Closed-form refinement** of every cross-attention key/value projection: the tokens that
   *follow* the concept in ~30 prompts (its context, EOS and padding, which carry the concept in
   CLIP encoders) are remapped onto the same positions of the prompt with the anchor instead,
   while a cache of general captions' token embeddings (all 77 tokens) and the related
   concepts' keep their outputs (the ridge solve of :mod:`ace_erasure.linalg`).
2. **A rank-1 LoRA per concept** on the keys and values, trained for ~50 steps with the
   attention-map loss: the cross-attention mass that the image's queries put on the concept's
   own tokens, on images of the concept (the unedited model's), at timesteps around 200–400.
   The paper restricts the loss to the concept's segmentation mask (GroundingDINO + SAM); this
   implementation uses the whole map (no segmenter offline) — a stated difference.
3. **Closed-form fusion** of the per-concept LoRAs (:func:`ace_erasure.linalg.fuse_deltas`,
   shared with ``ace-erasure combine``): one edit that reproduces each concept's on its own
   prompts' tokens while keeping the general captions' — which is what lets MACE erase many
   concepts at once without the LoRAs interfering.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ace_erasure.concepts import Concept, prompt_pairs
from ace_erasure.erasure import Erasure, ModuleEdit, StageRecord
from ace_erasure.linalg import RidgeEditFitter, fuse_deltas, top_singular
from ace_erasure.methods.base import Progress, check_fields, require
from ace_erasure.models.conditioning import PromptEncoder, encode_conditioning, predict_noise
from ace_erasure.models.plumbing import (
    aligned_positions,
    base_linear,
    cross_attention_layers,
    token_span,
    tokenizers,
)
from ace_erasure.prompts import PromptWorld, general_prompts, related_pairs
from ace_erasure.training import lora
from ace_erasure.training.diffusion import noised
from ace_erasure.training.loop import Trainer


@dataclass
class MaceConfig:
    """Args:
    preserve_weight: λ of the preserve caches in the closed-form refinement and the fusion.
    ridge: relative ridge of those solves.
    lora_rank: rank of each concept's LoRA (the paper: 1).
    lora_steps: attention-map training steps per concept (the paper: ~50).
    lora_lr: its learning rate.
    t_min / t_max: timesteps of the attention-map loss (the paper concentrates on ~200–400).
    images: unedited-model images per concept for that loss.
    general: general captions in the preserve cache.
    max_rank: rank cap of the fused edit (its energy kept at 0.999).
    """

    preserve_weight: float = field(default=1.0, metadata={"help": "λ of the preserve caches"})
    ridge: float = field(default=0.01, metadata={"help": "relative ridge"})
    lora_rank: int = field(default=1, metadata={"help": "rank of each concept's LoRA"})
    lora_steps: int = field(default=50, metadata={"help": "attention-map steps per concept"})
    lora_lr: float = field(default=1e-3, metadata={"help": "LoRA learning rate"})
    t_min: int = field(default=200, metadata={"help": "lowest timestep of the map loss"})
    t_max: int = field(default=400, metadata={"help": "highest timestep of the map loss"})
    images: int = field(default=8, metadata={"help": "unedited images per concept"})
    general: int = field(default=200, metadata={"help": "general captions preserved"})
    max_rank: int = field(default=64, metadata={"help": "rank cap of the fused edit"})

    def __post_init__(self) -> None:
        check_fields(self)
        require(
            self,
            [
                (self.preserve_weight >= 0, "preserve_weight must be >= 0"),
                (self.ridge > 0, "ridge must be > 0"),
                (self.lora_rank >= 1, "lora_rank must be >= 1"),
                (self.lora_steps >= 0, "lora_steps must be >= 0"),
                (self.lora_lr > 0, "lora_lr must be > 0"),
                (0 <= self.t_min < self.t_max <= 1000, "need 0 <= t_min < t_max <= 1000"),
                (self.images >= 1, "images must be >= 1"),
                (self.general >= 0, "general must be >= 0"),
                (self.max_rank >= 1, "max_rank must be >= 1"),
            ],
        )


def _gram(rows: torch.Tensor) -> torch.Tensor:
    flat = rows.reshape(-1, rows.shape[-1]).double()
    return flat.T @ flat / max(1, len(flat))


class ConceptAttention:
    """An attention processor for ``attn2`` that also records, differentiably, the attention
    probability mass the queries put on chosen token positions (the concept's)."""

    def __init__(self) -> None:
        self.positions: list[list[int]] = []
        self.masses: list[torch.Tensor] = []

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        **kwargs,
    ):
        batch = hidden_states.shape[0]
        context = encoder_hidden_states if encoder_hidden_states is not None else hidden_states
        if attn.norm_cross and encoder_hidden_states is not None:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.to_q(hidden_states)
        key, value = attn.to_k(context), attn.to_v(context)
        heads = attn.heads
        dim = key.shape[-1] // heads
        q = query.view(batch, -1, heads, dim).transpose(1, 2)
        k = key.view(batch, -1, heads, dim).transpose(1, 2)
        v = value.view(batch, -1, heads, dim).transpose(1, 2)
        weights = (q @ k.transpose(-1, -2) / math.sqrt(dim)).softmax(-1)
        if self.positions:
            mask = torch.zeros(batch, k.shape[2], device=weights.device, dtype=weights.dtype)
            for row, cols in enumerate(self.positions):
                mask[row, cols] = 1
            self.masses.append((weights * mask[:, None, None, :]).sum(-1).mean())
        out = (weights @ v).transpose(1, 2).reshape(batch, -1, heads * dim)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class Mace:
    """MACE (registered as "mace")."""

    name = "mace"
    config_class = MaceConfig

    def fit(
        self,
        pipe,
        concepts: Sequence[Concept],
        config: MaceConfig,
        *,
        seed: int,
        world: PromptWorld,
        progress: Progress | None = None,
    ) -> Erasure:
        start = time.perf_counter()
        layers = cross_attention_layers(pipe.unet)
        keys = [f"unet.{name}.{proj}" for name, _ in layers for proj in ("to_k", "to_v")]
        weights = {
            f"unet.{name}.{proj}": base_linear(getattr(m, proj))
            .weight.detach()
            .to("cpu", torch.float64)
            for name, m in layers
            for proj in ("to_k", "to_v")
        }
        encode = PromptEncoder(pipe)
        tokenizer = tokenizers(pipe)[0]
        related = related_pairs(concepts, world)
        general = general_prompts(concepts, world, config.general, seed)
        keep = [p.text for p in related] + general
        preserve_gram = _gram(encode(keep)) if keep else None

        # 1. closed-form refinement: the tokens after each concept -> the anchor prompt's
        with torch.no_grad():
            fitter = RidgeEditFitter(next(iter(weights.values())).shape[1])
            for concept in concepts:
                pairs = prompt_pairs(concept)
                embeds, anchors = (
                    encode([p.text for p in pairs]),
                    encode([p.anchor_text for p in pairs]),
                )
                fitter.begin_group(1.0)
                for pair, e, a in zip(pairs, embeds, anchors):
                    span = token_span(tokenizer, pair.before, pair.through)
                    positions = aligned_positions(
                        span, token_span(tokenizer, pair.anchor_before, pair.anchor_through)
                    )
                    suffix = [(p, q) for p, q in positions if p >= span.stop]
                    if suffix:
                        fitter.update_targets(e[[p for p, _ in suffix]], a[[q for _, q in suffix]])
            gram = (
                preserve_gram
                if preserve_gram is not None
                else torch.zeros(fitter.dim, fitter.dim, dtype=torch.float64)
            )
            refinement = fitter.solve(config.preserve_weight, config.ridge, gram).edit
        refined_seconds = time.perf_counter() - start

        # 2. a rank-1 LoRA per concept, on top of the refinement, with the attention-map loss
        per_concept: list[dict[str, torch.Tensor]] = []
        concept_grams: list[torch.Tensor] = []
        losses: list[list[dict]] = []
        from ace_erasure.methods.ace.finetune import draw_latents

        backups = {}
        with torch.no_grad():
            for key, w in weights.items():
                module = base_linear(pipe.unet.get_submodule(key.split(".", 1)[1]))
                backups[key] = module.weight.detach().clone()
                module.weight.add_((w @ refinement).to(module.weight.device, module.weight.dtype))
        try:
            for index, concept in enumerate(concepts):
                pairs = prompt_pairs(concept)
                prompts = [pairs[(k * 7) % len(pairs)].text for k in range(config.images)]
                spans = [
                    token_span(
                        tokenizer,
                        pairs[(k * 7) % len(pairs)].before,
                        pairs[(k * 7) % len(pairs)].through,
                    )
                    for k in range(config.images)
                ]
                latents = draw_latents(
                    pipe,
                    prompts,
                    [seed * 1_000_003 + 37 * index + k for k in range(config.images)],
                    steps=world.sampling.steps,
                    guidance=world.sampling.guidance,
                )
                with torch.no_grad():
                    concept_grams.append(_gram(encode([p.text for p in pairs])))
                edits, log = self._train_lora(
                    pipe, keys, prompts, spans, latents, config, seed + index, progress
                )
                per_concept.append(edits)
                losses.append(log)
        finally:
            with torch.no_grad():
                for key, original in backups.items():
                    base_linear(pipe.unet.get_submodule(key.split(".", 1)[1])).weight.copy_(
                        original
                    )

        # 3. fusion: one edit reproducing refinement + each LoRA on its own concept's tokens
        generator = torch.Generator().manual_seed(seed)
        fused: dict[str, ModuleEdit] = {}
        tops = {}
        for key, w in weights.items():
            base_delta = w @ refinement
            deltas = [base_delta + loras[key].double() for loras in per_concept]
            gram = (
                preserve_gram if preserve_gram is not None else torch.zeros_like(concept_grams[0])
            )
            delta = fuse_deltas(deltas, concept_grams, gram, config.preserve_weight, config.ridge)
            tops[key] = top_singular(delta, min(config.max_rank, min(delta.shape)), generator)
        rank = min(config.max_rank, max(t.rank_for_energy(0.999) for t in tops.values()))
        for key, top in tops.items():
            up, down = top.factors(rank)
            fused[key] = ModuleEdit(down, up)
        seconds = time.perf_counter() - start
        return Erasure.create(
            pipe,
            fused,
            concepts=concepts,
            method=self.name,
            config=dataclasses.asdict(config),
            seed=seed,
            stages=[
                StageRecord("mace_refinement", refined_seconds, {"targets": fitter.n_targets}),
                StageRecord("mace_lora", seconds - refined_seconds, {"losses": losses}),
                StageRecord("mace_fusion", 0.0, {"rank": rank}),
            ],
            stats={"rank": rank, "seconds": {"total": seconds}},
        )

    @staticmethod
    @torch.enable_grad()
    def _train_lora(pipe, keys, prompts, spans, latents, config: MaceConfig, seed: int, progress):
        """One concept's rank-``lora_rank`` LoRA minimising the attention mass on its tokens;
        returns its dense deltas (out, in) per key and the per-step log."""
        adapter = lora.attach(pipe, keys, config.lora_rank, seed=seed)
        processor = ConceptAttention()
        previous = dict(pipe.unet.attn_processors)
        processors = {name: proc for name, proc in previous.items()}
        for name, _ in cross_attention_layers(pipe.unet):
            processors[f"{name}.processor"] = processor
        pipe.unet.set_attn_processor(processors)
        with torch.no_grad():
            cond = encode_conditioning(pipe, prompts)
        positions = [list(range(s.start, s.stop)) for s in spans]

        def step(_step: int, generator: torch.Generator) -> dict:
            rows = torch.randint(len(prompts), (min(4, len(prompts)),), generator=generator)
            x0 = latents[rows].to(pipe.unet.device, pipe.unet.dtype)
            t = torch.randint(config.t_min, config.t_max, (len(rows),), generator=generator)
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
            noisy = noised(pipe.scheduler, x0, noise, t)
            processor.positions = [positions[int(r)] for r in rows]
            processor.masses = []
            batch_cond = type(cond)(
                cond.embeds[rows], None if cond.pooled is None else cond.pooled[rows]
            )
            predict_noise(pipe, noisy, t.to(x0.device), batch_cond)
            loss = torch.stack(processor.masses).mean()
            processor.positions = []
            return {"loss": loss}

        try:
            params = adapter.factor_parameters()
            trainer = Trainer(
                params,
                steps=config.lora_steps,
                lr=config.lora_lr,
                seed=seed,
                stage="mace LoRA",
                progress=progress,
            )
            state = trainer.run(step)
            deltas = {key: edit.delta() for key, edit in adapter.edits().items()}
        finally:
            pipe.unet.set_attn_processor(previous)
            adapter.remove()
        return deltas, state.log
