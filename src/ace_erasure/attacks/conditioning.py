"""The conditioning-space attack (Receler / R.A.C.E.-style upper bound): a free residual added
to the text encoder's **output** for the prompt, optimised like the other attacks.

A cross-attention key/value edit is linear in the conditioning, so some conditioning always
maps to the old keys and values: with an unbounded residual this attack is expected to succeed
against any cross-attention edit. It bounds what any text-side attack could do, for reporting;
it is not a target. ``max_norm`` (relative to the prompt's own embedding norm, per token)
bounds it the way R.A.C.E. bounds its PGD.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ace_erasure.attacks.base import (
    AttackResult,
    AttackTarget,
    Check,
    fitted_guidance,
    optimise,
    run_per_seed_or_universal,
)
from ace_erasure.methods.base import check_fields, require
from ace_erasure.models.conditioning import Conditioning, encode_conditioning


class Residual:
    """An adversary that adds ``delta`` (tokens, dim) to every prompt's encoder output."""

    def __init__(self, delta: torch.Tensor, max_norm: float | None = None) -> None:
        self.delta = torch.nn.Parameter(delta)
        self.max_norm = max_norm
        self._scale: torch.Tensor | None = None

    def encode(self, pipe, prompts: Sequence[str]) -> Conditioning:
        with torch.no_grad():
            clean = encode_conditioning(pipe, prompts)
        if self.max_norm is not None and self._scale is None:
            self._scale = clean.embeds.norm(dim=-1, keepdim=True).mean(0) * self.max_norm
        return Conditioning(clean.embeds + self.delta.to(clean.embeds.dtype), clean.pooled)

    def project(self) -> None:
        """Keep each token's residual within ``max_norm`` of the prompt's embedding norm."""
        if self._scale is None:
            return
        with torch.no_grad():
            norms = self.delta.norm(dim=-1, keepdim=True)
            self.delta.mul_(torch.clamp(self._scale / norms.clamp(min=1e-12), max=1.0))

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.delta]

    def text(self, prompt: str) -> str | None:
        return None

    def state(self) -> dict[str, torch.Tensor]:
        """The residual (for checkpoints and warm starts)."""
        state = {"delta": self.delta.detach().clone()}
        if self._scale is not None:
            state["scale"] = self._scale.detach().clone()
        return state

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.delta.copy_(state["delta"])
        self._scale = state["scale"].clone() if "scale" in state else None


@dataclass
class ConditioningConfig:
    """Args:
    steps: Adam steps.
    lr: Adam learning rate on the residual (0.05: at 0.1 the residual lost the style Varela
        on the unedited model in 2 of 16 pairs, at 0.05 in 1; both bring the erased circle
        back in 16 of 16 at the first check).
    max_norm: per-token bound on the residual, relative to the embedding's norm (null:
        unbounded, the upper bound).
    universal: one residual for all pairs.
    check_every: steps between the judge's checks when the attack is given one (early stop on
        success, keep the best-judged residual); 0: no checks.
    """

    steps: int = field(default=40, metadata={"help": "Adam steps"})
    lr: float = field(default=0.05, metadata={"help": "Adam learning rate"})
    max_norm: float | None = field(default=None, metadata={"help": "relative bound (null: none)"})
    universal: bool = field(default=False, metadata={"help": "one residual for all pairs"})
    check_every: int = field(default=10, metadata={"help": "steps between judge checks (0: none)"})

    guidance: float | None = field(
        default=None,
        metadata={"help": "guidance of the fitted prediction (null: the sampling guidance)"},
    )

    def __post_init__(self) -> None:
        check_fields(self)
        require(
            self,
            [
                (self.steps >= 0, "steps must be >= 0"),
                (self.check_every >= 0, "check_every must be >= 0"),
                (self.lr > 0, "lr must be > 0"),
                (self.guidance is None or self.guidance >= 0, "guidance must be >= 0"),
                (self.max_norm is None or self.max_norm > 0, "max_norm must be > 0"),
            ],
        )


class ConditioningAttack:
    name = "cond"
    config_class = ConditioningConfig

    def run(
        self,
        pipe,
        target: AttackTarget,
        config: ConditioningConfig,
        *,
        seed: int,
        progress=None,
        check: Check | None = None,
    ) -> AttackResult:
        with torch.no_grad():
            shape = encode_conditioning(pipe, target.prompts[:1]).embeds.shape[1:]

        def make(part: AttackTarget, part_seed: int):
            adversary = Residual(torch.zeros(shape), config.max_norm)
            losses = optimise(
                pipe,
                adversary,
                part,
                steps=config.steps,
                lr=config.lr,
                guidance=fitted_guidance(config, part),
                seed=part_seed,
                after_step=adversary.project,
                progress=progress,
                stage="conditioning attack",
                check=check,
                check_every=config.check_every,
            )
            return adversary, losses

        return run_per_seed_or_universal(
            self.name,
            target,
            make,
            universal=config.universal,
            config=dataclasses.asdict(config),
            seed=seed,
        )
