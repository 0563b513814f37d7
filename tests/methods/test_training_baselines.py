"""ESD-x, ESD-u and AdvUnlearn on tiny pipelines of every family: each trains only the modules
it claims, leaves the pipeline as it was, saves a standard LoRA that stock diffusers loads to
the same images, gives the same bytes for the same seed and resumes a killed run; bad configs
are refused."""

import numpy as np
import pytest
import torch

from ace_erasure import methods
from ace_erasure.api import erase
from ace_erasure.erasure import Erasure
from ace_erasure.errors import ConfigError
from ace_erasure.methods import advunlearn as advunlearn_module
from ace_erasure.methods.advunlearn import ADVUNLEARN, AdvUnlearnConfig, text_encoder_modules
from ace_erasure.methods.esd import ESD_U, ESD_X, EsdConfig, esd_target, spread
from ace_erasure.models.plumbing import base_linear, cross_attention_layers
from ace_erasure.prompts import GenericWorld, Sampling
from ace_erasure.testing import tiny_image

WORLD = GenericWorld(Sampling(steps=2, guidance=2.0))  # unedited images in two steps
TINY = {
    "esd-x": {"steps": 2, "images": 1},
    "esd-u": {"steps": 2, "images": 1},
    "advunlearn": {
        "steps": 3,  # one step without the attack, two with
        "images": 1,
        "retain_images": 2,
        "retain_batch": 1,
        "attack_steps": 1,
    },
}
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


@pytest.fixture(autouse=True)
def _registered(tmp_path, monkeypatch):
    """The three methods registered for the test (whatever was registered before comes back),
    unedited images cached under tmp."""
    monkeypatch.setenv("ACE_ERASURE_CACHE", str(tmp_path / "cache"))
    ours = (ESD_X, ESD_U, ADVUNLEARN)
    before = {m.name: methods.get_method(m.name) for m in ours if m.name in methods.available()}
    for method in ours:
        methods.register(method, replace=True)
    yield
    for method in ours:
        if method.name in before:
            methods.register(before[method.name], replace=True)
        else:
            methods.unregister(method.name)


def _state(pipe):
    """Every weight and its requires_grad flag, of every component that can be edited."""
    state = {}
    for component in COMPONENTS:
        module = getattr(pipe, component, None)
        if module is None:
            continue
        state |= {f"{component}.{k}": v.clone() for k, v in module.state_dict().items()}
        state |= {f"{component}.{k}.grad": p.requires_grad for k, p in module.named_parameters()}
    return state


def _same(a, b):
    return set(a) == set(b) and all(
        torch.equal(v, b[k]) if isinstance(v, torch.Tensor) else v == b[k] for k, v in a.items()
    )


def _claimed(pipe, method, keys):
    if method == "esd-x":
        layers = [name for name, _ in cross_attention_layers(pipe.unet)]
        projections = ("to_q", "to_k", "to_v", "to_out.0")
        assert keys == {f"unet.{n}.{p}" for n in layers for p in projections}
    elif method == "esd-u":
        assert all(k.startswith("unet.") and ".attn2." not in k for k in keys)
        assert any(".attn1.to_q" in k for k in keys) and any(".ff.net.2" in k for k in keys)
        # proj_in is a convolution in SD 1.x, a linear in SD 2.x / SDXL
        assert any(k.endswith(".proj_in") for k in keys) == (pipe.unet.config.use_linear_projection)
    else:
        assert keys <= set(text_encoder_modules(pipe))
        encoders = {c for c in ("text_encoder", "text_encoder_2") if getattr(pipe, c, None)}
        assert {k.split(".", 1)[0] for k in keys} == encoders  # SDXL: both
        assert any(".mlp.fc1" in k for k in keys) and any(".self_attn.out_proj" in k for k in keys)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("method", ["esd-x", "esd-u", "advunlearn"])
