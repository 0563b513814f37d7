"""A hard-prompt attack (PEZ, Wen et al. 2023; the white-box cousin of Ring-A-Bell): the
soft-prompt objective, with the prefix projected onto real vocabulary tokens at every step,
so that what it finds is plain text that works in any pipeline.

Each step runs the model on the *projected* prefix (the nearest vocabulary token of each
continuous vector, by cosine in the first text encoder's input embeddings) and applies the
gradient to the continuous vectors (straight-through). The result is the projected token ids
and their text; the attacked images are generated from that **text** re-tokenised, as any user
would type it, so the ASR reported is that of a plain-text prompt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ace_erasure.attacks.base import (
    AttackResult,
    AttackTarget,
    BestJudged,
    Check,
    conditioning_ignored,
    denoising_loss,
    fitted_guidance,
    run_per_seed_or_universal,
    should_check,
)
from ace_erasure.methods.base import check_fields, require
from ace_erasure.models.conditioning import Conditioning, encode_conditioning
from ace_erasure.models.embeddings import SoftTokens
from ace_erasure.models.plumbing import text_encoders, tokenizers


class TextPrefix:
    """An adversary that is plain text put before the prompt."""

    def __init__(self, prefix: str, token_ids: Sequence[int] = ()) -> None:
        self.prefix, self.token_ids = prefix, list(token_ids)

    def encode(self, pipe, prompts: Sequence[str]) -> Conditioning:
        return encode_conditioning(pipe, [self.text(p) for p in prompts])

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def text(self, prompt: str) -> str:
        return f"{self.prefix} {prompt}".strip()


@dataclass
class HardPromptConfig:
    """Args:
    k: vocabulary tokens before the prompt.
    steps: optimisation steps (PEZ: hundreds; the soft-prompt attack's 40 are too few for a
        projected search).
    lr: Adam learning rate of the continuous vectors.
    universal: one prefix for all pairs (default: a plain-text attack prompt is found once and
        reused, as Ring-A-Bell's are) instead of one per pair.
    check_every: steps between the judge's checks when the attack is given one (the
        best-by-loss prefix so far is judged; the best-judged one is kept, and the search stops
        when every pair succeeds); 0: no checks.
    """

    k: int = field(default=5, metadata={"help": "vocabulary tokens"})
    steps: int = field(default=100, metadata={"help": "optimisation steps"})
    lr: float = field(default=0.1, metadata={"help": "Adam learning rate"})
    universal: bool = field(default=True, metadata={"help": "one prefix for all pairs"})
    check_every: int = field(default=20, metadata={"help": "steps between judge checks (0: none)"})

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
            ],
        )


def _searchable(pipe) -> torch.Tensor:
    """(vocab, d) normalised input embeddings of the tokens a prompt can hold (no BOS/EOS)."""
    table = text_encoders(pipe)[0].get_input_embeddings().weight.detach().float()
    tokenizer = tokenizers(pipe)[0]
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    normalised = torch.nn.functional.normalize(table, dim=-1)
    for token in special:
        if token is not None and token < len(normalised):
            normalised[token] = 0
    return normalised


class HardPromptAttack:
    name = "hard"
    config_class = HardPromptConfig

    def run(
        self,
        pipe,
        target: AttackTarget,
        config: HardPromptConfig,
        *,
        seed: int,
        progress=None,
        check: Check | None = None,
    ) -> AttackResult:
        table = _searchable(pipe)
        tokenizer = tokenizers(pipe)[0]

        def make(part: AttackTarget, part_seed: int):
            generator = torch.Generator().manual_seed(part_seed)
            start = SoftTokens.random_vocabulary(pipe, config.k, generator)
            free = torch.nn.Parameter(start.vectors[0].detach().clone())
            optimizer = torch.optim.Adam([free], lr=config.lr)
            losses: list[float] = []
            best_ids, best_loss = None, float("inf")
            best = BestJudged()
            judged: dict[tuple[int, ...], float] = {}
            for step in range(config.steps):
                ids = (torch.nn.functional.normalize(free.detach(), dim=-1) @ table.T).argmax(-1)
                projected = SoftTokens.from_tokens(pipe, ids.tolist())
                loss = denoising_loss(
                    pipe,
                    _Injected(projected),
                    part.prompts,
                    part.latents,
                    generator,
                    guidance=fitted_guidance(config, part),
                )
                loss.backward()
                optimizer.zero_grad(set_to_none=True)
                free.grad = projected.vectors[0].grad  # straight-through to the free vectors
                ignored = conditioning_ignored([free])
                optimizer.step()
                losses.append(round(float(loss.detach()), 6))
                if losses[-1] < best_loss:
                    best_ids, best_loss = ids.tolist(), losses[-1]
                if progress:
                    progress("hard-prompt attack", step + 1, config.steps, {"loss": losses[-1]})
                if check is not None and (
                    ignored or should_check(config.check_every, step, config.steps)
                ):
                    # the judge's choice: the best-by-loss prefix so far, kept if it scores best
                    candidate = best_ids if best_ids is not None else ids.tolist()
                    if tuple(candidate) not in judged:
                        text = tokenizer.decode(candidate).strip()
                        judged[tuple(candidate)] = float(check(TextPrefix(text, candidate), part))
                    if best.offer(candidate, judged[tuple(candidate)]):
                        break
                if ignored:  # the model does not see the prefix: nothing to search
                    break
            if best.state is not None:
                best_ids = best.state
            if best_ids is None:
                best_ids = (
                    (torch.nn.functional.normalize(free.detach(), dim=-1) @ table.T)
                    .argmax(-1)
                    .tolist()
                )
            return TextPrefix(tokenizer.decode(best_ids).strip(), best_ids), losses

        return run_per_seed_or_universal(
            self.name,
            target,
            make,
            universal=config.universal,
            config=dataclasses.asdict(config),
            seed=seed,
        )


class _Injected:
    """Soft tokens as an adversary (the projected prefix during the search)."""

    def __init__(self, tokens: SoftTokens) -> None:
        self.tokens = tokens

    def encode(self, pipe, prompts: Sequence[str]) -> Conditioning:
        with self.tokens.injected(pipe):
            return encode_conditioning(pipe, [self.tokens.prompt(p) for p in prompts])

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.tokens.vectors)

    def text(self, prompt: str) -> str | None:
        return None
