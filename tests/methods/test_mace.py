"""MACE: closed-form refinement, attention-map LoRAs, fusion — on tiny pipelines and ToyWorld."""

import pytest
import torch

import ace_erasure
from ace_erasure.errors import ConfigError
from ace_erasure.methods import build_config
from ace_erasure.models.plumbing import cross_attention_layers

TINY = {"lora_steps": 2, "images": 2, "general": 20}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ACE_ERASURE_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_mace_edits_keys_and_values_and_leaves_the_pipeline(tiny_pipes, fast_world, family):
    pipe = tiny_pipes(family)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    processors = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    erasure = ace_erasure.erase(
        pipe, ["circle", "square"], method="mace", config=TINY, world=fast_world
    )
    layers = [name for name, _ in cross_attention_layers(pipe.unet)]
    assert set(erasure.edits) == {f"unet.{n}.{p}" for n in layers for p in ("to_k", "to_v")}
    assert [s.name for s in erasure.stages] == ["mace_refinement", "mace_lora", "mace_fusion"]
    assert len(erasure.stages[1].stats["losses"]) == 2  # one LoRA per concept
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in before.items())
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == processors


@pytest.mark.slow
def test_mace_erases_two_shapes_on_toyworld(toyworld_pipe, toyworld_judge):
    erasure = ace_erasure.erase(
        toyworld_pipe, ["star", "heart"], method="mace", config={"lora_steps": 10}
    )
    prompts = [
        f"a picture of a {c} {s}"
        for s in ("star", "heart", "circle")
        for c in ("red", "blue", "green", "yellow")
    ]
    with erasure.fuse(toyworld_pipe):
        labels = toyworld_judge.predict(ace_erasure.generate(toyworld_pipe, prompts, seed=500))[
            "shape"
        ]
    assert labels[:8].count("star") + labels[:8].count("heart") <= 1, labels
    assert labels[8:].count("circle") >= 3, labels


def test_bad_mace_configs():
    with pytest.raises(ConfigError, match="t_min < t_max"):
        build_config("mace", {"t_min": 500, "t_max": 100})
    with pytest.raises(ConfigError, match="lora_rank must be >= 1"):
        build_config("mace", {"lora_rank": 0})
