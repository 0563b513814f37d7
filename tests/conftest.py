import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_pipes():
    """Tiny random pipelines per family, built once (tests that modify them must undo it)."""
    from ace_erasure.testing import tiny_pipeline

    cache: dict = {}

    def get(family: str):
        if family not in cache:
            cache[family] = tiny_pipeline(family)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def toyworld_pipe():
    import ace_erasure.toyworld  # the documented entry point

    return ace_erasure.toyworld.load_pipeline()


@pytest.fixture(scope="session")
def toyworld_judge():
    import ace_erasure.toyworld

    return ace_erasure.toyworld.load_judge()


@pytest.fixture(scope="session")
def fast_world():
    """A generic world that samples in 2 steps: for methods that draw images of the unedited
    model (stage 2, MACE, ESD) on tiny pipelines, where 30 steps only cost time."""
    from ace_erasure.prompts import GenericWorld, Sampling

    return GenericWorld(Sampling(steps=2, guidance=2.0))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
