"""ESD — Erased Stable Diffusion (Gandikota et al., ICCV'23), from the paper.

The model is fine-tuned so that, given the concept, it predicts what classifier-free guidance
*away* from the concept would::

    ‖ε_θ'(x_t, t, c) − sg[ε_θ(x_t, t) − η (ε_θ(x_t, t, c) − ε_θ(x_t, t))]‖²

with θ the frozen model (here the same pipeline with the adapter disabled), ε_θ(x_t, t) its
unconditional prediction (the pipeline's own negative conditioning: the empty prompt; zeros for
SDXL's "force zeros") and η the negative guidance (1, the paper's). Two registered variants:

- ``esd-x`` trains the cross-attention layers: every ``attn2`` linear (``to_q``, ``to_k``,
  ``to_v``, ``to_out.0``). The paper's choice for styles: only what the text reaches changes.
- ``esd-u`` trains the *non*-cross-attention linears of the transformer blocks: ``attn1``'s
  ``to_q/k/v/out.0``, the feed-forward linears, and ``proj_in`` / ``proj_out`` where they are
  linear (SD 2.x, SDXL). The paper's ESD-u also trains the convolutions and ResNet blocks
  ("everything but cross-attention"); an :class:`~ace_erasure.erasure.Erasure` holds linear
  edits only, so those are not covered: this ESD-u is narrower than the paper's.

Both train a LoRA (:mod:`ace_erasure.training.lora`). ``rank=None`` lets it express a full
fine-tune (rank ``min(out, in)`` per module, as the paper fine-tunes the weights themselves);
all modules share one LoRA rank (the largest), the extra ranks of smaller modules held at
exactly zero, because per-module ranks load with the wrong scale in older diffusers.

Differences from the paper:

- **x_t.** The paper draws x_t at every iteration from the *student's own* DDIM trajectory
  under the concept prompt, stopped at a random one of 50 steps. Here x_t are images of the
  concept drawn once by the **unedited** model (cached on disk per base model, as ACE stage 2's
  :func:`~ace_erasure.methods.ace.finetune.draw_latents`), noised at a random timestep of the
  training schedule. No sampling per step (much cheaper, and resumable to the same bytes), but
  the student never sees its own, increasingly concept-free, trajectory.
- **Prompts.** The paper conditions on the concept's name; here every image's prompt is one of
  the kind's templates with one of the concept's names (spread evenly), and the student is
  conditioned on the prompt the image was drawn with. The concept's anchor is not used: ESD
  guides away from the unconditional prediction.
- **Schedule.** The paper's recipe is ~200 iterations at lr 5e-5, batch 1, of the raw weights.
  Defaults here: 100 steps (CPU-sized), lr 5e-4 for the full-rank LoRA, batch 1; chosen on
  ToyWorld (see :class:`EsdConfig`). With the same defaults ESD-u erased less than ESD-x there
  (four shapes: mean Acc_e 0.50 against 0.03; 0.33 after 300 steps at 1e-3).
- **v-prediction.** The target's coefficients sum to one ((1 + η) − η) and a v-prediction is
  affine in ε at fixed (x_t, t), so the same target is right for v-prediction models (SD 2.x
  768 px) as it stands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from ace_erasure.attacks.base import unconditional
from ace_erasure.concepts import Concept, prompt_pairs
from ace_erasure.erasure import Erasure, ModuleEdit, StageRecord
from ace_erasure.methods.ace.finetune import _Conditionings, draw_latents
from ace_erasure.methods.base import Progress, check_fields, require
from ace_erasure.models.conditioning import Conditioning, predict_noise
from ace_erasure.models.plumbing import cross_attention_layers, fingerprint
from ace_erasure.prompts import PromptWorld, spread
from ace_erasure.training import lora
from ace_erasure.training.diffusion import add_noise
from ace_erasure.training.hooked_lora import module_ranks, non_cross_attention_modules
from ace_erasure.training.loop import Trainer

CROSS_ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
PIPELINE_COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "vae")


@dataclass
class EsdConfig:
    """Args:
    steps: optimisation steps. The paper: ~200 (1000 in its first version). 100 here, sized
        for a CPU: 8–9 s per concept on ToyWorld (one thread), ESD-x or ESD-u.
    lr: Adam learning rate of the LoRA factors. The paper fine-tunes the weights at 5e-5 for
        ~200 steps. A LoRA ``B A`` (A uniform in ±1/√in, B zero) moves its product by about
        ``lr · √(rank / (3 · in))`` per Adam step where a full fine-tune moves a weight by
        ``lr``, so at full rank the paper's lr × √3 ≈ 1e-4 would match it step for step. In
        half the steps that was too little on ToyWorld (ESD-x, 100 steps, batch 1, the
        circle: Acc_e 1.00 at 1e-4, 0.44 at 3e-4); 5e-4 erased four shapes (mean Acc_e 0.03,
        Acc_s 0.94, colour accuracy 0.99), 1e-3 as well but with more damage (Acc_s 0.85,
        colour 0.87), 3e-3 broke the other shapes (circle: Acc_s 0.36). Hence 5e-4, 10x the
        paper's lr for half its steps. For a rank-r LoRA scale it by about ``√(in / r)``.
    negative_guidance: η, how far past the unconditional prediction the concept is pushed
        (the paper: 1; 0 maps the concept onto the unconditional prediction).
    rank: LoRA rank of every trained module; None: full rank (``min(out, in)`` per module, the
        paper's full fine-tune).
    images: images of each concept drawn by the unedited model (over its templates and
        names), cached on disk; the paper draws a new one at every step.
    batch: images per step (the paper: 1).
    checkpoint_dir: folder for checkpoints (None: none); a killed run started again with the
        same folder continues to the same bytes.
    checkpoint_every: steps between checkpoints.
    """

    steps: int = field(default=100, metadata={"help": "optimisation steps (paper: ~200)"})
    lr: float = field(default=5e-4, metadata={"help": "Adam learning rate of the LoRA"})
    negative_guidance: float = field(default=1.0, metadata={"help": "η, ESD's negative guidance"})
    rank: int | None = field(default=None, metadata={"help": "LoRA rank (null: full rank)"})
    images: int = field(default=8, metadata={"help": "unedited images per concept"})
    batch: int = field(default=1, metadata={"help": "images per step"})
    checkpoint_dir: str | None = field(default=None, metadata={"help": "checkpoint folder"})
    checkpoint_every: int = field(default=50, metadata={"help": "steps between checkpoints"})

    def __post_init__(self) -> None:
        check_fields(self)
        require(
            self,
            [
                (self.steps >= 1, "steps must be >= 1"),
                (self.lr > 0, "lr must be > 0"),
                (self.negative_guidance >= 0, "negative_guidance must be >= 0"),
                (self.rank is None or self.rank >= 1, "rank must be >= 1 (or null: full rank)"),
                (self.images >= 1, "images must be >= 1"),
                (self.batch >= 1, "batch must be >= 1"),
                (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            ],
        )


# ------------------------------------------------------------------------------ maths


def esd_target(
    unconditional: torch.Tensor, conditional: torch.Tensor, negative_guidance: float
) -> torch.Tensor:
    """ESD's target ``ε_u − η (ε_c − ε_u)`` (any shape; the frozen model's predictions)."""
    return unconditional - negative_guidance * (conditional - unconditional)


# ------------------------------------------------------------------------------ modules


def cross_attention_modules(pipe) -> list[str]:
    """``unet.<layer>.to_q/to_k/to_v/to_out.0`` of every cross-attention layer (ESD-x)."""
    return [
        f"unet.{name}.{projection}"
        for name, _ in cross_attention_layers(pipe.unet)
        for projection in CROSS_ATTENTION_PROJECTIONS
    ]


def hold_extra_ranks_at_zero(down: dict[str, torch.Tensor], ranks: dict[str, int]) -> None:
    """Zero the rows of each module's A beyond its rank. With B zero too, those ranks get no
    gradient (∂/∂A_j ∝ B[:, j], ∂/∂B[:, j] ∝ A_j x) and Adam leaves them exactly zero."""
    with torch.no_grad():
        for key, rank in ranks.items():
            down[key][rank:] = 0


@contextlib.contextmanager
def frozen_pipeline(pipe) -> Iterator[None]:
    """Within the block no weight of the pipeline needs a gradient (an adapter attached inside
    is what trains, and backward does not fill gradients of the base weights); the flags are
    put back afterwards."""
    params = [
        p
        for attribute in PIPELINE_COMPONENTS
        if getattr(pipe, attribute, None) is not None
        for p in getattr(pipe, attribute).parameters()
    ]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


# ------------------------------------------------------------------------------ data


@dataclass
class ConceptImages:
    """Images drawn by the unedited model: final latents (n, c, h, w) and each one's prompt."""

    latents: torch.Tensor
    prompts: list[str]


