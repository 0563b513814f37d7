"""On ToyWorld: the soft-prompt attack brings an erased shape back, its random start does
not, and the text-blind control defeats it (the checks every reported ASR rests on)."""

import pytest

import ace_erasure
from ace_erasure.attacks import attack_config
from ace_erasure.evaluation.robustness import (
    Pairs,
    attack_rate,
    no_attack_rate,
    reference_target,
    text_blind,
)


@pytest.mark.slow
def test_soft_prompt_attack_on_toyworld(toyworld_pipe, toyworld_judge):
    pipe, judge = toyworld_pipe, toyworld_judge
    pairs = Pairs(
        "circle",
        ["a picture of a red circle", "a picture of a blue circle"],
        [100001, 100002],
        "shape",
        "circle",
        "circle",
    )
    sampling = {"steps": 20, "guidance": 5.0}
    target, references = reference_target(pipe, pairs, **sampling)
    assert judge.predict(references)["shape"] == ["circle", "circle"]
    erasure = ace_erasure.erase(pipe, ["circle"])
    with erasure.fuse(pipe):
        rate, _, _ = no_attack_rate(pipe, judge, pairs, **sampling)
        random = attack_rate(
            pipe, judge, "random", attack_config("random"), target, pairs, seed=0, **sampling
        )
        soft = attack_rate(
            pipe, judge, "soft", attack_config("soft"), target, pairs, seed=0, **sampling
        )
    assert rate == 0.0 and random["rate"] == 0.0
    assert soft["rate"] >= 0.5, soft["hits"]  # measured: 1 or 2 of 2 (seed-dependent)
    with text_blind(pipe):
        blind = attack_rate(
            pipe, judge, "soft", attack_config("soft"), target, pairs, seed=0, **sampling
        )
    assert blind["rate"] == 0.0
