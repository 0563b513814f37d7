"""Metrics from judged outcomes, and suites' roles (no model needed)."""

import math

import pytest

from ace_erasure.evaluation.metrics import (
    accuracy,
    concept_metrics,
    harmonic,
    images_lost,
    label_counts,
    mistakes,
    per_concept,
    split_by_role,
    summarise,
)
from ace_erasure.evaluation.suites import Probe, Suite, number_samples, samples


def _outcome(probe: Probe, label: str) -> dict:
    return {
        **probe.__dict__,
        "label": label,
        "correct": label == probe.expected,
        "ambiguous": label == "ambiguous",
        "p_expected": 1.0 if label == probe.expected else 0.0,
    }


def test_harmonic_mean_follows_mace():
    assert harmonic(0.0, 0.0, 1.0) == pytest.approx(1.0)
    assert harmonic(0.5, 0.5, 0.5) == pytest.approx(0.5)
    assert harmonic(1.0, 0.0, 1.0) == 0.0  # nothing erased
    assert harmonic(0.1, 0.2, 0.9) == pytest.approx(3 / (1 / 0.9 + 1 / 0.9 + 1 / 0.8))


def test_numbering_gives_each_repeat_its_own_image():
    probes = number_samples(
        [
            Probe("a red circle", "shape", "circle", "circle", "shapes"),
            Probe("a red circle", "colour", "red", "red", "colours"),
            Probe("a red circle", "shape", "circle", "circle", "shapes"),
        ]
    )
    assert [p.sample for p in probes] == [0, 0, 1]
    assert samples(probes) == [("a red circle", 0), ("a red circle", 1)]


def test_concept_metrics_by_role():
    named = [Probe(f"c{i}", "shape", "circle", "circle", "shapes") for i in range(4)]
    synonyms = [Probe(f"d{i}", "shape", "circle", "circle", "synonyms") for i in range(2)]
    others = [Probe(f"s{i}", "shape", "square", "square", "shapes") for i in range(4)]
    colours = [Probe("c0", "colour", "red", "red", "colours")]
    suite = Suite("circle", named, synonyms, others, colours, "colour")
    probes = suite.probes()
    base = [_outcome(p, p.expected) for p in probes]
    erased_labels = ["none", "none", "none", "circle", "none", "none"]
    erased_labels += ["square", "square", "square", "none", "red"]
    erased = [_outcome(p, label) for p, label in zip(probes, erased_labels)]
    row = concept_metrics(suite, base, erased)
    assert (row["acc_e"], row["acc_g"], row["acc_s"]) == (0.25, 0.0, 0.75)
    assert (row["acc_e_base"], row["acc_s_base"], row["attribute_acc"]) == (1.0, 1.0, 1.0)
    assert row["H"] == pytest.approx(harmonic(0.25, 0.0, 0.75))
    assert row["others_wrong"] == {"square -> none": 1} and row["labels_named"]["none"] == 3
    assert row["others_lost"] == {"square": 1} and row["others_images"] == {"square": 4}
    assert row["n"] == {"named": 4, "synonyms": 2, "others": 4, "attributes": 1}
    with pytest.raises(ValueError, match="outcomes for a suite"):
        split_by_role(suite, erased[:-1])


def test_images_lost_counts_against_the_unedited_model():
    probes = [Probe(f"p{i}", "shape", c, c, "shapes") for i, c in enumerate("aaaabbbbcccc")]
    # the unedited model already gets two of b's and one of c's images wrong
    base_labels = ["a"] * 4 + ["b", "b", "x", "x"] + ["c", "c", "c", "x"]
    # erased: a loses 3, b has the same 2 wrong images as before, c gets its wrong one right
    erased_labels = ["a", "x", "x", "x"] + ["b", "b", "x", "x"] + ["c"] * 4
    base = [_outcome(p, label) for p, label in zip(probes, base_labels)]
    erased = [_outcome(p, label) for p, label in zip(probes, erased_labels)]
    assert images_lost(base, erased) == {"a": 3}
    assert images_lost(base, base) == {}
    # b loses one more than the unedited model (3 wrong against 2), whichever images they are
    erased[4] = _outcome(probes[4], "x")
    assert list(images_lost(base, erased).items()) == [("a", 3), ("b", 1)]
    assert per_concept(erased) == {"a": 4, "b": 4, "c": 4}


def test_summaries_and_counts():
    probes = [
        Probe("p", "shape", "circle", "circle", "g"),
        Probe("q", "shape", "star", "star", "g"),
    ]
    outcomes = [_outcome(probes[0], "circle"), _outcome(probes[1], "ambiguous")]
    assert summarise(outcomes)["g"] == {
        "accuracy": 0.5,
        "p_expected": 0.5,
        "ambiguous": 0.5,
        "n": 2,
    }
    assert label_counts(outcomes) == {"circle": 1, "ambiguous": 1}
    assert mistakes(outcomes) == {"star -> ambiguous": 1}
    assert math.isnan(accuracy([]))
