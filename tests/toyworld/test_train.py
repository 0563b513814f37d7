"""ToyWorld training: stages resume from checkpoints and give the same weights as one run."""

import json

import pytest
from safetensors.torch import load_file

from ace_erasure.errors import ConfigError
from ace_erasure.toyworld.judge import JudgeTrainConfig
from ace_erasure.toyworld.train import ToyWorldTrainConfig, train_toyworld


def tiny_config(**overrides) -> ToyWorldTrainConfig:
    return ToyWorldTrainConfig(
        n_images=64,
        vae_channels=(8, 16, 16),
        vae_steps=2,
        vae_batch_size=4,
        text_hidden=16,
        text_layers=1,
        unet_channels=(8, 16, 16),
        unet_layers_per_block=1,
        steps=4,
        batch_size=4,
        warmup_steps=2,
        checkpoint_every=2,
        judge=JudgeTrainConfig(steps=2, batch_size=8, width=8, eval_images=16),
        **overrides,
    )


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_interrupted_training_resumes_to_the_same_model(tmp_path):
    whole = train_toyworld(tiny_config(), tmp_path / "whole")

    def stop_at_three(stage, step, total, info):
        if stage == "unet" and step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_toyworld(tiny_config(), tmp_path / "resumed", progress=stop_at_three)
    state = json.loads((tmp_path / "resumed" / "_work" / "unet_state.json").read_text())
    assert state["step"] == 2
    resumed = train_toyworld(tiny_config(), tmp_path / "resumed")
    a = load_file(tmp_path / "whole" / "_work" / "unet_final.safetensors")
    b = load_file(tmp_path / "resumed" / "_work" / "unet_final.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert whole["files"] == resumed["files"]  # same bytes, same sha256 for every shipped file
    assert (tmp_path / "whole" / "model" / "model_index.json").is_file()
    assert {"model/unet/diffusion_pytorch_model.safetensors", "judge/judge.safetensors"} <= set(
        whole["files"]
    )


def test_resuming_with_another_config_is_refused(tmp_path):
    def stop_at_once(stage, step, total, info):
        raise Interrupt

    with pytest.raises(Interrupt):  # a run stopped at its first step: its config is recorded
        train_toyworld(tiny_config(), tmp_path / "run", progress=stop_at_once)
    with pytest.raises(ConfigError, match="different config"):
        train_toyworld(tiny_config(seed=1), tmp_path / "run")
    with pytest.raises(ConfigError, match="multiple of 4"):
        train_toyworld(tiny_config(image_size=30), tmp_path / "other")
