"""SPEED (ICLR'26), from the paper: a null-space-constrained closed-form edit of the
cross-attention **value** projections.

The edit maps the erased keys to their guides (as UCE does) but only within the null space of
the *prior* — keys whose outputs must not move at all: the null text (the start token, so
unconditional generation is exactly unchanged) and the retained concepts' keys, chosen and
enlarged as the paper does:

- influence-based prior filtering: of the retained concepts, keep the ``prior_keep`` whose keys
  the unconstrained edit moves most (the others are barely touched anyway, and every kept
  direction costs erasure capacity);
- directed prior augmentation: add ``augment`` perturbed copies of each kept key, moved along
  the direction the edit pushes it (so the neighbourhood the edit would hit is held too).

With ``N`` an orthonormal basis of the prior's null space, ``G = S N (Nᵀ T N + λ I)⁻¹ Nᵀ``
(``T = Σ k kᵀ``, ``S = Σ (g − k) kᵀ``) and ``G k_prior = 0`` exactly. Many concepts at once are
one solve.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ace_erasure.concepts import Concept
from ace_erasure.erasure import Erasure, StageRecord
from ace_erasure.errors import ConfigError
from ace_erasure.methods.base import Progress, check_fields, require
from ace_erasure.methods.closed_form import (
    concept_keys,
    edits_from,
    last_token_embeddings,
    numeric_rank,
)
from ace_erasure.methods.uce import UceConfig, preserved_keys, uce_edit
from ace_erasure.models.conditioning import PromptEncoder
from ace_erasure.prompts import PromptWorld


@dataclass
class SpeedConfig:
    """Args:
    prior_keep: retained keys kept in the prior after influence filtering (the most moved).
    augment: perturbed copies of each kept prior key (directed augmentation).
    augment_scale: size of those perturbations, relative to the key's norm.
    lamb: absolute ridge λ of the constrained solve.
    rank_tolerance: singular values of the prior below this fraction of the largest are
        treated as zero (the null space keeps those directions free).
    templates: keys from the kind's templates too, not the name alone.
    """

    prior_keep: int = field(default=8, metadata={"help": "retained keys kept in the prior"})
    augment: int = field(default=2, metadata={"help": "augmented copies per prior key"})
    augment_scale: float = field(default=0.1, metadata={"help": "relative perturbation"})
    lamb: float = field(default=0.5, metadata={"help": "absolute ridge λ"})
    rank_tolerance: float = field(default=1e-6, metadata={"help": "prior rank cut-off"})
    templates: bool = field(default=True, metadata={"help": "keys from the kind's templates"})

    def __post_init__(self) -> None:
        check_fields(self)
        require(
            self,
            [
                (self.prior_keep >= 0, "prior_keep must be >= 0"),
                (self.augment >= 0, "augment must be >= 0"),
                (self.augment_scale >= 0, "augment_scale must be >= 0"),
                (self.lamb > 0, "lamb must be > 0"),
                (0 < self.rank_tolerance < 1, "rank_tolerance must be in (0, 1)"),
            ],
        )


def null_space(prior: torch.Tensor, tolerance: float) -> torch.Tensor:
    """(d, r) orthonormal basis of the directions orthogonal to every prior row (n, d)."""
    dim = prior.shape[1]
    if len(prior) == 0:
        return torch.eye(dim, dtype=torch.float64)
    _, s, vh = torch.linalg.svd(prior.double(), full_matrices=True)
    used = int((s > tolerance * s[0]).sum()) if len(s) and float(s[0]) > 0 else 0
    return vh[used:].T.contiguous()


def constrained_edit(
    keys: torch.Tensor, guides: torch.Tensor, basis: torch.Tensor, lamb: float
) -> torch.Tensor:
    """G = S N (Nᵀ T N + λ I)⁻¹ Nᵀ: the ridge edit restricted to the null space ``N``."""
    if basis.shape[1] == 0:
        raise ConfigError("SPEED: the prior spans every direction; nothing can be edited")
    target = keys.T @ keys
    cross = (guides - keys).T @ keys
    reduced = basis.T @ target @ basis + lamb * torch.eye(basis.shape[1], dtype=torch.float64)
    return cross @ basis @ torch.linalg.solve(reduced, basis.T)


class Speed:
    """SPEED (registered as "speed")."""

    name = "speed"
    config_class = SpeedConfig

    @torch.no_grad()
    def fit(
        self,
        pipe,
        concepts: Sequence[Concept],
        config: SpeedConfig,
        *,
        seed: int,
        world: PromptWorld,
        progress: Progress | None = None,
    ) -> Erasure:
        start = time.perf_counter()
        encode = PromptEncoder(pipe)
        keys, guides = concept_keys(pipe, encode, concepts, config.templates)
        retained = preserved_keys(pipe, encode, concepts, world, config.templates)
        free = uce_edit(keys, guides, retained[:0], UceConfig(lamb=config.lamb))
        # influence-based filtering: the retained keys the unconstrained edit moves most
        influence = (retained @ free.T).norm(dim=1) / retained.norm(dim=1).clamp(min=1e-12)
        kept = retained[influence.argsort(descending=True)[: config.prior_keep]]
        # directed augmentation: move each kept key along the edit's push on it
        generator = torch.Generator().manual_seed(seed)
        augmented = []
        for _ in range(config.augment):
            push = kept @ free.T
            noise = torch.randn(kept.shape, generator=generator, dtype=torch.float64)
            direction = torch.nn.functional.normalize(
                push + 0.5 * noise * push.norm(dim=1, keepdim=True), dim=1
            )
            augmented.append(
                kept + config.augment_scale * kept.norm(dim=1, keepdim=True) * direction
            )
        null_text = last_token_embeddings(pipe, encode, [""])
        prior = torch.cat([null_text, kept, *augmented])
        basis = null_space(prior, config.rank_tolerance)
        edit = constrained_edit(keys, guides, basis, config.lamb)
        rank = numeric_rank(edit)
        seconds = time.perf_counter() - start
        return Erasure.create(
            pipe,
            edits_from(pipe, edit, rank, values_only=True),
            concepts=concepts,
            method=self.name,
            config=dataclasses.asdict(config),
            seed=seed,
            stages=[
                StageRecord(
                    "speed",
                    seconds,
                    {"keys": len(keys), "prior": len(prior), "null_space_dim": basis.shape[1]},
                )
            ],
            stats={"rank": rank, "seconds": {"total": seconds}},
        )
