"""ACE stage 2 on tiny pipelines: it trains the stage-1 factors and gates, the result is a
standard LoRA, the pipeline is left as it was, and a killed run resumes to the same bytes."""

import numpy as np
import pytest
import torch

from ace_erasure import AceConfig, Erasure, erase
from ace_erasure.concepts import Concept
from ace_erasure.errors import ConfigError
from ace_erasure.methods.ace import finetune as stage2
from ace_erasure.methods.ace.finetune import PreserveFocus, PreservePrompts
from ace_erasure.testing import tiny_image

TINY = dict(
    neighbours=0,
    gate_steps=1,
    stage=2,
    finetune_steps=3,
    finetune_images=2,
    finetune_preserve_images=2,
    finetune_batch=2,
    adversarial_every=2,
    adversarial_steps=1,
    adversarial_pool=1,
    adversarial_preserve=True,
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ACE_ERASURE_CACHE", str(tmp_path / "cache"))


def _assert_stock_diffusers_draws_the_same(pipe, erasure, tmp_path, base) -> None:
    """Saved, the erasure loads in stock diffusers to the images our ``apply`` gives (not the
    base's), and unloading restores the base image."""
    erasure.save(tmp_path / "e")
    with Erasure.load(tmp_path / "e").apply(pipe):
        ours = tiny_image(pipe)
    # stock diffusers (PEFT) freezes the base weights and leaves them frozen after unloading;
    # the session's shared pipeline must stay as other tests expect it
    trainable = [p for p in pipe.unet.parameters() if p.requires_grad]
    pipe.load_lora_weights(str(tmp_path / "e"))
    stock = tiny_image(pipe)
    pipe.unload_lora_weights()
    for p in trainable:
        p.requires_grad_(True)
    assert np.array_equal(stock, ours) and not np.array_equal(ours, base)
    assert np.array_equal(tiny_image(pipe), base)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_stage_two_trains_the_factors_and_leaves_a_standard_lora(
    tiny_pipes, fast_world, tmp_path, family
):
    pipe = tiny_pipes(family)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    base = tiny_image(pipe)
    closed = erase(pipe, ["circle"], config=AceConfig(**TINY | {"stage": 1}), world=fast_world)
    tuned = erase(pipe, ["circle"], config=AceConfig(**TINY), world=fast_world)
    assert [s.name for s in tuned.stages] == [
        "stage0_targets",
        "stage1_closed_form",
        "stage2_finetune",
    ]
    record = tuned.stages[2].stats
    assert len(record["losses"]) == 3 and record["adversarial_rounds"] == 2
    assert set(record["losses"][0]) == {"loss", "erase", "adversarial", "preserve", "gate"}
    changed = [k for k in closed.edits if not torch.allclose(tuned.delta(k), closed.delta(k))]
    assert changed and any(
        not torch.equal(tuned.edits[k].gate, e.gate) for k, e in closed.edits.items()
    )
    # and, by default, a LoRA on the UNet's linears outside cross-attention beside them
    assert record["unet_modules"] == len(set(tuned.edits) - set(closed.edits)) > 0
    assert set(pipe.unet.state_dict()) == set(before)  # the adapter is gone
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in before.items())
    _assert_stock_diffusers_draws_the_same(pipe, tuned, tmp_path, base)


def test_unedited_images_are_cached(tiny_pipes, tmp_path):
    pipe = tiny_pipes("sd1")
    first = stage2.draw_latents(
        pipe, ["a red circle", "a blue star"], [1, 2], steps=2, guidance=2.0
    )
    files = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 2
    again = stage2.draw_latents(
        pipe, ["a red circle", "a blue star"], [1, 2], steps=2, guidance=2.0
    )
    assert torch.equal(first, again)
    files[0].write_bytes(b"corrupt")  # a corrupt entry is drawn again
    assert torch.equal(
        stage2.draw_latents(pipe, ["a red circle", "a blue star"], [1, 2], steps=2, guidance=2.0),
        first,
    )


class Killed(Exception):
    pass


