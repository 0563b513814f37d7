"""Which prompt world a pipeline belongs to, and the default model: ToyWorld's registration.

This is the one module outside ``toyworld/`` (besides the CLI) that imports ToyWorld: it
registers ToyWorld as a world (a pipeline loaded from a ToyWorld folder gets ToyWorld's
vocabulary, families, judge and sampling defaults) and makes the bundled ToyWorld the model of
``load_pipeline()`` without arguments. Other worlds plug in with :func:`register_world`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ace_erasure.models import loading
from ace_erasure.prompts import GenericWorld, PromptWorld

WorldFinder = Callable[[object], PromptWorld | None]
_FINDERS: list[WorldFinder] = []


def register_world(finder: WorldFinder) -> None:
    """Add ``finder(pipe) -> PromptWorld | None``; later registrations are asked first."""
    _FINDERS.insert(0, finder)


def _toyworld(pipe) -> PromptWorld | None:
    from ace_erasure.toyworld.world import ToyWorld

    return ToyWorld.of_pipeline(pipe)


register_world(_toyworld)


def world_for(pipe) -> PromptWorld:
    """The world of ``pipe``: the first registered world that claims it, else generic."""
    for finder in _FINDERS:
        world = finder(pipe)
        if world is not None:
            return world
    return GenericWorld()


def resolve_model(model: str | Path | None) -> str:
    """What ``DiffusionPipeline.from_pretrained`` should load: ``None`` is the bundled
    ToyWorld, a ToyWorld folder its ``model/`` subfolder, anything else as
    :func:`ace_erasure.models.loading.resolve_model` says."""
    from ace_erasure.toyworld.assets import bundled_dir, is_toyworld_folder

    folder = bundled_dir() if model is None else Path(model).expanduser()
    if folder.exists() and is_toyworld_folder(folder):
        return str(folder / "model")
    return loading.resolve_model(str(model) if model is not None else str(folder))


def load_pipeline(
    model: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
):
    """Load a text-to-image pipeline; ``None`` loads the bundled ToyWorld model. ``device`` and
    ``dtype`` take names too ("auto", "cuda", "float16"; see ``models.loading``)."""
    return loading.load_pipeline(resolve_model(model), device=device, dtype=dtype)
