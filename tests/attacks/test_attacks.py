"""Attacks on tiny pipelines of every family (the mechanics) and on ToyWorld (that they work,
and that the text-blind control defeats them)."""

import pytest
import torch

from ace_erasure.attacks import (
    ATTACKS,
    AttackTarget,
    PlainPrompts,
    attack_config,
    generate_attacked,
)
from ace_erasure.attacks.base import denoising_loss
from ace_erasure.attacks.conditioning import Residual
from ace_erasure.attacks.textual_inversion import replace_name
from ace_erasure.errors import ConfigError
from ace_erasure.models.conditioning import encode_conditioning

FAST = {
    "random": {},
    "soft": {"steps": 3},
    "hard": {"steps": 3, "universal": False},
    "ti": {"steps": 3},
    "cond": {"steps": 3},
}


def _target(pipe, n=2):
    latents = torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    prompts = [f"a picture of a {c} circle" for c in ("red", "blue", "green")[:n]]
    return AttackTarget("circle", prompts, list(range(n)), latents, "circle", guidance=3.0)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("name", list(FAST))
def test_every_attack_runs_on_every_family(tiny_pipes, family, name):
    pipe = tiny_pipes(family)
    target = _target(pipe)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    result = ATTACKS[name].run(pipe, target, attack_config(name, FAST[name]), seed=1)
    assert result.name == name and result.seconds > 0
    n_adversaries = 1 if result.mode == "universal" else len(target.prompts)
    assert len(result.adversaries) == n_adversaries
    steps = FAST[name].get("steps", 0)
    assert all(len(curve) == steps for curve in result.losses)
    with torch.no_grad():
        cond = result.adversary(0).encode(pipe, target.prompts[:1])
        plain = encode_conditioning(pipe, target.prompts[:1])
    assert cond.embeds.shape == plain.embeds.shape and (cond.pooled is None) == (
        plain.pooled is None
    )
    images = generate_attacked(
        pipe, result.adversary(0), target.prompts[:1], [0], steps=2, guidance=2.0
    )
    assert len(images) == 1
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in before.items())  # untouched
    assert all(p.requires_grad for p in pipe.unet.parameters())  # frozen only while attacking
    if name == "hard":
        text = result.texts(target.prompts)[0]
        assert text.endswith(target.prompts[0]) and len(text) > len(target.prompts[0])


def test_same_seed_same_attack(tiny_pipes):
    pipe = tiny_pipes("sd1")
    target = _target(pipe, 1)
    runs = [
        ATTACKS["soft"].run(pipe, target, attack_config("soft", {"steps": 3}), seed=5)
        for _ in range(2)
    ]
    assert runs[0].losses == runs[1].losses
    other = ATTACKS["soft"].run(pipe, target, attack_config("soft", {"steps": 3}), seed=6)
    assert other.losses != runs[0].losses


def test_guided_objective_uses_the_unconditional_branch(tiny_pipes):
    pipe = tiny_pipes("sd1")
    target = _target(pipe, 1)

    def loss(guidance):
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            return float(
                denoising_loss(
                    pipe, PlainPrompts(), target.prompts, target.latents, g, guidance=guidance
                )
            )

    assert loss(1.0) != loss(5.0)


def test_residual_bound_and_name_replacement():
    residual = Residual(torch.zeros(4, 3), max_norm=0.5)
    residual._scale = torch.ones(4, 1)  # prompt norms of 2, bound 0.5 x 2 = 1
    with torch.no_grad():
        residual.delta.fill_(3.0)
    residual.project()
    assert torch.allclose(residual.delta.norm(dim=-1), torch.ones(4))
    assert replace_name("a picture of a Red Circle", "red circle") == "a picture of a sks"
    with pytest.raises(ConfigError, match="does not occur"):
        replace_name("a picture of a star", "circle")


