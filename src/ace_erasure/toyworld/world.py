"""ToyWorld as a prompt world (:class:`ace_erasure.prompts.PromptWorld`).

Names resolve through ToyWorld's vocabulary (kind from the family, canonical name from any
synonym), words the model never saw are refused, a concept's related concepts are the other
members of its family, general captions come from the caption grammar, and the judge and the
evaluation suites are ToyWorld's own.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from ace_erasure.concepts import Concept
from ace_erasure.errors import ConceptError
from ace_erasure.evaluation.suites import Suite
from ace_erasure.prompts import Sampling
from ace_erasure.toyworld.assets import bundled_dir, load_judge, toyworld_folder_of
from ace_erasure.toyworld.captions import CaptionConfig, caption, unknown_words
from ace_erasure.toyworld.judge import Judge, sample_scene
from ace_erasure.toyworld.suites import concept_suite
from ace_erasure.toyworld.vocab import vocabulary

KINDS = {
    "shapes": "object",
    "colours": "object",
    "styles": "style",
    "characters": "celebrity",
    "hazard": "explicit",
}
SAMPLING = Sampling(steps=20, guidance=5.0)  # the recipe ToyWorld's quality was measured with


def toyworld_captions(n: int, seed: int) -> list[str]:
    """``n`` ToyWorld training-style captions with canonical names only (fixed seed)."""
    vocab = vocabulary()
    rng = np.random.default_rng(seed)
    config = CaptionConfig(p_synonym=0.0, p_drop_colour=0.1)
    out = []
    for _ in range(n):
        scene = sample_scene(rng, vocab, (0.64, 0.26, 0.10, 0.0, 0.0), 0.5)
        out.append(caption(scene, rng, config, vocab))
    return out


class ToyWorld:
    """The prompt world of one ToyWorld folder (bundled by default)."""

    name = "ToyWorld"
    sampling = SAMPLING

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else bundled_dir()

    @classmethod
    def of_pipeline(cls, pipe) -> ToyWorld | None:
        """The world of ``pipe`` when it was loaded from a ToyWorld folder, else None."""
        path = getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "")
        folder = toyworld_folder_of(path) if path else None
        return cls(folder) if folder is not None else None

    def resolve(self, item: Concept | str) -> Concept:
        vocab = vocabulary()
        if isinstance(item, str):
            family = vocab.family_of(item) or vocab.family_of(vocab.canonical(item) or "")
            kind = KINDS.get(family or "", "object")
            concept = Concept(vocab.canonical(item) or item, kind=kind)  # type: ignore[arg-type]
        else:
            concept = item
        for name in (*concept.names, *concept.preserve):
            unknown = unknown_words(name)
            if unknown:
                known = ", ".join(
                    [*vocab.shapes, *vocab.style_names, *vocab.character_names, vocab.hazard_name]
                )
                raise ConceptError(
                    f"{name!r} is not in ToyWorld's vocabulary (unknown: {', '.join(unknown)}); "
                    f"known concepts: {known}"
                )
        return concept

    def related(self, concept: Concept) -> list[str]:
        vocab = vocabulary()
        members = {
            "shapes": vocab.shapes,
            "colours": vocab.colour_names,
            "styles": vocab.style_names,
            "characters": vocab.character_names,
        }.get(vocab.family_of(concept.name) or "", ())
        return [m for m in members if m.lower() != concept.name.lower()]

    def attributes(self, concept: Concept) -> list[str]:
        """A shape's colours (the other families have no attribute words)."""
        vocab = vocabulary()
        return list(vocab.colour_names) if vocab.family_of(concept.name) == "shapes" else []

    def general_captions(self, n: int, seed: int) -> list[str]:
        return toyworld_captions(n, seed)

    def unknown_words(self, prompt: str) -> list[str]:
        return unknown_words(prompt)

    @cached_property
    def _judge(self) -> Judge:
        return load_judge(self.folder)

    def judge(self) -> Judge:
        return self._judge

    def suite(self, concept: Concept, n: int, n_other: int, seed: int) -> Suite:
        return concept_suite(concept.name, n, n_other, seed)

    def family_of(self, concept: Concept | str) -> str | None:
        """ToyWorld's family of a concept ("shapes", "styles", ...), or None."""
        return vocabulary().family_of(concept if isinstance(concept, str) else concept.name)
