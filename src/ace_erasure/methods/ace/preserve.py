"""ACE's preserve set: what an edit must keep, as d x d statistics.

Two groups of equal mass: the *related* concepts (each concept's ``preserve`` list and the
world's related concepts, in the concept's templates) with their name tokens weighted like the
targets' (the few rows that tell "triangle" from "diamond" must not drown in ~70 padding rows),
and general captions with every token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ace_erasure.concepts import PromptPair
from ace_erasure.methods.ace.config import AceConfig
from ace_erasure.methods.ace.targets import token_weights
from ace_erasure.models.plumbing import token_span


def _named(pair: PromptPair) -> str:
    """The name a related-concept prompt names (its text between ``before`` and ``through``)."""
    return pair.through[len(pair.before) :].strip().lower()


@dataclass
class PreserveSet:
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
    ) -> PreserveSet:
        sums: dict[str, torch.Tensor] = {}
        mass: dict[str, float] = {}
        ids: dict[str, list[int]] = {}
        for i, pair in enumerate(related):
            span = token_span(tokenizer, pair.before, pair.through)
            rows = embeds[i, span.start :].double()
            weights = token_weights(len(rows), span.stop - span.start, config.suffix_weight)
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
