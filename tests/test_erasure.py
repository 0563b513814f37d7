"""The Erasure artefact: save / load, stock-diffusers round trip, apply / fuse handles, any
module of any component, refusal of another base model, and files validated on read."""

import json
import os
import stat

import numpy as np
import pytest
import torch

from ace_erasure import AceConfig, Erasure, erase
from ace_erasure.erasure import ModuleEdit
from ace_erasure.errors import AceError, WeightsError
from ace_erasure.models.plumbing import base_linear
from ace_erasure.testing import tiny_image

FAST = AceConfig(neighbours=1, gate_steps=1, gate_prompts=2)


def _random_edits(pipe, keys, rank=2, seed=0, gates=1):
    generator = torch.Generator().manual_seed(seed)
    edits = {}
    for key in keys:
        component, path = key.split(".", 1)
        out, inp = base_linear(getattr(pipe, component).get_submodule(path)).weight.shape
        edits[key] = ModuleEdit(
            torch.randn(rank, inp, generator=generator) * 0.3,
            torch.randn(out, rank, generator=generator) * 0.3,
            torch.rand(gates, generator=generator),
        )
    return edits


def _state(pipe):
    return {
        f"{c}.{k}": v.clone()
        for c in ("unet", "text_encoder")
        for k, v in getattr(pipe, c).state_dict().items()
    }


def test_lora_round_trip_through_stock_diffusers(tiny_pipes, tmp_path):
    for family in ("sd1", "sdxl"):
        pipe = tiny_pipes(family)
        base = tiny_image(pipe)
        erasure = erase(pipe, ["circle"], config=FAST)
        erasure.save(tmp_path / family)
        loaded = Erasure.load(tmp_path / family)
        assert loaded.base_fingerprint == erasure.base_fingerprint and loaded.rank == erasure.rank
        assert [s.name for s in loaded.stages] == [s.name for s in erasure.stages]
        for key in erasure.edits:
            assert torch.equal(loaded.delta(key), erasure.delta(key))
        flags = {n: p.requires_grad for n, p in pipe.unet.named_parameters()}
        with loaded.apply(pipe):
            ours = tiny_image(pipe)
        assert np.array_equal(tiny_image(pipe), base)
        assert {n: p.requires_grad for n, p in pipe.unet.named_parameters()} == flags
        pipe.load_lora_weights(str(tmp_path / family))  # stock diffusers, no ace-erasure code
        stock = tiny_image(pipe)
        pipe.unload_lora_weights()
        assert not np.array_equal(ours, base)
        assert np.array_equal(stock, ours)
        fused = erasure.fuse(pipe)
        assert np.abs(tiny_image(pipe) - ours).max() < 1e-4  # merged: same images up to rounding
        fused.remove()
        assert np.array_equal(tiny_image(pipe), base)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_any_module_of_any_component_with_gates(tiny_pipes, tmp_path, family):
    """Self-attention, feed-forward and text-encoder modules (ESD-u, a text-encoder LoRA) are
    expressible, reload in stock diffusers to the same images, and fuse / remove exactly."""
    pipe = tiny_pipes(family)
    base, before = tiny_image(pipe), _state(pipe)
    keys = [
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2",
        "text_encoder.encoder.layers.0.self_attn.q_proj",
        "text_encoder.encoder.layers.1.mlp.fc1",
    ]
    erasure = Erasure.create(
        pipe,
        _random_edits(pipe, keys, gates=2),
        concepts=(),
        method="test",
        config={},
        seed=0,
    )
    assert erasure.components == ["text_encoder", "unet"]
    erasure.save(tmp_path / "e")
    record = json.loads((tmp_path / "e" / "erasure.json").read_text())
    assert set(record["modules"]) == set(keys) and record["base_fingerprint"]["text_encoder"]
    with erasure.apply(pipe):
        ours = tiny_image(pipe)
    assert np.array_equal(tiny_image(pipe), base)
    pipe.load_lora_weights(str(tmp_path / "e"))
    stock = tiny_image(pipe)
    pipe.unload_lora_weights()
    assert not np.array_equal(ours, base) and np.array_equal(stock, ours)
    with erasure.fuse(pipe):
        after = _state(pipe)
        changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
        assert changed == {f"{k}.weight" for k in keys}
        assert np.abs(tiny_image(pipe) - ours).max() < 1e-4
    assert all(torch.equal(v, before[k]) for k, v in _state(pipe).items())


def test_gates_scale_row_blocks_and_are_folded_into_the_lora():
    edit = ModuleEdit(torch.ones(1, 3), torch.ones(4, 1), torch.tensor([0.5, 2.0]))
    assert edit.delta()[:, 0].tolist() == [0.5, 0.5, 2.0, 2.0]
    down, up = edit.lora_factors()
    assert torch.equal(up[:, 0], torch.tensor([0.5, 0.5, 2.0, 2.0])) and torch.equal(
        down, edit.down
    )
    with pytest.raises(ValueError, match="gates do not divide"):
        ModuleEdit(torch.ones(1, 3), torch.ones(4, 1), torch.ones(3))
    with pytest.raises(ValueError, match="factors"):
        ModuleEdit(torch.ones(2, 3), torch.ones(4, 1))


