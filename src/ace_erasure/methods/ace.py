"""ACE — Attentional Concept Erasure, stages 0 and 1 (closed form). DESIGN.md §2.

Stage 0 collects, for every concept, target embeddings ``T`` (the concept's tokens and every
token after them — EOS and padding carry the concept in CLIP encoders — over templates x names,
plus *mined neighbours*: the same prompts re-encoded with the concept's input token embeddings
randomly perturbed) aligned token by token with anchor embeddings ``A`` (the same prompts with
the anchor instead), and preserve embeddings ``P`` (all tokens of a preserve prompt set).

Stage 1 solves the ridge problem of :mod:`ace_erasure.linalg` once (``Δ_l = W_l G`` for every
key/value projection), truncates each Δ_l to a low rank, and computes a closed-form gate per
layer (or per head) from recorded attention queries: the gate ``g`` that best maps the edited
attention output on concept prompts to the original output on anchor prompts while keeping
preserve prompts' outputs, linearised (secant) in ``g`` and clipped to [0, 1]. The result is a
gated low-rank edit ``W_l + g_l B_l A_l`` — a LoRA whose scale is the gate.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from ace_erasure.concepts import Concept, PromptPair, prompt_pairs
from ace_erasure.errors import ConfigError
from ace_erasure.linalg import RidgeEditFitter, top_singular
from ace_erasure.models.plumbing import (
    PromptEncoder,
    aligned_positions,
    base_linear,
    cross_attention_layers,
    token_span,
    tokenizers,
)
from ace_erasure.prompts import general_prompts, related_pairs

logger = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


_ENCODE_DTYPES: dict[str, torch.dtype | None] = {"model": None, "bfloat16": torch.bfloat16}


@dataclass
class AceConfig:
    """Hyper-parameters of ACE stages 0–1. Defaults were chosen on ToyWorld by
    ``benchmarks/erase_toyworld.py --sweep`` (see benchmarks/README.md).

    Args:
        ridge: relative ridge λ (λ = ridge x mean eigenvalue of the system); larger = smaller,
            safer edits. Must be > 0 unless the system is well determined.
        preserve_weight: weight λ_p of the preserve set against the targets. 5 is where the first
            ToyWorld's shapes and characters kept other concepts within 3 points (1: up to 11
            points lost; 10: no loss but weaker erasure); see benchmarks/README.md.
        suffix_weight: total weight of the tokens after the concept in a prompt (words, EOS,
            padding: ~70 tokens) relative to the concept's own tokens; spread evenly over them so
            that the padding does not outnumber the concept. 0 edits only the concept tokens.
            4: on ToyWorld (shapes, characters) 1 left "circle" in 4 of 16 images, 2 and 4 in at
            most 1 (4 kept synonyms lower: worst 2 of 16 vs 3); the EOS tokens carry the concept
            too.
        neighbours: mined neighbours per concept prompt (stage 0); 0 disables mining.
        neighbour_radius: norm of the input-embedding perturbation, relative to the token's norm.
        neighbour_templates: how many of the kind's templates get mined neighbours.
        rank: LoRA rank; None picks the smallest rank keeping ``rank_energy`` of every layer's
            edit (capped at ``max_rank``).
        rank_energy: fraction of ‖Δ‖²_F kept when ``rank`` is None.
        max_rank: cap on the automatic rank.
        gate: "layer" (one gate per layer), "head" (one per attention head) or "none" (all 1).
        gate_steps: denoising steps run on concept prompts to record attention queries.
        gate_prompts: concept prompts used for the queries (per concept).
        gate_max_prompts: cap on the query prompts of all concepts together (round-robin).
        gate_resolution: image side (pixels) used for the query run; None = the model's default.
        gate_max: gates are clipped to [0, gate_max]; DESIGN's gates lie in [0, 1].
        gate_preserve_weight: weight of the preserve term in the gate objective.
        gate_queries: query rows kept per layer and prompt (random subsample).
        preserve_general: number of general captions in the preserve set (ToyWorld: grammar
            captions; other models: the shipped caption list, all of it).
        preserve_rounds: the related concepts' preserve group starts with each concept's share
            of its weight; after each solve, each share is multiplied by how much the edit
            changes that concept (‖G p‖² / ‖p‖² over its rows, normalised) and the edit is
            solved again, this many times. Specificity is judged per concept, so the mass goes
            where it is lost (ToyWorld: erasing "circle" also erased "hexagon").
        preserve_focus: the damage enters that product raised to this power (0: no effect).
        anchor_push: push the targets past the anchor, away from the concept:
            a + anchor_push (a − t) (negative guidance in embedding space, as ESD does for noise).
            None = automatic: 0.5 for explicit content and wherever the anchor is the
            unconditional prompt, 0 otherwise. Explicit content is evoked by its context words
            too ("a hazard sign" minus "hazard"): on ToyWorld the hazard stayed in 11 of 16
            images mapped onto its prompt anchor unpushed, and in none pushed by 0.5, 0.75 or 1.
            For objects, styles and people pushing cost specificity (shapes: worst drop 2.8 ->
            8.3 points at 0.5), so they are not pushed.
        empty_anchor: what an empty anchor ("") maps the concept and the tokens after it onto:
            "prompt" = the same prompt without the concept ("a red"); "unconditional" = the
            empty prompt's tokens (the model's unconditional distribution, as in ESD). The words
            before the concept keep their own tokens either way.
        encode_dtype: "model" encodes the statistics' prompts with the pipeline's text
            encoder(s) as loaded; "bfloat16" with bfloat16 copies of them (a CPU speed-up: ~3.7x
            for a CLIP-L-sized encoder on this project's AVX-512-BF16 CPUs, where prompt
            encoding is most of the time; embeddings deviate ~0.7 %; see benchmarks/README.md).
        mode: "lora" (the edit applies to every token: a standard LoRA) or "token_gate" (an
            attention processor applies it only to tokens in the concept subspace; the saved
            LoRA stays available for stock diffusers as its linearisation).
        token_gate_rank: dimension of the concept subspace of the token gate.
        token_gate_threshold: where the mask switches on, as a fraction of the way from the
            mean subspace share of preserved tokens (0) to that of concept tokens (1).
        token_gate_sharpness: mask steepness across that gap (larger = harder mask).
    """

    ridge: float = field(default=0.01, metadata={"help": "relative ridge (> 0)"})
    preserve_weight: float = field(default=5.0, metadata={"help": "weight of preserve embeddings"})
    suffix_weight: float = field(
        default=4.0, metadata={"help": "weight of EOS/padding/suffix tokens"}
    )
    neighbours: int = field(default=4, metadata={"help": "mined neighbours per prompt"})
    neighbour_radius: float = field(default=0.15, metadata={"help": "relative perturbation norm"})
    neighbour_templates: int = field(default=6, metadata={"help": "templates that get neighbours"})
    rank: int | None = field(default=None, metadata={"help": "LoRA rank (None: automatic)"})
    rank_energy: float = field(
        default=0.999, metadata={"help": "energy kept by the automatic rank"}
    )
    max_rank: int = field(default=64, metadata={"help": "cap on the automatic rank"})
    gate: Literal["layer", "head", "none"] = field(
        default="layer", metadata={"help": "gate granularity"}
    )
    gate_steps: int = field(default=3, metadata={"help": "denoising steps for query recording"})
    gate_prompts: int = field(default=4, metadata={"help": "concept prompts for query recording"})
    gate_max_prompts: int = field(default=16, metadata={"help": "cap on query prompts in all"})
    gate_resolution: int | None = field(
        default=None, metadata={"help": "image side for the query run"}
    )
    gate_max: float = field(default=1.0, metadata={"help": "upper clip of the gates"})
    gate_preserve_weight: float = field(
        default=1.0, metadata={"help": "preserve weight in the gate"}
    )
    gate_queries: int = field(default=256, metadata={"help": "query rows per layer and prompt"})
    preserve_general: int = field(default=200, metadata={"help": "general captions preserved"})
    preserve_rounds: int = field(
        default=0, metadata={"help": "re-solves shifting preserve mass to harmed concepts"}
    )
    preserve_focus: float = field(
        default=1.0, metadata={"help": "exponent of the damage in that re-weighting"}
    )
    anchor_push: float | None = field(
        default=None, metadata={"help": "push targets past the anchor (None: automatic)"}
    )
    empty_anchor: Literal["prompt", "unconditional"] = field(
        default="prompt", metadata={"help": "what an empty anchor means"}
    )
    encode_dtype: Literal["model", "bfloat16"] = field(
        default="model", metadata={"help": "text-encoder dtype for the statistics"}
    )
    mode: Literal["lora", "token_gate"] = field(
        default="lora", metadata={"help": "lora | token_gate"}
    )
    token_gate_threshold: float = field(default=0.5, metadata={"help": "mask threshold (0..1)"})
    token_gate_sharpness: float = field(default=4.0, metadata={"help": "mask steepness"})
    token_gate_rank: int = field(
        default=4, metadata={"help": "concept subspace dimension (token gate)"}
    )

    def validate(self) -> None:
        checks = [
            (self.ridge >= 0, "ridge must be >= 0"),
            (self.preserve_weight >= 0, "preserve_weight must be >= 0"),
            (self.suffix_weight >= 0, "suffix_weight must be >= 0"),
            (self.neighbours >= 0, "neighbours must be >= 0"),
            (self.preserve_rounds >= 0, "preserve_rounds must be >= 0"),
            (self.preserve_focus >= 0, "preserve_focus must be >= 0"),
            (self.neighbour_radius >= 0, "neighbour_radius must be >= 0"),
            (self.rank is None or self.rank >= 1, "rank must be >= 1"),
            (self.gate_max > 0, "gate_max must be > 0"),
            (0 < self.rank_energy <= 1, "rank_energy must be in (0, 1]"),
            (self.max_rank >= 1, "max_rank must be >= 1"),
            (self.gate in ("layer", "head", "none"), "gate must be 'layer', 'head' or 'none'"),
            (
                min(self.gate_steps, self.gate_prompts, self.gate_max_prompts) >= 1,
                "gate_steps, gate_prompts and gate_max_prompts must be >= 1",
            ),
            (self.mode in ("lora", "token_gate"), "mode must be 'lora' or 'token_gate'"),
            (
                self.encode_dtype in _ENCODE_DTYPES,
                "encode_dtype must be 'model' or 'bfloat16'",
            ),
            (self.anchor_push is None or self.anchor_push >= 0, "anchor_push must be >= 0"),
            (
                self.empty_anchor in ("prompt", "unconditional"),
                "empty_anchor must be 'prompt' or 'unconditional'",
            ),
            (self.token_gate_rank >= 1, "token_gate_rank must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"AceConfig: {message}")


@dataclass
class ProjectionEdit:
    """The gated low-rank edit of one projection: W' = W + up @ down (gate folded into up)."""

    up: torch.Tensor  # (out, rank)
    down: torch.Tensor  # (rank, in)
    gate: torch.Tensor  # (heads,) or (1,)


