"""ACE's options (stages 0–1), with the measurement behind every default."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ace_erasure.methods.base import check_fields, require

ENCODE_DTYPES: dict[str, torch.dtype | None] = {"model": None, "bfloat16": torch.bfloat16}


@dataclass
class AceConfig:
    """Hyper-parameters of ACE stages 0–1. Defaults were chosen on ToyWorld by
    ``benchmarks/erase_toyworld.py --sweep`` (tables in benchmarks/README.md).

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
        neighbours: mined neighbours per concept prompt (stage 0); 0 disables mining. 4: with 0
            or 8 circle's worst specificity drop was 9.7 / 6.9 points, 6.9 at 4.
        neighbour_radius: norm of the input-embedding perturbation, relative to the token's norm.
        neighbour_templates: how many of the kind's templates get mined neighbours.
        rank: LoRA rank; None picks the smallest rank keeping ``rank_energy`` of every layer's
            edit (capped at ``max_rank``).
        rank_energy: fraction of ‖Δ‖²_F kept when ``rank`` is None.
        max_rank: cap on the automatic rank.
        gate: "layer" (one gate per layer), "head" (one per attention head) or "none" (all 1).
            Gates are clipped to [0, 1]: unclipped, ToyWorld's layer gates are 1.2–1.6 and
            erased more at a 10-point specificity cost (seed 0), without erasing the seed-1
            model's heart (0.75–0.94 left); see docs/design-notes.md.
        gate_steps: denoising steps run on concept prompts to record attention queries.
        gate_prompts: concept prompts used for the queries (per concept).
        gate_max_prompts: cap on the query prompts of all concepts together (round-robin).
        gate_resolution: image side (pixels) used for the query run; None = the model's default.
        gate_preserve_weight: weight of the preserve term in the gate objective.
        gate_queries: query rows kept per layer and prompt (random subsample).
        preserve_general: number of general captions in the preserve set (ToyWorld: grammar
            captions; other models: the shipped caption list, all of it).
        preserve_rounds: the related concepts' preserve group starts with each concept's share
            of its weight; after each solve, each share is multiplied by how much the edit
            changes that concept (‖G p‖² / ‖p‖² over its rows, normalised) and the edit is
            solved again, this many times. Specificity is judged per concept, so the mass goes
            where it is lost (ToyWorld: erasing "circle" also erased "hexagon").
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

        Stage 2 (adversarially augmented LoRA fine-tuning, ``methods/ace/finetune.py``):

        stage: 1 = the closed form alone; 2 = followed by the adversarially augmented
            fine-tuning below (``ace-erasure erase --stage 2``).
        finetune_steps: outer optimisation steps, shared by all the concepts erased together:
            with ten concepts each gets a tenth of a single erasure's images. The ten ToyWorld
            shapes at once kept a soft-prompt ASR of 0.10 ‖ 0.40 (ToyWorld seed 0 ‖ 1) with
            150 steps and a pool of 4, 0.05 ‖ 0.20 with 450 and 8 (benchmarks/README.md, stop
            21); raise both for many concepts.
        finetune_lr: Adam learning rate of the LoRA factors and gates.
        finetune_batch: images per step in each of the erase, adversarial and preserve terms.
        finetune_images: images of each concept drawn by the unedited model (over its templates
            and its world's attribute words, :func:`ace_erasure.prompts.attribute_templates`).
        finetune_preserve_images: images of the preserve prompts drawn by the unedited model
            (half for the related concepts, half general captions; drawn once and cached, so
            the number costs no time per step). 64: on circle and heart, both ToyWorlds, 16
            images per other shape, the other shapes lost 1.4 / 0.7 / 2.1 / 2.1 points (worst
            shape 2 / 1 / 3 / 3 of 16) against 10.4 / 6.9 / 6.2 / 12.5 (12 / 8 / 5 / 13) with
            32, at the same soft-prompt ASR (0 on all four); stop 20, benchmarks/README.md.
        finetune_preserve_weight: λ_p of the preserve term.
        finetune_gate_weight: λ_g pulling the gates towards their closed-form values.
        finetune_preserve_focus: share (0..1) of each step's preserve images drawn by damage:
            per related concept (and for the general captions together), the running mean
            squared difference between the trained and the unedited model's predictions on its
            images (:class:`~ace_erasure.methods.ace.finetune.PreserveFocus`); the rest are drawn
            uniformly. 0: all uniformly (the default: with 64 preserve images the focus made
            the other shapes no better, 2.1–5.6 points lost against 0.7–2.1 without it; with 32
            it moved the loss between shapes).
        finetune_gates: train the gates too (else only the factors).
        finetune_push: η, ESD's negative guidance on the erase target (0: the anchor's noise;
            None: stage 1's ``anchor_push`` of the concepts, 0.5 for explicit content). 2 by
            default: on circle and heart, both ToyWorlds, the soft-prompt ASR after stage 2
            fell from 0.62 / 1.00 / 1.00 / 1.00 (None, i.e. 0 for shapes) to 0.00 / 0.00 / 0.25
            / 0.38, with the other shapes within one image except seed 1's heart (6 of 36
            lost); η 1 gave 0.12 / 0.50 / 0.62 / 1.00 (benchmarks/README.md). Checked again
            after the noising fix (stop 19, with the UNet LoRA): η 2 gave 0.00 on all four,
            η 1 0.12 / 0.25 / 0.00 / 0.12, with the same other-shape images but heart seed 0.
        finetune_rank: LoRA rank in stage 2 (None: stage 1's rank).
        finetune_text_encoder_rank: rank of a LoRA on the text encoder's attention and MLP
            linears, trained in stage 2 beside the cross-attention factors (0: none, the
            paper's setting). A soft-prompt attack works through the text encoder, and a k/v
            edit sees only its output; this lets stage 2 change the map from input tokens to
            conditionings too, as AdvUnlearn does. Saved in the same diffusers LoRA. Rank 8 on
            the style Varela (stop 22, ToyWorld seed 0 ‖ 1, 8 pairs): soft-prompt ASR 0.12 ‖
            0.62 → 0.12 ‖ 0.00, textual inversion 0.00 ‖ 0.38 → 0.12 ‖ 0.25, but one other
            concept lost 4 of its 16 images on seed 1 (≤ 1 without) and each step costs more;
            on the hazard no gain. Rank 4, or rank 8 with 128 preserve images (stop 23), keep
            that loss (4 and 5 of 16), and rank 4 gives back most of the gain (soft 0.38 ‖
            0.25). With ``finetune_preserve_focus=0.5`` (stop 24) seed 1 keeps the other
            concepts (≤ 1 of 16 lost, soft 0.12) but seed 0's soft ASR rises to 0.38. Off by
            default; the option for a style that comes back.
        finetune_unet_rank: rank of a LoRA on the UNet's transformer linears outside
            cross-attention (self-attention, feed-forward, linear ``proj_in/out``: ESD-u's
            modules), trained in stage 2 beside the cross-attention factors (0: none, the
            paper's setting). A key/value edit leaves the UNet able to draw the concept from
            some other conditioning (textual inversion finds one); this lets stage 2 change
            what the UNet draws, not only what the text reaches. Saved in the same diffusers
            LoRA. 16 by default: on heart, both ToyWorlds (16 pairs), textual-inversion ASR
            0.94 / 0.81 → 0.31 / 0.44, soft prompt 0.25 / 0.44 → 0.00 / 0.31, Acc_s 0.97 /
            0.83 → 1.00 / 1.00; circle within a pair of the k/v-only stage 2
            (benchmarks/README.md, "What lets textual inversion through on heart").
        finetune_cache: cache the unedited model's images on disk (per base-model fingerprint;
            ``$ACE_ERASURE_CACHE`` or ``~/.cache/ace-erasure``).
        adversarial_every: run the inner soft-prompt attack every this many steps (0: none).
        adversarial_steps: Adam steps of each inner attack (warm-started from the last round).
        adversarial_space: where the inner attack works: "input" (soft tokens before the
            prompt, the soft-prompt attack's space), "token" (learned vectors in place of the
            concept's name, textual inversion's space, started from the name's own tokens; one
            concept at a time, on prompts naming it) or "conditioning" (a residual on the text
            encoder's output, bounded by ``adversarial_norm``). With the UNet LoRA,
            "conditioning" stops textual inversion on heart (ASR 0.31 / 0.44 → 0.00 / 0.06 on
            both ToyWorlds) but loses more of the other concepts (circle's hexagon 9 → 16 of
            16 images); "input" stays the default (benchmarks/README.md, "Where the inner
            attack works"). On the hazard (stop 22) "conditioning" took soft / TI from 0.12 /
            0.25 ‖ 0 / 0 to 0 / 0.12 ‖ 0 / 0 at one more hexagon image lost (3 of 16), and on
            Varela seed 1's soft ASR from 0.62 to 0.25: one-pair differences on the hazard, so
            not made a per-kind default. On the style Okonkwo (stop 25) it took seed 1's
            textual inversion from 0.88 to 0.62 and its soft prompt from 0.38 to 0.12, seed 0
            staying at 0: the option for a style that comes back, not a default.
        adversarial_norm: per-token bound of a conditioning-space residual, relative to the
            embedding's norm. 0.6 (stop 25, the styles) took Okonkwo's seed-1 textual
            inversion to 0.38 and its soft prompt to 0, but the other concepts lost 7 points
            there and Varela got worse on seed 0 (soft 0.12 → 0.38, one named image of 16
            kept); 0.3 stays the default.
        adversarial_tokens: soft input tokens of the inner attack's prefixes.
        adversarial_lr: learning rate of the inner attack.
        adversarial_samples: noise draws (random timesteps) per image in each inner-attack step
            (the evaluation's soft-prompt attack uses 4). The inner attack is most of stage 2's
            time (127 of 200 s on circle, measured with cProfile beside two other jobs).
        adversarial_pool: adversarial prefixes kept and refreshed (each on a random image of
            a random concept erased; see ``finetune_steps`` for many concepts).
        adversarial_weight: weight of the adversarial term against the erase term.
        adversarial_batched: optimise the pool's adversaries together, one image each, in one
            batch: one UNet call per inner step instead of one per adversary. Each adversary's
            gradient is its own loss's divided by the pool size, which Adam's normalisation
            undoes; the random timesteps and noise differ from the one-by-one rounds.
        adversarial_preserve: half of each step's preserve images are seen through an
            adversarial prefix too, with the teacher's prediction for the same conditioning as
            the target (the prefixes alone must not erase other concepts).
        checkpoint_dir: folder for stage 2's checkpoints (None: no checkpoints); a killed run
            resumes from it to the same bytes.
        checkpoint_every: steps between checkpoints.
    """

    ridge: float = field(default=0.01, metadata={"help": "relative ridge (>= 0)"})
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
    gate_preserve_weight: float = field(
        default=1.0, metadata={"help": "preserve weight in the gate"}
    )
    gate_queries: int = field(default=256, metadata={"help": "query rows per layer and prompt"})
    preserve_general: int = field(default=200, metadata={"help": "general captions preserved"})
    preserve_rounds: int = field(
        default=0, metadata={"help": "re-solves shifting preserve mass to harmed concepts"}
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
    stage: Literal[1, 2] = field(default=1, metadata={"help": "1: closed form; 2: + fine-tuning"})
    finetune_steps: int = field(default=150, metadata={"help": "stage-2 steps"})
    finetune_lr: float = field(default=1e-3, metadata={"help": "stage-2 learning rate"})
    finetune_batch: int = field(default=4, metadata={"help": "images per term and step"})
    finetune_images: int = field(default=8, metadata={"help": "unedited images per concept"})
    finetune_preserve_images: int = field(default=64, metadata={"help": "preserve images"})
    finetune_preserve_weight: float = field(default=10.0, metadata={"help": "λ_p (stage 2)"})
    finetune_gate_weight: float = field(default=0.1, metadata={"help": "λ_g (stage 2)"})
    finetune_preserve_focus: float = field(
        default=0.0, metadata={"help": "share of preserve draws led by damage (0..1)"}
    )
    finetune_gates: bool = field(default=True, metadata={"help": "train the gates"})
    finetune_push: float | None = field(
        default=2.0, metadata={"help": "ESD negative guidance η (None: stage 1's push)"}
    )
    finetune_rank: int | None = field(default=None, metadata={"help": "stage-2 LoRA rank"})
    finetune_text_encoder_rank: int = field(
        default=0, metadata={"help": "stage-2 text-encoder LoRA rank (0: none)"}
    )
    finetune_unet_rank: int = field(
        default=16, metadata={"help": "stage-2 LoRA rank outside cross-attention (0: none)"}
    )
    finetune_cache: bool = field(default=True, metadata={"help": "cache unedited images"})
    adversarial_every: int = field(default=10, metadata={"help": "inner attack period (0: off)"})
    adversarial_steps: int = field(default=10, metadata={"help": "inner attack steps"})
    adversarial_space: Literal["input", "token", "conditioning"] = field(
        default="input", metadata={"help": "inner attack space"}
    )
    adversarial_norm: float = field(
        default=0.3, metadata={"help": "relative bound of a conditioning-space residual"}
    )
    adversarial_tokens: int = field(default=5, metadata={"help": "inner attack soft tokens"})
    adversarial_lr: float = field(default=0.01, metadata={"help": "inner attack learning rate"})
    adversarial_samples: int = field(
        default=4, metadata={"help": "noise draws per image and inner-attack step"}
    )
    adversarial_batched: bool = field(
        default=False, metadata={"help": "optimise the pool's prefixes in one batch"}
    )
    adversarial_pool: int = field(default=4, metadata={"help": "adversarial prefixes kept"})
    adversarial_weight: float = field(default=1.0, metadata={"help": "adversarial term weight"})
    adversarial_preserve: bool = field(
        default=True, metadata={"help": "preserve images through adversarial prefixes too"}
    )
    checkpoint_dir: str | None = field(default=None, metadata={"help": "stage-2 checkpoints"})
    checkpoint_every: int = field(default=50, metadata={"help": "steps between checkpoints"})

    def __post_init__(self) -> None:
        check_fields(self)
        require(
            self,
            [
                (self.ridge >= 0, "ridge must be >= 0"),
                (self.preserve_weight >= 0, "preserve_weight must be >= 0"),
                (self.suffix_weight >= 0, "suffix_weight must be >= 0"),
                (self.neighbours >= 0, "neighbours must be >= 0"),
                (self.neighbour_radius >= 0, "neighbour_radius must be >= 0"),
                (self.neighbour_templates >= 0, "neighbour_templates must be >= 0"),
                (self.rank is None or self.rank >= 1, "rank must be >= 1"),
                (0 < self.rank_energy <= 1, "rank_energy must be in (0, 1]"),
                (self.max_rank >= 1, "max_rank must be >= 1"),
                (
                    min(self.gate_steps, self.gate_prompts, self.gate_max_prompts) >= 1,
                    "gate_steps, gate_prompts and gate_max_prompts must be >= 1",
                ),
                (
                    self.gate_resolution is None or self.gate_resolution >= 8,
                    "gate_resolution must be >= 8 pixels",
                ),
                (self.gate_preserve_weight >= 0, "gate_preserve_weight must be >= 0"),
                (self.gate_queries >= 1, "gate_queries must be >= 1"),
                (self.preserve_general >= 0, "preserve_general must be >= 0"),
                (self.preserve_rounds >= 0, "preserve_rounds must be >= 0"),
                (self.anchor_push is None or self.anchor_push >= 0, "anchor_push must be >= 0"),
                (self.token_gate_rank >= 1, "token_gate_rank must be >= 1"),
                (self.token_gate_sharpness > 0, "token_gate_sharpness must be > 0"),
                (self.finetune_steps >= 0, "finetune_steps must be >= 0"),
                (self.finetune_lr > 0, "finetune_lr must be > 0"),
                (self.finetune_batch >= 1, "finetune_batch must be >= 1"),
                (self.finetune_images >= 1, "finetune_images must be >= 1"),
                (self.finetune_preserve_images >= 0, "finetune_preserve_images must be >= 0"),
                (self.finetune_preserve_weight >= 0, "finetune_preserve_weight must be >= 0"),
                (self.finetune_gate_weight >= 0, "finetune_gate_weight must be >= 0"),
                (
                    0 <= self.finetune_preserve_focus <= 1,
                    "finetune_preserve_focus must be in [0, 1]",
                ),
                (
                    self.finetune_push is None or self.finetune_push >= 0,
                    "finetune_push must be >= 0",
                ),
                (
                    self.finetune_rank is None or self.finetune_rank >= 1,
                    "finetune_rank must be >= 1",
                ),
                (self.finetune_text_encoder_rank >= 0, "finetune_text_encoder_rank must be >= 0"),
                (self.finetune_unet_rank >= 0, "finetune_unet_rank must be >= 0"),
                (self.adversarial_every >= 0, "adversarial_every must be >= 0"),
                (self.adversarial_steps >= 0, "adversarial_steps must be >= 0"),
                (self.adversarial_tokens >= 1, "adversarial_tokens must be >= 1"),
                (self.adversarial_lr > 0, "adversarial_lr must be > 0"),
                (self.adversarial_samples >= 1, "adversarial_samples must be >= 1"),
                (self.adversarial_norm > 0, "adversarial_norm must be > 0"),
                (self.adversarial_pool >= 1, "adversarial_pool must be >= 1"),
                (self.adversarial_weight >= 0, "adversarial_weight must be >= 0"),
                (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
                (
                    not (self.stage == 2 and self.mode == "token_gate"),
                    "stage 2 trains the LoRA: use mode='lora' with it",
                ),
            ],
        )
