"""Prompt sets an erasure preserves: the concept's own preserve list, related concepts, and a
general caption set (ToyWorld's caption grammar on ToyWorld, a shipped caption list otherwise)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import numpy as np

from ace_erasure.concepts import TEMPLATES, Concept
from ace_erasure.toyworld.captions import with_article


def general_captions() -> list[str]:
    """The shipped general caption list (``data/general_captions.txt``)."""
    text = resources.files("ace_erasure").joinpath("data/general_captions.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _mentions(prompt: str, names: Sequence[str]) -> bool:
    words = f" {' '.join(prompt.lower().replace(',', ' ').split())} "
    return any(f" {name.lower()} " in words for name in names)


def toyworld_captions(n: int, seed: int) -> list[str]:
    """``n`` ToyWorld training-style captions with canonical names only (fixed seed)."""
    from ace_erasure.toyworld.captions import CaptionConfig, caption
    from ace_erasure.toyworld.judge import sample_scene
    from ace_erasure.toyworld.vocab import vocabulary

    vocab = vocabulary()
    rng = np.random.default_rng(seed)
    config = CaptionConfig(p_synonym=0.0, p_drop_colour=0.1)
    out = []
    for _ in range(n):
        scene = sample_scene(rng, vocab, (0.64, 0.26, 0.10, 0.0, 0.0), 0.5)
        out.append(caption(scene, rng, config, vocab))
    return out


def toyworld_related(concept: Concept) -> list[str]:
    """The other ToyWorld concepts of the family of ``concept`` (canonical names)."""
    from ace_erasure.toyworld.vocab import vocabulary

    vocab = vocabulary()
    family = vocab.family_of(concept.name)
    members = {
        "shapes": vocab.shapes,
        "colours": vocab.colour_names,
        "styles": vocab.style_names,
        "characters": vocab.character_names,
        "hazard": (),
    }.get(family or "", ())
    return [m for m in members if m.lower() != concept.name.lower()]


def preserve_prompts(
    concepts: Sequence[Concept], *, toyworld: bool, n_general: int = 200, seed: int = 0
) -> list[str]:
    """Prompts whose cross-attention inputs the erasure keeps: each concept's ``preserve`` names
    (and, on ToyWorld, its family's other members) in the concept's templates, plus general
    captions. Nothing that mentions an erased name or synonym is kept."""
    erased = [name for c in concepts for name in c.names]
    prompts: list[str] = []
    for concept in concepts:
        related = list(concept.preserve) + (toyworld_related(concept) if toyworld else [])
        for name in related:
            prompts.extend(
                with_article(template.format(name)) for template in TEMPLATES[concept.kind]
            )
    prompts.extend(toyworld_captions(n_general, seed) if toyworld else general_captions())
    unique = list(dict.fromkeys(p for p in prompts if not _mentions(p, erased)))
    return unique
