"""The per-token gate processor: limits, round trip, and restoring the original processors."""

import numpy as np
import pytest
import torch

import ace_erasure
from ace_erasure import AceConfig, Erasure, erase
from ace_erasure.errors import AceError
from ace_erasure.methods.ace.token_gate import (
    BASIS,
    TokenGateProcessor,
    concept_subspace,
    install,
    mask_parameters,
)
from ace_erasure.models.plumbing import cross_attention_layers
from ace_erasure.testing import tiny_image

CONFIG = AceConfig(neighbours=1, gate_steps=1, gate_prompts=2, mode="token_gate")


def _install(pipe, erasure, threshold, sharpness=1e4):
    processors = dict(pipe.unet.attn_processors)
    for layer, _ in cross_attention_layers(pipe.unet):
        (k_down, k_up), (v_down, v_up) = (
            erasure.edits[f"unet.{layer}.{p}"].lora_factors() for p in ("to_k", "to_v")
        )
        processors[f"{layer}.processor"] = TokenGateProcessor(
            k_up, k_down, v_up, v_down, erasure.method_tensors[BASIS], threshold, sharpness
        )
    pipe.unet.set_attn_processor(processors)


def test_mask_limits_equal_lora_and_base(tiny_pipes):
    pipe = tiny_pipes("sd1")
    base = tiny_image(pipe)
    original = dict(pipe.unet.attn_processors)
    erasure = erase(pipe, ["circle"], config=CONFIG)
    with erasure.fuse(pipe):
        lora = tiny_image(pipe)
    _install(pipe, erasure, threshold=-1.0)  # every token in the mask: the LoRA
    all_tokens = tiny_image(pipe)
    _install(pipe, erasure, threshold=2.0)  # no token in the mask: the base model
    no_tokens = tiny_image(pipe)
    pipe.unet.set_attn_processor(original)
    assert np.abs(all_tokens - lora).max() < 1e-4
    assert np.abs(no_tokens - base).max() < 1e-5
    assert np.abs(lora - base).max() > 1e-3


def test_token_gate_round_trip_and_remove(tiny_pipes, tmp_path):
    pipe = tiny_pipes("sd1")
    base = tiny_image(pipe)
    erasure = erase(pipe, ["circle"], config=CONFIG)
    assert erasure.method_data["mode"] == "token_gate"
    erasure.save(tmp_path / "e")
    assert (tmp_path / "e" / "method_tensors.safetensors").is_file()
    loaded = Erasure.load(tmp_path / "e")
    threshold = loaded.method_data["token_gate"]["threshold"]
    assert threshold == pytest.approx(erasure.method_data["token_gate"]["threshold"])
    assert torch.equal(loaded.method_tensors[BASIS], erasure.method_tensors[BASIS])
    processors = dict(pipe.unet.attn_processors)
    with ace_erasure.apply(loaded, pipe):  # the method's own way: the token-gate processors
        assert any(isinstance(p, TokenGateProcessor) for p in pipe.unet.attn_processors.values())
        gated = tiny_image(pipe)
        with pytest.raises(AceError, match="already installed"):
            install(pipe, loaded)
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == {
        k: type(v) for k, v in processors.items()
    }
    assert np.array_equal(tiny_image(pipe), base)
    assert not np.array_equal(gated, base)


def test_concept_subspace_prefers_target_directions():
    target = torch.diag(torch.tensor([1.0, 1.0, 10.0, 1.0], dtype=torch.float64))
    preserve = torch.eye(4, dtype=torch.float64)
    basis = concept_subspace(target, preserve, 1)
    assert abs(float(basis[2, 0])) == pytest.approx(1.0)
    threshold, sharpness = mask_parameters(basis, target, preserve)
    assert 0.25 < threshold < 10 / 13 and sharpness > 0
