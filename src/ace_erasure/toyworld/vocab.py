"""ToyWorld's vocabulary: the concepts the bundled model knows (``data/vocabulary.yaml``)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources

import yaml

FAMILIES = ("shapes", "colours", "styles", "characters", "hazard")


@dataclass(frozen=True)
class CharacterLook:
    """How the renderer draws a character's face emblem (fixed per character)."""

    head_shape: str
    head_rgb: tuple[int, int, int]
    eyes: str
    mouth: str
    accessory: str
    accessory_rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Vocabulary:
    """ToyWorld's concepts by family, with their synonyms / nicknames / indirect phrasings.

    ``synonyms[name]`` lists the other words for a shape, style or character; for the hazard,
    ``hazard_named`` holds phrasings that name it and ``hazard_indirect`` those that never do.
    """

    shapes: tuple[str, ...]
    colours: dict[str, tuple[int, int, int]]
    styles: dict[str, str]  # artist name -> rendering
    characters: dict[str, CharacterLook]
    synonyms: dict[str, tuple[str, ...]]
    hazard_named: tuple[str, ...]
    hazard_indirect: tuple[str, ...]
    hazard_name: str = "hazard"
    renderings: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "renderings", tuple(self.styles.values()))

    @property
    def colour_names(self) -> tuple[str, ...]:
        return tuple(self.colours)

    @property
    def style_names(self) -> tuple[str, ...]:
        return tuple(self.styles)

    @property
    def character_names(self) -> tuple[str, ...]:
        return tuple(self.characters)

    def family_of(self, concept: str) -> str | None:
        """The family ('shapes', 'colours', ...) of a canonical concept name, or None."""
        key = concept.strip().lower()
        for family, names in (
            ("shapes", self.shapes),
            ("colours", self.colour_names),
            ("styles", self.style_names),
            ("characters", self.character_names),
            ("hazard", (self.hazard_name,)),
        ):
            if key in (n.lower() for n in names):
                return family
        return None

    def canonical(self, word: str) -> str | None:
        """The canonical concept name for a name or synonym (case-insensitive), or None."""
        key = word.strip().lower()
        for name in (*self.shapes, *self.colours, *self.styles, *self.characters):
            if key == name.lower() or key in (s.lower() for s in self.synonyms.get(name, ())):
                return name
        if key == self.hazard_name:
            return self.hazard_name
        return None


def split_words(text: str) -> list[str]:
    """Lower-case words of a prompt, without punctuation ("Kess's" -> ["kess", "s"])."""
    return re.findall(r"[a-z0-9]+", text.lower())


def _rgb(values: list[int]) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in values)
    return (r, g, b)


@functools.cache
def vocabulary() -> Vocabulary:
    """The vocabulary of the bundled ToyWorld model (cached; read once from the package data)."""
    text = resources.files("ace_erasure.toyworld").joinpath("data/vocabulary.yaml").read_text()
    raw = yaml.safe_load(text)
    synonyms: dict[str, tuple[str, ...]] = {}
    for family in ("shapes", "styles", "characters"):
        for name, spec in raw[family].items():
            synonyms[name] = tuple(spec.get("synonyms", ()))
    characters = {
        name: CharacterLook(
            head_shape=spec["head"]["shape"],
            head_rgb=_rgb(spec["head"]["rgb"]),
            eyes=spec["eyes"],
            mouth=spec["mouth"],
            accessory=spec["accessory"]["kind"],
            accessory_rgb=_rgb(spec["accessory"]["rgb"]),
        )
        for name, spec in raw["characters"].items()
    }
    ((hazard_name, hazard),) = raw["hazard"].items()
    return Vocabulary(
        shapes=tuple(raw["shapes"]),
        colours={name: _rgb(spec["rgb"]) for name, spec in raw["colours"].items()},
        styles={name: spec["rendering"] for name, spec in raw["styles"].items()},
        characters=characters,
        synonyms=synonyms,
        hazard_named=tuple(hazard["named"]),
        hazard_indirect=tuple(hazard["indirect"]),
        hazard_name=hazard_name,
    )