def test_erasures_compose_and_scale(tiny_pipes):
    pipe = tiny_pipes("sd1")
    base = tiny_image(pipe)
    first = erase(pipe, ["circle"], config=FAST)
    second = erase(pipe, ["square"], config=FAST)
    a, b = first.apply(pipe), second.apply(pipe)
    assert sorted(pipe.get_active_adapters()) == sorted([a.adapter_name, b.adapter_name])
    pipe.set_adapters([a.adapter_name, b.adapter_name], adapter_weights=[0.0, 0.0])
    assert np.abs(tiny_image(pipe) - base).max() < 1e-5
    a.remove()
    b.remove()
    b.remove()  # removing twice is harmless
    assert np.array_equal(tiny_image(pipe), base)
    with pytest.raises(AceError, match="already loaded"), first.apply(pipe):
        first.apply(pipe)
    assert np.array_equal(tiny_image(pipe), base)


def test_same_seed_same_bytes(tiny_pipes, tmp_path):
    pipe = tiny_pipes("sd1")
    erase(pipe, ["circle"], config=FAST, seed=3).save(tmp_path / "a")
    erase(pipe, ["circle"], config=FAST, seed=3).save(tmp_path / "b")
    a = (tmp_path / "a" / "pytorch_lora_weights.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "pytorch_lora_weights.safetensors").read_bytes()


def test_erasure_for_another_model_is_refused_naming_the_part(tiny_pipes, tmp_path):
    from ace_erasure.testing import tiny_pipeline

    pipe = tiny_pipes("sd1")
    erase(pipe, ["circle"], config=FAST).save(tmp_path / "e")
    loaded = Erasure.load(tmp_path / "e")
    with pytest.raises(WeightsError, match="its text_encoder, unet differ"):
        loaded.apply(tiny_pipeline("sd1", seed=1))
    with pytest.raises(WeightsError, match="another model"):
        loaded.apply(tiny_pipes("sd2"))
    # only the text encoder differs: the UNet's fingerprint alone would not see it
    other = tiny_pipeline("sd1", seed=0)
    with torch.no_grad():
        other.text_encoder.final_layer_norm.weight.mul_(1.5)
    with pytest.raises(WeightsError, match="its text_encoder differ"):
        loaded.apply(other)
    with loaded.apply(other, force=True):  # the user's explicit override
        pass
    # a float16 copy of the same model is the same base model
    half = tiny_pipeline("sd1", seed=0).to(torch.float16)
    loaded.check_compatible(half)


def test_format_1_records_are_read(tiny_pipes, tmp_path):
    pipe = tiny_pipes("sd1")
    erase(pipe, ["circle"], config=FAST).save(tmp_path / "e")
    path = tmp_path / "e" / "erasure.json"
    record = json.loads(path.read_text())
    record["format_version"] = 1
    record["base_fingerprint"] = record["base_fingerprint"]["unet"]
    for key in ("stages", "modules", "method_data", "method_tensors"):
        record.pop(key)
    path.write_text(json.dumps(record))
    loaded = Erasure.load(tmp_path / "e")
    assert list(loaded.base_fingerprint) == ["unet"]
    loaded.check_compatible(pipe)


def test_bad_erasure_folders(tiny_pipes, tmp_path):
    folder = tmp_path / "e"
    erase(tiny_pipes("sd1"), ["circle"], config=FAST).save(folder)
    with pytest.raises(WeightsError, match="does not exist"):
        Erasure.load(tmp_path / "missing")
    lora = folder / "pytorch_lora_weights.safetensors"
    good = lora.read_bytes()
    lora.write_bytes(good[: len(good) // 2])
    with pytest.raises(WeightsError, match="corrupt"):
        Erasure.load(folder)
    lora.write_bytes(b"not a safetensors file at all")
    with pytest.raises(WeightsError, match="corrupt"):
        Erasure.load(folder)
    lora.write_bytes(good)
    path = folder / "erasure.json"
    record = json.loads(path.read_text())
    bad_records = [
        ({k: v for k, v in record.items() if k != "library"}, "not written by ace-erasure"),
        ([1, 2, 3], "must hold a JSON object"),
        ({**record, "concepts": "circle"}, "'concepts' has the wrong type"),
        ({**record, "seed": "zero"}, "'seed' has the wrong type"),
        ({**record, "concepts": [{"nom": "circle"}]}, "concept entry is malformed"),
        ({**record, "stages": [{"seconds": 1}]}, "'stages' has the wrong shape"),
        ({k: v for k, v in record.items() if k != "family"}, "lacks the field 'family'"),
    ]
    for bad, message in bad_records:
        path.write_text(json.dumps(bad))
        with pytest.raises(WeightsError, match=message):
            Erasure.load(folder)
    path.write_text("{broken")
    with pytest.raises(WeightsError, match="corrupt"):
        Erasure.load(folder)


def test_save_is_atomic_and_refuses_to_overwrite(tiny_pipes, tmp_path):
    erasure = erase(tiny_pipes("sd1"), ["circle"], config=FAST)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(AceError, match="already exists"):
        erasure.save(out)
    assert (out / "keep.txt").read_text() == "user data"
    erasure.save(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "erasure.json",
        "pytorch_lora_weights.safetensors",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind


def test_saved_files_follow_the_umask(tiny_pipes, tmp_path):
    previous = os.umask(0o022)
    try:
        erase(tiny_pipes("sd1"), ["circle"], config=FAST).save(tmp_path / "e")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "e").stat().st_mode) == 0o755
    for path in (tmp_path / "e").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
