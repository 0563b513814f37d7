"""Prompt worlds: what the core needs to know about the concepts a model can draw.

A :class:`PromptWorld` turns names into :class:`~ace_erasure.concepts.Concept` objects, says
which other concepts an erasure must keep (the *related* concepts: the rest of a concept's
family), supplies general captions to preserve, and knows how to sample and judge its model.
The core (methods, evaluation) receives a world as an argument and never asks which one it is.

- :class:`GenericWorld` serves any model: names are objects unless told otherwise, nothing is
  related but each concept's own ``preserve`` list, and the general captions are the shipped
  caption list (``data/general_captions.txt``).
- ToyWorld's world (in the ToyWorld package) knows its vocabulary, families and judge.

:func:`related_pairs` and :func:`general_prompts` build an erasure's preserve prompts from a
world.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ace_erasure.concepts import Concept, PromptPair, prompt_pairs, with_article

if TYPE_CHECKING:  # pragma: no cover - types only
    from ace_erasure.evaluation.judges import Judge
    from ace_erasure.evaluation.suites import Suite


@dataclass(frozen=True)
class Sampling:
    """How a world's model is sampled by default (steps, classifier-free guidance)."""

    steps: int = 30
    guidance: float = 7.5


@runtime_checkable
class PromptWorld(Protocol):
    """The concepts of one model and how to judge them (see the module docstring)."""

    name: str
    sampling: Sampling

    def resolve(self, item: Concept | str) -> Concept:
        """A concept from a name (its kind and canonical name filled in) or a ``Concept``;
        raises :class:`~ace_erasure.errors.ConceptError` for a concept this world cannot draw."""
        ...

    def related(self, concept: Concept) -> list[str]:
        """Names of other concepts an erasure of ``concept`` must keep (not its own preserve
        list, which :func:`related_pairs` adds)."""
        ...

    def general_captions(self, n: int, seed: int) -> list[str]:
        """About ``n`` general captions to preserve (a world may return a fixed list)."""
        ...

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of ``prompt`` this world's model never saw (empty when it cannot tell)."""
        ...

    def judge(self) -> Judge | None:
        """The judge of this world's images, or None when it has none."""
        ...

    def suite(self, concept: Concept, n: int, n_other: int, seed: int) -> Suite:
        """The evaluation probes of ``concept``: ``n`` images per named / synonym set and
        ``n_other`` per other concept; raises ConceptError where the world has no suite."""
        ...

    # Optional: ``attributes(concept) -> list[str]``, words that describe the concept in its
    # world (ToyWorld: a shape's colours); see :func:`attribute_templates`.


def general_captions() -> list[str]:
    """The shipped general caption list (``data/general_captions.txt``)."""
    text = resources.files("ace_erasure").joinpath("data/general_captions.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


# colours an object is often drawn in that the object templates do not name (generic worlds)
COMMON_COLOURS = ("purple", "orange", "pink", "brown", "grey")


class GenericWorld:
    """The world of any Stable Diffusion model: no vocabulary, no families, no judge."""

    name = "generic"

    def __init__(self, sampling: Sampling | None = None) -> None:
        self.sampling = sampling or Sampling()

    def resolve(self, item: Concept | str) -> Concept:
        return item if isinstance(item, Concept) else Concept(str(item))

    def related(self, concept: Concept) -> list[str]:
        return []

    def general_captions(self, n: int, seed: int) -> list[str]:
        return general_captions()  # all of it: it is short, and real models know every word

    def unknown_words(self, prompt: str) -> list[str]:
        return []

    def judge(self) -> Judge | None:
        return None

    def attributes(self, concept: Concept) -> list[str]:
        return list(COMMON_COLOURS) if concept.kind == "object" else []

    def suite(self, concept: Concept, n: int, n_other: int, seed: int) -> Suite:
        from ace_erasure.errors import ConceptError

        raise ConceptError(
            f"no evaluation suite for {concept.name!r} on a generic model: give a suite file"
        )


def spread(items: Sequence[str], n: int) -> list[str]:
    """``n`` items spread evenly over ``items`` (all of them, in turn, when ``n`` exceeds
    their number)."""
    if not items:
        return []
    if n >= len(items):
        return [items[k % len(items)] for k in range(n)]
    return [items[(k * len(items)) // n] for k in range(n)]


def attribute_templates(concept: Concept, world: PromptWorld) -> tuple[str, ...]:
    """The concept's templates and one more per attribute word its world knows for it ("a
    purple {}"), unless a template already names it. ACE's stage 2 draws its training images
    over these: a UNet LoRA trained on a few colours of a shape shifts the colours it never
    saw (on ToyWorld: orange drawn red, purple black)."""
    words = getattr(world, "attributes", None)
    named = " ".join(concept.templates).split()
    extra = [
        with_article(f"a {w} {{}}") for w in (words(concept) if words else []) if w not in named
    ]
    return (*concept.templates, *dict.fromkeys(extra))


def _mentions(prompt: str, names: Sequence[str]) -> bool:
    words = f" {' '.join(prompt.lower().replace(',', ' ').split())} "
    return any(f" {name.lower()} " in words for name in names)


def erased_names(concepts: Sequence[Concept]) -> list[str]:
    """Every name and synonym of ``concepts``."""
    return [name for c in concepts for name in c.names]


def related_pairs(concepts: Sequence[Concept], world: PromptWorld) -> list[PromptPair]:
    """Prompts naming the concepts to keep — each concept's ``preserve`` list and the world's
    related concepts — in the concept's own templates, with their spans located (so their name
    tokens can be weighted like the targets'). Erased names are never kept."""
    erased = {n.lower() for n in erased_names(concepts)}
    pairs: list[PromptPair] = []
    seen: set[str] = set()
    for concept in concepts:
        for name in [*concept.preserve, *world.related(concept)]:
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
    concepts: Sequence[Concept], world: PromptWorld, n_general: int = 200, seed: int = 0
) -> list[str]:
    """The world's general captions to keep, without any that mention an erased name or
    synonym (duplicates removed, order kept)."""
    erased = erased_names(concepts)
    prompts = world.general_captions(n_general, seed)
    return list(dict.fromkeys(p for p in prompts if not _mentions(p, erased)))
