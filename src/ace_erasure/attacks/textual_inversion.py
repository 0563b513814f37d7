"""Textual inversion against an erasure ("Circumventing Concept Erasure", Pham et al., ICLR'24):
learn one new token embedding on the **erased** model from the unedited model's images of the
concept, and put it where the concept's name was.

Universal by nature: one embedding for all pairs, trained on the pairs' prompts with the
concept's name replaced by it. It has as many vectors as the name has tokens and starts from
them (the paper learns one token from a related word): the attack starts where the prompt is,
so on a model that draws the concept it starts from success ("Mira Kestrel" is two tokens; one
started from "mira" alone lost the character on the unedited model in 7 of 16 pairs). The
paper trains 5000 steps at batch 16; on a CPU we default to 300 steps over the pairs' batch,
with the judge in the loop when the harness gives one (``check_every``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ace_erasure.attacks.base import AttackResult, AttackTarget, Check, fitted_guidance, optimise
from ace_erasure.errors import ConfigError
from ace_erasure.methods.base import check_fields, require
from ace_erasure.models.conditioning import Conditioning, encode_conditioning
from ace_erasure.models.embeddings import PLACEHOLDER, SoftTokens
from ace_erasure.models.plumbing import tokenizers


def _name_pattern(name: str) -> re.Pattern[str]:
    """``name`` as a whole word, case-insensitive."""
    return re.compile(rf"(?<![\w]){re.escape(name)}(?![\w])", re.IGNORECASE)


def mentions_name(prompt: str, name: str) -> bool:
    """Whether :func:`replace_name` finds ``name`` in ``prompt``."""
    return _name_pattern(name).search(prompt) is not None


def replace_name(prompt: str, name: str, placeholder: str = PLACEHOLDER) -> str:
    """``prompt`` with the whole-word, case-insensitive occurrences of ``name`` replaced by
    ``placeholder``."""
    replaced, count = _name_pattern(name).subn(placeholder, prompt)
    if not count:
        raise ConfigError(f"textual inversion: {name!r} does not occur in the prompt {prompt!r}")
    return replaced


class NewToken:
    """An adversary made of a learned embedding (``tokens.k`` vectors) in place of the
    concept's name."""

    def __init__(self, tokens: SoftTokens, name: str) -> None:
        self.tokens, self.name = tokens, name
        self.placeholder = " ".join([PLACEHOLDER] * tokens.k)

    def encode(self, pipe, prompts: Sequence[str]) -> Conditioning:
        with self.tokens.injected(pipe):
            return encode_conditioning(
                pipe, [replace_name(p, self.name, self.placeholder) for p in prompts]
            )

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.tokens.vectors)

    def state(self) -> dict[str, torch.Tensor]:
        """The vectors (for checkpoints and warm starts)."""
        return self.tokens.vector_state()

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.tokens.load_vector_state(state)

    def text(self, prompt: str) -> str | None:
        return None


@dataclass
class TextualInversionConfig:
    """Args:
    steps: Adam steps over the pairs' batch (the paper: 5000 at batch 16).
    lr: Adam learning rate (the paper: 5e-3, scaled by its batch; 3e-3 here: at 1e-2, judged
        every 50 steps, the embedding drifted off the hazard on the unedited model, 11 of 16
        pairs kept, against 16 of 16 at 3e-3 judged every 25; the erased circle came back as
        often, 11 of 16, at both).
    check_every: steps between the judge's checks when the attack is given one (keep the
        best-judged embedding, stop when every pair succeeds); 0: no checks.
    check_start: judge the starting embedding (the name's own tokens) too, before the first
        step. Without it the first check came after 25 steps, by which the embedding had
        drifted off the character Mira Kestrel on the *unedited* model (3 ‖ 5 of 8 pairs kept,
        ToyWorld seed 0 ‖ 1): the attack failed its own sanity check from a start that drew
        her. On an erased model the start is the erased prompt, so judging it adds nothing an
        honest ASR should not count.
    """

    steps: int = field(default=300, metadata={"help": "Adam steps"})
    lr: float = field(default=0.003, metadata={"help": "Adam learning rate"})
    check_every: int = field(default=25, metadata={"help": "steps between judge checks (0: none)"})
    check_start: bool = field(
        default=True, metadata={"help": "judge the starting embedding too (with a judge)"}
    )

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
        check: Check | None = None,
    ) -> AttackResult:
        import time

        name = target.name_in_prompts or target.concept
        start = time.perf_counter()
        ids = tokenizers(pipe)[0](name, add_special_tokens=False).input_ids
        if not ids:
            raise ConfigError(f"textual inversion: {name!r} has no tokens")
        adversary = NewToken(SoftTokens.from_tokens(pipe, ids), name)
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
            check=check,
            check_every=config.check_every,
            check_start=config.check_start,
        )
        return AttackResult(
            self.name,
            "universal",
            [adversary],
            [losses],
            time.perf_counter() - start,
            dataclasses.asdict(config),
        )
