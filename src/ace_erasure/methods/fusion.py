"""Closed-form fusion of separately made erasures into one (MACE's fusion, shared by ACE and
MACE): for every edited cross-attention projection, the single edit that reproduces each
erasure on its own concepts' prompts while keeping a preserve set unchanged
(:func:`ace_erasure.linalg.fuse_deltas`), truncated to a low rank.

The fused erasure is one LoRA: applying it costs what one erasure costs, whatever the number
of erasures fused (instead of one adapter per erasure).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from ace_erasure.concepts import prompt_pairs
from ace_erasure.erasure import Erasure, ModuleEdit, StageRecord
from ace_erasure.errors import ConfigError
from ace_erasure.linalg import fuse_deltas, top_singular
from ace_erasure.models.conditioning import PromptEncoder
from ace_erasure.prompts import PromptWorld, general_prompts, related_pairs


def _gram(embeds: torch.Tensor) -> torch.Tensor:
    """Mean outer product of every token embedding: (d, d) float64."""
    rows = embeds.reshape(-1, embeds.shape[-1]).double()
    return rows.T @ rows / len(rows)


def combine(
    pipe,
    erasures: Sequence[Erasure],
    *,
    world: PromptWorld,
    preserve_weight: float = 1.0,
    ridge: float = 0.01,
    rank: int | None = None,
    rank_energy: float = 0.999,
    max_rank: int = 64,
    seed: int = 0,
) -> Erasure:
    """One erasure that does what ``erasures`` (made on ``pipe``'s base model) do, each on its
    own concepts. Only text-conditioned modules (cross-attention keys and values) can be fused:
    an erasure that edits anything else is refused."""
    if len(erasures) < 2:
        raise ConfigError("fusion needs at least two erasures")
    from ace_erasure.models.plumbing import cross_attention_layers

    text_modules = {
        f"unet.{name}.{proj}"
        for name, _ in cross_attention_layers(pipe.unet)
        for proj in ("to_k", "to_v")
    }
    for erasure in erasures:
        erasure.check_compatible(pipe)
        others = sorted(set(erasure.edits) - text_modules)
        if others:
            raise ConfigError(
                f"erasure of {', '.join(c.name for c in erasure.concepts)} edits {others[0]}, "
                "which is not a cross-attention key or value: it cannot be fused in closed form "
                "(erase the concepts together instead, or make each erasure without it, "
                "e.g. --set finetune_unet_rank=0 for ACE stage 2)"
            )
    start = time.perf_counter()
    encode = PromptEncoder(pipe)
    concepts = [c for e in erasures for c in e.concepts]
    names = [c.name.lower() for c in concepts]
    if len(set(names)) != len(names):
        raise ConfigError("two erasures erase the same concept: fuse distinct concepts")
    grams = [_gram(encode([p.text for c in e.concepts for p in prompt_pairs(c)])) for e in erasures]
    related = related_pairs(concepts, world)
    keep = [p.text for p in related] + general_prompts(concepts, world, 200, seed)
    preserve_gram = _gram(encode(keep)) if keep else torch.zeros_like(grams[0])
    keys = sorted(set().union(*(e.edits for e in erasures)))
    generator = torch.Generator().manual_seed(seed)
    fused: dict[str, torch.Tensor] = {}
    for key in keys:
        deltas = []
        for erasure in erasures:
            if key in erasure.edits:
                deltas.append(erasure.delta(key).double())
            else:
                out, dim = next(e.edits[key].shape for e in erasures if key in e.edits)
                deltas.append(torch.zeros(out, dim, dtype=torch.float64))
        fused[key] = fuse_deltas(deltas, grams, preserve_gram, preserve_weight, ridge)
    tops = {
        key: top_singular(delta, min(rank or max_rank, min(delta.shape)), generator)
        for key, delta in fused.items()
    }
    chosen = rank or min(max_rank, max(t.rank_for_energy(rank_energy) for t in tops.values()))
    edits = {}
    for key, top in tops.items():
        up, down = top.factors(chosen)
        edits[key] = ModuleEdit(down, up)
    record = StageRecord(
        "fusion",
        time.perf_counter() - start,
        {
            "fused": [
                {"method": e.method, "concepts": [c.name for c in e.concepts]} for e in erasures
            ],
            "preserve_prompts": len(keep),
            "rank": chosen,
        },
    )
    return Erasure.create(
        pipe,
        edits,
        concepts=concepts,
        method="fusion",
        config={
            "preserve_weight": preserve_weight,
            "ridge": ridge,
            "rank": rank,
            "rank_energy": rank_energy,
            "max_rank": max_rank,
        },
        seed=seed,
        stages=[record],
        stats={"rank": chosen, "seconds": {"total": record.seconds}},
    )