def concept_images(
    pipe, concepts: Sequence[Concept], per_concept: int, seed: int, world: PromptWorld
) -> ConceptImages:
    """``per_concept`` images of each concept, their prompts spread over the kind's templates x
    the concept's names, drawn at the world's sampling settings (cached on disk)."""
    prompts = [
        text
        for concept in concepts
        for text in spread([pair.text for pair in prompt_pairs(concept)], per_concept)
    ]
    return ConceptImages(draw_images(pipe, prompts, seed, world), prompts)


def draw_images(
    pipe, prompts: Sequence[str], seed: int, world: PromptWorld, first: int = 0
) -> torch.Tensor:
    """(n, c, h, w) latents of ``prompts`` drawn by ``pipe`` as it is; image ``i`` from seed
    ``seed * 1_000_003 + 17 * (first + i)`` (ACE stage 2's numbering, so the cache is shared
    where the prompts agree)."""
    seeds = [seed * 1_000_003 + 17 * (first + i) for i in range(len(prompts))]
    return draw_latents(
        pipe, prompts, seeds, steps=world.sampling.steps, guidance=world.sampling.guidance
    )


def rows_of(cond: Conditioning, start: int, stop: int) -> Conditioning:
    """Rows ``start:stop`` of a conditioning."""
    return Conditioning(
        cond.embeds[start:stop], None if cond.pooled is None else cond.pooled[start:stop]
    )


