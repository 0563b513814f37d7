"""Erasure on the bundled ToyWorld model, family by family, judged (marked slow: ~45 s).

Regression checks with fixed seeds and the default AceConfig; the full measurement with more
images and every concept is ``benchmarks/erase_toyworld.py``.
"""

import pytest

from ace_erasure import erase, generate
from ace_erasure.toyworld import vocabulary
from ace_erasure.toyworld.suites import hazard_probes


def _labels(pipe, judge, prompts, head, erasure=None):
    if erasure is None:
        return judge.predict(generate(pipe, prompts, seed=200))[head]
    with erasure.fuse(pipe):
        return judge.predict(generate(pipe, prompts, seed=200))[head]


@pytest.mark.slow
def test_hazard_is_erased_by_name_and_by_indirect_phrasings(toyworld_pipe, toyworld_judge):
    v = vocabulary()
    prompts = [p.prompt for p in hazard_probes(8, v, indirect=False)]
    prompts += [p.prompt for p in hazard_probes(8, v, indirect=True)]
    before = _labels(toyworld_pipe, toyworld_judge, prompts, "hazard")
    erasure = erase(toyworld_pipe, [v.hazard_name])
    after = _labels(toyworld_pipe, toyworld_judge, prompts, "hazard", erasure)
    assert before.count("hazard") >= 14, before
    assert after.count("hazard") <= 1, after
    # and the hazard does not leak into other prompts, nor do they lose their shape
    others = [f"a picture of a {c} star" for c in v.colour_names]
    kept = _labels(toyworld_pipe, toyworld_judge, others, "shape", erasure)
    assert kept.count("star") >= 7, kept


@pytest.mark.slow
def test_all_shapes_at_once_keep_colours(toyworld_pipe, toyworld_judge):
    v = vocabulary()
    prompts = [f"a picture of a {c} {s}" for s in v.shapes for c in v.colour_names[:3]]
    erasure = erase(toyworld_pipe, list(v.shapes))
    with erasure.fuse(toyworld_pipe):
        labels = toyworld_judge.predict(generate(toyworld_pipe, prompts, seed=200))
    expected_shapes = [s for s in v.shapes for _ in v.colour_names[:3]]
    still = sum(a == b for a, b in zip(labels["shape"], expected_shapes))
    assert still <= 2, labels["shape"]
    expected_colours = [c for _ in v.shapes for c in v.colour_names[:3]]
    colours = sum(a == b for a, b in zip(labels["colour"], expected_colours))
    assert colours >= len(prompts) - 2, labels["colour"]


@pytest.mark.slow
def test_a_style_is_erased_and_its_neighbours_kept(toyworld_pipe, toyworld_judge):
    v = vocabulary()
    target, other = v.style_names[0], v.style_names[1]
    prompts = [f"a picture of a {c} circle in the style of {target}" for c in v.colour_names]
    kept_prompts = [f"a picture of a {c} circle in the style of {other}" for c in v.colour_names]
    erasure = erase(toyworld_pipe, [target])
    before = _labels(toyworld_pipe, toyworld_judge, prompts, "style")
    after = _labels(toyworld_pipe, toyworld_judge, prompts, "style", erasure)
    kept = _labels(toyworld_pipe, toyworld_judge, kept_prompts, "style", erasure)
    assert before.count(target) >= 6, before
    assert after.count(target) <= 1, after
    assert kept.count(other) >= 6, kept


def test_preserve_rounds_move_mass_to_the_concept_the_edit_changes_most(toyworld_pipe):
    from ace_erasure import AceConfig

    plain = erase(toyworld_pipe, ["circle"], config=AceConfig(gate="none")).stats
    shares = plain["related_shares"]
    assert len(shares) == 9 and abs(sum(shares.values()) - 1) < 1e-3
    most_changed = max(plain["related_change"], key=plain["related_change"].get)
    focused = erase(toyworld_pipe, ["circle"], config=AceConfig(gate="none", preserve_rounds=2))
    moved = focused.stats["related_shares"]
    assert max(moved, key=moved.get) == most_changed
    assert moved[most_changed] > 2 * shares[most_changed]
    assert abs(sum(moved.values()) - 1) < 1e-3
