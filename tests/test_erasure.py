"""ACE stage 1 and the Erasure artefact on tiny random pipelines of every family."""

import json

import numpy as np
import pytest
import torch

from ace_erasure import AceConfig, Concept, Erasure, erase
from ace_erasure.errors import AceError, ConfigError, WeightsError
from ace_erasure.models.plumbing import (
    cross_attention_layers,
    encode_prompts,
    token_span,
    tokenizers,
)

FAST = AceConfig(neighbours=1, gate_steps=1, gate_prompts=2)


def _image(pipe, prompt="a red circle"):
    out = pipe(
        prompt,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        height=32,
        width=32,
    )
    return np.asarray(out.images[0])


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_erase_changes_only_cross_attention_keys_and_values(tiny_pipes, family):
    pipe = tiny_pipes(family)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    text_before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    erasure = erase(pipe, ["circle"], config=FAST)
    assert {
        k: torch.equal(v, pipe.unet.state_dict()[k]) for k, v in before.items()
    } == dict.fromkeys(before, True)
    erasure.fuse(pipe)
    changed = {k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, before[k])}
    expected = {
        f"{name}.{p}.weight"
        for name, _ in cross_attention_layers(pipe.unet)
        for p in ("to_k", "to_v")
    }
    assert changed == expected
    assert all(torch.equal(v, pipe.text_encoder.state_dict()[k]) for k, v in text_before.items())
    erasure.remove(pipe)
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in before.items())


def test_edit_moves_concept_keys_to_the_anchor_and_preserve_weight_protects_others(tiny_pipes):
    pipe = tiny_pipes("sd1")
    tok = tokenizers(pipe)[0]
    concept, anchor, other = encode_prompts(
        pipe, ["a photo of a circle", "a photo of a", "a photo of a square"]
    )
    span = token_span(tok, "a photo of a", "a photo of a circle")
    name, module = cross_attention_layers(pipe.unet)[0]
    w = module.to_k.weight.detach().double()
    t, a = (
        concept[span.start].double(),
        anchor[span.start].double(),
    )  # a: the EOS where it was removed

    def edited(preserve_weight: float) -> torch.Tensor:
        config = AceConfig(
            neighbours=0,
            gate="none",
            ridge=1e-4,
            preserve_weight=preserve_weight,
            suffix_weight=0.0,
        )
        return w + erase(pipe, ["circle"], config=config).delta(f"{name}.to_k").double()

    free = edited(0.0)
    # templates map the word to different anchor positions, so the fit is a compromise, not exact
    assert (free @ t - w @ a).norm() < 0.3 * (w @ t - w @ a).norm()
    change = [((edited(pw) - w) @ other.double().T).norm() for pw in (0.0, 1.0, 10.0)]
    assert change[0] > change[1] > change[2]


def test_lora_round_trip_through_stock_diffusers(tiny_pipes, tmp_path):
    for family in ("sd1", "sdxl"):
        pipe = tiny_pipes(family)
        base = _image(pipe)
        erasure = erase(pipe, ["circle"], config=FAST)
        erasure.save(tmp_path / family)
        loaded = Erasure.load(tmp_path / family)
        assert loaded.base_fingerprint == erasure.base_fingerprint and loaded.rank == erasure.rank
        for name in erasure.up:
            assert torch.equal(loaded.delta(name), erasure.delta(name))
        loaded.apply(pipe)
        ours = _image(pipe)
        loaded.remove(pipe)
        assert np.array_equal(_image(pipe), base)
        pipe.load_lora_weights(str(tmp_path / family))  # stock diffusers, no ace-erasure code
        stock = _image(pipe)
        pipe.unload_lora_weights()
        assert not np.array_equal(ours, base)
        assert np.array_equal(stock, ours)
        erasure.fuse(pipe)
        assert (
            np.abs(_image(pipe) - ours).max() < 1e-4
        )  # merged weights: same images up to rounding
        erasure.remove(pipe)
        assert np.array_equal(_image(pipe), base)


def test_erasures_compose_and_scale(tiny_pipes):
    pipe = tiny_pipes("sd1")
    base = _image(pipe)
    first = erase(pipe, ["circle"], config=FAST)
    second = erase(pipe, ["square"], config=FAST)
    a, b = first.apply(pipe), second.apply(pipe)
    assert sorted(pipe.get_active_adapters()) == sorted([a, b])
    pipe.set_adapters([a, b], adapter_weights=[0.0, 0.0])
    assert np.abs(_image(pipe) - base).max() < 1e-5
    first.remove(pipe)
    second.remove(pipe)
    assert np.array_equal(_image(pipe), base)


def test_multi_concept_single_solve_and_gate_modes(tiny_pipes):
    pipe = tiny_pipes("sd1")
    many = erase(pipe, ["circle", "square", "triangle"], config=FAST)
    assert [c.name for c in many.concepts] == ["circle", "square", "triangle"]
    assert many.stats["target_vectors"] > 0
    heads = erase(pipe, ["circle"], config=AceConfig(neighbours=0, gate="head", gate_steps=1))
    name, module = cross_attention_layers(pipe.unet)[0]
    assert len(heads.gates[name]) == module.heads
    assert all(0.0 <= g <= 1.0 for gates in heads.gates.values() for g in gates)
    ungated = erase(pipe, ["circle"], config=AceConfig(neighbours=0, gate="none"))
    assert all(g == [1.0] for g in ungated.gates.values())


