"""Which world a pipeline belongs to, model resolution, and plugging in another world."""

import numpy as np
import pytest

import ace_erasure
from ace_erasure.errors import ModelLoadError
from ace_erasure.prompts import GenericWorld, PromptWorld, Sampling
from ace_erasure.worlds import _FINDERS, register_world, resolve_model, world_for


def test_toyworld_pipelines_get_toyworld_and_others_the_generic_world(toyworld_pipe, tiny_pipes):
    toy = world_for(toyworld_pipe)
    assert isinstance(toy, PromptWorld) and toy.name == "ToyWorld"
    assert toy.sampling == Sampling(20, 5.0)
    generic = world_for(tiny_pipes("sd1"))
    assert isinstance(generic, GenericWorld) and generic.sampling == Sampling(30, 7.5)
    assert generic.judge() is None and generic.unknown_words("a dragon") == []


def test_a_registered_world_is_asked_first(tiny_pipes):
    class Custom(GenericWorld):
        name = "custom"

    register_world(lambda pipe: Custom())
    try:
        assert world_for(tiny_pipes("sd1")).name == "custom"
    finally:
        _FINDERS.pop(0)
    assert world_for(tiny_pipes("sd1")).name == "generic"


def test_model_resolution(tmp_path):
    from ace_erasure.toyworld.assets import bundled_dir

    assert resolve_model(None) == str(bundled_dir() / "model")
    assert resolve_model(bundled_dir()) == str(bundled_dir() / "model")
    assert resolve_model("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="not a diffusers pipeline folder"):
        resolve_model(tmp_path)


def test_api_uses_the_worlds_sampling_defaults(toyworld_pipe):
    from ace_erasure.models.loading import generate

    ours = ace_erasure.generate(toyworld_pipe, ["a picture of a red circle"], seed=1)
    explicit = generate(toyworld_pipe, ["a picture of a red circle"], seed=1, steps=20, guidance=5)
    assert np.array_equal(np.asarray(ours[0]), np.asarray(explicit[0]))
