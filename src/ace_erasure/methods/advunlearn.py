"""AdvUnlearn — adversarial unlearning of the text encoder (Zhang et al., NeurIPS'24), from
the paper.

The UNet stays frozen; a LoRA on the text encoder(s) (every self-attention ``q/k/v/out_proj``
and MLP ``fc1`` / ``fc2`` linear of every encoder layer; SDXL: both encoders) is trained in a
min-max game. Each step:

- **inner attack**: a soft prefix (1 token, the paper's) in the encoders' input-embedding space,
  warm-started from its last value, takes a few Adam steps to make the *current* student
  reproduce the concept, i.e. to minimise the student's denoising loss on images of the concept
  drawn by the unedited model (:func:`ace_erasure.attacks.base.optimise` with a
  :class:`~ace_erasure.attacks.soft_prompt.SoftPrefix`);
- **outer step**: ESD's target (:func:`~ace_erasure.methods.esd.esd_target`, η = 1) for the
  concept prompt and for the adversarial conditioning (prefix + concept prompt), plus a retain
  term ``0.3 ‖ε_θ'(x_t, t, p) − ε_θ(x_t, t, p)‖²`` on general captions ``p``. The teacher θ is
  the unedited model: encoders without the LoRA, and the frozen UNet.

Because the LoRA is in the encoder, the student's conditioning is encoded again, with
gradients through the encoder, at every step (the teacher's with the LoRA disabled). The first
20 % of the steps run without the attack (the paper: 200 of 1000). The attack fits the
conditional prediction (no guidance), as the paper's. At sampling the negative (empty) prompt
runs through the edited encoder too; only the retain term holds it in place, as in the paper.

The LoRA is added with forward hooks on the encoders' linears
(:class:`ace_erasure.training.hooked_lora.LinearLora`; see there why not PEFT).

Differences from the paper:

- **x_t.** The paper samples x_t with DDIM (guidance 3) under the concept prompt, stopped at a
  random one of 50 steps; here x_t are cached images of the concept (and of the retain
  captions) drawn by the unedited model, noised at a random timestep (as ESD here).
- **Schedule.** The paper: 1000 steps at lr 1e-5 (the whole encoder), 30 attack steps per
  step at lr 1e-3, 5 retain prompts per step. Defaults here are CPU-sized (see
  :class:`AdvUnlearnConfig`): 100 outer steps, 5 attack steps, 2 retain images per step, and
  lr 2e-4 to make up for the fewer steps.
- **Parameters.** A LoRA (full rank by default: the paper's full fine-tune, in LoRA form)
  over the encoder layers' linears; embeddings, layer norms and SDXL's text projection stay.
- **Retain set.** The paper's retain prompts are COCO object captions; here the world's general
  captions without any that name an erased concept.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ace_erasure.attacks.base import AttackTarget, optimise, unconditional
from ace_erasure.attacks.soft_prompt import SoftPrefix
from ace_erasure.concepts import Concept
from ace_erasure.erasure import Erasure, ModuleEdit, StageRecord
from ace_erasure.methods.ace.finetune import _Conditionings
from ace_erasure.methods.base import Progress, check_fields, require
from ace_erasure.methods.esd import (
    ConceptImages,
    concept_images,
    draw_images,
    esd_target,
    frozen_pipeline,
    pick,
    rows_of,
    run_record,
    spread,
)
from ace_erasure.models.conditioning import Conditioning, encode_conditioning, predict_noise
from ace_erasure.models.embeddings import SoftTokens
from ace_erasure.prompts import PromptWorld, general_prompts
from ace_erasure.training.diffusion import add_noise
from ace_erasure.training.hooked_lora import (
    LinearLora,
    module_ranks,
    requires_grad,
    text_encoder_modules,
)
from ace_erasure.training.loop import Trainer


@dataclass
class AdvUnlearnConfig:
    """Args:
    steps: outer optimisation steps (the paper: 1000; 100 here, sized for a CPU: ~40 s per
        concept on ToyWorld with the other defaults, one thread).
    lr: Adam learning rate of the encoder LoRA. The paper: 1e-5 for the whole encoder over
        1000 steps. On ToyWorld (100 steps, the first three shapes): 1e-4 half erased the
        circle (Acc_e 0.50, Acc_s 0.94); 2e-4 erased all three (mean Acc_e 0.04, Acc_g 0.06)
        at a high cost to the other shapes (Acc_s 0.68; colour 0.86); 5e-4 cost more (circle:
        Acc_s 0.75, colour 0.54). Hence 2e-4.
    warmup_fraction: fraction of the steps trained without the attack (the paper: 200 of 1000).
    negative_guidance: η of the ESD target (the paper: 1).
    retain_weight: weight of the retain term (the paper: 0.3).
    attack_tokens: soft tokens of the adversarial prefix (the paper: 1).
    attack_steps: Adam steps of the inner attack per outer step, warm-started from the last
        prefix (the paper: 30; 5 here, sized for a CPU: the warm start carries the prefix on).
    attack_lr: Adam learning rate of the inner attack (the paper: 1e-3).
    rank: LoRA rank of every trained linear; None: full rank (``min(out, in)``, the paper's
        full fine-tune of the encoder).
    images: images of each concept drawn by the unedited model (over its templates and names).
    batch: concept images per step, in each of the plain and adversarial ESD terms and in the
        inner attack (the paper: 1).
    retain_images: general captions drawn by the unedited model for the retain term.
    retain_batch: retain images per step (the paper: 5 prompts; 5 did not keep the other
        shapes better on ToyWorld, Acc_s 0.66 against 0.68 with 2).
    checkpoint_dir: folder for checkpoints (None: none); a killed run started again with the
        same folder continues to the same bytes (the prefix is checkpointed too).
    checkpoint_every: steps between checkpoints.
    """

    steps: int = field(default=100, metadata={"help": "outer steps (paper: 1000)"})
    lr: float = field(default=2e-4, metadata={"help": "Adam learning rate of the LoRA"})
    warmup_fraction: float = field(
        default=0.2, metadata={"help": "fraction of steps without the attack"}
    )
    negative_guidance: float = field(default=1.0, metadata={"help": "η, ESD's negative guidance"})
    retain_weight: float = field(default=0.3, metadata={"help": "weight of the retain term"})
    attack_tokens: int = field(default=1, metadata={"help": "soft prefix tokens"})
    attack_steps: int = field(default=5, metadata={"help": "inner attack steps (paper: 30)"})
    attack_lr: float = field(default=1e-3, metadata={"help": "inner attack learning rate"})
    rank: int | None = field(default=None, metadata={"help": "LoRA rank (null: full rank)"})
    images: int = field(default=8, metadata={"help": "unedited images per concept"})
    batch: int = field(default=1, metadata={"help": "concept images per term and step"})
    retain_images: int = field(default=16, metadata={"help": "retain images (general captions)"})
    retain_batch: int = field(default=2, metadata={"help": "retain images per step"})
    checkpoint_dir: str | None = field(default=None, metadata={"help": "checkpoint folder"})
    checkpoint_every: int = field(default=50, metadata={"help": "steps between checkpoints"})

    def __post_init__(self) -> None:
        check_fields(self)
        require(
            self,
            [
                (self.steps >= 1, "steps must be >= 1"),
                (self.lr > 0, "lr must be > 0"),
                (0 <= self.warmup_fraction <= 1, "warmup_fraction must be in [0, 1]"),
                (self.negative_guidance >= 0, "negative_guidance must be >= 0"),
                (self.retain_weight >= 0, "retain_weight must be >= 0"),
                (self.attack_tokens >= 1, "attack_tokens must be >= 1"),
                (self.attack_steps >= 0, "attack_steps must be >= 0"),
                (self.attack_lr > 0, "attack_lr must be > 0"),
                (self.rank is None or self.rank >= 1, "rank must be >= 1 (or null: full rank)"),
                (self.images >= 1, "images must be >= 1"),
                (self.batch >= 1, "batch must be >= 1"),
                (self.retain_images >= 0, "retain_images must be >= 0"),
                (self.retain_batch >= 1, "retain_batch must be >= 1"),
                (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            ],
        )

    @property
    def warmup_steps(self) -> int:
        """Steps at the start trained without the attack."""
        return round(self.steps * self.warmup_fraction)


def retain_images(
    pipe, concepts: Sequence[Concept], config: AdvUnlearnConfig, seed: int, world: PromptWorld
) -> ConceptImages:
    """``retain_images`` of the world's general captions (none naming an erased concept),
    spread over them, drawn by the unedited model (numbered after the concept images)."""
    if not config.retain_images:
        return ConceptImages(torch.zeros(0), [])
    captions = general_prompts(concepts, world, 2 * config.retain_images, seed)
    prompts = spread(captions, min(config.retain_images, len(captions)))
    if not prompts:
        return ConceptImages(torch.zeros(0), [])
    first = config.images * len(concepts)
    return ConceptImages(draw_images(pipe, prompts, seed, world, first=first), prompts)


@torch.enable_grad()
def train_advunlearn(
    pipe,
    concepts: Sequence[Concept],
    config: AdvUnlearnConfig,
    *,
    seed: int,
    world: PromptWorld,
    stage: str = "advunlearn",
    progress: Progress | None = None,
) -> tuple[dict[str, ModuleEdit], StageRecord]:
    """Train the encoder LoRA (see the module docstring); returns its edits and the stage
    record. ``pipe`` is left as it was."""
    start = time.perf_counter()
    concept = concept_images(pipe, concepts, config.images, seed, world)
    retain = retain_images(pipe, concepts, config, seed, world)
    negative = unconditional(pipe)
    teacher_conditionings = _Conditionings(pipe)  # only ever called with the LoRA disabled
    keys = text_encoder_modules(pipe)
    ranks = module_ranks(pipe, keys, config.rank)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    adversary = SoftPrefix(
        SoftTokens.random_vocabulary(
            pipe, config.attack_tokens, torch.Generator().manual_seed(seed + 1)
        )
    )
    attack_params = adversary.parameters()
    attack_losses = {"last": 0.0}

    with frozen_pipeline(pipe):
        adapter = LinearLora(pipe, ranks, seed=seed)
        try:
            lora_params = list(adapter.factor_parameters().values())

            def attack(step: int, generator: torch.Generator) -> None:
                """Warm-started inner attack against the current student."""
                rows = pick(len(concept.prompts), config.batch, generator)
                target = AttackTarget(
                    ", ".join(c.name for c in concepts),
                    [concept.prompts[r] for r in rows],
                    [0] * len(rows),
                    concept.latents[rows],
                )
                with requires_grad(lora_params, False):
                    losses = optimise(
                        pipe,
                        adversary,
                        target,
                        steps=config.attack_steps,
                        lr=config.attack_lr,
                        seed=seed * 7919 + step * 31,
                    )
                attack_losses["last"] = losses[-1] if losses else 0.0

            def loss_step(step: int, generator: torch.Generator) -> dict:
                attacking = step >= config.warmup_steps
                if attacking:
                    attack(step, generator)
                erase_rows = pick(len(concept.prompts), config.batch, generator)
                adv_rows = pick(len(concept.prompts), config.batch, generator) if attacking else []
                keep_rows = (
                    pick(len(retain.prompts), config.retain_batch, generator)
                    if retain.prompts
                    else []
                )
                n_erase, n_adv = len(erase_rows), len(adv_rows)
                n_pushed = n_erase + n_adv  # rows with the ESD target
                parts = [concept.latents[erase_rows + adv_rows]]
                parts += [retain.latents[keep_rows]] if keep_rows else []
                latents = torch.cat(parts).to(device, dtype)
                noisy, _, timesteps = add_noise(pipe.scheduler, latents, generator)
                timesteps = timesteps.to(device)
                plain_prompts = [concept.prompts[r] for r in erase_rows] + [
                    retain.prompts[r] for r in keep_rows
                ]
                adv_prompts = [concept.prompts[r] for r in adv_rows]

                def conditioning(plain: Conditioning) -> Conditioning:
                    """Erase rows, adversarial rows, retain rows (the prefix fixed here)."""
                    parts = [rows_of(plain, 0, n_erase)]
                    if adv_prompts:
                        with requires_grad(attack_params, False):
                            parts.append(adversary.encode(pipe, adv_prompts))
                    parts.append(rows_of(plain, n_erase, len(plain)))
                    return Conditioning.cat(parts)

                with torch.no_grad(), adapter.disabled():
                    teacher = conditioning(teacher_conditionings(plain_prompts))
                    predictions = predict_noise(
                        pipe,
                        torch.cat([noisy[:n_pushed], noisy]),
                        torch.cat([timesteps[:n_pushed], timesteps]),
                        Conditioning.cat([negative.repeat(n_pushed), teacher]),
                    ).float()
                    plain_noise, target = predictions[:n_pushed], predictions[n_pushed:].clone()
                    target[:n_pushed] = esd_target(
                        plain_noise, target[:n_pushed], config.negative_guidance
                    )
                # the student's conditioning through the LoRA encoder, with gradients
                student = conditioning(encode_conditioning(pipe, plain_prompts))
                prediction = predict_noise(pipe, noisy, timesteps, student).float()
                errors = (prediction - target).square().flatten(1).mean(1)
                zero = errors.new_zeros(())
                erase_loss = errors[:n_erase].mean()
                adv_loss = errors[n_erase:n_pushed].mean() if n_adv else zero
                retain_loss = errors[n_pushed:].mean() if keep_rows else zero
                loss = erase_loss + adv_loss + config.retain_weight * retain_loss
                numbers = {
                    "loss": loss,
                    "erase": float(erase_loss.detach()),
                    "adversarial": float(adv_loss.detach()),
                    "retain": float(retain_loss.detach()),
                }
                if attacking and config.attack_steps:  # the inner attack's last loss
                    numbers["attack"] = attack_losses["last"]
                return numbers

            trainer = Trainer(
                adapter.factor_parameters(),
                steps=config.steps,
                lr=config.lr,
                seed=seed,
                checkpoint_dir=config.checkpoint_dir,
                checkpoint_every=config.checkpoint_every,
                stage=stage,
                progress=progress,
                config=run_record(stage, pipe, concepts, config),
                extra_state=lambda: {f"prefix.{k}": v for k, v in adversary.state().items()},
                load_extra_state=lambda state: adversary.load_state(
                    {k[len("prefix.") :]: v for k, v in state.items() if k.startswith("prefix.")}
                ),
            )
            state = trainer.run(loss_step)
            edits = adapter.reached_edits() or adapter.edits()
        finally:
            adapter.remove()
    record = StageRecord(
        f"{stage}_finetune",
        time.perf_counter() - start,
        {
            "steps": state.step,
            "warmup_steps": config.warmup_steps,
            "rank": max(ranks.values()),
            "modules": len(edits),
            "images": {"concept": len(concept.prompts), "retain": len(retain.prompts)},
            "losses": state.log,
        },
    )
    return edits, record


class AdvUnlearn:
    """AdvUnlearn (registered as "advunlearn"); see the module docstring."""

    name = "advunlearn"
    config_class = AdvUnlearnConfig

    def fit(
        self,
        pipe,
        concepts: Sequence[Concept],
        config: AdvUnlearnConfig,
        *,
        seed: int,
        world: PromptWorld,
        progress: Progress | None = None,
    ) -> Erasure:
        start = time.perf_counter()
        edits, record = train_advunlearn(
            pipe, concepts, config, seed=seed, world=world, stage=self.name, progress=progress
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


ADVUNLEARN = AdvUnlearn()