def _token_weights(n_positions: int, n_concept: int, suffix_weight: float) -> torch.Tensor:
    """Weight 1 per concept token; the suffix tokens share ``suffix_weight * n_concept``."""
    weights = torch.ones(n_positions)
    n_suffix = n_positions - n_concept
    if n_suffix > 0:
        weights[n_concept:] = suffix_weight * n_concept / n_suffix
    return weights


def _add_targets(
    fitter: RidgeEditFitter,
    targets: torch.Tensor,
    anchors: torch.Tensor,
    weights: torch.Tensor,
    push: float,
) -> None:
    """Add (target, anchor) rows; with ``push`` > 0 the anchors move away from the targets."""
    if push:
        anchors = anchors + push * (anchors - targets)
    fitter.update_targets(targets, anchors, weights)


# anchor_push=None: how far explicit content (or any concept mapped onto the unconditional
# prompt) is pushed past its anchor (ToyWorld's hazard: 0.5, 0.75 and 1 all erased it fully)
AUTO_PUSH = 0.5


def _unconditional_anchor(concept: Concept, config: AceConfig) -> bool:
    """Whether ``concept`` is mapped onto the empty prompt's tokens (see ``empty_anchor``)."""
    return not concept.anchor and config.empty_anchor == "unconditional"


def _anchor_push(concept: Concept, config: AceConfig) -> float:
    if config.anchor_push is not None:
        return config.anchor_push
    pushed = concept.kind == "explicit" or _unconditional_anchor(concept, config)
    return AUTO_PUSH if pushed else 0.0


