"""ACE stage 2: adversarially augmented LoRA fine-tuning (DESIGN.md §2, stage 2).

The stage-1 factors and gates become a trainable gated LoRA on the same modules
(:mod:`ace_erasure.training.lora`); the frozen teacher is the same pipeline with the adapter
disabled. The data are images the **unedited** model draws for the concepts' prompts and for
the preserve prompts (cached on disk per base-model fingerprint), noised at random timesteps.
The loss, per step:

- erase: ``‖ε_θ'(x_t, t, c) − sg[ε_θ(x_t, t, a) − η (ε_θ(x_t, t, c) − ε_θ(x_t, t, a))]‖²`` on
  concept images, with ``c`` the concept prompt (or a synonym given) and ``a`` its anchor
  prompt, ``η`` ESD's negative guidance (``finetune_push``);
- adversarial: the same, with ``c`` an adversarial conditioning: soft input tokens before the
  concept prompt, found by an inner soft-prompt attack (:mod:`ace_erasure.attacks`) against the
  current student every ``adversarial_every`` steps, each warm-started from its last value;
- preserve: ``λ_p ‖ε_θ'(x_t, t, p) − ε_θ(x_t, t, p)‖²`` on the preserve prompts' images;
- gates: ``λ_g ‖g − g*‖²`` towards the closed-form gates.

With ``finetune_text_encoder_rank`` > 0 a LoRA on the text encoders' linears
(:class:`ace_erasure.training.hooked_lora.LinearLora`) trains too: the student's conditionings
(plain and through the adversarial prefixes) are encoded again with gradients at every step,
the teacher's without either adapter, and the inner attack works against the whole student.
With ``finetune_unet_rank`` > 0 a LoRA on the UNet's transformer linears outside
cross-attention (ESD-u's modules) trains too, the same way; the teacher is without it.

Resumable: with ``checkpoint_dir`` a killed run continues from its last checkpoint to the
same bytes (the loop's generator, the optimiser and the adversaries are checkpointed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ace_erasure.attacks.base import AttackTarget, PerRow, optimise
from ace_erasure.attacks.conditioning import Residual
from ace_erasure.attacks.soft_prompt import SoftPrefix
from ace_erasure.attacks.textual_inversion import NewToken, mentions_name
from ace_erasure.concepts import Concept, PromptPair
from ace_erasure.erasure import ModuleEdit, StageRecord
from ace_erasure.errors import ConfigError
from ace_erasure.methods.ace.config import AceConfig
from ace_erasure.methods.ace.targets import anchor_push, concept_prompt_pairs
from ace_erasure.models.conditioning import Conditioning, encode_conditioning, predict_noise
from ace_erasure.models.embeddings import SoftTokens
from ace_erasure.models.plumbing import ENCODER_ATTRIBUTES, fingerprint, tokenizers
from ace_erasure.prompts import spread
from ace_erasure.training import lora
from ace_erasure.training.checkpoint import atomic_save
from ace_erasure.training.diffusion import add_noise
from ace_erasure.training.hooked_lora import (
    LinearLora,
    module_ranks,
    non_cross_attention_modules,
    requires_grad,
    text_encoder_modules,
)
from ace_erasure.training.loop import Trainer


@dataclass
class Examples:
    """Images drawn by the unedited model: latents (n, c, h, w) and, per image, the prompt to
    train on and its target prompt (the anchor for concept images, itself for preserve)."""

    latents: torch.Tensor
    prompts: list[str]
    targets: list[str]
    concept_index: list[int]  # which concept an image shows (-1: a preserve image)


def cache_folder() -> Path:
    """Where unedited-model images are cached: ``$ACE_ERASURE_CACHE`` or the user's cache."""
    root = os.environ.get("ACE_ERASURE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ace-erasure"
    )
    return Path(root) / "latents"


