"""Metrics from judged outcomes, and suites' roles (no model needed)."""

import math

import pytest

from ace_erasure.evaluation.metrics import (
    accuracy,
    concept_metrics,
    harmonic,
    label_counts,
    mistakes,
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
    assert row["n"] == {"named": 4, "synonyms": 2, "others": 4, "attributes": 1}
    with pytest.raises(ValueError, match="outcomes for a suite"):
        split_by_role(suite, erased[:-1])


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