def _prompt_pairs(concept: Concept, config: AceConfig, names: Sequence[str] | None = None) -> list:
    """The concept's (prompt, anchor prompt) pairs, with ``empty_anchor`` applied."""
    pairs = prompt_pairs(concept, names=names)
    if _unconditional_anchor(concept, config):
        return [
            dataclasses.replace(p, anchor_text="", anchor_before="", anchor_through="")
            for p in pairs
        ]
    return pairs


def _collect_targets(
    pipe,
    encode: PromptEncoder,
    concept: Concept,
    config: AceConfig,
    fitter: RidgeEditFitter,
    generator: torch.Generator,
) -> int:
    """Stage 0 for one concept: add its (target, anchor) token pairs to the fitter."""
    tokenizer = tokenizers(pipe)[0]
    pairs = _prompt_pairs(concept, config)
    texts = [p.text for p in pairs]
    anchor_texts = list(dict.fromkeys(p.anchor_text for p in pairs))
    anchor_embeds = dict(zip(anchor_texts, encode(anchor_texts)))
    # per prompt: concept-prompt positions, their aligned anchor rows, and the token weights
    sources, anchors, weights, concept_positions = [], [], [], []
    for pair in pairs:
        span = token_span(tokenizer, pair.before, pair.through)
        positions = aligned_positions(
            span, token_span(tokenizer, pair.anchor_before, pair.anchor_through)
        )
        if config.suffix_weight == 0:
            positions = positions[: span.stop - span.start]
        sources.append(torch.tensor([p for p, _ in positions]))
        anchors.append(anchor_embeds[pair.anchor_text][torch.tensor([q for _, q in positions])])
        weights.append(_token_weights(len(positions), span.stop - span.start, config.suffix_weight))
        concept_positions.append(list(range(span.start, span.stop)))

    def add(embeds: torch.Tensor, rows: list[int]) -> int:
        targets = torch.cat([embeds[k, sources[i]] for k, i in enumerate(rows)])
        _add_targets(
            fitter,
            targets,
            torch.cat([anchors[i] for i in rows]),
            torch.cat([weights[i] for i in rows]),
            _anchor_push(concept, config),
        )
        return len(targets)

    fitter.begin_group(1.0)
    count = add(encode(texts), list(range(len(pairs))))
    # mined neighbours: perturb the concept's input token embeddings, keep the same anchors
    n_templates = len(concept.templates)
    mined = [i for i in range(len(pairs)) if i % n_templates < config.neighbour_templates]
    for _ in range(config.neighbours if mined else 0):
        noisy = encode.perturbed(
            [texts[i] for i in mined],
            [concept_positions[i] for i in mined],
            config.neighbour_radius,
            generator,
        )
        count += add(noisy, mined)
    return count


