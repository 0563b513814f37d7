"""ACE stage 1's closed-form solve: one ridge regression for every key/value projection,
truncated to a low rank (see :mod:`ace_erasure.linalg` for the maths)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ace_erasure.linalg import EditSolution, RidgeEditFitter, TopSingular, top_singular
from ace_erasure.methods.ace.config import AceConfig
from ace_erasure.methods.ace.preserve import PreserveSet


@dataclass
class Solved:
    """The shared edit ``G``, the preserve shares it was solved with, and diagnostics."""

    solution: EditSolution
    share: torch.Tensor  # the related concepts' shares of their preserve group
    own_change: float  # ‖G t‖² / ‖t‖² over the targets (how much the edit moves the concept)
    first_change: torch.Tensor  # the same for each related concept, after the first solve


def solve(fitter: RidgeEditFitter, preserve: PreserveSet, config: AceConfig) -> Solved:
    """Solve the ridge edit; with ``preserve_rounds``, re-solve with the related concepts that
    the edit changes most given more of their group's mass (multiplicative weights on the
    worst-case specificity; see ``AceConfig.preserve_rounds``)."""
    share = preserve.initial_share
    solution = fitter.solve(config.preserve_weight, config.ridge, preserve.gram(share))
    target_gram = fitter.statistics()[0]
    own_change = float(((solution.edit @ target_gram) * solution.edit).sum() / target_gram.trace())
    first_change = preserve.change(solution.edit)
    for _ in range(config.preserve_rounds if len(preserve.names) > 1 else 0):
        share = share * preserve.change(solution.edit).clamp(min=1e-300)
        share = share / share.sum()
        solution = fitter.solve(config.preserve_weight, config.ridge, preserve.gram(share))
    return Solved(solution, share, own_change, first_change)


def truncate(
    deltas: dict[str, torch.Tensor], config: AceConfig, seed: int
) -> tuple[dict[str, TopSingular], int]:
    """The leading singular triplets of every edit (one seeded randomised SVD each: see
    :func:`~ace_erasure.linalg.top_singular`) and the rank: ``config.rank``, or the smallest
    rank keeping ``rank_energy`` of every edit (capped at ``max_rank``)."""
    generator = torch.Generator().manual_seed(seed)
    tops = {
        key: top_singular(delta, min(config.rank or config.max_rank, min(delta.shape)), generator)
        for key, delta in deltas.items()
    }
    rank = config.rank or min(
        config.max_rank, max(top.rank_for_energy(config.rank_energy) for top in tops.values())
    )
    return tops, rank


def projection_keys(layers: Sequence[tuple[str, object]]) -> list[str]:
    """``<layer>.to_k`` and ``<layer>.to_v`` for every cross-attention layer, in order."""
    return [f"{name}.{proj}" for name, _ in layers for proj in ("to_k", "to_v")]
