"""The attack interface: bring an erased concept back by optimising the conditioning.

Every attack is a config dataclass and a ``run`` function::

    run(pipe, target: AttackTarget, config, *, seed, progress) -> AttackResult

``target`` holds the concept's prompts, the generation seed of each (prompt, seed) *pair*, and
reference latents of the concept drawn by the **unedited** model for those pairs. The attacks
of the field minimise the denoising loss of the attacked model on the references,
``‖target − model(√ᾱ_t z_ref + √(1−ᾱ_t) ε, t, c)‖²`` over random t (``target`` = ε, or v for
v-prediction models), over some part of the conditioning ``c``: soft input tokens, real
vocabulary tokens, one new token, or a free residual on the encoder's output. An attack runs
*per seed* (one adversary per pair) or *universally* (one for all pairs).

An :class:`Adversary` is what an attack found: it encodes prompts into the UNet's conditioning
(with gradients while it is being optimised), and it is how the harness generates the attacked
images (:func:`generate_attacked`). Attacks never import methods (DESIGN.md §3); methods may use
attacks as inner loops (ACE stage 2, AdvUnlearn).

**The judge in the loop** (UnlearnDiffAtk's "early stop on success"): an attack may be given a
:data:`Check`, a function that generates the target's pairs under the current adversary and
returns the share in which the judge finds the concept. Every ``check_every`` steps (and after
the last) the attack calls it, keeps the adversary that scored best (ties: the later one) and
stops once every pair succeeds; an attack that starts where the prompt is (textual inversion)
has its start judged too (``check_start``). The denoising loss alone is a poor guide: fitted to one
reference image, a conditioning can lower it and still lose the concept once sampled with
guidance (measured on ToyWorld: textual inversion on the unedited model kept the hazard in 1
of 16 pairs). Without a check (as inside ACE stage 2 or AdvUnlearn) the attack runs all its
steps and returns its last adversary. A model that does not see the conditioning at all (the
text-blind control) gives exactly zero gradients; the attack then stops after one step
(:func:`conditioning_ignored`): its images cannot change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from ace_erasure.errors import ConfigError
from ace_erasure.models.conditioning import (
    Conditioning,
    encode_conditioning,
    noise_target,
    predict_noise,
)
from ace_erasure.training.diffusion import add_noise

Progress = Callable[..., None]
# the judge in the loop: (adversary, target) -> share of the target's pairs showing the concept
Check = Callable[["Adversary", "AttackTarget"], float]


def should_check(check_every: int, step: int, steps: int) -> bool:
    """Whether an attack with a judge consults it after ``step`` (0-based) of ``steps``."""
    return check_every > 0 and ((step + 1) % check_every == 0 or step + 1 == steps)


class BestJudged:
    """The best-judged adversary state an attack has seen (ties: the later one)."""

    def __init__(self) -> None:
        self.score: float = -1.0
        self.state: Any = None

    def offer(self, state: Any, score: float) -> bool:
        """Keep ``state`` if it scores at least as well as the best so far; True when every
        pair succeeded (the attack stops)."""
        if score >= self.score:
            self.score, self.state = score, state
        return score >= 1.0


def fitted_guidance(config: Any, target: AttackTarget) -> float:
    """The guidance an attack fits its prediction at: its config's, or (None) the guidance the
    target's pairs are sampled with."""
    value = getattr(config, "guidance", None)
    return target.guidance if value is None else float(value)


@dataclass(frozen=True)
class AttackTarget:
    """What an attack tries to bring back.

    ``prompts[i]`` is drawn from ``seeds[i]``; ``latents[i]`` (channels, h, w) is the unedited
    model's final latent for that pair (the reference image, in the UNet's latent space).
    ``concept`` names the concept; ``name_in_prompts`` is the word(s) naming it in the prompts
    (textual inversion puts its new token there).
    """

    concept: str
    prompts: list[str]
    seeds: list[int]
    latents: torch.Tensor
    name_in_prompts: str = ""
    guidance: float = 1.0  # the classifier-free guidance the pairs are sampled with

    def __post_init__(self) -> None:
        if not (len(self.prompts) == len(self.seeds) == len(self.latents)) or not self.prompts:
            raise ConfigError(
                f"an attack target needs as many prompts, seeds and reference latents (got "
                f"{len(self.prompts)}, {len(self.seeds)}, {len(self.latents)})"
            )

    def pair(self, i: int) -> AttackTarget:
        """The target made of pair ``i`` alone."""
        return AttackTarget(
            self.concept,
            [self.prompts[i]],
            [self.seeds[i]],
            self.latents[i : i + 1],
            self.name_in_prompts,
            self.guidance,
        )