def test_trains_only_what_it_claims_and_saves_a_standard_lora(tiny_pipes, tmp_path, family, method):
    pipe = tiny_pipes(family)
    before, base = _state(pipe), tiny_image(pipe)
    reports = []
    erasure = erase(
        pipe,
        ["circle"],
        method=method,
        config=TINY[method],
        seed=0,
        world=WORLD,
        progress=lambda stage, step, total, info=None: reports.append((stage, step, total)),
    )
    assert _same(_state(pipe), before)  # no adapter left, weights and flags as they were
    assert not any(hasattr(getattr(pipe, c, None), "peft_config") for c in COMPONENTS)
    keys = set(erasure.edits)
    _claimed(pipe, method, keys)
    steps = TINY[method]["steps"]
    assert reports == [(method, s, steps) for s in range(1, steps + 1)]
    assert erasure.method == method and len(erasure.stages[0].stats["losses"]) == steps
    for key, edit in erasure.edits.items():
        assert edit.delta().abs().max() > 0
        component, path = key.split(".", 1)
        full = min(base_linear(getattr(pipe, component).get_submodule(path)).weight.shape)
        # one LoRA rank for all modules; ranks beyond a module's own are exactly zero
        assert edit.rank == erasure.rank and not edit.down[full:].any()

    erasure.save(tmp_path / "e")
    loaded = Erasure.load(tmp_path / "e")
    assert all(torch.equal(loaded.delta(k), erasure.delta(k)) for k in keys)
    with loaded.apply(pipe):
        ours = tiny_image(pipe)
    pipe.load_lora_weights(str(tmp_path / "e"))  # stock diffusers
    stock = tiny_image(pipe)
    pipe.unload_lora_weights()
    assert np.array_equal(stock, ours) and not np.array_equal(ours, base)
    assert np.array_equal(tiny_image(pipe), base)


@pytest.mark.parametrize("method", ["esd-x", "advunlearn"])
def test_same_seed_same_bytes(tiny_pipes, method):
    pipe = tiny_pipes("sd1")
    runs = [
        erase(pipe, ["circle"], method=method, config=TINY[method], seed=s, world=WORLD)
        for s in (3, 3, 4)
    ]
    first, again, other = runs
    assert all(torch.equal(first.delta(k), again.delta(k)) for k in first.edits)
    assert first.stages[0].stats["losses"] == again.stages[0].stats["losses"]
    assert not all(torch.equal(first.delta(k), other.delta(k)) for k in first.edits)


class Killed(Exception):
    pass


def test_a_killed_advunlearn_run_resumes_to_the_same_bytes(tiny_pipes, tmp_path, monkeypatch):
    """The adversarial prefix is checkpointed with the LoRA and the optimiser."""
    pipe = tiny_pipes("sd1")
    options = TINY["advunlearn"] | {"steps": 4, "checkpoint_every": 1}
    whole = erase(pipe, ["circle"], method="advunlearn", config=options, world=WORLD)
    calls = {"n": 0}
    original = advunlearn_module.add_noise

    def dies_at_the_third_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(advunlearn_module, "add_noise", dies_at_the_third_step)
    resumable = options | {"checkpoint_dir": str(tmp_path / "ckpt")}
    with pytest.raises(Killed):
        erase(pipe, ["circle"], method="advunlearn", config=resumable, world=WORLD)
    monkeypatch.setattr(advunlearn_module, "add_noise", original)
    resumed = erase(pipe, ["circle"], method="advunlearn", config=resumable, world=WORLD)
    assert resumed.stages[0].stats["losses"] == whole.stages[0].stats["losses"]
    assert all(torch.equal(resumed.delta(k), whole.delta(k)) for k in whole.edits)


def test_esd_target_and_prompt_spread():
    uncond, cond = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 1.0])
    assert torch.equal(esd_target(uncond, cond, 1.0), torch.tensor([-1.0, 3.0]))
    assert torch.equal(esd_target(uncond, cond, 0.0), uncond)
    assert spread(list("abcdefgh"), 4) == list("aceg")
    assert spread(list("ab"), 3) == list("aba")
    assert AdvUnlearnConfig(steps=1000).warmup_steps == 200  # the paper's 200 of 1000


@pytest.mark.parametrize(
    "cls, name, value",
    [
        (EsdConfig, "steps", 0),
        (EsdConfig, "lr", 0.0),
        (EsdConfig, "lr", float("nan")),
        (EsdConfig, "negative_guidance", -1.0),
        (EsdConfig, "rank", 0),
        (EsdConfig, "rank", 2.5),
        (EsdConfig, "images", 0),
        (EsdConfig, "batch", 0),
        (EsdConfig, "checkpoint_every", 0),
        (AdvUnlearnConfig, "warmup_fraction", 1.5),
        (AdvUnlearnConfig, "retain_weight", -0.3),
        (AdvUnlearnConfig, "attack_tokens", 0),
        (AdvUnlearnConfig, "attack_steps", -1),
        (AdvUnlearnConfig, "attack_lr", 0.0),
        (AdvUnlearnConfig, "retain_images", -1),
        (AdvUnlearnConfig, "retain_batch", 0),
    ],
)
def test_impossible_settings_are_config_errors(cls, name, value):
    with pytest.raises(ConfigError, match=name):
        cls(**{name: value})


def test_unknown_options_are_refused(tiny_pipes):
    with pytest.raises(ConfigError, match="unknown esd-x option"):
        erase(tiny_pipes("sd1"), ["circle"], method="esd-x", config={"stepz": 3}, world=WORLD)
