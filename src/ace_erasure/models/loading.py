"""Load any Stable Diffusion-family pipeline (local folder or hub id) and sample from it."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
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


def load_pipeline(
    model: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
):
    """Load a text-to-image pipeline from a local folder or a hub id (``ace_erasure.
    load_pipeline`` also knows the bundled ToyWorld and ToyWorld folders).

    Local folders load with ``local_files_only=True`` (no network); hub ids use the normal
    Hugging Face cache and need network access the first time. Raises :class:`ModelLoadError`
    or :class:`WeightsError` with a one-line reason instead of a library traceback.
    """
    from diffusers import DiffusionPipeline

    source = resolve_model(model)
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
) -> list[Image.Image]:
    """One image per prompt; image ``i`` uses a generator seeded with ``seed + i`` (or
    ``seeds[i]`` when given, e.g. to give a prompt the same seed in different runs). The
    defaults are Stable Diffusion's usual 30 steps and guidance 7.5; a world's own defaults are
    ``world.sampling`` (ToyWorld: 20 steps, guidance 5).

    The same (model, prompts, seeds, steps, guidance) gives the same pixels on the same machine.
    """
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    seeds = list(seeds) if seeds is not None else [seed + i for i in range(len(prompts))]
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        generators = [
            torch.Generator(device="cpu").manual_seed(s) for s in seeds[start : start + len(chunk)]
        ]
        out = pipe(
            chunk,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            negative_prompt=[negative_prompt] * len(chunk) if negative_prompt else None,
        )
        images.extend(out.images)
    return images