def test_bad_attack_configs():
    with pytest.raises(ConfigError, match="unknown attack 'nope'"):
        attack_config("nope")
    with pytest.raises(ConfigError, match="unknown soft attack option"):
        attack_config("soft", {"kk": 3})
    with pytest.raises(ConfigError, match="k must be >= 1"):
        attack_config("soft", {"k": 0})
    with pytest.raises(ConfigError, match="lr must be a finite number"):
        attack_config("cond", {"lr": float("nan")})
    with pytest.raises(ConfigError, match="as many prompts"):
        AttackTarget("c", ["a"], [1, 2], torch.zeros(1, 4, 8, 8))


def test_prefix_length_follows_the_concept_kind():
    # UnlearnDiffAtk: 5 tokens for objects and nudity, 3 for styles; what the user sets wins
    assert attack_config("soft").k == 5
    assert attack_config("soft", kind="object").k == 5
    assert attack_config("soft", kind="explicit").k == 5
    assert attack_config("soft", kind="style").k == 3
    assert attack_config("random", kind="style").k == 3  # the soft attack's start
    assert attack_config("soft", {"k": 4}, kind="style").k == 4
    assert attack_config("hard", kind="style").k == 5  # PEZ keeps its own length


class _ScriptedJudge:
    """A check that returns scripted scores and records the adversary's state at each call."""

    def __init__(self, scores):
        self.scores, self.seen = list(scores), []

    def __call__(self, adversary, part):
        params = adversary.parameters()
        self.seen.append([p.detach().clone() for p in params] if params else adversary.text(""))
        return self.scores[len(self.seen) - 1]


@pytest.mark.parametrize("name", ["soft", "ti", "cond"])
def test_judge_in_the_loop_keeps_the_best_judged_adversary(tiny_pipes, name):
    pipe = tiny_pipes("sd1")
    target = _target(pipe, 1)
    config = attack_config(name, {"steps": 7, "check_every": 3})
    if name == "ti":  # the start is judged too: test_textual_inversion_judges_its_start
        config.check_start = False
    judge = _ScriptedJudge([0.5, 0.0, 0.25])  # checks after steps 3, 6 and the last (7)
    result = ATTACKS[name].run(pipe, target, config, seed=1, check=judge)
    assert len(judge.seen) == 3 and len(result.losses[0]) == 7
    kept = [p.detach() for p in result.adversary(0).parameters()]
    assert all(torch.equal(a, b) for a, b in zip(kept, judge.seen[0]))  # the 0.5, not the last
    assert not all(torch.equal(a, b) for a, b in zip(kept, judge.seen[2]))
    # early stop on success: the run ends at the first check that finds every pair
    judge = _ScriptedJudge([0.0, 1.0, 0.0])
    result = ATTACKS[name].run(pipe, target, config, seed=1, check=judge)
    assert len(judge.seen) == 2 and len(result.losses[0]) == 6
    kept = [p.detach() for p in result.adversary(0).parameters()]
    assert all(torch.equal(a, b) for a, b in zip(kept, judge.seen[1]))
    # no check, no stop: the run is the plain optimisation, same seed same result
    plain = ATTACKS[name].run(pipe, target, config, seed=1)
    again = ATTACKS[name].run(pipe, target, config, seed=1, check=_ScriptedJudge([0.0] * 3))
    assert plain.losses == again.losses


def test_hard_prompt_keeps_the_best_judged_text(tiny_pipes):
    pipe = tiny_pipes("sd1")
    target = _target(pipe, 2)
    config = attack_config("hard", {"steps": 4, "check_every": 2, "universal": True})
    judge = _ScriptedJudge([1.0])
    result = ATTACKS["hard"].run(pipe, target, config, seed=3, check=judge)
    assert len(judge.seen) == 1 and len(result.losses[0]) == 2  # stopped at the first check
    assert result.adversary(0).text("") == judge.seen[0]


