"""Gated LoRA adapters trained in place: the teacher is the disabled adapter, the factors start
from an erasure's, and removing the adapter leaves the pipeline as it was."""

import pytest
import torch

from ace_erasure import AceConfig, erase
from ace_erasure.erasure import Erasure
from ace_erasure.errors import ConfigError
from ace_erasure.models.conditioning import encode_conditioning, predict_noise
from ace_erasure.training import lora
from ace_erasure.training.loop import Trainer


def _noise(pipe, cond):
    latents = torch.randn(len(cond), 4, 8, 8, generator=torch.Generator().manual_seed(1))
    return predict_noise(pipe, latents, torch.full((len(cond),), 400), cond)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_start_from_an_erasure_and_disable_for_the_teacher(tiny_pipes, family):
    pipe = tiny_pipes(family)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    flags = {n: p.requires_grad for n, p in pipe.unet.named_parameters()}
    erasure = erase(pipe, ["circle"], config=AceConfig(neighbours=0, gate="head", gate_steps=1))
    with torch.no_grad():
        cond = encode_conditioning(pipe, ["a red circle", "a blue star"])
        base = _noise(pipe, cond)
        with erasure.fuse(pipe):
            erased = _noise(pipe, cond)
    adapter = lora.attach(pipe, list(erasure.edits), erasure.rank, init=erasure.edits)
    try:
        with torch.no_grad():
            student = _noise(pipe, cond)
            with adapter.disabled():
                teacher = _noise(pipe, cond)
        assert torch.equal(teacher, base)
        assert torch.allclose(student, erased, atol=1e-5) and not torch.allclose(student, base)
        edits = adapter.edits()
        assert all(torch.equal(edits[k].gate, erasure.edits[k].gate) for k in edits)
        assert all(torch.allclose(edits[k].delta(), erasure.delta(k), atol=1e-6) for k in edits)
        names = set(adapter.gate_parameters())
        assert names == {f"{k}.gate" for k in erasure.edits}
    finally:
        adapter.remove()
    after = pipe.unet.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], v) for k, v in before.items())
    assert not hasattr(pipe.unet, "peft_config")
    assert {
        n: p.requires_grad for n, p in pipe.unet.named_parameters()
    } == flags  # PEFT's freezing undone


def test_training_moves_the_student_towards_the_anchor_and_exports_an_erasure(tiny_pipes, tmp_path):
    pipe = tiny_pipes("sd1")
    keys = [k for k in erase(pipe, ["circle"], config=AceConfig(neighbours=0, gate="none")).edits]
    adapter = lora.attach(pipe, keys, 2, seed=0)
    with torch.no_grad():
        concept = encode_conditioning(pipe, ["a red circle"])
        anchor = encode_conditioning(pipe, ["a red"])
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    with torch.no_grad(), adapter.disabled():
        target = predict_noise(pipe, latents, t, anchor)

    def step(_step, _generator):
        loss = (predict_noise(pipe, latents, t, concept) - target).square().mean()
        return {"loss": loss}

    try:
        params = adapter.factor_parameters() | adapter.gate_parameters()
        state = Trainer(params, steps=30, lr=5e-2, seed=0).run(step)
        assert state.log[-1]["loss"] < 0.5 * state.log[0]["loss"]
        edits = adapter.edits()
        assert any(float(e.gate.sub(1).abs().max()) > 0 for e in edits.values())  # gates trained
        with torch.no_grad():
            trained = predict_noise(pipe, latents, t, concept)
    finally:
        adapter.remove()
    exported = Erasure.create(pipe, edits, concepts=(), method="test", config={}, seed=0)
    with torch.no_grad(), exported.fuse(pipe):
        assert torch.allclose(predict_noise(pipe, latents, t, concept), trained, atol=1e-5)


def test_bad_adapters_are_clear_errors(tiny_pipes):
    pipe = tiny_pipes("sd1")
    with pytest.raises(ConfigError, match="rank must be"):
        lora.attach(pipe, ["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"], 0)
    with pytest.raises(ConfigError, match="no text_encoder_2"):
        lora.attach(pipe, ["text_encoder_2.encoder.layers.0.mlp.fc1"], 1)
