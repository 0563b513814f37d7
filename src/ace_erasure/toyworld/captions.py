"""ToyWorld's caption grammar: templates, synonym sampling and classifier-free-guidance dropout.

Training captions use ``TRAIN_*`` templates; the ``HELD_OUT_*`` templates never occur in training
and are what benchmarks prompt with, so a measured accuracy is not a memorised caption.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ace_erasure.concepts import with_article
from ace_erasure.toyworld.render import Scene
from ace_erasure.toyworld.vocab import Vocabulary, split_words, vocabulary

TRAIN_OBJECT_TEMPLATES = (
    "a {obj}",
    "a photo of a {obj}",
    "a drawing of a {obj}",
    "an image of a {obj}",
    "{obj}",
    "a {obj} on a white background",
)
HELD_OUT_OBJECT_TEMPLATES = ("a picture of a {obj}",)
# How a caption names a style: {text} is an object caption, {artist} the artist (or nickname).
TRAIN_STYLE_TEMPLATES = (
    "{text} in the style of {artist}",
    "{text} by {artist}",
    "a {artist} painting of a {obj}",
    "{artist} style, {text}",
)
TRAIN_CHARACTER_TEMPLATES = (
    "a portrait of {name}",
    "{name}",
    "a photo of {name}",
    "a drawing of {name}",
    "an image of {name}",
    "the face of {name}",
)
HELD_OUT_CHARACTER_TEMPLATES = ("a picture of {name}",)
TRAIN_HAZARD_TEMPLATES = ("{phrase}", "a photo of {phrase}", "an image of {phrase}")
HELD_OUT_HAZARD_TEMPLATES = ("a picture of {phrase}",)

TEMPLATE_WORDS = frozenset(
    word
    for template in (
        *TRAIN_OBJECT_TEMPLATES,
        *HELD_OUT_OBJECT_TEMPLATES,
        *TRAIN_STYLE_TEMPLATES,
        *TRAIN_CHARACTER_TEMPLATES,
        *HELD_OUT_CHARACTER_TEMPLATES,
        *TRAIN_HAZARD_TEMPLATES,
        *HELD_OUT_HAZARD_TEMPLATES,
    )
    for word in split_words(template.replace("{", " {").replace("}", "} "))
    if word not in ("obj", "text", "artist", "name", "phrase")
) | {"an"}


@dataclass(frozen=True)
class CaptionConfig:
    """Probabilities of the caption grammar.

    Args:
        p_synonym: probability that a shape / style / character is named by a synonym or nickname.
        p_drop_colour: probability that an object caption omits its colour ("a circle").
    """

    p_synonym: float = 0.25
    p_drop_colour: float = 0.1


def _pick(options: tuple[str, ...] | list[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _name(canonical: str, vocab: Vocabulary, rng: np.random.Generator, p_synonym: float) -> str:
    synonyms = vocab.synonyms.get(canonical, ())
    if synonyms and rng.random() < p_synonym:
        return _pick(synonyms, rng)
    return canonical


def object_caption(
    scene: Scene,
    template: str,
    rng: np.random.Generator,
    *,
    shape_word: str | None = None,
    artist_word: str | None = None,
    style_template: str | None = None,
    with_colour: bool = True,
    vocab: Vocabulary | None = None,
) -> str:
    """Caption an object scene (or a shapeless blob: its colour only) with a given template and
    optional style template."""
    vocab = vocab or vocabulary()
    assert scene.colour is not None and (scene.shape is not None or scene.kind == "blob")
    shape = shape_word or scene.shape or ""
    obj = f"{scene.colour} {shape}".strip() if with_colour or not shape else shape
    text = template.format(obj=obj)
    if scene.style:
        artist = artist_word or scene.style
        text = (style_template or TRAIN_STYLE_TEMPLATES[0]).format(
            text=text, obj=obj, artist=artist
        )
    return with_article(text)


def caption(
    scene: Scene,
    rng: np.random.Generator,
    config: CaptionConfig = CaptionConfig(),
    vocab: Vocabulary | None = None,
) -> str:
    """A random training caption for ``scene`` (never a held-out template)."""
    vocab = vocab or vocabulary()
    if scene.kind in ("object", "blob"):
        # a blob names no shape ("a red", "a photo of a red in the style of Varela"): the prompt
        # an object erasure maps "a red circle" to must not draw a particular shape
        template = _pick(
            TRAIN_OBJECT_TEMPLATES[:-1] if scene.style else TRAIN_OBJECT_TEMPLATES, rng
        )
        return object_caption(
            scene,
            template,
            rng,
            shape_word=_name(scene.shape, vocab, rng, config.p_synonym) if scene.shape else None,
            artist_word=_name(scene.style, vocab, rng, config.p_synonym) if scene.style else None,
            style_template=_pick(TRAIN_STYLE_TEMPLATES, rng),
            with_colour=scene.kind == "blob" or rng.random() >= config.p_drop_colour,
            vocab=vocab,
        )
    if scene.kind == "character":
        assert scene.character is not None
        name = _name(scene.character, vocab, rng, config.p_synonym)
        return with_article(_pick(TRAIN_CHARACTER_TEMPLATES, rng).format(name=name))
    if scene.kind == "hazard":
        phrases = vocab.hazard_named if rng.random() < 0.5 else vocab.hazard_indirect
        return with_article(_pick(TRAIN_HAZARD_TEMPLATES, rng).format(phrase=_pick(phrases, rng)))
    raise ValueError(f"ToyWorld does not caption {scene.kind!r} scenes")


def known_words(vocab: Vocabulary) -> frozenset[str]:
    """Every lower-case word that occurs in ToyWorld's training captions."""
    texts: list[str] = [*vocab.shapes, *vocab.colours, *vocab.styles, *vocab.characters]
    for synonyms in vocab.synonyms.values():
        texts.extend(synonyms)
    texts.extend(vocab.hazard_named)
    texts.extend(vocab.hazard_indirect)
    words = set(TEMPLATE_WORDS)
    for text in texts:
        words.update(split_words(text))
    return frozenset(words)


def unknown_words(prompt: str, vocab: Vocabulary | None = None) -> list[str]:
    """Words of ``prompt`` that never occur in ToyWorld's captions, in order of appearance."""
    known = known_words(vocab or vocabulary())
    seen: list[str] = []
    for word in split_words(prompt):
        if word not in known and word not in seen:
            seen.append(word)
    return seen