@runtime_checkable
class Adversary(Protocol):
    """An adversarial conditioning: it turns prompts into the UNet's conditioning."""

    def encode(self, pipe, prompts: Sequence[str]) -> Conditioning:
        """The conditioning of ``prompts`` under this adversary (with gradients to its
        parameters)."""
        ...

    def parameters(self) -> list[torch.nn.Parameter]:
        """What the attack optimises (empty for a fixed adversary)."""
        ...

    def text(self, prompt: str) -> str | None:
        """The plain-text prompt this adversary amounts to, where it has one."""
        ...


class PlainPrompts:
    """No attack: the prompts as they are (the no-attack rate's conditioning)."""

    def encode(self, pipe, prompts: Sequence[str]) -> Conditioning:
        return encode_conditioning(pipe, prompts)

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def text(self, prompt: str) -> str | None:
        return prompt


class PerRow:
    """Several adversaries optimised in one batch: prompt ``i`` goes through adversary ``i``.
    One optimisation of n adversaries on one image each costs one UNet call per step instead
    of n (on a small model most of a call's time does not grow with the batch)."""

    def __init__(self, adversaries: Sequence[Any]) -> None:
        self.adversaries = list(adversaries)

    def encode(self, pipe, prompts: Sequence[str]) -> Conditioning:
        if len(prompts) != len(self.adversaries):
            raise ValueError(f"{len(prompts)} prompts for {len(self.adversaries)} adversaries")
        return Conditioning.cat([a.encode(pipe, [p]) for a, p in zip(self.adversaries, prompts)])

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for a in self.adversaries for p in a.parameters()]

    def text(self, prompt: str) -> str | None:
        return None

    def project(self) -> None:
        for adversary in self.adversaries:
            if hasattr(adversary, "project"):
                adversary.project()


@dataclass
class AttackResult:
    """What an attack found: one adversary per pair (per-seed mode) or one for all
    (universal), the loss curve of each optimisation run, and the time it took."""

    name: str
    mode: str
    adversaries: list[Any]  # Adversary, one per pair or a single one
    losses: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0
    config: Mapping[str, Any] = field(default_factory=dict)

    def adversary(self, i: int) -> Adversary:
        """The adversary of pair ``i``."""
        return self.adversaries[i] if len(self.adversaries) > 1 else self.adversaries[0]

    def texts(self, prompts: Sequence[str]) -> list[str | None]:
        """The plain-text prompt of each pair, where the attack has one."""
        return [self.adversary(i).text(p) for i, p in enumerate(prompts)]


SAMPLES = 4  # noise draws per reference latent and step: the loss of one draw is too noisy


def denoising_loss(
    pipe,
    adversary: Adversary,
    prompts: Sequence[str],
    latents: torch.Tensor,
    generator,
    samples: int = SAMPLES,
    guidance: float = 1.0,
) -> torch.Tensor:
    """The attack objective on a batch: the attacked model's denoising error on the reference
    latents, each noised at ``samples`` random timesteps (all randomness from ``generator``).

    With ``guidance`` w != 1 the prediction is the classifier-free-guided one the sampler uses,
    ``ε_u + w (ε_c − ε_u)`` (the unconditional branch has no gradient): an attack fitted to the
    conditional branch alone can lower the loss below the unedited model's and still fail once
    guidance amplifies its off-manifold conditioning (measured on ToyWorld)."""
    device, dtype = pipe.unet.device, pipe.unet.dtype
    latents = latents.to(device, dtype).repeat_interleave(samples, 0)
    noisy, noise, timesteps = add_noise(pipe.scheduler, latents, generator)
    cond = adversary.encode(pipe, prompts).repeat(samples)
    prediction = predict_noise(pipe, noisy, timesteps.to(device), cond)
    if guidance != 1.0:
        with torch.no_grad():
            negative = unconditional(pipe).repeat(len(latents))
            plain = predict_noise(pipe, noisy, timesteps.to(device), negative)
        prediction = plain + guidance * (prediction - plain)
    target = noise_target(pipe.scheduler, latents, noise.to(device, dtype), timesteps.to(device))
    return (prediction.float() - target.float()).square().mean()


