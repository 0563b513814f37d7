"""The training loop: seeded, checkpointed, and a killed run resumes to the same bytes."""

import pytest
import torch

from ace_erasure.errors import ConfigError
from ace_erasure.training.loop import Trainer


def _problem():
    weight = torch.nn.Parameter(torch.zeros(3, 4))
    target = torch.arange(12.0).reshape(3, 4) / 12

    def step(_step, generator):
        x = torch.randn(8, 4, generator=generator)
        loss = ((x @ weight.T) - (x @ target.T)).square().mean()
        return {"loss": loss, "norm": float(weight.detach().norm())}

    return weight, step


class Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_bytes(tmp_path):
    weight, step = _problem()
    Trainer({"w": weight}, steps=7, lr=0.1, seed=3).run(step)
    uninterrupted = weight.detach().clone()

    weight, step = _problem()

    def dies_at_5(i, generator):
        if i == 5:
            raise Killed
        return step(i, generator)

    with pytest.raises(Killed):
        Trainer(
            {"w": weight}, steps=7, lr=0.1, seed=3, checkpoint_dir=tmp_path, checkpoint_every=2
        ).run(dies_at_5)
    weight, step = _problem()  # a new process: fresh parameters, resumed from step 4
    trainer = Trainer(
        {"w": weight}, steps=7, lr=0.1, seed=3, checkpoint_dir=tmp_path, checkpoint_every=2
    )
    state = trainer.run(step)
    assert torch.equal(weight.detach(), uninterrupted)
    assert state.step == 7 and len(state.log) == 7 and state.log[-1]["loss"] < state.log[0]["loss"]
    assert not list(tmp_path.glob("*.tmp"))


def test_resuming_another_run_is_refused(tmp_path):
    weight, step = _problem()
    Trainer(
        {"w": weight}, steps=2, lr=0.1, seed=3, checkpoint_dir=tmp_path, checkpoint_every=1
    ).run(step)
    with pytest.raises(ConfigError, match="holds another run"):
        Trainer({"w": weight}, steps=4, lr=0.1, seed=4, checkpoint_dir=tmp_path).run(step)


def test_bad_settings_and_diverging_losses_are_errors():
    weight, _ = _problem()
    with pytest.raises(ConfigError, match="finite lr"):
        Trainer({"w": weight}, steps=2, lr=float("nan"), seed=0)
    with pytest.raises(ConfigError, match="loss became nan"):
        Trainer({"w": weight}, steps=2, lr=0.1, seed=0).run(
            lambda i, g: {"loss": weight.sum() * float("nan")}
        )
