"""The Python entry points: ``erase``, ``apply``, ``generate``, ``load_pipeline``.

This is the composition root of the library: it finds the method by name in the registry
(:mod:`ace_erasure.methods`), the prompt world of the pipeline (:mod:`ace_erasure.worlds`), and
builds the method's config — it names no method and no world.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ace_erasure.concepts import Concept, as_concepts
from ace_erasure.erasure import Erasure
from ace_erasure.methods import DEFAULT_METHOD, build_config, get_method
from ace_erasure.methods.base import Progress
from ace_erasure.models import loading
from ace_erasure.prompts import PromptWorld
from ace_erasure.worlds import load_pipeline, world_for

__all__ = ["apply", "combine", "erase", "generate", "load_pipeline", "resolve_concepts"]


def resolve_concepts(items: Iterable[Concept | str], world: PromptWorld) -> list[Concept]:
    """Concepts from ``Concept`` objects or names, resolved by ``world`` (on ToyWorld a name
    gets its kind from the vocabulary, and unknown words are refused); duplicates and an empty
    list are errors."""
    return as_concepts([world.resolve(item) for item in items])


def erase(
    pipe,
    concepts: Iterable[Concept | str],
    method: str | None = None,
    config: Any = None,
    seed: int = 0,
    progress: Progress | None = None,
    *,
    world: PromptWorld | None = None,
) -> Erasure:
    """Erase ``concepts`` from ``pipe`` (not modified) and return the :class:`Erasure`.

    ``concepts`` are :class:`Concept` objects or plain names (on ToyWorld a name's kind comes
    from the vocabulary; elsewhere it defaults to "object"). ``method`` is a registered method's
    name (None: the library's default, ACE); ``config`` is the method's config dataclass or a
    dict of its fields (None: the method's defaults).
    ``world`` defaults to the pipeline's own (ToyWorld for a ToyWorld model, else generic).
    """
    chosen = get_method(method or DEFAULT_METHOD)
    options = build_config(chosen, config)
    world = world or world_for(pipe)
    resolved = resolve_concepts(concepts, world)
    return chosen.fit(pipe, resolved, options, seed=seed, world=world, progress=progress)


def apply(erasure: Erasure, pipe, scale: float = 1.0, *, fuse: bool = False, force: bool = False):
    """Apply ``erasure`` the way its method means it to be used at inference: a LoRA adapter
    (``fuse=True``: merged into the weights, faster to sample, equal up to rounding) unless the
    method has its own way. Returns the handle whose ``remove()`` (or a ``with`` block's end)
    restores the pipeline."""
    try:
        method = get_method(erasure.method)
    except Exception:  # an erasure of a method this installation does not have: its LoRA
        method = None
    apply_method = getattr(method, "apply", None)
    if apply_method is not None:
        return apply_method(erasure, pipe, scale, fuse=fuse, force=force)
    if fuse:
        return erasure.fuse(pipe, scale, force=force)
    return erasure.apply(pipe, scale, force=force)


def generate(
    pipe,
    prompts: Sequence[str],
    *,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    **kwargs: Any,
):
    """One image per prompt (image ``i`` seeded with ``seed + i``); steps and guidance default
    to the pipeline's world (ToyWorld: 20 and 5; otherwise 30 and 7.5)."""
    sampling = world_for(pipe).sampling
    return loading.generate(
        pipe,
        prompts,
        seed=seed,
        steps=steps or sampling.steps,
        guidance=sampling.guidance if guidance is None else guidance,
        **kwargs,
    )


def combine(pipe, erasures: Sequence[Erasure], *, world: PromptWorld | None = None, **options):
    """Fuse separately made erasures of ``pipe``'s base model into one, in closed form
    (:func:`ace_erasure.methods.fusion.combine`; ``options``: preserve_weight, ridge, rank)."""
    from ace_erasure.methods.fusion import combine as fuse_erasures

    return fuse_erasures(pipe, erasures, world=world or world_for(pipe), **options)


def load_erasure(path: str | Path) -> Erasure:
    """Read an erasure folder (see :meth:`Erasure.load`)."""
    return Erasure.load(path)