def test_same_seed_same_bytes(tiny_pipes, tmp_path):
    pipe = tiny_pipes("sd1")
    erase(pipe, ["circle"], config=FAST, seed=3).save(tmp_path / "a")
    erase(pipe, ["circle"], config=FAST, seed=3).save(tmp_path / "b")
    a = (tmp_path / "a" / "pytorch_lora_weights.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "pytorch_lora_weights.safetensors").read_bytes()


def test_erasure_for_another_model_is_refused(tiny_pipes, tmp_path):
    from ace_erasure.testing import tiny_pipeline

    erase(tiny_pipes("sd1"), ["circle"], config=FAST).save(tmp_path / "e")
    other_weights = tiny_pipeline("sd1", seed=1)
    with pytest.raises(WeightsError, match="made for base model"):
        Erasure.load(tmp_path / "e").apply(other_weights)
    with pytest.raises(WeightsError, match="another model"):
        Erasure.load(tmp_path / "e").apply(tiny_pipes("sd2"))


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
    record = json.loads((folder / "erasure.json").read_text())
    (folder / "erasure.json").write_text(
        json.dumps({k: v for k, v in record.items() if k != "library"})
    )
    with pytest.raises(WeightsError, match="not written by ace-erasure"):
        Erasure.load(folder)
    (folder / "erasure.json").write_text("{broken")
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


def test_bad_configs_are_clear_errors(tiny_pipes):
    pipe = tiny_pipes("sd1")
    with pytest.raises(ConfigError, match="gate"):
        erase(pipe, ["circle"], config={"gate": "pixel"})
    with pytest.raises(ConfigError, match="unknown ace option"):
        erase(pipe, ["circle"], config={"rnak": 3})
    for bad, word in (
        ({"encode_dtype": "float8"}, "encode_dtype"),
        ({"gate_max": 0}, "gate_max"),
        ({"preserve_rounds": -1}, "preserve_rounds"),
        ({"preserve_focus": -1.0}, "preserve_focus"),
    ):
        with pytest.raises(ConfigError, match=word):
            erase(pipe, ["circle"], config=bad)
    with pytest.raises(ConfigError, match="unknown method"):
        erase(pipe, ["circle"], method="magic")
    with pytest.raises(ConfigError, match="singular"):
        erase(
            pipe,
            [Concept("circle")],
            config=AceConfig(
                ridge=0.0, preserve_weight=0.0, neighbours=0, gate="none", suffix_weight=0.0
            ),
        )


def test_empty_anchor_modes(tiny_pipes):
    pipe = tiny_pipes("sd1")

    def edit(concept: Concept, empty_anchor: str) -> torch.Tensor:
        config = AceConfig(neighbours=0, gate="none", empty_anchor=empty_anchor, anchor_push=0.0)
        erasure = erase(pipe, [concept], config=config)
        return torch.cat([erasure.delta(k).flatten() for k in sorted(erasure.up)])

    thing = Concept("circle", kind="object")
    assert AceConfig().empty_anchor == "prompt"
    assert not torch.equal(edit(thing, "prompt"), edit(thing, "unconditional"))
    # an explicit anchor is used as given, whatever the mode
    anchored = Concept("circle", kind="object", anchor="square")
    assert torch.equal(edit(anchored, "prompt"), edit(anchored, "unconditional"))


def test_automatic_anchor_push_for_explicit_content_and_unconditional_anchors(tiny_pipes):
    pipe = tiny_pipes("sd1")

    def edit(concept: Concept, **options) -> torch.Tensor:
        config = AceConfig(neighbours=0, gate="none", **options)
        erasure = erase(pipe, [concept], config=config)
        return torch.cat([erasure.delta(k).flatten() for k in sorted(erasure.up)])

    explicit, thing = Concept("gore", kind="explicit"), Concept("circle", kind="object")
    assert torch.equal(edit(explicit), edit(explicit, anchor_push=0.5))
    assert not torch.equal(edit(explicit), edit(explicit, anchor_push=0.0))
    assert torch.equal(edit(thing), edit(thing, anchor_push=0.0))
    # an object mapped onto the unconditional prompt is pushed too
    assert torch.equal(
        edit(thing, empty_anchor="unconditional"),
        edit(thing, empty_anchor="unconditional", anchor_push=0.5),
    )
    assert erase(pipe, [explicit, thing]).stats["anchor_push"] == {"gore": 0.5, "circle": 0.0}
    # a pushed edit moves the concept further than an unpushed one
    assert edit(explicit).norm() > edit(explicit, anchor_push=0.0).norm()


def test_saved_files_follow_the_umask(tiny_pipes, tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        erase(tiny_pipes("sd1"), ["circle"], config=FAST).save(tmp_path / "e")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "e").stat().st_mode) == 0o755
    for path in (tmp_path / "e").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name


def test_query_run_works_with_any_scheduler_and_restores_it(tiny_pipes):
    from diffusers import PNDMScheduler

    pipe = tiny_pipes("sd1")
    original = pipe.scheduler
    pipe.scheduler = PNDMScheduler.from_config(original.config)
    try:
        erasure = erase(pipe, ["circle"], config=AceConfig(neighbours=0, gate_steps=1))
        assert isinstance(pipe.scheduler, PNDMScheduler)
        assert all(0.0 <= g <= 1.0 for gates in erasure.gates.values() for g in gates)
    finally:
        pipe.scheduler = original