@torch.no_grad()
def draw_latents(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int,
    guidance: float,
    cache: bool = True,
) -> torch.Tensor:
    """(n, c, h, w) final latents of ``prompts`` drawn by ``pipe`` (as it is) from ``seeds``,
    cached on disk per base-model fingerprint, prompt, seed and sampling settings."""
    base = json.dumps(fingerprint(pipe), sort_keys=True)
    folder = cache_folder()
    out: list[torch.Tensor | None] = []
    paths = []
    for prompt, seed in zip(prompts, seeds):
        key = hashlib.sha256(f"{base}|{prompt}|{seed}|{steps}|{guidance}".encode()).hexdigest()
        path = folder / key[:2] / f"{key}.safetensors"
        paths.append(path)
        latent = None
        if cache and path.is_file():
            try:
                from safetensors.torch import load_file

                latent = load_file(str(path))["latent"]
            except Exception:  # a corrupt cache entry is drawn again
                latent = None
        out.append(latent)
    # one image per call: a batch's numerics depend on its other members, and a cached image
    # must be the same bytes whichever images were drawn with it
    for i in [i for i, latent in enumerate(out) if latent is None]:
        drawn = pipe(
            prompts[i],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator(device="cpu").manual_seed(int(seeds[i])),
            output_type="latent",
        ).images
        value = drawn[0].float().cpu()
        out[i] = value
        if cache:
            paths[i].parent.mkdir(parents=True, exist_ok=True)
            atomic_save({"latent": value}, paths[i])
    return torch.stack([latent for latent in out if latent is not None])


@dataclass
class PreservePrompts:
    """What stage 2 keeps: prompts of each related concept with a weight (how much the
    closed-form edit moves that concept), and general captions."""

    related: dict[str, list[str]]
    weights: dict[str, float]
    general: list[str]

    def choose(self, n: int) -> list[str]:
        """``n`` prompts: half for the related concepts, shared in proportion to their weights
        (each at least one while there are enough), half round-robin over the general ones."""
        names = [name for name in self.related if self.related[name]]
        n_related = n if not self.general else (n + 1) // 2 if names else 0
        chosen: list[str] = []
        if names and n_related:
            total = sum(max(self.weights.get(k, 0.0), 0.0) for k in names) or 1.0
            counts = {k: 1 for k in names[:n_related]}
            spare = n_related - len(counts)
            shares = {k: max(self.weights.get(k, 0.0), 0.0) / total * spare for k in names}
            for k in names:
                counts[k] = counts.get(k, 0) + int(shares[k])
            leftover = n_related - sum(counts.values())
            for k in sorted(names, key=lambda k: shares[k] - int(shares[k]), reverse=True):
                if leftover <= 0:
                    break
                counts[k] += 1
                leftover -= 1
            for k in names:
                chosen += spread(self.related[k], counts.get(k, 0))
        if self.general:
            chosen += spread(self.general, n - len(chosen))
        return chosen

    def group(self, prompt: str) -> str:
        """The related concept a preserve prompt shows ("" for a general caption)."""
        for name, prompts in self.related.items():
            if prompt in prompts:
                return name
        return ""


class PreserveFocus:
    """Which preserve images a stage-2 step trains on. With ``focus`` 0, uniformly; with
    ``focus`` f > 0, a share f of the draws goes to each group (a related concept, or the general
    captions) in proportion to its running damage: the mean squared difference between the
    student's and the unedited model's noise predictions on its images (an exponential average
    of the steps that drew it). Specificity is judged per concept, and the closed form's
    embedding-space weights do not predict which concept the judge loses (a concept near the
    erased one in images can be far from it in embeddings)."""

    DECAY = 0.9

    def __init__(self, groups: Sequence[str], focus: float) -> None:
        self.names = sorted(set(groups))
        self.index = torch.tensor([self.names.index(g) for g in groups])
        self.focus = focus
        self.damage = torch.full((len(self.names),), float("nan"))

    def pick(self, n: int, generator: torch.Generator) -> list[int]:
        """``n`` positions in the preserve rows."""
        if not self.focus:
            return [int(i) for i in torch.randint(len(self.index), (n,), generator=generator)]
        known = self.damage[~self.damage.isnan()]
        # a group not drawn yet counts as the most damaged one, so every group gets measured
        damage = self.damage.nan_to_num(float(known.max()) if len(known) else 1.0).double()
        share = damage if float(damage.sum()) > 0 else torch.ones_like(damage)
        sizes = torch.bincount(self.index, minlength=len(self.names)).double()
        focused = (share / share.sum() / sizes)[self.index]
        weights = (1 - self.focus) / len(self.index) + self.focus * focused
        drawn = torch.multinomial(weights, n, replacement=True, generator=generator)
        return [int(i) for i in drawn]

    def record(self, positions: Sequence[int], errors: torch.Tensor) -> None:
        """Fold the errors of the preserve rows at ``positions`` into their groups' damage."""
        if not len(positions):
            return
        groups = self.index[list(positions)]
        counts = torch.bincount(groups, minlength=len(self.names))
        sums = torch.zeros(len(self.names)).index_add_(0, groups, errors.detach().float())
        seen = counts > 0
        mean, old = sums[seen] / counts[seen], self.damage[seen]
        averaged = self.DECAY * old + (1 - self.DECAY) * mean
        self.damage[seen] = torch.where(old.isnan(), mean, averaged)


