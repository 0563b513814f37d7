"""The field's erasure metrics (MACE's protocol, DESIGN.md §5) from judged probe outcomes.

An *outcome* is a probe with the judge's answer (see :func:`ace_erasure.evaluation.harness.
probe_outcomes`): a dict with the probe's fields plus ``label``, ``correct`` (label ==
expected), ``ambiguous`` and ``p_expected``.

- ``Acc_e``: accuracy on prompts naming the erased concept (efficacy = 1 − Acc_e);
- ``Acc_g``: the same on synonyms / indirect prompts not given to the method;
- ``Acc_s``: accuracy on the other concepts (also reported for the unedited model);
- ``H = 3 / (1/(1 − Acc_e) + 1/Acc_s + 1/(1 − Acc_g))`` (MACE's H_o);
- per other concept, the images it lost: how many more of its images the judge gets wrong
  after the erasure than on the unedited model (same prompts and seeds). Acc_s pools the other
  concepts; this says whether one of them paid for all of it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from ace_erasure.evaluation.suites import Suite


def accuracy(outcomes: Sequence[dict]) -> float:
    """Share of ``outcomes`` the judge got right (nan for none)."""
    return float(np.mean([o["correct"] for o in outcomes])) if outcomes else float("nan")


def mean_p_expected(outcomes: Sequence[dict]) -> float:
    """Mean probability of the expected label (nan for none)."""
    return float(np.mean([o["p_expected"] for o in outcomes])) if outcomes else float("nan")


def harmonic(acc_e: float, acc_g: float, acc_s: float) -> float:
    """MACE's H_o; 0 when any term is 0 (a total failure on one axis)."""
    terms = [1 - acc_e, acc_s, 1 - acc_g]
    return 0.0 if min(terms) <= 0 else 3 / sum(1 / t for t in terms)


def label_counts(outcomes: Sequence[dict]) -> dict[str, int]:
    """How often each label was given, most frequent first."""
    counts: dict[str, int] = defaultdict(int)
    for o in outcomes:
        counts[o["label"]] += 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def mistakes(outcomes: Sequence[dict]) -> dict[str, int]:
    """Wrong answers as "concept -> label" counts, most frequent first (which other concept was
    lost, and as what)."""
    counts: dict[str, int] = defaultdict(int)
    for o in outcomes:
        if not o["correct"]:
            counts[f"{o['concept']} -> {o['label']}"] += 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def images_lost(base: Sequence[dict], erased: Sequence[dict]) -> dict[str, int]:
    """Per concept, wrong answers on ``erased`` minus wrong answers on ``base`` (the same probes,
    the unedited model), for the concepts that lost at least one image, most lost first."""
    return lost_from_mistakes(mistakes(erased), mistakes(base))


def wrong_per_concept(counts: dict[str, int]) -> dict[str, int]:
    """Per concept, its wrong answers in :func:`mistakes` counts ("concept -> label": n), in
    the order the concepts first appear."""
    per: dict[str, int] = defaultdict(int)
    for mistake, count in counts.items():
        per[mistake.split(" -> ")[0]] += count
    return dict(per)


def lost_from_mistakes(wrong: dict[str, int], wrong_base: dict[str, int]) -> dict[str, int]:
    """:func:`images_lost` from two :func:`mistakes` counts ("concept -> label": n), as result
    files record them (``others_wrong`` and ``others_wrong_base``)."""
    erased, base = wrong_per_concept(wrong), wrong_per_concept(wrong_base)
    lost = {c: erased.get(c, 0) - base.get(c, 0) for c in dict.fromkeys([*erased, *base])}
    return {k: v for k, v in sorted(lost.items(), key=lambda kv: -kv[1]) if v > 0}


def per_concept(outcomes: Sequence[dict]) -> dict[str, int]:
    """How many images each concept has in ``outcomes``."""
    counts: dict[str, int] = defaultdict(int)
    for o in outcomes:
        counts[o["concept"]] += 1
    return dict(counts)


def split_by_role(suite: Suite, outcomes: Sequence[dict]) -> dict[str, list[dict]]:
    """The outcomes of each role of ``suite`` (outcomes in the order of ``suite.probes()``)."""
    roles: dict[str, list[dict]] = {}
    start = 0
    for role, probes in suite.roles().items():
        roles[role] = list(outcomes[start : start + len(probes)])
        start += len(probes)
    if start != len(outcomes):
        raise ValueError(f"{len(outcomes)} outcomes for a suite of {start} probes")
    return roles


def concept_metrics(suite: Suite, base: Sequence[dict], erased: Sequence[dict]) -> dict:
    """Acc_e, Acc_g, Acc_s, H and the attribute accuracy of one erased concept, each beside the
    unedited model's value on the same probes and seeds; plus what the named prompts became and
    which other concepts were lost (``others_lost``, against the unedited model, out of
    ``others_images`` each)."""
    b, e = split_by_role(suite, base), split_by_role(suite, erased)
    acc_e, acc_g, acc_s = accuracy(e["named"]), accuracy(e["synonyms"]), accuracy(e["others"])
    return {
        "concept": suite.concept,
        "acc_e": acc_e,
        "acc_g": acc_g,
        "acc_s": acc_s,
        "acc_e_base": accuracy(b["named"]),
        "acc_g_base": accuracy(b["synonyms"]),
        "acc_s_base": accuracy(b["others"]),
        "p_concept_named": mean_p_expected(e["named"]),
        "p_concept_named_base": mean_p_expected(b["named"]),
        "attribute": suite.attribute_name,
        "attribute_acc": accuracy(e["attributes"]),
        "attribute_acc_base": accuracy(b["attributes"]),
        "H": harmonic(acc_e, acc_g, acc_s),
        "n": {role: len(items) for role, items in e.items()},
        "labels_named": label_counts(e["named"]),
        "others_wrong": mistakes(e["others"]),
        "others_wrong_base": mistakes(b["others"]),
        "others_lost": images_lost(b["others"], e["others"]),
        "others_images": per_concept(e["others"]),
    }


def summarise(outcomes: Sequence[dict], key: str = "group") -> dict[str, dict[str, float]]:
    """Accuracy, mean p(expected), ambiguous rate and count per ``key`` value."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for outcome in outcomes:
        groups[outcome[key]].append(outcome)
    return {
        name: {
            "accuracy": accuracy(items),
            "p_expected": mean_p_expected(items),
            "ambiguous": float(np.mean([o["ambiguous"] for o in items])),
            "n": len(items),
        }
        for name, items in groups.items()
    }
