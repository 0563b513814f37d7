"""UCE, RECE and SPEED: their solutions against direct least-squares oracles on small random
matrices, and the methods on tiny pipelines of every family and on ToyWorld; their artefacts
(and MACE's) load in stock diffusers to the same images."""

import numpy as np
import pytest
import torch

import ace_erasure
from ace_erasure.methods.rece import adversarial_embeddings
from ace_erasure.methods.speed import constrained_edit, null_space
from ace_erasure.methods.uce import UceConfig, uce_edit
from ace_erasure.models.plumbing import cross_attention_layers
from ace_erasure.testing import tiny_image


def _random(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_uce_matches_the_least_squares_oracle():
    d, w = 6, _random(5, 6, 0)
    keys, guides, kept = _random(3, d, 1), _random(3, d, 2), _random(4, d, 3)
    config = UceConfig(erase_scale=2.0, preserve_scale=0.7, lamb=0.5)
    g = uce_edit(keys, guides, kept, config)
    # W' = argmin e Σ ‖W' c − W g‖² + p Σ ‖W' c_j − W c_j‖² + λ ‖W' − W‖²
    e, p, lam = config.erase_scale, config.preserve_scale, config.lamb
    inputs = torch.cat([e**0.5 * keys, p**0.5 * kept, lam**0.5 * torch.eye(d, dtype=torch.float64)])
    wanted = torch.cat([e**0.5 * guides @ w.T, p**0.5 * kept @ w.T, lam**0.5 * w.T])
    oracle = torch.linalg.lstsq(inputs, wanted).solution.T
    assert torch.allclose(w @ (torch.eye(d, dtype=torch.float64) + g), oracle, atol=1e-9)


def test_rece_embedding_matches_the_least_squares_oracle():
    d = 5
    ws = [_random(4, d, s) for s in range(3)]
    gram = sum(x.T @ x for x in ws)
    edit, keys = 0.3 * _random(d, d, 7), _random(2, d, 8)
    found = adversarial_embeddings(edit, gram, keys, 0.1)
    mapped = [x @ (torch.eye(d, dtype=torch.float64) + edit) for x in ws]
    system = sum(m.T @ m for m in mapped)
    lam = 0.1 * float(torch.trace(system)) / d
    for key, c in zip(keys, found):
        a = torch.cat([*mapped, lam**0.5 * torch.eye(d, dtype=torch.float64)])
        b = torch.cat([*(x @ key for x in ws), torch.zeros(d, dtype=torch.float64)])
        assert torch.allclose(c, torch.linalg.lstsq(a, b[:, None]).solution[:, 0], atol=1e-8)


def test_speed_edit_is_the_constrained_optimum_and_leaves_the_prior_exactly():
    d = 6
    keys, guides, prior = _random(2, d, 1), _random(2, d, 2), _random(2, d, 3)
    basis = null_space(prior, 1e-9)
    assert basis.shape == (d, d - 2)
    g = constrained_edit(keys, guides, basis, 0.5)
    assert torch.allclose(g @ prior.T, torch.zeros(d, 2, dtype=torch.float64), atol=1e-10)
    # oracle: G = H Nᵀ, H = argmin Σ ‖H Nᵀ k − (g − k)‖² + λ ‖H‖²
    inputs = torch.cat([keys @ basis, 0.5**0.5 * torch.eye(d - 2, dtype=torch.float64)])
    wanted = torch.cat([guides - keys, torch.zeros(d - 2, d, dtype=torch.float64)])
    h = torch.linalg.lstsq(inputs, wanted).solution.T
    assert torch.allclose(g, h @ basis.T, atol=1e-9)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("method", ["uce", "rece", "speed"])
def test_baselines_run_and_change_only_what_they_claim(tiny_pipes, family, method):
    pipe = tiny_pipes(family)
    erasure = ace_erasure.erase(pipe, ["circle"], method=method)
    layers = [name for name, _ in cross_attention_layers(pipe.unet)]
    projections = ("to_v",) if method == "speed" else ("to_k", "to_v")
    assert set(erasure.edits) == {f"unet.{n}.{p}" for n in layers for p in projections}
    assert erasure.method == method and erasure.rank >= 1
    assert all(erasure.delta(k).abs().max() > 0 for k in erasure.edits)


def test_speed_keeps_the_empty_prompt_exactly(tiny_pipes):
    from ace_erasure.models.conditioning import encode_prompts

    pipe = tiny_pipes("sd1")
    erasure = ace_erasure.erase(pipe, ["circle"], method="speed")
    empty = encode_prompts(pipe, [""])[0, 0].double()  # the start token's output
    for key in erasure.edits:
        assert erasure.delta(key).double() @ empty == pytest.approx(0, abs=1e-4)


@pytest.mark.parametrize(
    "method",
    [
        "uce",
        pytest.param("rece", marks=pytest.mark.slow),
        pytest.param("speed", marks=pytest.mark.slow),
    ],
)
def test_baselines_erase_a_shape_on_toyworld(toyworld_pipe, toyworld_judge, method):
    erasure = ace_erasure.erase(toyworld_pipe, ["star"], method=method)
    prompts = [f"a picture of a {c} star" for c in ("red", "blue", "green", "yellow")]
    with erasure.fuse(toyworld_pipe):
        labels = toyworld_judge.predict(ace_erasure.generate(toyworld_pipe, prompts, seed=400))[
            "shape"
        ]
    assert labels.count("star") <= 1, labels


def test_bad_baseline_configs():
    from ace_erasure.errors import ConfigError
    from ace_erasure.methods import build_config

    for method, options, message in (
        ("uce", {"lamb": 0}, "lamb must be > 0"),
        ("rece", {"rounds": -1}, "rounds must be >= 0"),
        ("speed", {"rank_tolerance": 2.0}, "rank_tolerance"),
        ("uce", {"erase_scale": float("nan")}, "finite"),
    ):
        with pytest.raises(ConfigError, match=message):
            build_config(method, options)


@pytest.mark.parametrize(
    "family",  # the SD 2.x and SDXL key layouts for every method: the slow suite
    [
        "sd1",
        pytest.param("sd2", marks=pytest.mark.slow),
        pytest.param("sdxl", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("method", ["uce", "rece", "speed", "mace"])
def test_the_saved_erasure_loads_in_stock_diffusers_to_the_same_images(
    tiny_pipes, fast_world, tmp_path, monkeypatch, family, method
):
    """The artefact of each closed-form method (and MACE's fused LoRAs) is a standard diffusers
    LoRA: our loader and ``load_lora_weights`` give the same images as the erasure itself, and
    removing it restores the pipeline's images bit for bit."""
    monkeypatch.setenv("ACE_ERASURE_CACHE", str(tmp_path / "cache"))
    pipe = tiny_pipes(family)
    base = tiny_image(pipe)
    config = {"lora_steps": 2, "images": 2, "general": 20} if method == "mace" else None
    erasure = ace_erasure.erase(pipe, ["circle"], method=method, config=config, world=fast_world)
    erasure.save(tmp_path / "e")
    loaded = ace_erasure.Erasure.load(tmp_path / "e")
    assert loaded.method == method
    assert all(torch.equal(loaded.delta(k), erasure.delta(k)) for k in erasure.edits)
    with erasure.apply(pipe):
        ours = tiny_image(pipe)
    with loaded.apply(pipe):
        reloaded = tiny_image(pipe)
    pipe.load_lora_weights(str(tmp_path / "e"))  # stock diffusers, no ace-erasure code
    stock = tiny_image(pipe)
    pipe.unload_lora_weights()
    assert not np.array_equal(ours, base)
    assert np.array_equal(reloaded, ours) and np.array_equal(stock, ours)
    assert np.array_equal(tiny_image(pipe), base)