@pytest.mark.parametrize("focus", [0.0, pytest.param(0.5, marks=pytest.mark.slow)])
def test_a_killed_stage_two_resumes_to_the_same_bytes(
    focus, tiny_pipes, fast_world, tmp_path, monkeypatch
):
    pipe = tiny_pipes("sd1")
    options = TINY | {"finetune_steps": 4, "checkpoint_every": 1}
    # with the preserve focus, the running damage per group is part of the state
    options |= {"finetune_preserve_focus": focus, "finetune_preserve_images": 6}
    circle = Concept("circle", preserve=("star", "square"))
    whole = erase(pipe, [circle], config=AceConfig(**options), world=fast_world)
    checkpoints = str(tmp_path / "ckpt")
    calls = {"n": 0}
    original = stage2.add_noise

    def dies_at_the_third_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(stage2, "add_noise", dies_at_the_third_step)
    with pytest.raises(Killed):
        erase(
            pipe,
            [circle],
            config=AceConfig(**options, checkpoint_dir=checkpoints),
            world=fast_world,
        )
    monkeypatch.setattr(stage2, "add_noise", original)
    resumed = erase(
        pipe, [circle], config=AceConfig(**options, checkpoint_dir=checkpoints), world=fast_world
    )
    assert resumed.stages[2].stats["losses"] == whole.stages[2].stats["losses"]
    assert all(torch.equal(resumed.delta(k), whole.delta(k)) for k in whole.edits)
    damage = whole.stages[2].stats["preserve_damage"]
    assert resumed.stages[2].stats["preserve_damage"] == damage and len(damage) >= 2
    # the folder holds circle's run: another concept with the same config does not continue it
    with pytest.raises(ConfigError, match="holds another run"):
        star = Concept("star", preserve=("circle", "square"))
        erase(
            pipe, [star], config=AceConfig(**options, checkpoint_dir=checkpoints), world=fast_world
        )


def test_preserve_images_go_where_the_edit_does_damage():
    keep = PreservePrompts(
        related={"hexagon": ["a hexagon"], "star": ["a star"], "heart": ["a heart"]},
        weights={"hexagon": 8.0, "star": 1.0, "heart": 1.0},
        general=["a house", "a tree"],
    )
    chosen = keep.choose(12)
    assert len(chosen) == 12 and chosen.count("a hexagon") > chosen.count("a star") >= 1
    assert chosen.count("a house") + chosen.count("a tree") == 6


