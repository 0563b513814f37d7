"""Load any Stable Diffusion-family pipeline (local folder or hub id) and sample from it."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image

from ace_erasure.errors import ModelLoadError, WeightsError

logger = logging.getLogger(__name__)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(model: str | Path) -> str:
    """A path or hub id that ``DiffusionPipeline.from_pretrained`` understands (a local folder
    must hold a ``model_index.json``)."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        return str(path)
    if _HUB_ID.match(str(model)) and not str(model).startswith((".", "/", "~")):
        return str(model)
    raise ModelLoadError(f"model path {model} does not exist (and is not a hub id like 'org/name')")


DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resolve_device(name: str | None) -> str:
    """``auto``: CUDA when there is a GPU, else Apple's MPS, else the CPU; ``cuda`` / ``mps``
    are refused with a clear error where this torch build or machine has none. ``cuda:1``
    picks a GPU."""
    name = (name or "auto").lower()
    kind = name.split(":", 1)[0]
    if kind not in DEVICES:
        raise ModelLoadError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}")
    if kind == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device cuda: this torch build or machine has no CUDA GPU")
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ModelLoadError("device mps: Apple's Metal backend is not available here")
    return name


def resolve_dtype(name: str | None, device: str) -> torch.dtype:
    """``auto``: float16 on a GPU, float32 on the CPU (half precision is slow on CPUs)."""
    key = (name or "auto").lower()
    if key not in DTYPES:
        raise ModelLoadError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    chosen = DTYPES[key]
    if chosen is None:
        return torch.float32 if device.startswith("cpu") else torch.float16
    return chosen


def load_pipeline(
    model: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
):
    """Load a text-to-image pipeline from a local folder or a hub id (``ace_erasure.
    load_pipeline`` also knows the bundled ToyWorld and ToyWorld folders).

    Local folders load with ``local_files_only=True`` (no network); hub ids use the normal
    Hugging Face cache and need network access the first time. Raises :class:`ModelLoadError`
    or :class:`WeightsError` with a one-line reason instead of a library traceback.
    ``device`` / ``dtype`` may be names ("auto", "cuda", "float16"; see :func:`resolve_device`
    and :func:`resolve_dtype`); None keeps what the weights hold, on the CPU.
    """
    from diffusers import DiffusionPipeline

    source = resolve_model(model)
    if isinstance(device, str):
        device = resolve_device(device)
    if isinstance(dtype, str):
        dtype = resolve_dtype(dtype, str(device or "cpu"))
    local = Path(source).exists()
    kwargs: dict = {"local_files_only": local}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        with quiet_loading():
            pipe = DiffusionPipeline.from_pretrained(source, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        if local and any(
            w in text.lower()
            for w in (
                "safetensors",
                "header",
                "deserializ",
                "size mismatch",
                "corrupt",
                "incomplete",
            )
        ):
            raise WeightsError(f"corrupt or mismatched weights in {source}: {text}") from error
        raise ModelLoadError(f"cannot load a pipeline from {source}: {text}") from error
    except (
        Exception
    ) as error:  # anything else a broken folder throws (e.g. safetensors' own errors)
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise WeightsError(f"corrupt or mismatched weights in {source}: {text}") from error
    if device is not None:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No progress bars or info chatter from diffusers/transformers while loading (the library
    does not print; the CLI owns the terminal). Restores the previous settings afterwards."""
    import transformers
    from diffusers.utils import logging as diffusers_logging

    bars = (
        diffusers_logging.is_progress_bar_enabled(),
        transformers.utils.logging.is_progress_bar_enabled(),
    )
    levels = diffusers_logging.get_verbosity(), transformers.utils.logging.get_verbosity()
    diffusers_logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        if bars[0]:
            diffusers_logging.enable_progress_bar()
        if bars[1]:
            transformers.utils.logging.enable_progress_bar()
        diffusers_logging.set_verbosity(levels[0])
        transformers.utils.logging.set_verbosity(levels[1])


@torch.no_grad()
def generate(
    pipe,
    prompts: Sequence[str],
    *,
    seed: int = 0,
    steps: int = 30,
    guidance: float = 7.5,
    batch_size: int = 16,
    negative_prompt: str | None = None,
    seeds: Sequence[int] | None = None,
    height: int | None = None,
    width: int | None = None,
    progress: Callable[..., None] | None = None,
) -> list[Image.Image]:
    """One image per prompt; image ``i`` uses a generator seeded with ``seed + i`` (or
    ``seeds[i]`` when given, e.g. to give a prompt the same seed in different runs). The
    defaults are Stable Diffusion's usual 30 steps and guidance 7.5; a world's own defaults are
    ``world.sampling`` (ToyWorld: 20 steps, guidance 5).

    The same (model, prompts, seeds, steps, guidance) gives the same pixels on the same machine.
    ``progress("generate", step, total)`` is called after every denoising step of every batch.
    """
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    seeds = list(seeds) if seeds is not None else [seed + i for i in range(len(prompts))]
    images: list[Image.Image] = []
    n_batches = -(-len(prompts) // batch_size)
    total = n_batches * steps
    for batch, start in enumerate(range(0, len(prompts), batch_size)):
        chunk = list(prompts[start : start + batch_size])
        generators = [
            torch.Generator(device="cpu").manual_seed(s) for s in seeds[start : start + len(chunk)]
        ]
        kwargs: dict = {}
        if progress is not None:

            def on_step(_pipe, i, _t, tensors, batch=batch):
                progress("generate", batch * steps + i + 1, total)
                return tensors

            kwargs["callback_on_step_end"] = on_step
        out = pipe(
            chunk,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            negative_prompt=[negative_prompt] * len(chunk) if negative_prompt else None,
            height=height,
            width=width,
            **kwargs,
        )
        images.extend(out.images)
    return images