def training_examples(
    pipe,
    concepts: Sequence[Concept],
    preserve: PreservePrompts,
    config: AceConfig,
    seed: int,
    *,
    steps: int,
    guidance: float,
    templates: Mapping[str, Sequence[str]] | None = None,
) -> Examples:
    """``finetune_images`` images per concept (its ``templates`` x names, in turn; by default
    its kind's templates) and ``finetune_preserve_images`` preserve images
    (:meth:`PreservePrompts.choose`)."""
    prompts, targets, which = [], [], []
    for index, concept in enumerate(concepts):
        own = (templates or {}).get(concept.name)
        pairs: list[PromptPair] = concept_prompt_pairs(concept, config, templates=own)
        by_text = {p.text: p for p in pairs}
        for text in spread(list(by_text), config.finetune_images):  # over templates and names
            prompts.append(text)
            targets.append(by_text[text].anchor_text)
            which.append(index)
    chosen = preserve.choose(config.finetune_preserve_images)
    prompts += chosen
    targets += chosen
    which += [-1] * len(chosen)
    seeds = [seed * 1_000_003 + 17 * i for i in range(len(prompts))]
    latents = draw_latents(
        pipe, prompts, seeds, steps=steps, guidance=guidance, cache=config.finetune_cache
    )
    return Examples(latents, prompts, targets, which)