def optimise(
    pipe,
    adversary: Adversary,
    target: AttackTarget,
    *,
    steps: int,
    lr: float,
    seed: int,
    weight_decay: float = 0.0,
    guidance: float = 1.0,
    prompts: Sequence[str] | None = None,
    after_step: Callable[[], None] | None = None,
    progress: Progress | None = None,
    stage: str = "attack",
    check: Check | None = None,
    check_every: int = 0,
    check_start: bool = False,
    samples: int = SAMPLES,
) -> list[float]:
    """Minimise :func:`denoising_loss` over the adversary's parameters with Adam; the model's
    own weights are not touched. Returns the loss of every step run.

    With ``check`` (see the module's docstring) the judge is consulted every ``check_every``
    steps and after the last; the adversary is left at the state that scored best (ties: the
    later one) and the run stops early once the score is 1. ``check_start``: judge the
    starting state too, before the first step (for an attack that starts where the prompt is,
    so that a start which already succeeds is kept, not lost to drift). ``samples``: noise
    draws per reference latent and step."""
    params = adversary.parameters()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    losses = []
    best = BestJudged()
    frozen = [p for p in _model_parameters(pipe) if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)

    def judged_a_success() -> bool:
        """Judge the adversary as it is now, keep it if best; True when every pair succeeds."""
        assert check is not None
        state = [p.detach().clone() for p in params]
        return best.offer(state, float(check(adversary, target)))

    try:
        if check is not None and check_start and judged_a_success():
            steps = 0  # the start already succeeds on every pair
        for step in range(steps):
            loss = denoising_loss(
                pipe,
                adversary,
                prompts or target.prompts,
                target.latents,
                generator,
                samples=samples,
                guidance=guidance,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ignored = conditioning_ignored(params)
            optimizer.step()
            if after_step is not None:
                after_step()
            losses.append(round(float(loss.detach()), 6))
            if progress:
                progress(stage, step + 1, steps, {"loss": losses[-1]})
            judge_now = ignored or should_check(check_every, step, steps)
            if check is not None and judge_now and judged_a_success():
                break
            if ignored:  # the model ignores this conditioning: there is nothing to optimise
                break
    finally:
        for p in frozen:
            p.requires_grad_(True)
    if best.state is not None:
        with torch.no_grad():
            for p, kept in zip(params, best.state):
                p.copy_(kept)
    return losses


def conditioning_ignored(params: Sequence[torch.Tensor]) -> bool:
    """True when the loss's gradient is exactly zero for every adversary parameter: the model
    does not see this conditioning at all (the text-blind control, whose cross-attention values
    are zero), so no step can change what it draws and the attack stops after one."""
    return bool(params) and not any(p.grad is not None and bool(p.grad.any()) for p in params)


def _model_parameters(pipe) -> list[torch.nn.Parameter]:
    modules = [getattr(pipe, n, None) for n in ("unet", "text_encoder", "text_encoder_2", "vae")]
    return [p for m in modules if m is not None for p in m.parameters()]


def run_per_seed_or_universal(
    name: str,
    target: AttackTarget,
    make: Callable[[AttackTarget, int], tuple[Any, list[float]]],
    *,
    universal: bool,
    config: Mapping[str, Any],
    seed: int,
) -> AttackResult:
    """Run ``make(target, seed) -> (adversary, losses)`` once for all pairs (universal) or
    once per pair (per-seed, pair ``i`` seeded with ``seed + i``)."""
    start = time.perf_counter()
    if universal:
        adversary, losses = make(target, seed)
        result = AttackResult(name, "universal", [adversary], [losses], config=config)
    else:
        runs = [make(target.pair(i), seed + i) for i in range(len(target.prompts))]
        result = AttackResult(
            name, "per-seed", [a for a, _ in runs], [loss for _, loss in runs], config=config
        )
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def unconditional(pipe, negative_prompt: str = "") -> Conditioning:
    """The negative conditioning the pipeline itself would use with ``negative_prompt`` (for
    SDXL's "force zeros" an empty one is zeros, not the encoded empty prompt)."""
    from ace_erasure.models.plumbing import model_family

    device = pipe.unet.device
    if model_family(pipe) == "sdxl":
        out = pipe.encode_prompt(
            prompt=[""],
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            negative_prompt=[negative_prompt] if negative_prompt else None,
        )
        return Conditioning(out[1], out[3])
    out = pipe.encode_prompt(
        [""], device, 1, True, negative_prompt=[negative_prompt] if negative_prompt else None
    )
    return Conditioning(out[1])


@torch.no_grad()
def generate_attacked(
    pipe,
    adversary: Adversary,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int,
    guidance: float,
    negative_prompt: str = "",
) -> list:
    """Images of ``prompts`` under ``adversary`` (image ``i`` from ``seeds[i]``), through the
    pipeline with its conditioning given as embeddings."""
    images = []
    negative = unconditional(pipe, negative_prompt)
    for prompt, seed in zip(prompts, seeds):
        cond = adversary.encode(pipe, [prompt])
        kwargs: dict[str, Any] = {
            "prompt_embeds": cond.embeds,
            "negative_prompt_embeds": negative.embeds,
        }
        if cond.pooled is not None:
            kwargs["pooled_prompt_embeds"] = cond.pooled
            kwargs["negative_pooled_prompt_embeds"] = negative.pooled
        out = pipe(
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator(device="cpu").manual_seed(int(seed)),
            **kwargs,
        )
        images.extend(out.images)
    return images
