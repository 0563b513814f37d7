"""Textual inversion against an erasure ("Circumventing Concept Erasure", Pham et al., ICLR'24):
learn one new token embedding on the **erased** model from the unedited model's images of the
concept, and put it where the concept's name was.

Universal by nature: one token for all pairs, trained on the pairs' prompts with the concept's
name replaced by the new token, started from the name's own first token (the paper starts from
a related word). The paper trains 5000 steps at batch 16; on a CPU we default to 300 steps over
the pairs' batch — say so with the numbers.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ace_erasure.attacks.base import AttackResult, AttackTarget, fitted_guidance, optimise
from ace_erasure.errors import ConfigError
from ace_erasure.methods.base import check_fields, require
from ace_erasure.models.conditioning import Conditioning, encode_conditioning
from ace_erasure.models.embeddings import PLACEHOLDER, SoftTokens
from ace_erasure.models.plumbing import tokenizers


def replace_name(prompt: str, name: str, placeholder: str = PLACEHOLDER) -> str:
    """``prompt`` with the whole-word, case-insensitive occurrences of ``name`` replaced."""
    pattern = re.compile(rf"(?<![\w]){re.escape(name)}(?![\w])", re.IGNORECASE)
    replaced, count = pattern.subn(placeholder, prompt)
    if not count:
        raise ConfigError(f"textual inversion: {name!r} does not occur in the prompt {prompt!r}")
    return replaced


class NewToken:
    """An adversary made of one learned token in place of the concept's name."""

    def __init__(self, tokens: SoftTokens, name: str) -> None:
        self.tokens, self.name = tokens, name

    def encode(self, pipe, prompts: Sequence[str]) -> Conditioning:
        with self.tokens.injected(pipe):
            return encode_conditioning(pipe, [replace_name(p, self.name) for p in prompts])

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.tokens.vectors)

    def text(self, prompt: str) -> str | None:
        return None


@dataclass
class TextualInversionConfig:
    """Args:
    steps: Adam steps over the pairs' batch (the paper: 5000 at batch 16).
    lr: Adam learning rate (the paper: 5e-3, scaled by its batch).
    """

    steps: int = field(default=300, metadata={"help": "Adam steps"})
    lr: float = field(default=0.01, metadata={"help": "Adam learning rate"})

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
                (self.lr > 0, "lr must be > 0"),
                (self.guidance is None or self.guidance >= 0, "guidance must be >= 0"),
            ],
        )


class TextualInversionAttack:
    name = "ti"
    config_class = TextualInversionConfig
    universal_only = True  # one token for all pairs, by nature

    def run(
        self,
        pipe,
        target: AttackTarget,
        config: TextualInversionConfig,
        *,
        seed: int,
        progress=None,
    ) -> AttackResult:
        import time

        name = target.name_in_prompts or target.concept
        start = time.perf_counter()
        first = tokenizers(pipe)[0](name, add_special_tokens=False).input_ids[:1]
        if not first:
            raise ConfigError(f"textual inversion: {name!r} has no tokens")
        adversary = NewToken(SoftTokens.from_tokens(pipe, first), name)
        losses = optimise(
            pipe,
            adversary,
            target,
            steps=config.steps,
            lr=config.lr,
            guidance=fitted_guidance(config, target),
            seed=seed,
            progress=progress,
            stage="textual inversion",
        )
        return AttackResult(
            self.name,
            "universal",
            [adversary],
            [losses],
            time.perf_counter() - start,
            dataclasses.asdict(config),
        )
