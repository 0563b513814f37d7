"""Renderer, vocabulary, tokenizer and caption grammar of ToyWorld."""

import numpy as np
import pytest

from ace_erasure.toyworld import Scene, render, render_batch, vocabulary
from ace_erasure.toyworld.captions import (
    HELD_OUT_CHARACTER_TEMPLATES,
    HELD_OUT_OBJECT_TEMPLATES,
    caption,
    unknown_words,
    with_article,
)
from ace_erasure.toyworld.judge import sample_scene


def _all_scenes():
    v = vocabulary()
    scenes = [Scene("object", shape=s, colour=c) for s in v.shapes for c in v.colour_names]
    scenes += [Scene("object", shape="star", colour="red", style=st) for st in v.style_names]
    scenes += [Scene("character", character=c) for c in v.character_names]
    scenes += [Scene("hazard"), Scene("blob", colour="blue"), Scene("blank")]
    return scenes


def test_vocabulary_sizes_meet_the_spec():
    v = vocabulary()
    assert len(v.shapes) >= 10 and len(v.colours) >= 8
    assert len(v.styles) >= 6 and len(set(v.renderings)) == len(v.styles)
    assert len(v.characters) >= 8
    assert all(2 <= len(v.synonyms[s]) <= 3 for s in v.shapes)
    assert all(v.synonyms[c] for c in v.character_names)
    assert len(v.hazard_indirect) >= 5
    assert not any("hazard" in p for p in v.hazard_indirect)


def test_every_name_and_synonym_is_unambiguous():
    v = vocabulary()
    seen: dict[str, str] = {}
    for name in (*v.shapes, *v.colours, *v.styles, *v.characters):
        for word in (name, *v.synonyms.get(name, ())):
            assert word.lower() not in seen, (
                f"{word} names both {seen.get(word.lower())} and {name}"
            )
            seen[word.lower()] = name
            assert v.canonical(word) == name


def test_render_is_deterministic_and_seed_dependent():
    scenes = _all_scenes()
    a = [np.asarray(im) for im in render_batch(scenes, seed=7)]
    b = [np.asarray(im) for im in render_batch(scenes, seed=7)]
    c = [np.asarray(im) for im in render_batch(scenes, seed=8)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert sum(not np.array_equal(x, y) for x, y in zip(a, c)) > len(scenes) // 2


def test_every_scene_renders_something_visible():
    for scene, image in zip(_all_scenes(), render_batch(_all_scenes(), seed=0)):
        assert image.size == (32, 32) and image.mode == "RGB"
        pixels = np.asarray(image).astype(float)
        if scene.kind != "blank":
            assert pixels.std() > 15, scene


def test_styles_change_the_rendering():
    v = vocabulary()
    plain = np.asarray(
        render(Scene("object", shape="square", colour="red"), np.random.default_rng(0))
    )
    for style in v.style_names:
        styled = np.asarray(
            render(
                Scene("object", shape="square", colour="red", style=style), np.random.default_rng(0)
            )
        )
        assert np.abs(styled.astype(int) - plain.astype(int)).mean() > 2, style


def test_invalid_scenes_are_rejected():
    with pytest.raises(ValueError):
        Scene("object", shape="circle")
    with pytest.raises(ValueError):
        render(Scene("object", shape="dragon", colour="red"), np.random.default_rng(0))


def test_tokenizer_matches_stable_diffusion_ids(tmp_path):
    from transformers import CLIPTokenizer

    from ace_erasure.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(tmp_path)
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        49406,
        49407,
        49407,
    )
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    padded = tokenizer("a red circle", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[4:] == [49407] * 73
    reloaded = CLIPTokenizer.from_pretrained(str(tmp_path))
    for text in ["Mira Kestrel", "a Varela painting of a red disc", "something radioactive"]:
        ids = reloaded(text).input_ids
        assert ids == tokenizer(text).input_ids
        assert reloaded.decode(ids, skip_special_tokens=True) == text.lower()
    assert (
        len(tokenizer("Mira Kestrel", add_special_tokens=False).input_ids) == 3
    )  # multi-token name


def test_captions_name_what_is_drawn_and_never_use_held_out_templates():
    v = vocabulary()
    rng = np.random.default_rng(0)
    held_out = [
        t.split("{")[0].strip() for t in (*HELD_OUT_OBJECT_TEMPLATES, *HELD_OUT_CHARACTER_TEMPLATES)
    ]
    for _ in range(1500):
        scene = sample_scene(rng, v, (0.6, 0.25, 0.1, 0.05, 0), 0.5)
        text = caption(scene, rng)
        assert not any(text.startswith(h) for h in held_out), text
        assert not unknown_words(text), text
        if scene.kind == "object":
            assert v.canonical(scene.shape) == scene.shape
            assert any(w in text for w in (scene.shape, *v.synonyms[scene.shape])), text
        if scene.kind == "character":
            assert any(w in text for w in (scene.character, *v.synonyms[scene.character])), text
        if scene.kind == "blob":  # its colour, and no shape word
            words = set(text.replace(",", " ").split())
            assert scene.colour in words, text
            assert not words & {w for s in v.shapes for w in (s, *v.synonyms[s])}, text


def test_articles_and_unknown_words():
    assert with_article("a orange arrow") == "an orange arrow"
    assert with_article("an red circle") == "a red circle"
    assert with_article("a ") == "a "
    assert unknown_words("a red dragon by Van Gogh") == ["dragon", "van", "gogh"]
    assert unknown_words("a picture of Kess in the style of Varela") == []
