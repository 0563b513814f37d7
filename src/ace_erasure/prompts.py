"""Prompt sets an erasure preserves: the concepts' own preserve lists and related concepts
(:func:`related_pairs`), and a general caption set (:func:`general_prompts`: ToyWorld's caption
grammar on ToyWorld, a shipped caption list otherwise)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import numpy as np

from ace_erasure.concepts import Concept, PromptPair, prompt_pairs


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


def _erased_names(concepts: Sequence[Concept]) -> list[str]:
    return [name for c in concepts for name in c.names]


def related_pairs(concepts: Sequence[Concept], *, toyworld: bool) -> list[PromptPair]:
    """Prompts naming the concepts to keep — each concept's ``preserve`` list and, on ToyWorld,
    the other members of its family — in the concept's own templates, with their spans located
    (so their name tokens can be weighted like the targets'). Erased names are never kept."""
    erased = {n.lower() for n in _erased_names(concepts)}
    pairs: list[PromptPair] = []
    seen: set[str] = set()
    for concept in concepts:
        related = list(concept.preserve) + (toyworld_related(concept) if toyworld else [])
        for name in related:
            if name.lower() in erased or name.lower() in seen:
                continue
            seen.add(name.lower())
            keep = Concept(
                name, kind=concept.kind, anchor="" if concept.kind != "celebrity" else None
            )
            pairs.extend(
                p for p in prompt_pairs(keep, names=[name]) if not _mentions(p.text, list(erased))
            )
    return pairs


def general_prompts(
    concepts: Sequence[Concept], *, toyworld: bool, n_general: int = 200, seed: int = 0
) -> list[str]:
    """General captions to keep (ToyWorld's grammar with canonical names, or the shipped list),
    without any that mention an erased name or synonym."""
    erased = _erased_names(concepts)
    prompts = toyworld_captions(n_general, seed) if toyworld else general_captions()
    return list(dict.fromkeys(p for p in prompts if not _mentions(p, erased)))