def test_the_preserve_focus_draws_the_damaged_concepts_more_often():
    groups = ["hexagon"] * 2 + ["star"] * 2 + [""] * 4
    generator = torch.Generator().manual_seed(0)
    # focus 0 draws as stage 2 always did (uniformly, the same random numbers)
    plain = PreserveFocus(groups, 0.0)
    assert plain.pick(6, generator) == [
        int(i) for i in torch.randint(8, (6,), generator=torch.Generator().manual_seed(0))
    ]
    focus = PreserveFocus(groups, 1.0)
    # every group is drawn before any is measured
    assert {groups[i] for i in focus.pick(200, generator)} == {"hexagon", "star", ""}
    focus.record([0, 2, 4], torch.tensor([4.0, 1.0, 1.0]))
    assert focus.damage.tolist() == [1.0, 4.0, 1.0]  # groups sorted: "", hexagon, star
    focus.record([1], torch.tensor([2.0]))
    assert focus.damage[1].item() == pytest.approx(0.9 * 4.0 + 0.1 * 2.0)
    drawn = [groups[i] for i in focus.pick(600, generator)]
    assert drawn.count("hexagon") > 2.5 * drawn.count("star")
    half = PreserveFocus(groups, 0.5)
    half.damage = torch.tensor([0.0, 1.0, 0.0])
    drawn = [groups[i] for i in half.pick(2000, generator)]
    # the uniform half still reaches an undamaged group: 0.5 x 2/8; hexagon 0.5 x 2/8 + 0.5
    assert 0.09 < drawn.count("star") / 2000 < 0.16
    assert 0.57 < drawn.count("hexagon") / 2000 < 0.68
    with pytest.raises(ConfigError, match="finetune_preserve_focus must be in"):
        AceConfig(finetune_preserve_focus=1.5)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_text_encoder_lora_trains_beside_the_factors_and_loads_in_stock_diffusers(
    tiny_pipes, fast_world, tmp_path, family
):
    pipe = tiny_pipes(family)
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    before = [{k: v.clone() for k, v in e.state_dict().items()} for e in encoders]
    base = tiny_image(pipe)
    plain = erase(pipe, ["circle"], config=AceConfig(**TINY), world=fast_world)
    tuned = erase(
        pipe,
        ["circle"],
        config=AceConfig(**TINY | {"finetune_text_encoder_rank": 2}),
        world=fast_world,
    )
    text_keys = [k for k in tuned.edits if k.startswith("text_encoder")]
    assert text_keys and all(tuned.edits[k].rank <= 2 for k in text_keys)
    assert not any(k.startswith("text_encoder") for k in plain.edits)
    assert tuned.stages[2].stats["text_encoder_modules"] == len(text_keys)
    # the encoder's LoRA changes what the UNet factors learn too
    assert any(not torch.allclose(tuned.delta(k), plain.delta(k)) for k in plain.edits)
    for encoder, state in zip(encoders, before):  # the hooks are gone, the weights as they were
        assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in state.items())
        linears = [m for m in encoder.modules() if isinstance(m, torch.nn.Linear)]
        assert not any(m._forward_hooks for m in linears)
    assert np.array_equal(tiny_image(pipe), base)
    _assert_stock_diffusers_draws_the_same(pipe, tuned, tmp_path, base)


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_a_unet_lora_outside_cross_attention_trains_and_loads_in_stock_diffusers(
    tiny_pipes, fast_world, tmp_path, family
):
    pipe = tiny_pipes(family)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    base = tiny_image(pipe)
    options = TINY | {"finetune_unet_rank": 0}
    plain = erase(pipe, ["circle"], config=AceConfig(**options), world=fast_world)
    tuned = erase(
        pipe, ["circle"], config=AceConfig(**options | {"finetune_unet_rank": 2}), world=fast_world
    )
    extra = sorted(set(tuned.edits) - set(plain.edits))
    assert extra and all(tuned.edits[k].rank <= 2 for k in extra)
    # ESD-u's modules: self-attention, feed-forward, proj_in/out, never cross-attention
    assert not any(".attn2." in k for k in extra)
    assert any(".attn1." in k for k in extra) and any(".ff." in k for k in extra)
    record = tuned.stages[2].stats
    assert record["unet_modules"] == len(extra) and record["unet_rank"] == 2
    assert set(record["gates"]) == {k for k in plain.edits if k.endswith("to_k")}
    assert any(not torch.allclose(tuned.delta(k), plain.delta(k)) for k in plain.edits)
    # the hooks are gone, the weights as they were
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in before.items())
    assert not any(m._forward_hooks for m in pipe.unet.modules() if isinstance(m, torch.nn.Linear))
    assert np.array_equal(tiny_image(pipe), base)
    _assert_stock_diffusers_draws_the_same(pipe, tuned, tmp_path, base)


@pytest.mark.parametrize("space", ["token", pytest.param("conditioning", marks=pytest.mark.slow)])
def test_a_token_or_conditioning_space_inner_attack_trains_and_resumes(
    space, tiny_pipes, fast_world, tmp_path, monkeypatch
):
    pipe = tiny_pipes("sd1")
    options = TINY | {"adversarial_space": space, "finetune_steps": 4, "checkpoint_every": 1}
    prefix = erase(pipe, ["circle"], config=AceConfig(**TINY), world=fast_world)
    whole = erase(pipe, ["circle"], config=AceConfig(**options), world=fast_world)
    record = whole.stages[2].stats
    assert record["adversarial_rounds"] == 2 and record["losses"][0]["adversarial"] > 0
    assert any(not torch.allclose(whole.delta(k), prefix.delta(k)) for k in prefix.edits)
    # the adversaries' vectors are checkpointed: a killed run resumes to the same bytes
    checkpoints = str(tmp_path / "ckpt")
    calls = {"n": 0}
    original = stage2.add_noise

    def dies_at_the_fourth_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(stage2, "add_noise", dies_at_the_fourth_step)
    config = AceConfig(**options, checkpoint_dir=checkpoints)
    with pytest.raises(Killed):
        erase(pipe, ["circle"], config=config, world=fast_world)
    monkeypatch.setattr(stage2, "add_noise", original)
    resumed = erase(pipe, ["circle"], config=config, world=fast_world)
    assert resumed.stages[2].stats["losses"] == record["losses"]
    assert all(torch.equal(resumed.delta(k), whole.delta(k)) for k in whole.edits)
    keys = set(pipe.unet.state_dict())
    if space == "token":
        with pytest.raises(ConfigError, match="one concept at a time"):
            erase(pipe, ["circle", "star"], config=AceConfig(**options), world=fast_world)
    else:  # a residual on the encoder's output serves several concepts at once
        both = erase(pipe, ["circle", "star"], config=AceConfig(**options), world=fast_world)
        assert both.stages[2].stats["adversarial_rounds"] == 2
    assert set(pipe.unet.state_dict()) == keys  # nothing left attached


