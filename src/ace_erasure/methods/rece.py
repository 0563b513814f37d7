"""RECE — Reliable and Efficient Concept Erasure (Gong et al., ECCV'24), from the paper.

Starts from UCE's closed-form edit and hardens it in a few rounds: each round derives, in
closed form, the embedding that best regenerates the concept's original values through the
*erased* value projections,

    c' = argmin_c Σ_n ‖W'_n c − W_n c*‖² + λ ‖c‖²  =  (Σ W'_nᵀ W'_n + λ I)⁻¹ Σ W'_nᵀ W_n c*,

and erases it too (mapped to the guide, like the concept's own key), then solves UCE's edit
again. With ``W'_n = W_n (I + G)`` and ``A = Σ W_nᵀ W_n`` both sums are d x d.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ace_erasure.concepts import Concept
from ace_erasure.erasure import Erasure, StageRecord
from ace_erasure.methods.base import Progress, check_fields, require
from ace_erasure.methods.closed_form import concept_keys, edits_from, numeric_rank
from ace_erasure.methods.uce import UceConfig, preserved_keys, uce_edit
from ace_erasure.models.conditioning import PromptEncoder
from ace_erasure.models.plumbing import base_linear, cross_attention_layers
from ace_erasure.prompts import PromptWorld


@dataclass
class ReceConfig:
    """Args:
    rounds: adversarial rounds after UCE (the paper: 1–3).
    adversarial_lambda: the regulariser λ of the derived embedding, relative to the mean
        eigenvalue of ``Σ W'ᵀ W'``.
    erase_scale / preserve_scale / lamb / templates: UCE's (see ``UceConfig``).
    """

    rounds: int = field(default=2, metadata={"help": "adversarial rounds"})
    adversarial_lambda: float = field(default=0.1, metadata={"help": "relative λ of c'"})
    erase_scale: float = field(default=1.0, metadata={"help": "weight of erased keys"})
    preserve_scale: float = field(default=1.0, metadata={"help": "weight of preserved keys"})
    lamb: float = field(default=0.5, metadata={"help": "UCE's absolute ridge λ"})
    templates: bool = field(default=True, metadata={"help": "keys from the kind's templates"})

    def __post_init__(self) -> None:
        check_fields(self)
        require(
            self,
            [
                (self.rounds >= 0, "rounds must be >= 0"),
                (self.adversarial_lambda > 0, "adversarial_lambda must be > 0"),
                (self.erase_scale > 0, "erase_scale must be > 0"),
                (self.preserve_scale >= 0, "preserve_scale must be >= 0"),
                (self.lamb > 0, "lamb must be > 0"),
            ],
        )

    def uce(self) -> UceConfig:
        return UceConfig(self.erase_scale, self.preserve_scale, self.lamb, self.templates)


def value_gram(pipe) -> torch.Tensor:
    """A = Σ_n W_nᵀ W_n over every cross-attention value projection (d, d) float64."""
    grams = [
        base_linear(m.to_v).weight.detach().to("cpu", torch.float64)
        for _, m in cross_attention_layers(pipe.unet)
    ]
    return sum(w.T @ w for w in grams)  # type: ignore[return-value]


def adversarial_embeddings(
    edit: torch.Tensor, value_gram: torch.Tensor, keys: torch.Tensor, relative_lambda: float
) -> torch.Tensor:
    """(n, d): for each key c*, the c' whose erased values best match c*'s original values."""
    dim = edit.shape[0]
    mapped = torch.eye(dim, dtype=torch.float64) + edit
    system = mapped.T @ value_gram @ mapped
    lam = relative_lambda * float(torch.trace(system)) / dim
    system = system + lam * torch.eye(dim, dtype=torch.float64)
    rhs = mapped.T @ value_gram @ keys.T
    return torch.linalg.solve(system, rhs).T


class Rece:
    """RECE (registered as "rece")."""

    name = "rece"
    config_class = ReceConfig

    @torch.no_grad()
    def fit(
        self,
        pipe,
        concepts: Sequence[Concept],
        config: ReceConfig,
        *,
        seed: int,
        world: PromptWorld,
        progress: Progress | None = None,
    ) -> Erasure:
        start = time.perf_counter()
        encode = PromptEncoder(pipe)
        keys, guides = concept_keys(pipe, encode, concepts, config.templates)
        preserved = preserved_keys(pipe, encode, concepts, world, config.templates)
        gram = value_gram(pipe)
        uce = config.uce()
        all_keys, all_guides = keys, guides
        edit = uce_edit(all_keys, all_guides, preserved, uce)
        norms = []
        for round_ in range(config.rounds):
            found = adversarial_embeddings(edit, gram, keys, config.adversarial_lambda)
            norms.append(float(found.norm(dim=1).mean() / keys.norm(dim=1).mean()))
            all_keys = torch.cat([all_keys, found])
            all_guides = torch.cat([all_guides, guides])
            edit = uce_edit(all_keys, all_guides, preserved, uce)
            if progress:
                progress("rece rounds", round_ + 1, config.rounds)
        rank = numeric_rank(edit)
        seconds = time.perf_counter() - start
        return Erasure.create(
            pipe,
            edits_from(pipe, edit, rank),
            concepts=concepts,
            method=self.name,
            config=dataclasses.asdict(config),
            seed=seed,
            stages=[
                StageRecord(
                    "rece",
                    seconds,
                    {
                        "keys": len(all_keys),
                        "adversarial_norm_ratio": norms,
                        "preserved": len(preserved),
                    },
                )
            ],
            stats={"rank": rank, "seconds": {"total": seconds}},
        )