def pick(n: int, k: int, generator: torch.Generator) -> list[int]:
    """``k`` random indices below ``n`` (with replacement)."""
    return [int(i) for i in torch.randint(n, (k,), generator=generator)]


def run_record(name: str, pipe, concepts: Sequence[Concept], config) -> dict:
    """What a checkpoint must match to be resumed: method, base model (its fingerprint),
    concepts and config (less the checkpoint folder)."""
    options = {k: v for k, v in dataclasses.asdict(config).items() if k != "checkpoint_dir"}
    record = {"method": name, "concepts": [c.to_dict() for c in concepts], "config": options}
    record["base_model"] = fingerprint(pipe)
    return {name: json.dumps(record, sort_keys=True)}


# ------------------------------------------------------------------------------ training


@torch.enable_grad()
def train_esd(
    pipe,
    concepts: Sequence[Concept],
    keys: Sequence[str],
    config: EsdConfig,
    *,
    seed: int,
    world: PromptWorld,
    stage: str,
    progress: Progress | None = None,
) -> tuple[dict[str, ModuleEdit], StageRecord]:
    """Train a LoRA on the UNet modules ``keys`` with ESD's objective; returns its edits and
    the stage record (per-step losses). ``pipe`` is left as it was."""
    start = time.perf_counter()
    images = concept_images(pipe, concepts, config.images, seed, world)
    negative = unconditional(pipe)
    conditionings = _Conditionings(pipe)  # the text encoders are not trained: encode once
    ranks = module_ranks(pipe, keys, config.rank)
    width = max(ranks.values())
    device, dtype = pipe.unet.device, pipe.unet.dtype

    with frozen_pipeline(pipe):
        adapter = lora.attach(pipe, list(keys), width, adapter_name="esd_training", seed=seed)
        try:
            factors = adapter.factor_parameters()
            hold_extra_ranks_at_zero({k: factors[f"{k}.down"] for k in keys}, ranks)

            def loss_step(step: int, generator: torch.Generator) -> dict:
                rows = pick(len(images.prompts), config.batch, generator)
                latents = images.latents[rows].to(device, dtype)
                noisy, _, timesteps = add_noise(pipe.scheduler, latents, generator)
                timesteps = timesteps.to(device)
                cond = conditionings([images.prompts[r] for r in rows])
                with torch.no_grad(), adapter.disabled():
                    both = predict_noise(
                        pipe,
                        torch.cat([noisy, noisy]),
                        torch.cat([timesteps, timesteps]),
                        Conditioning.cat([negative.repeat(len(rows)), cond]),
                    ).float()
                    plain, concept = both.chunk(2)
                    target = esd_target(plain, concept, config.negative_guidance)
                prediction = predict_noise(pipe, noisy, timesteps, cond).float()
                return {"loss": (prediction - target).square().mean()}

            trainer = Trainer(
                factors,
                steps=config.steps,
                lr=config.lr,
                seed=seed,
                checkpoint_dir=config.checkpoint_dir,
                checkpoint_every=config.checkpoint_every,
                stage=stage,
                progress=progress,
                config=run_record(stage, pipe, concepts, config),
            )
            state = trainer.run(loss_step)
            edits = adapter.edits()
        finally:
            adapter.remove()
    record = StageRecord(
        f"{stage}_finetune",
        time.perf_counter() - start,
        {
            "steps": state.step,
            "rank": width,
            "modules": len(keys),
            "images": len(images.prompts),
            "losses": state.log,
        },
    )
    return edits, record


Variant = Literal["cross_attention", "non_cross_attention"]


class EsdMethod:
    """ESD-x (``variant="cross_attention"``) or ESD-u (``"non_cross_attention"``); see the
    module docstring."""

    config_class = EsdConfig

    def __init__(self, name: str, variant: Variant) -> None:
        self.name = name
        self.variant = variant

    def modules(self, pipe) -> list[str]:
        """The module keys this variant trains."""
        if self.variant == "cross_attention":
            return cross_attention_modules(pipe)
        return non_cross_attention_modules(pipe)

    def fit(
        self,
        pipe,
        concepts: Sequence[Concept],
        config: EsdConfig,
        *,
        seed: int,
        world: PromptWorld,
        progress: Progress | None = None,
    ) -> Erasure:
        start = time.perf_counter()
        keys = self.modules(pipe)
        edits, record = train_esd(
            pipe, concepts, keys, config, seed=seed, world=world, stage=self.name, progress=progress
        )
        seconds = time.perf_counter() - start
        return Erasure.create(
            pipe,
            edits,
            concepts=concepts,
            method=self.name,
            config=dataclasses.asdict(config),
            seed=seed,
            stages=[record],
            stats={"rank": record.stats["rank"], "seconds": {"total": seconds}},
        )


ESD_X = EsdMethod("esd-x", "cross_attention")
ESD_U = EsdMethod("esd-u", "non_cross_attention")
