"""A test-only method in one file: a random low-rank edit of every cross-attention value
projection. It shows what a new method needs: a config dataclass and ``fit``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ace_erasure.erasure import Erasure, ModuleEdit, StageRecord
from ace_erasure.methods.base import check_fields, require
from ace_erasure.models.plumbing import base_linear, cross_attention_layers


@dataclass
class RandomEditConfig:
    """Args:
    rank: rank of each random edit.
    scale: standard deviation of the factors' entries.
    """

    rank: int = field(default=1, metadata={"help": "rank of each edit"})
    scale: float = field(default=0.1, metadata={"help": "std of the factors"})

    def __post_init__(self) -> None:
        check_fields(self)
        require(
            self, [(self.rank >= 1, "rank must be >= 1"), (self.scale > 0, "scale must be > 0")]
        )


class RandomEdit:
    name = "random-edit"
    config_class = RandomEditConfig

    def fit(self, pipe, concepts, config, *, seed, world, progress=None) -> Erasure:
        generator = torch.Generator().manual_seed(seed)
        edits = {}
        for layer, module in cross_attention_layers(pipe.unet):
            out, inp = base_linear(module.to_v).weight.shape
            edits[f"unet.{layer}.to_v"] = ModuleEdit(
                torch.randn(config.rank, inp, generator=generator) * config.scale,
                torch.randn(out, config.rank, generator=generator) * config.scale,
            )
            if progress:
                progress("random", len(edits), len(cross_attention_layers(pipe.unet)))
        return Erasure.create(
            pipe,
            edits,
            concepts=concepts,
            method=self.name,
            config=dataclasses.asdict(config),
            seed=seed,
            stages=[StageRecord("random", 0.0, {"world": world.name})],
        )
