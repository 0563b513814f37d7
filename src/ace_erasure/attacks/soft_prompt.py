"""UnlearnDiffAtk-style soft-prompt attack (Zhang et al., ECCV'24), and its random control.

``k`` vectors in the text encoder's **input** token-embedding space are placed before the
concept prompt and optimised so that the attacked model denoises the unedited model's images
of the concept. They start from ``k`` random vocabulary tokens; the *random prefix* control is
that start, not optimised (what an attack gets for free).

Defaults follow the paper where it is specific: k = 5 for objects and explicit content (3 for
styles: set ``k``), Adam lr 0.01, weight decay 0.1, 40 steps. Differences: timesteps are drawn
at random at every step (the paper sweeps blocks of timesteps from high to low with early
stopping; we stop early on success too, when the harness gives the attack its judge:
``check_every``), and the vectors are free in the embedding space (the paper keeps relaxed
one-hot mixtures of vocabulary tokens).
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
from ace_erasure.models.embeddings import SoftTokens


class SoftPrefix:
    """An adversary made of soft input tokens before the prompt."""

    def __init__(self, tokens: SoftTokens) -> None:
        self.tokens = tokens

    def encode(self, pipe, prompts: Sequence[str]) -> Conditioning:
        with self.tokens.injected(pipe):
            return encode_conditioning(pipe, [self.tokens.prompt(p) for p in prompts])

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.tokens.vectors)

    def text(self, prompt: str) -> str | None:
        return None  # free vectors: no text (the hard-prompt attack finds real words)

    def state(self) -> dict[str, torch.Tensor]:
        """The vectors (for checkpoints and warm starts)."""
        return self.tokens.vector_state()

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.tokens.load_vector_state(state)


@dataclass
class SoftPromptConfig:
    """Args:
    k: soft tokens before the prompt (UnlearnDiffAtk: 5 for objects / nudity, 3 for styles:
        the default for a style concept is 3, see ``KIND_DEFAULTS``).
    steps: Adam steps (UnlearnDiffAtk: 40 per timestep block).
    lr: Adam learning rate (UnlearnDiffAtk: 0.01).
    weight_decay: Adam weight decay (UnlearnDiffAtk: 0.1).
    universal: one prefix for all pairs instead of one per (prompt, seed) pair.
    check_every: steps between the judge's checks when the attack is given one (early stop on
        success, keep the best-judged prefix); 0: no checks.
    """

    k: int = field(default=5, metadata={"help": "soft tokens"})
    steps: int = field(default=40, metadata={"help": "Adam steps"})
    lr: float = field(default=0.01, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(default=0.1, metadata={"help": "Adam weight decay"})
    universal: bool = field(default=False, metadata={"help": "one prefix for all pairs"})
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
                (self.k >= 1, "k must be >= 1"),
                (self.steps >= 0, "steps must be >= 0"),
                (self.check_every >= 0, "check_every must be >= 0"),
                (self.lr > 0, "lr must be > 0"),
                (self.guidance is None or self.guidance >= 0, "guidance must be >= 0"),
                (self.weight_decay >= 0, "weight_decay must be >= 0"),
            ],
        )


def random_prefix(pipe, k: int, seed: int) -> SoftPrefix:
    """``k`` random vocabulary tokens as a soft prefix (the attack's start)."""
    return SoftPrefix(SoftTokens.random_vocabulary(pipe, k, torch.Generator().manual_seed(seed)))


# UnlearnDiffAtk's prefix length: 5 tokens for objects and nudity, 3 for styles. A field set
# by the user wins over these (``attack_config(name, options, kind)``).
KIND_DEFAULTS = {"style": {"k": 3}}


class SoftPromptAttack:
    name = "soft"
    config_class = SoftPromptConfig
    kind_defaults = KIND_DEFAULTS

    def run(
        self,
        pipe,
        target: AttackTarget,
        config: SoftPromptConfig,
        *,
        seed: int,
        progress=None,
        check: Check | None = None,
    ) -> AttackResult:
        def make(part: AttackTarget, part_seed: int):
            adversary = random_prefix(pipe, config.k, part_seed)
            losses = optimise(
                pipe,
                adversary,
                part,
                steps=config.steps,
                lr=config.lr,
                guidance=fitted_guidance(config, part),
                weight_decay=config.weight_decay,
                seed=part_seed,
                progress=progress,
                stage="soft-prompt attack",
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


@dataclass
class RandomPrefixConfig:
    """Args:
    k: random vocabulary tokens before the prompt (the soft-prompt attack's start).
    """

    k: int = field(default=5, metadata={"help": "random tokens"})

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, [(self.k >= 1, "k must be >= 1")])


class RandomPrefixControl:
    """The soft-prompt attack's initialisation, not optimised: a control for the attack."""

    name = "random"
    config_class = RandomPrefixConfig
    kind_defaults = KIND_DEFAULTS  # the soft-prompt attack's start, so its length

    def run(
        self,
        pipe,
        target: AttackTarget,
        config: RandomPrefixConfig,
        *,
        seed: int,
        progress=None,
        check: Check | None = None,  # not optimised: nothing to stop
    ) -> AttackResult:
        def make(part: AttackTarget, part_seed: int):
            return random_prefix(pipe, config.k, part_seed), []

        return run_per_seed_or_universal(
            self.name, target, make, universal=False, config=dataclasses.asdict(config), seed=seed
        )