# --------------------------------------------------------------------------------------------
# Gates


@torch.no_grad()
def _record_queries(
    pipe, prompts: Sequence[str], config: AceConfig, seed: int
) -> dict[str, torch.Tensor]:
    """Attention queries of every cross-attention layer on a short denoising run.

    Returns layer name -> (n_prompts, n_rows, inner_dim), rows subsampled per prompt.
    """
    layers = cross_attention_layers(pipe.unet)
    records: dict[str, list[torch.Tensor]] = {name: [] for name, _ in layers}
    generator = torch.Generator().manual_seed(seed)
    handles = []
    for name, module in layers:

        def hook(_m, _inputs, output, name=name) -> None:
            rows = output.shape[1]
            keep = torch.randperm(rows, generator=generator)[: config.gate_queries]
            records[name].append(output[:, keep].detach().float().cpu())

        handles.append(module.to_q.register_forward_hook(hook))
    side = config.gate_resolution or (pipe.unet.config.sample_size * pipe.vae_scale_factor)
    # A few DDIM steps work with any pipeline; its own scheduler may not (PNDM needs more steps).
    from diffusers import DDIMScheduler

    scheduler = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(scheduler.config)
    try:
        pipe(
            list(prompts),
            num_inference_steps=config.gate_steps,
            guidance_scale=1.0,
            height=side,
            width=side,
            output_type="latent",
            generator=torch.Generator(device="cpu").manual_seed(seed),
        )
    finally:
        pipe.scheduler = scheduler
        for handle in handles:
            handle.remove()
    return {name: torch.cat(chunks, dim=1) for name, chunks in records.items()}


