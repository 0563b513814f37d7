"""ToyWorld: a small, trained Stable-Diffusion-architecture model whose concepts we can measure.

``load_pipeline()`` and ``load_judge()`` (the bundled model and its judge) are imported on first
use, so that ``import ace_erasure.toyworld`` stays light (no diffusers import).
"""

from typing import Any

from ace_erasure.toyworld.render import Scene, render, render_batch
from ace_erasure.toyworld.vocab import Vocabulary, vocabulary

__all__ = [
    "Scene",
    "Vocabulary",
    "bundled_dir",
    "load_judge",
    "load_pipeline",
    "render",
    "render_batch",
    "vocabulary",
]

_LAZY = {"bundled_dir", "load_judge", "load_pipeline"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from ace_erasure.toyworld import assets

        return getattr(assets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