class _Conditionings:
    """Prompt conditionings, encoded once (the text encoders are frozen)."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.cache: dict[str, Conditioning] = {}

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> Conditioning:
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if missing:
            cond = encode_conditioning(self.pipe, missing)
            for i, p in enumerate(missing):
                pooled = None if cond.pooled is None else cond.pooled[i : i + 1]
                self.cache[p] = Conditioning(cond.embeds[i : i + 1], pooled)
        return Conditioning.cat([self.cache[p] for p in prompts])


@torch.enable_grad()
def finetune(
    pipe,
    concepts: Sequence[Concept],
    edits: Mapping[str, ModuleEdit],
    preserve: PreservePrompts,
    config: AceConfig,
    seed: int,
    *,
    steps: int,
    guidance: float,
    templates: Mapping[str, Sequence[str]] | None = None,
    progress=None,
) -> tuple[dict[str, ModuleEdit], StageRecord]:
    """Stage 2 from the stage-1 ``edits``; returns the trained edits and the stage record.
    ``steps`` / ``guidance`` are the sampling settings of the unedited images (the world's);
    ``templates`` per concept name, those its images are drawn over (:func:`training_examples`)."""
    if config.adversarial_space == "token" and len(concepts) != 1:
        raise ConfigError("adversarial_space='token' erases one concept at a time")
    start = time.perf_counter()
    examples = training_examples(
        pipe, concepts, preserve, config, seed, steps=steps, guidance=guidance, templates=templates
    )
    concept_rows = [i for i, c in enumerate(examples.concept_index) if c >= 0]
    preserve_rows = [i for i, c in enumerate(examples.concept_index) if c < 0]
    # the rows an adversary can be put on: a learned replacement of the name ("token") needs
    # the name in the prompt
    token_space = config.adversarial_space == "token"
    attack_rows = (
        [r for r in concept_rows if mentions_name(examples.prompts[r], concepts[0].name)]
        if token_space
        else concept_rows
    )
    if not attack_rows:
        raise ConfigError(f"no stage-2 prompt names {concepts[0].name!r} for a token attack")

    rank = config.finetune_rank or max(e.rank for e in edits.values())
    # ESD's negative guidance on the erase target: as set, or (None) stage 1's automatic push
    # (0.5 for explicit content, past the anchor: the hazard needed it in closed form too)
    push = (
        config.finetune_push
        if config.finetune_push is not None
        else max(anchor_push(c, config) for c in concepts)
    )
    adapter = lora.attach(pipe, list(edits), rank, init=edits, seed=seed)
    text = unet = None
    try:
        if config.finetune_text_encoder_rank:
            keys = text_encoder_modules(pipe)
            ranks = module_ranks(pipe, keys, config.finetune_text_encoder_rank)
            text = LinearLora(pipe, ranks, seed=seed + 2)
        if config.finetune_unet_rank:
            keys = non_cross_attention_modules(pipe)
            ranks = module_ranks(pipe, keys, config.finetune_unet_rank)
            unet = LinearLora(pipe, ranks, seed=seed + 3)
    except BaseException:
        adapter.remove()
        if text:
            text.remove()
        raise
    hooked = [h for h in (text, unet) if h is not None]
    hooked_params = [p for h in hooked for p in h.factor_parameters().values()]

    @contextlib.contextmanager
    def teacher():
        """The unedited model: every adapter off."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(adapter.disabled())
            for h in hooked:
                stack.enter_context(h.disabled())
            yield

    closed_gates = {f"{k}.gate": e.gate.float().clone() for k, e in edits.items()}
    conditionings = _Conditionings(pipe)
    generator = torch.Generator().manual_seed(seed + 1)

    def new_adversary():
        if token_space:
            ids = tokenizers(pipe)[0](concepts[0].name, add_special_tokens=False).input_ids
            return NewToken(SoftTokens.from_tokens(pipe, ids), concepts[0].name)
        if config.adversarial_space == "conditioning":
            shape = conditionings([examples.prompts[concept_rows[0]]]).embeds.shape[1:]
            return Residual(torch.zeros(shape), config.adversarial_norm)
        return SoftPrefix(SoftTokens.random_vocabulary(pipe, config.adversarial_tokens, generator))

    pool = [
        new_adversary() for _ in range(config.adversarial_pool if config.adversarial_every else 0)
    ]
    rounds = {"count": 0}
    focus = PreserveFocus(
        [preserve.group(examples.prompts[r]) for r in preserve_rows], config.finetune_preserve_focus
    )

    def attack_round(step: int, step_generator: torch.Generator) -> None:
        """The inner attack: every prefix of the pool, warm-started, against the student on
        one random concept image each; one by one, or (``adversarial_batched``) all in one
        batch."""
        groups = [pool] if config.adversarial_batched else [[a] for a in pool]
        for index, group in enumerate(groups):
            rows = [
                attack_rows[int(torch.randint(len(attack_rows), (1,), generator=step_generator))]
                for _ in group
            ]
            target = AttackTarget(
                "concept",
                [examples.prompts[r] for r in rows],
                [0] * len(rows),
                examples.latents[rows],
                guidance=guidance,
            )
            joint = PerRow(group)
            with requires_grad(hooked_params, False):
                optimise(
                    pipe,
                    joint,
                    target,
                    steps=config.adversarial_steps,
                    lr=config.adversarial_lr,
                    seed=seed * 7919 + step * 31 + index,
                    guidance=guidance,
                    after_step=joint.project,
                    samples=config.adversarial_samples,
                )
        rounds["count"] += 1

    def loss_step(step: int, step_generator: torch.Generator) -> dict:
        if pool and step % config.adversarial_every == 0:
            attack_round(step, step_generator)
        pick = lambda rows, n: [  # noqa: E731
            rows[int(i)] for i in torch.randint(len(rows), (n,), generator=step_generator)
        ]
        erase_rows = pick(concept_rows, config.finetune_batch)
        adv_rows = pick(attack_rows, config.finetune_batch) if pool else []
        keep_at = focus.pick(config.finetune_batch, step_generator) if preserve_rows else []
        keep_rows = [preserve_rows[i] for i in keep_at]
        # preserve images seen through an adversarial prefix keep their own target (the prefix
        # alone must not erase other concepts): the last ``n_shield`` preserve rows
        # (a name replacement has nothing to replace in a preserve prompt: no shield)
        shield = pool and config.adversarial_preserve and not token_space
        n_shield = len(keep_rows) // 2 if shield else 0
        rows = erase_rows + adv_rows + keep_rows
        latents = examples.latents[rows].to(pipe.unet.device, pipe.unet.dtype)
        noisy, _, timesteps = add_noise(pipe.scheduler, latents, step_generator)
        timesteps = timesteps.to(latents.device)
        n_plain_keep = len(keep_rows) - n_shield
        plain_prompts = [examples.prompts[r] for r in erase_rows + keep_rows[:n_plain_keep]]
        shielded = keep_rows[n_plain_keep:]
        chosen = (
            [
                pool[int(i)]
                for i in torch.randint(
                    len(pool), (len(adv_rows) + len(shielded),), generator=step_generator
                )
            ]
            if pool
            else []
        )
        n_erase, n_adv = len(erase_rows), len(adv_rows)

        def assemble(plain: Conditioning) -> Conditioning:
            """Erase rows, adversarial rows, plain preserve rows, shielded preserve rows (the
            prefixes fixed here), encoded by the text encoder as it is now."""
            if not pool:
                return plain
            with requires_grad([p for a in pool for p in a.parameters()], False):
                adversarial = Conditioning.cat(
                    [
                        a.encode(pipe, [examples.prompts[r]])
                        for a, r in zip(chosen, adv_rows + shielded)
                    ]
                )
            parts = [_rows(plain, 0, n_erase), _rows(adversarial, 0, n_adv)]
            parts.append(_rows(plain, n_erase, len(plain)))
            if shielded:
                parts.append(_rows(adversarial, n_adv, len(adversarial)))
            return Conditioning.cat(parts)

        if text is None:  # a frozen encoder: the student's conditioning is the teacher's
            with torch.no_grad():
                student_cond = teacher_cond = assemble(conditionings(plain_prompts))
        else:  # through the encoder's LoRA, with gradients; the teacher's without it
            student_cond = assemble(encode_conditioning(pipe, plain_prompts))
            with torch.no_grad(), text.disabled():
                teacher_cond = assemble(conditionings(plain_prompts))
        target_prompts = [examples.targets[r] for r in erase_rows + adv_rows + keep_rows]
        with torch.no_grad(), teacher():
            targets_cond = conditionings(target_prompts)
        if n_shield:  # the teacher sees the shielded preserve images through the prefix too
            n_before = len(erase_rows) + len(adv_rows) + n_plain_keep
            targets_cond = Conditioning.cat(
                [_rows(targets_cond, 0, n_before), _rows(teacher_cond, n_before, len(rows))]
            )
        with torch.no_grad(), teacher():
            target = predict_noise(pipe, noisy, timesteps, targets_cond).float()
            if push and erase_rows:
                n = len(erase_rows) + len(adv_rows)
                concept_teacher = predict_noise(
                    pipe, noisy[:n], timesteps[:n], _rows(teacher_cond, 0, n)
                ).float()
                target[:n] = target[:n] - push * (concept_teacher - target[:n])
        prediction = predict_noise(pipe, noisy, timesteps, student_cond).float()
        errors = (prediction - target).square().flatten(1).mean(1)
        erase_loss = errors[:n_erase].mean()
        adv_loss = errors[n_erase : n_erase + n_adv].mean() if n_adv else errors.new_zeros(())
        keep_loss = errors[n_erase + n_adv :].mean() if keep_rows else errors.new_zeros(())
        focus.record(keep_at, errors[n_erase + n_adv :])
        gate_loss = sum(
            (gate - closed_gates[name]).square().sum()
            for name, gate in adapter.gate_parameters().items()
        )
        loss = (
            erase_loss
            + config.adversarial_weight * adv_loss
            + config.finetune_preserve_weight * keep_loss
            + config.finetune_gate_weight * gate_loss
        )
        return {
            "loss": loss,
            "erase": float(erase_loss.detach()),
            "adversarial": float(adv_loss.detach()),
            "preserve": float(keep_loss.detach()),
            "gate": float(torch.as_tensor(gate_loss).detach()),
        }

    def extra_state() -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for i, adversary in enumerate(pool):
            state |= {f"pool.{i}.{k}": v for k, v in adversary.state().items()}
        state["rounds"] = torch.tensor([rounds["count"]])
        state["preserve_damage"] = focus.damage.clone()
        return state

    def load_extra_state(state: dict[str, torch.Tensor]) -> None:
        for i, adversary in enumerate(pool):
            prefix = f"pool.{i}."
            adversary.load_state(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
        rounds["count"] = int(state["rounds"][0])
        if "preserve_damage" in state:
            focus.damage = state["preserve_damage"].clone()

    try:
        parameters = adapter.factor_parameters()
        if config.finetune_gates:
            parameters |= adapter.gate_parameters()
        for h in hooked:
            parameters |= h.factor_parameters()
        trainer = Trainer(
            parameters,
            steps=config.finetune_steps,
            lr=config.finetune_lr,
            seed=seed,
            checkpoint_dir=config.checkpoint_dir,
            checkpoint_every=config.checkpoint_every,
            grad_clip=1.0,
            stage="stage 2",
            progress=progress,
            config={"ace_stage2": _run_record(pipe, concepts, config)},
            extra_state=extra_state,
            load_extra_state=load_extra_state,
        )
        # the encoders' own weights need no gradients when one flows through them
        encoder_weights = [
            p
            for attribute in ENCODER_ATTRIBUTES
            if text and getattr(pipe, attribute, None) is not None
            for p in getattr(pipe, attribute).parameters()
        ]
        with requires_grad(encoder_weights, False):
            state = trainer.run(loss_step)
        trained = adapter.edits()
        for h in hooked:
            trained |= h.reached_edits()
    finally:
        adapter.remove()
        for h in hooked:
            h.remove()
    record = StageRecord(
        "stage2_finetune",
        time.perf_counter() - start,
        {
            "steps": state.step,
            "rank": rank,
            "text_encoder_rank": config.finetune_text_encoder_rank,
            "text_encoder_modules": sum(k.startswith("text_encoder") for k in trained),
            "unet_rank": config.finetune_unet_rank,
            "unet_modules": sum(k.startswith("unet.") and k not in edits for k in trained),
            "images": {"concept": len(concept_rows), "preserve": len(preserve_rows)},
            "adversarial_rounds": rounds["count"],
            # running damage per preserve group (general captions: "general"; None: never drawn)
            "preserve_damage": {
                name or "general": None if d.isnan() else round(float(d), 6)
                for name, d in zip(focus.names, focus.damage)
            },
            "losses": state.log,
            "gates": {k: trained[k].gate.tolist() for k in edits if k.endswith("to_k")},
        },
    )
    return trained, record


def _rows(cond: Conditioning, start: int, stop: int) -> Conditioning:
    return Conditioning(
        cond.embeds[start:stop], None if cond.pooled is None else cond.pooled[start:stop]
    )


def _run_record(pipe, concepts: Sequence[Concept], config: AceConfig) -> str:
    """What a checkpoint must match to be resumed: the concepts, the base model (its
    fingerprint) and the config less the checkpoint folder, so that a folder left by another
    run is never continued."""
    from dataclasses import asdict

    options = {k: v for k, v in asdict(config).items() if k != "checkpoint_dir"}
    record = {
        "concepts": [c.to_dict() for c in concepts],
        "base_model": fingerprint(pipe),
        "config": options,
    }
    return json.dumps(record, sort_keys=True)