def test_training_images_are_drawn_over_the_given_templates(monkeypatch):
    drawn = {}

    def draw(pipe, prompts, seeds, **kwargs):
        drawn["prompts"] = list(prompts)
        return torch.zeros(len(prompts), 4, 8, 8)

    monkeypatch.setattr(stage2, "draw_latents", draw)
    circle = Concept("circle", anchor="")
    templates = (*circle.templates, "an orange {}")
    config = AceConfig(**{**TINY, "finetune_images": len(templates)})
    keep = PreservePrompts(related={}, weights={}, general=["a house"])
    examples = stage2.training_examples(
        None, [circle], keep, config, 0, steps=2, guidance=2.0, templates={"circle": templates}
    )
    pairs = dict(zip(examples.prompts, examples.targets))
    assert pairs["an orange circle"] == "an orange" and pairs["a red circle"] == "a red"
    assert drawn["prompts"] == examples.prompts and examples.concept_index.count(0) == len(
        templates
    )
    plain = stage2.training_examples(None, [circle], keep, config, 0, steps=2, guidance=2.0)
    assert "an orange circle" not in plain.prompts


def test_the_inner_attack_draws_the_configured_noise_samples(tiny_pipes, fast_world, monkeypatch):
    from ace_erasure.attacks import base

    pipe = tiny_pipes("sd1")
    seen = []
    original = base.denoising_loss

    def recording(*args, **kwargs):
        seen.append(kwargs["samples"])
        return original(*args, **kwargs)

    monkeypatch.setattr(base, "denoising_loss", recording)
    erase(pipe, ["circle"], config=AceConfig(**TINY, adversarial_samples=2), world=fast_world)
    assert seen and set(seen) == {2}
    with pytest.raises(ConfigError, match="adversarial_samples must be >= 1"):
        AceConfig(**TINY, adversarial_samples=0)


@pytest.mark.parametrize("space", ["input", pytest.param("conditioning", marks=pytest.mark.slow)])
def test_a_batched_inner_attack_trains_the_whole_pool_in_one_call_per_step(
    space, tiny_pipes, fast_world, monkeypatch
):
    from ace_erasure.attacks import base

    pipe = tiny_pipes("sd1")
    batches = []
    original = base.denoising_loss

    def recording(pipe, adversary, prompts, *args, **kwargs):
        batches.append(len(prompts))
        return original(pipe, adversary, prompts, *args, **kwargs)

    monkeypatch.setattr(base, "denoising_loss", recording)
    options = TINY | {"adversarial_pool": 3, "adversarial_space": space}
    one_by_one = erase(pipe, ["circle"], config=AceConfig(**options), world=fast_world)
    assert batches == [1, 1, 1] * 2  # 2 rounds x 3 adversaries x 1 step
    batches.clear()
    config = AceConfig(**options, adversarial_batched=True)
    batched = erase(pipe, ["circle"], config=config, world=fast_world)
    assert batches == [3, 3]  # 2 rounds, the pool in one batch
    record = batched.stages[2].stats
    assert record["adversarial_rounds"] == 2 and record["losses"][0]["adversarial"] > 0
    assert any(not torch.allclose(batched.delta(k), one_by_one.delta(k)) for k in batched.edits)