def test_textual_inversion_starts_from_every_token_of_the_name(tiny_pipes):
    pipe = tiny_pipes("sd1")
    prompts = ["a picture of mira kestrel", "mira kestrel in a field"]
    latents = torch.zeros(2, 4, 8, 8)
    target = AttackTarget("Mira Kestrel", prompts, [0, 1], latents, "Mira Kestrel")
    result = ATTACKS["ti"].run(pipe, target, attack_config("ti", {"steps": 0}), seed=0)
    adversary = result.adversary(0)
    tokenizer = pipe.tokenizer
    assert adversary.tokens.k == len(tokenizer("Mira Kestrel", add_special_tokens=False).input_ids)
    assert adversary.tokens.k > 1
    with torch.no_grad():  # not optimised: the attack starts where the prompt is
        start = adversary.encode(pipe, prompts).embeds
        plain = encode_conditioning(pipe, prompts).embeds
    assert torch.allclose(start, plain, atol=1e-6)


def test_textual_inversion_judges_its_start(tiny_pipes):
    pipe = tiny_pipes("sd1")
    target = _target(pipe, 1)
    config = attack_config("ti", {"steps": 6, "check_every": 3})
    assert config.check_start
    # a start that already succeeds on every pair is kept: no step is taken
    judge = _ScriptedJudge([1.0])
    result = ATTACKS["ti"].run(pipe, target, config, seed=1, check=judge)
    assert len(judge.seen) == 1 and result.losses[0] == []
    # a start judged better than every later state is restored after the steps
    judge = _ScriptedJudge([0.5, 0.0, 0.25])  # the start, after step 3, after step 6
    result = ATTACKS["ti"].run(pipe, target, config, seed=1, check=judge)
    assert len(judge.seen) == 3 and len(result.losses[0]) == 6
    kept = [p.detach() for p in result.adversary(0).parameters()]
    assert all(torch.equal(a, b) for a, b in zip(kept, judge.seen[0]))
    assert not all(torch.equal(a, b) for a, b in zip(kept, judge.seen[2]))
    # without a judge nothing is judged and every step runs
    assert len(ATTACKS["ti"].run(pipe, target, config, seed=1).losses[0]) == 6


@pytest.mark.parametrize("name", ["soft", "hard", "ti", "cond"])
def test_attacks_stop_at_once_on_a_model_that_ignores_the_conditioning(tiny_pipes, name):
    from ace_erasure.evaluation.robustness import text_blind

    pipe = tiny_pipes("sd1")
    target = _target(pipe, 1)
    config = attack_config(name, {"steps": 6, "check_every": 3})
    judge = _ScriptedJudge([0.0] * 6)
    with text_blind(pipe):  # exactly zero gradients: nothing to optimise
        blind = ATTACKS[name].run(pipe, target, config, seed=1, check=judge)
    start = 1 if name == "ti" else 0  # textual inversion also judges its start
    assert len(blind.losses[0]) == 1 and len(judge.seen) == 1 + start  # judged, then stopped
    seeing = ATTACKS[name].run(pipe, target, config, seed=1, check=_ScriptedJudge([0.0] * 6))
    assert len(seeing.losses[0]) == 6  # the same attack on the model that sees its prompt


def test_per_row_adversaries_encode_each_prompt_with_its_own_adversary(tiny_pipes):
    from ace_erasure.attacks.base import PerRow
    from ace_erasure.attacks.soft_prompt import SoftPrefix, SoftTokens

    pipe = tiny_pipes("sd1")
    generator = torch.Generator().manual_seed(0)
    first, second = (SoftPrefix(SoftTokens.random_vocabulary(pipe, 2, generator)) for _ in "ab")
    joint = PerRow([first, second])
    both = joint.encode(pipe, ["a red circle", "a blue star"])
    assert torch.equal(both.embeds[0:1], first.encode(pipe, ["a red circle"]).embeds)
    assert torch.equal(both.embeds[1:2], second.encode(pipe, ["a blue star"]).embeds)
    assert len(joint.parameters()) == len(first.parameters()) + len(second.parameters())
    with pytest.raises(ValueError, match="1 prompts for 2 adversaries"):
        joint.encode(pipe, ["a red circle"])
