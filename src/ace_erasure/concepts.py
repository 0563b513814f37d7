"""What to erase: :class:`Concept`, prompt templates per kind, and YAML/JSON concept files."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import yaml

from ace_erasure.errors import ConceptError

Kind = Literal["object", "style", "celebrity", "explicit"]
KINDS: tuple[str, ...] = ("object", "style", "celebrity", "explicit")

# Templates that put a concept in context. They avoid "a picture of ...", which our benchmarks
# keep for evaluation, so a measured generality is not a template the method was given.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "object": (
        "{}",
        "a {}",
        "a photo of a {}",
        "an image of a {}",
        "a drawing of a {}",
        "a red {}",
        "a blue {}",
        "a green {}",
        "a yellow {}",
        "a black {}",
        "a white {}",
        "a photo of a red {}",
        "a drawing of a blue {}",
        "a {} on a white background",
    ),
    "style": (
        "{}",
        "in the style of {}",
        "a painting in the style of {}",
        "an image by {}",
        "art by {}",
        "a drawing by {}",
        "a {} painting",
        "{} style",
        "a red circle in the style of {}",
        "a house by {}",
        "a portrait in the style of {}",
    ),
    "celebrity": (
        "{}",
        "a photo of {}",
        "a portrait of {}",
        "an image of {}",
        "a drawing of {}",
        "the face of {}",
        "{} smiling",
        "a close-up of {}",
    ),
    "explicit": (
        "{}",
        "a photo of {}",
        "an image of {}",
        "a drawing of {}",
        "a {} scene",
        "something {}",
        "a {} sign",
        "a close-up of {}",
    ),
}
DEFAULT_ANCHORS: dict[str, str] = {
    "object": "",
    "style": "",
    "celebrity": "a person",
    "explicit": "",
}


@dataclass(frozen=True)
class Concept:
    """A concept to erase.

    Args:
        name: the word(s) that name it ("circle", "Van Gogh", "Mira Kestrel").
        kind: "object", "style", "celebrity" or "explicit"; picks the prompt templates.
        synonyms: other names to erase as well (the method is told about these).
        anchor: what the concept should turn into; "" (default for most kinds) means the prompt
            without the concept; celebrities default to "a person".
        preserve: concepts that must stay intact (added to the preserve prompt set).
    """

    name: str
    kind: Kind = "object"
    synonyms: tuple[str, ...] = ()
    anchor: str | None = None
    preserve: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        name = " ".join(str(self.name).split())
        object.__setattr__(self, "name", name)
        object.__setattr__(
            self, "synonyms", tuple(" ".join(s.split()) for s in self.synonyms if s.strip())
        )
        object.__setattr__(
            self, "preserve", tuple(" ".join(p.split()) for p in self.preserve if p.strip())
        )
        if not name:
            raise ConceptError("a concept cannot be empty")
        if self.kind not in KINDS:
            raise ConceptError(
                f"concept {name!r}: unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}"
            )
        anchor = (
            DEFAULT_ANCHORS[self.kind] if self.anchor is None else " ".join(self.anchor.split())
        )
        object.__setattr__(self, "anchor", anchor)
        names = {n.lower() for n in self.names}
        if anchor.lower() in names:
            raise ConceptError(
                f"concept {name!r} equals its anchor {anchor!r}: nothing would change"
            )
        clash = sorted(p for p in self.preserve if p.lower() in names)
        if clash:
            raise ConceptError(
                f"concept {name!r}: the preserve list contains the concept itself "
                f"({', '.join(clash)})"
            )

    @property
    def names(self) -> tuple[str, ...]:
        """The name followed by the synonyms."""
        return (self.name, *self.synonyms)

    @property
    def templates(self) -> tuple[str, ...]:
        return TEMPLATES[self.kind]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["synonyms"] = list(self.synonyms)
        data["preserve"] = list(self.preserve)
        return data


@dataclass(frozen=True)
class PromptPair:
    """A prompt naming a concept and the same prompt with the anchor in its place.

    ``before`` / ``anchor_before`` are the texts preceding the concept / anchor, and
    ``through`` / ``anchor_through`` the texts up to and including it, so that counting their
    tokens locates the spans in each tokenised prompt.
    """

    text: str
    anchor_text: str
    before: str
    through: str
    anchor_before: str
    anchor_through: str


def with_article(phrase: str) -> str:
    """Fix "a" before a vowel ("a orange circle" -> "an orange circle") and "an" before a
    consonant."""
    words = phrase.split(" ")
    for i in range(len(words) - 1):
        following = words[i + 1][:1].lower()
        if not following:
            continue
        if words[i] == "a" and following in "aeiou":
            words[i] = "an"
        elif words[i] == "an" and following not in "aeiou":
            words[i] = "a"
    return " ".join(words)


def prompt_pairs(
    concept: Concept,
    names: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
) -> list[PromptPair]:
    """Every template x name as (concept prompt, anchor prompt); ``templates`` default to the
    concept kind's.

    Articles are fixed after substitution ("a orb" -> "an orb"); with an empty anchor the
    anchor prompt simply lacks the concept ("a photo of a red {}" -> "a photo of a red").
    """
    assert concept.anchor is not None
    pairs = []
    for name in names or concept.names:
        for template in templates or concept.templates:
            prefix, suffix = template.split("{}")
            text = with_article(prefix + name + suffix)
            anchor_text = " ".join((prefix + concept.anchor + suffix).split())
            anchor_text = with_article(anchor_text) if concept.anchor else anchor_text
            words_before = len(prefix.split())
            before = " ".join(text.split()[:words_before])
            through = " ".join(text.split()[: words_before + len(name.split())])
            anchor_before = " ".join(anchor_text.split()[:words_before])
            anchor_through = " ".join(
                anchor_text.split()[: words_before + len(concept.anchor.split())]
            )
            pairs.append(
                PromptPair(text, anchor_text, before, through, anchor_before, anchor_through)
            )
    return pairs


def as_concepts(items: Iterable[Concept | str], kind: Kind = "object") -> list[Concept]:
    """Concepts from ``Concept`` objects or plain names; duplicate names are an error."""
    concepts = [
        item if isinstance(item, Concept) else Concept(str(item), kind=kind) for item in items
    ]
    if not concepts:
        raise ConceptError("no concept to erase was given")
    seen: set[str] = set()
    for concept in concepts:
        if concept.name.lower() in seen:
            raise ConceptError(f"concept {concept.name!r} is given twice")
        seen.add(concept.name.lower())
    return concepts


def load_concepts(path: str | Path) -> list[Concept]:
    """Read concepts from a YAML or JSON file: a list, or a mapping with a ``concepts`` list.

    Each entry is a name or a mapping with the fields of :class:`Concept`.
    """
    file = Path(path)
    if not file.is_file():
        raise ConceptError(f"concept file {file} does not exist")
    try:
        text = file.read_text()
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConceptError(
            f"concept file {file} is not valid YAML/JSON: {str(error).splitlines()[0]}"
        ) from error
    entries = data.get("concepts") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ConceptError(
            f"concept file {file} must hold a list of concepts (or a 'concepts:' list)"
        )
    concepts: list[Concept | str] = []
    allowed = {f for f in Concept.__dataclass_fields__}
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            concepts.append(entry)
        elif isinstance(entry, dict):
            unknown = set(entry) - allowed
            if unknown:
                raise ConceptError(
                    f"concept file {file}, entry {i}: unknown field(s) {', '.join(sorted(unknown))}"
                )
            if "name" not in entry:
                raise ConceptError(f"concept file {file}, entry {i}: missing 'name'")
            fields = dict(entry)
            for key in ("synonyms", "preserve"):
                if key in fields:
                    value = fields[key]
                    fields[key] = tuple([value] if isinstance(value, str) else value or ())
            concepts.append(Concept(**fields))
        else:
            raise ConceptError(f"concept file {file}, entry {i}: expected a name or a mapping")
    return as_concepts(concepts)
