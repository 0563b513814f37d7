import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import atexit
import shutil
import tempfile

# The unedited-model image cache of stage 2 / MACE / ESD: one fresh folder per test process, so
# that no test depends on what the user's cache, or another test process, already holds.
_CACHE = tempfile.mkdtemp(prefix="ace-erasure-test-cache-")
os.environ["ACE_ERASURE_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

# Under pytest-xdist (`-n auto` in pyproject's addopts) the cores are shared out between the
# workers; each one taking every core would only make them wait for each other. Child
# processes (the CLI tests) inherit the same share through the environment.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    os.environ["OMP_NUM_THREADS"] = _THREADS
    os.environ["MKL_NUM_THREADS"] = _THREADS

import pytest  # noqa: E402
import torch  # noqa: E402

if _WORKERS > 1:
    torch.set_num_threads(int(_THREADS))


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
