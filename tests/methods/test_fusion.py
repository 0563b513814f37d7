"""Closed-form fusion of separately made erasures into one LoRA."""

import pytest
import torch

import ace_erasure
from ace_erasure import AceConfig
from ace_erasure.erasure import Erasure, ModuleEdit
from ace_erasure.errors import ConfigError

FAST = AceConfig(neighbours=0, gate="none")


@pytest.mark.slow
def test_fused_erasure_erases_both_concepts_on_toyworld(toyworld_pipe, toyworld_judge):
    pipe, judge = toyworld_pipe, toyworld_judge
    circle = ace_erasure.erase(pipe, ["circle"], config=FAST)
    star = ace_erasure.erase(pipe, ["star"], config=FAST)
    fused = ace_erasure.combine(pipe, [circle, star])
    assert [c.name for c in fused.concepts] == ["circle", "star"] and fused.method == "fusion"
    assert set(fused.edits) == set(circle.edits)  # one LoRA on the same modules
    colours = ("red", "blue", "green", "yellow")
    prompts = [f"a picture of a {c} {s}" for s in ("circle", "star", "heart") for c in colours]
    with fused.fuse(pipe):
        labels = judge.predict(ace_erasure.generate(pipe, prompts, seed=300))["shape"]
    assert labels[:8].count("circle") + labels[:8].count("star") <= 1, labels
    assert labels[8:].count("heart") >= 3, labels  # a concept neither erased is kept


def test_fusion_refuses_what_it_cannot_fuse(tiny_pipes):
    pipe = tiny_pipes("sd1")
    circle = ace_erasure.erase(pipe, ["circle"], config=FAST)
    with pytest.raises(ConfigError, match="at least two"):
        ace_erasure.combine(pipe, [circle])
    with pytest.raises(ConfigError, match="same concept"):
        ace_erasure.combine(pipe, [circle, ace_erasure.erase(pipe, ["circle"], config=FAST)])
    key = "text_encoder.encoder.layers.0.mlp.fc1"
    weight = pipe.text_encoder.get_submodule(key.split(".", 1)[1]).weight
    text = Erasure.create(
        pipe,
        {key: ModuleEdit(torch.zeros(1, weight.shape[1]), torch.zeros(weight.shape[0], 1))},
        concepts=(ace_erasure.Concept("square"),),
        method="test",
        config={},
        seed=0,
    )
    refused = r"not a cross-attention key or value.*finetune_unet_rank=0"
    with pytest.raises(ConfigError, match=refused):
        ace_erasure.combine(pipe, [circle, text])