def _attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int
) -> torch.Tensor:
    """Multi-head attention outputs (batch, rows, heads, head_dim) before the output projection."""
    b, n, inner = query.shape
    dh = inner // heads
    q = query.view(b, n, heads, dh).transpose(1, 2)
    k = key.view(b, key.shape[1], heads, dh).transpose(1, 2)
    v = value.view(b, value.shape[1], heads, dh).transpose(1, 2)
    weights = (q @ k.transpose(-1, -2) / math.sqrt(dh)).softmax(-1)
    return (weights @ v).transpose(1, 2)


def _gates(
    module,
    queries: torch.Tensor,
    concept_embeds: torch.Tensor,
    anchor_embeds: torch.Tensor,
    preserve_embeds: torch.Tensor,
    delta_k: torch.Tensor,
    delta_v: torch.Tensor,
    config: AceConfig,
) -> torch.Tensor:
    """Closed-form gate(s) for one layer: argmin_g ‖Attn_g(concept) − Attn_0(anchor)‖² +
    μ ‖Attn_g(preserve) − Attn_0(preserve)‖², linearised by the secant between g = 0 and 1."""
    heads = module.heads
    w_k, w_v = base_linear(module.to_k).weight.float(), base_linear(module.to_v).weight.float()
    dk, dv = delta_k.float(), delta_v.float()

    def attend(embeds: torch.Tensor, gate: float) -> torch.Tensor:
        key = embeds @ (w_k + gate * dk).T
        value = embeds @ (w_v + gate * dv).T
        q = (
            queries[: len(embeds)]
            if len(queries) >= len(embeds)
            else queries.repeat(math.ceil(len(embeds) / len(queries)), 1, 1)[: len(embeds)]
        )
        return _attention(q, key, value, heads)

    base = attend(concept_embeds, 0.0)
    residual = attend(anchor_embeds, 0.0) - base
    direction = attend(concept_embeds, 1.0) - base
    keep = attend(preserve_embeds, 1.0) - attend(preserve_embeds, 0.0)
    sum_dims = (0, 1, 3)
    numerator = (residual * direction).sum(sum_dims)
    denominator = direction.square().sum(
        sum_dims
    ) + config.gate_preserve_weight * keep.square().sum(sum_dims) * (
        len(concept_embeds) / max(1, len(preserve_embeds))
    )
    if config.gate == "layer":
        numerator, denominator = numerator.sum(0, keepdim=True), denominator.sum(0, keepdim=True)
    return (numerator / denominator.clamp(min=1e-12)).clamp(0.0, config.gate_max)


# --------------------------------------------------------------------------------------------
# Preserve set


def _named(pair: PromptPair) -> str:
    """The name a related-concept prompt names (its text between ``before`` and ``through``)."""
    return pair.through[len(pair.before) :].strip().lower()


