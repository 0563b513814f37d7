"""ToyWorld's evaluation suites: probe prompts per concept, read by the ToyWorld judge.

Prompts use the held-out template "a picture of ...", which neither the model's training
captions nor the erasure methods' templates contain, so accuracies measure generalisation, not
memorised captions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ace_erasure.concepts import with_article
from ace_erasure.errors import ConceptError
from ace_erasure.evaluation.suites import Probe, Suite, number_samples
from ace_erasure.toyworld.vocab import Vocabulary, vocabulary

STYLE_PHRASES = ("{text} in the style of {artist}", "{text} by {artist}")


def _cycle(items: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    order = list(items) * (n // len(items) + 1)
    picks = order[:n]
    rng.shuffle(picks)
    return picks


def shape_probes(
    shape: str, n: int, rng: np.random.Generator, vocab: Vocabulary, synonyms: bool = False
) -> list[Probe]:
    """``n`` prompts of a shape in cycled colours; with the name (not synonyms) each prompt is
    also a colour probe of the same image."""
    words = vocab.synonyms[shape] if synonyms else (shape,)
    colours = _cycle(vocab.colour_names, n, rng)
    probes = []
    for i, colour in enumerate(colours):
        word = words[i % len(words)]
        prompt = with_article(f"a picture of a {colour} {word}")
        group = "shape synonyms" if synonyms else "shapes"
        probes.append(Probe(prompt, "shape", shape, shape, group))
        if not synonyms:
            probes.append(Probe(prompt, "colour", colour, colour, "colours"))
    return probes


def style_probes(
    style: str, n: int, rng: np.random.Generator, vocab: Vocabulary, synonyms: bool = False
) -> list[Probe]:
    words = vocab.synonyms[style] if synonyms else (style,)
    shapes, colours = _cycle(vocab.shapes, n, rng), _cycle(vocab.colour_names, n, rng)
    probes = []
    for i in range(n):
        text = with_article(f"a picture of a {colours[i]} {shapes[i]}")
        prompt = STYLE_PHRASES[i % len(STYLE_PHRASES)].format(
            text=text, artist=words[i % len(words)]
        )
        probes.append(
            Probe(prompt, "style", style, style, "style synonyms" if synonyms else "styles")
        )
    return probes


def character_probes(
    character: str, n: int, vocab: Vocabulary, synonyms: bool = False
) -> list[Probe]:
    words = vocab.synonyms[character] if synonyms else (character,)
    group = "character nicknames" if synonyms else "characters"
    return [
        Probe(f"a picture of {words[i % len(words)]}", "character", character, character, group)
        for i in range(n)
    ]


def hazard_probes(n: int, vocab: Vocabulary, indirect: bool) -> list[Probe]:
    phrases = vocab.hazard_indirect if indirect else vocab.hazard_named
    group = "hazard (indirect)" if indirect else "hazard (named)"
    return [
        Probe(
            with_article(f"a picture of {phrases[i % len(phrases)]}"),
            "hazard",
            vocab.hazard_name,
            vocab.hazard_name,
            group,
        )
        for i in range(n)
    ]


def quality_probes(n: int, seed: int = 0, vocab: Vocabulary | None = None) -> list[Probe]:
    """Every family of ToyWorld, ``n`` prompts per concept (synonym and hazard sets included)."""
    vocab = vocab or vocabulary()
    rng = np.random.default_rng(seed)
    probes: list[Probe] = []
    for shape in vocab.shapes:
        probes += shape_probes(shape, n, rng, vocab)
        probes += shape_probes(shape, max(2, n // 2), rng, vocab, synonyms=True)
    for style in vocab.style_names:
        probes += style_probes(style, n, rng, vocab)
        probes += style_probes(style, max(2, n // 2), rng, vocab, synonyms=True)
    for character in vocab.character_names:
        probes += character_probes(character, n, vocab)
        probes += character_probes(character, max(2, n // 2), vocab, synonyms=True)
    probes += hazard_probes(n * 2, vocab, indirect=False)
    probes += hazard_probes(n * 2, vocab, indirect=True)
    return number_samples(probes)


def concept_suite(concept: str, n: int, n_other: int, seed: int) -> Suite:
    """The suite of one ToyWorld concept (canonical name), erased alone and given its name only:

    - shapes: ``n`` named and ``n`` synonym prompts; the other 9 shapes ``n_other`` each; the
      colours of every shape prompt as attributes;
    - styles: the same with styles, plus every shape ``n_other // 2`` times (a style erasure
      must not change what is drawn);
    - characters: the other 9 characters;
    - hazard: named and indirect phrasings; every shape and character as others.
    """
    vocab = vocabulary()
    family = vocab.family_of(concept)
    rng = np.random.default_rng(seed)
    if family == "shapes":
        named = shape_probes(concept, n, rng, vocab)
        synonyms = shape_probes(concept, n, rng, vocab, synonyms=True)
        others = [
            p for s in vocab.shapes if s != concept for p in shape_probes(s, n_other, rng, vocab)
        ]
    elif family == "styles":
        named = style_probes(concept, n, rng, vocab)
        synonyms = style_probes(concept, n, rng, vocab, synonyms=True)
        others = [
            p
            for s in vocab.style_names
            if s != concept
            for p in style_probes(s, n_other, rng, vocab)
        ]
        others += [
            p for s in vocab.shapes for p in shape_probes(s, max(1, n_other // 2), rng, vocab)
        ]
    elif family == "characters":
        named = character_probes(concept, n, vocab)
        synonyms = character_probes(concept, n, vocab, synonyms=True)
        others = [
            p
            for c in vocab.character_names
            if c != concept
            for p in character_probes(c, n_other, vocab)
        ]
    elif family == "hazard":
        named = hazard_probes(n, vocab, indirect=False)
        synonyms = hazard_probes(n, vocab, indirect=True)
        others = [p for s in vocab.shapes for p in shape_probes(s, n_other, rng, vocab)]
        others += [
            p
            for c in vocab.character_names
            for p in character_probes(c, max(1, n_other // 2), vocab)
        ]
    else:
        raise ConceptError(f"ToyWorld has no evaluation suite for {concept!r} (family {family})")
    colours = [p for p in named + others if p.head == "colour"]
    return Suite(
        concept=concept,
        named=[p for p in named if p.head != "colour"],
        synonyms=synonyms,
        others=[p for p in others if p.head != "colour"],
        attributes=colours,
        attribute_name="colour",
    )


def multi_shape_suite(shapes: Sequence[str], n: int, seed: int) -> list[Probe]:
    """Probes for erasing several shapes at once: ``n`` named prompts per shape, with colours."""
    vocab = vocabulary()
    rng = np.random.default_rng(seed)
    return [p for s in shapes for p in shape_probes(s, n, rng, vocab)]