@dataclass
class _PreserveSet:
    """What an edit must keep, as d x d statistics in float64: one Gram matrix per related
    concept (its name tokens weighted like the targets', the suffix sharing ``suffix_weight``,
    so the few rows that tell "triangle" from "diamond" are not drowned by ~70 padding rows)
    and one for the general captions (every token). The two groups have equal mass; within
    the related group each concept has a share (initially its weight)."""

    embeds: torch.Tensor  # (prompts, tokens, d): related prompts, then general captions
    names: list[str]
    grams: list[torch.Tensor]
    initial_share: torch.Tensor
    general: torch.Tensor | None
    related_ids: dict[str, list[int]]  # prompt indices per related name

    @classmethod
    def build(
        cls,
        related: Sequence[PromptPair],
        general: Sequence[str],
        embeds: torch.Tensor,
        tokenizer,
        config: AceConfig,
    ) -> _PreserveSet:
        sums: dict[str, torch.Tensor] = {}
        mass: dict[str, float] = {}
        ids: dict[str, list[int]] = {}
        for i, pair in enumerate(related):
            span = token_span(tokenizer, pair.before, pair.through)
            rows = embeds[i, span.start :].double()
            weights = _token_weights(len(rows), span.stop - span.start, config.suffix_weight)
            name = _named(pair)
            gram = (rows * weights.double()[:, None]).T @ rows
            sums[name] = sums[name] + gram if name in sums else gram
            mass[name] = mass.get(name, 0.0) + float(weights.sum())
            ids.setdefault(name, []).append(i)
        names = list(sums)
        share = torch.tensor([mass[n] for n in names], dtype=torch.float64)
        general_gram = None
        if general:
            rows = embeds[len(related) :].reshape(-1, embeds.shape[-1]).double()
            general_gram = rows.T @ rows / len(rows)
        return cls(
            embeds,
            names,
            [sums[n] / mass[n] for n in names],
            share / share.sum() if len(share) else share,
            general_gram,
            ids,
        )

    def gram(self, share: torch.Tensor) -> torch.Tensor:
        """The preserve Gram matrix with the related concepts weighted by ``share``."""
        groups = []
        if self.grams:
            groups.append(torch.einsum("r,rij->ij", share, torch.stack(self.grams)))
        if self.general is not None:
            groups.append(self.general)
        if not groups:
            dim = self.embeds.shape[-1]
            return torch.zeros(dim, dim, dtype=torch.float64)
        return torch.stack(groups).mean(0)

    def change(self, edit: torch.Tensor) -> torch.Tensor:
        """How much ``edit`` (G) moves each related concept's rows: ‖G p‖² / ‖p‖²."""
        if not self.grams:
            return torch.zeros(0, dtype=torch.float64)
        return torch.stack([((edit @ g) * edit).sum() / g.trace() for g in self.grams])

    def gate_sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Prompt indices for the gates' preserve term: up to ``n`` related prompts (round-robin
        over the related concepts) and up to ``n`` random general captions."""
        lists = list(self.related_ids.values())
        picked = [
            ids[k] for k in range(max(map(len, lists), default=0)) for ids in lists if k < len(ids)
        ]
        n_related = sum(map(len, lists))
        n_general = len(self.embeds) - n_related
        general = n_related + torch.randperm(n_general, generator=generator)[:n]
        return torch.tensor(picked[:n] + general.tolist(), dtype=torch.long)


# --------------------------------------------------------------------------------------------
# Fit


@dataclass
class AceResult:
    """What :func:`fit` returns: per-projection edits, and what was measured on the way."""

    edits: dict[str, ProjectionEdit]
    rank: int
    stats: dict
    token_gate: dict | None = None


@torch.no_grad()
def fit(
    pipe,
    concepts: Sequence[Concept],
    config: AceConfig,
    seed: int = 0,
    *,
    toyworld: bool = False,
    progress: Progress | None = None,
) -> AceResult:
    """ACE stages 0–1 on ``pipe`` for ``concepts``; returns the gated low-rank edits."""
    config.validate()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    layers = cross_attention_layers(pipe.unet)
    dim = base_linear(layers[0][1].to_k).in_features
    fitter = RidgeEditFitter(dim)
    encode = PromptEncoder(pipe, _ENCODE_DTYPES[config.encode_dtype])

    n_targets = 0
    for i, concept in enumerate(concepts):
        n_targets += _collect_targets(pipe, encode, concept, config, fitter, generator)
        if progress:
            progress("targets", i + 1, len(concepts))
    timings["targets"] = time.perf_counter() - start

    mark = time.perf_counter()
    # what to keep: related concepts and general captions (see _PreserveSet)
    tokenizer = tokenizers(pipe)[0]
    related = related_pairs(concepts, toyworld=toyworld)
    general = general_prompts(
        concepts, toyworld=toyworld, n_general=config.preserve_general, seed=seed
    )
    preserve = _PreserveSet.build(
        related, general, encode([p.text for p in related] + general), tokenizer, config
    )
    timings["preserve"] = time.perf_counter() - mark

    mark = time.perf_counter()
    share = preserve.initial_share
    solution = fitter.solve(config.preserve_weight, config.ridge, preserve.gram(share))
    target_gram = fitter.statistics()[0]
    own_change = float(((solution.edit @ target_gram) * solution.edit).sum() / target_gram.trace())
    first_change = preserve.change(solution.edit)
    # Related concepts that the edit changes most get more of their group's mass, and the edit
    # is solved again (multiplicative weights on the worst-case specificity; see AceConfig).
    for _ in range(config.preserve_rounds if len(preserve.names) > 1 else 0):
        share = share * preserve.change(solution.edit).clamp(min=1e-300) ** config.preserve_focus
        share = share / share.sum()
        solution = fitter.solve(config.preserve_weight, config.ridge, preserve.gram(share))
    deltas: dict[str, torch.Tensor] = {}
    for name, module in layers:
        for proj in ("to_k", "to_v"):
            deltas[f"{name}.{proj}"] = solution.delta(base_linear(getattr(module, proj)).weight)
    # the leading singular triplets of every edit, once (randomised, seeded: see top_singular)
    svd_generator = torch.Generator().manual_seed(seed)
    tops = {
        key: top_singular(
            delta, min(config.rank or config.max_rank, min(delta.shape)), svd_generator
        )
        for key, delta in deltas.items()
    }
    rank = config.rank or min(
        config.max_rank, max(top.rank_for_energy(config.rank_energy) for top in tops.values())
    )
    token_gate = None
    if config.mode == "token_gate":
        from ace_erasure.processors import concept_subspace, mask_parameters

        target_gram, _, _ = fitter.statistics()
        kept_gram = preserve.gram(share)
        basis = concept_subspace(target_gram, kept_gram, min(config.token_gate_rank, dim))
        threshold, sharpness = mask_parameters(
            basis,
            target_gram,
            kept_gram,
            config.token_gate_threshold,
            config.token_gate_sharpness,
        )
        token_gate = {"basis": basis.float(), "threshold": threshold, "sharpness": sharpness}
    timings["solve"] = time.perf_counter() - mark

    mark = time.perf_counter()
    gates: dict[str, torch.Tensor] = {}
    if config.gate == "none":
        gates = {name: torch.ones(1) for name, _ in layers}
    else:
        # per concept its first templates, round-robin, at most gate_max_prompts in all (the
        # query run costs UNet passes; 100 concepts need statistics, not 400 prompts)
        per_concept = [
            _prompt_pairs(c, config, names=[c.name])[: config.gate_prompts] for c in concepts
        ]
        chosen = [
            pairs[i] for i in range(config.gate_prompts) for pairs in per_concept if i < len(pairs)
        ]
        chosen = chosen[: config.gate_max_prompts]
        gate_prompts = [p.text for p in chosen]
        anchor_prompts = [p.anchor_text for p in chosen]
        queries = _record_queries(pipe, gate_prompts, config, seed)
        concept_embeds = encode(gate_prompts)
        anchor_embeds = encode(anchor_prompts)
        # the preserve side of the gates: the related concepts' prompts (round-robin over them,
        # as many as there are gate prompts) and as many random general captions
        sample = preserve.gate_sample(len(gate_prompts), generator)
        preserve_sample = preserve.embeds[sample] if len(sample) else concept_embeds[:0]
        for name, module in layers:
            gates[name] = _gates(
                module,
                queries[name],
                concept_embeds,
                anchor_embeds,
                preserve_sample,
                deltas[f"{name}.to_k"],
                deltas[f"{name}.to_v"],
                config,
            )
            if progress:
                progress("gates", len(gates), len(layers))
    timings["gates"] = time.perf_counter() - mark

    edits = {}
    for name, _ in layers:
        for proj in ("to_k", "to_v"):
            up, down = tops[f"{name}.{proj}"].factors(rank)
            gate = gates[name]
            rows_per_head = up.shape[0] // len(gate)
            up = up * gate.double().repeat_interleave(rows_per_head).unsqueeze(1)
            edits[f"{name}.{proj}"] = ProjectionEdit(up.float(), down.float(), gate.float())
    timings["total"] = time.perf_counter() - start
    stats = {
        "target_vectors": n_targets,
        "encoder_passes": encode.passes,
        "preserve_prompts": len(preserve.embeds),
        # relative change of each related concept (first solve), in units of the concept's own
        "related_change": {
            n: round(float(d) / max(own_change, 1e-300), 4)
            for n, d in zip(preserve.names, first_change)
        },
        "related_shares": {n: round(float(a), 4) for n, a in zip(preserve.names, share)},
        "preserve_vectors": int(preserve.embeds.shape[0] * preserve.embeds.shape[1]),
        "condition_number": solution.condition_number,
        "ridge_absolute": solution.ridge_absolute,
        "rank": rank,
        "mean_gate": float(torch.cat([g for g in gates.values()]).mean()),
        # the push each concept got (anchor_push=None resolves per concept)
        "anchor_push": {c.name: _anchor_push(c, config) for c in concepts},
        "seconds": {k: round(v, 4) for k, v in timings.items()},
    }
    logger.info("ACE fit: %s", stats)
    return AceResult(edits, rank, stats, token_gate)
