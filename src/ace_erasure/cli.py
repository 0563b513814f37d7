"""The ``ace-erasure`` command line: thin wrappers that parse, call the library and print.

Every error the library raises as :class:`~ace_erasure.errors.AceError` is printed as one line
on stderr with exit code 1; nothing is left half-written (outputs go to a temporary path first).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ace_erasure.errors import AceError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Erase concepts from text-to-image diffusion models (ACE) and measure the result.",
)  # fmt: skip
toyworld_app = typer.Typer(no_args_is_help=True, help="The bundled ToyWorld model: train, inspect.")
app.add_typer(toyworld_app, name="toyworld")
console = Console(stderr=True)


def _quiet_libraries() -> None:
    """Silence third-party chatter that is not for our users (torchvision fallbacks, shard bars)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore", message=".*requires torchvision.*")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(), console=console,
    )  # fmt: skip


def _save_image_atomically(image, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    image.save(tmp, format=(out.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG"))
    tmp.replace(out)


@app.command()
def generate(
    prompts: Annotated[list[str], typer.Argument(help="One or more prompts; several make a grid.")],
    out: Annotated[Path, typer.Option(help="Output image (PNG); a grid when several prompts/images.")] = Path("generated.png"),
    model: Annotated[str | None, typer.Option(help="Pipeline folder, ToyWorld folder or hub id (default: bundled ToyWorld).")] = None,
    erasure: Annotated[Path | None, typer.Option(help="Erasure folder (from `ace-erasure erase`) to apply first.")] = None,
    seed: Annotated[int, typer.Option(help="Image i uses seed + i.")] = 0,
    steps: Annotated[int | None, typer.Option(help="Sampling steps (default: 20 on ToyWorld, 30 otherwise).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance (default: 5 on ToyWorld, 7.5 otherwise).")] = None,
    images_per_prompt: Annotated[int, typer.Option(min=1, help="Images per prompt (grid columns).")] = 1,
) -> None:
    """Generate images (a grid for several prompts) with any Stable Diffusion pipeline."""
    from diffusers.utils import make_image_grid

    from ace_erasure.models.loading import generate as sample
    from ace_erasure.models.loading import load_pipeline, resolve_model
    from ace_erasure.toyworld.assets import toyworld_folder_of
    from ace_erasure.toyworld.captions import unknown_words

    if not prompts or any(not p.strip() for p in prompts):
        raise AceError("every prompt must be non-empty text")
    if steps is not None and steps <= 0:
        raise AceError(f"--steps must be positive, got {steps}")
    source = resolve_model(model)
    if toyworld_folder_of(source) is not None:
        unknown = sorted({w for p in prompts for w in unknown_words(p)})
        if unknown:
            console.print(f"warning: not in ToyWorld's vocabulary (generating anyway): {', '.join(unknown)}")
    pipe = load_pipeline(source)
    if erasure is not None:
        from ace_erasure.erasure import Erasure

        Erasure.load(erasure).apply(pipe)
    expanded = [p for p in prompts for _ in range(images_per_prompt)]
    start = time.perf_counter()
    images = sample(pipe, expanded, seed=seed, steps=steps, guidance=guidance)
    seconds = time.perf_counter() - start
    grid = images[0] if len(images) == 1 else make_image_grid(images, rows=len(prompts), cols=images_per_prompt)
    _save_image_atomically(grid, out)
    console.print(f"wrote {out} ({len(images)} image(s) in {seconds:.2f} s)")


@toyworld_app.command("train")
def toyworld_train(
    out: Annotated[Path, typer.Option(help="Output ToyWorld folder (resumes if it holds a run).")],
    seed: Annotated[int, typer.Option(help="Seeds every stage.")] = 0,
    steps: Annotated[int | None, typer.Option(help="UNet + text-encoder steps (default from config).")] = None,
    vae_steps: Annotated[int | None, typer.Option(help="VAE steps (default from config).")] = None,
    judge_steps: Annotated[int | None, typer.Option(help="Judge steps (default from config).")] = None,
    n_images: Annotated[int | None, typer.Option(help="Images in the latent dataset.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
) -> None:
    """Rebuild ToyWorld from scratch (judge, VAE, text encoder + UNet) into OUT; resumable."""
    import dataclasses

    import torch

    from ace_erasure.toyworld.train import ToyWorldTrainConfig, train_toyworld

    if threads:
        torch.set_num_threads(threads)
    config = ToyWorldTrainConfig(seed=seed)
    overrides = {"steps": steps, "vae_steps": vae_steps, "n_images": n_images}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if judge_steps is not None:
        config.judge = dataclasses.replace(config.judge, steps=judge_steps)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=out / "train.log", level=logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
    )  # fmt: skip
    with _progress() as bar:
        tasks: dict[str, int] = {}

        def report(stage: str, step: int, total: int, info: dict) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, info="")
            text = " ".join(f"{k} {v:.4f}" for k, v in info.items())
            bar.update(tasks[stage], completed=step, info=text)

        manifest = train_toyworld(config, out, progress=report)
    accuracy = manifest["stages"]["judge"].get("held_out_accuracy", {})
    console.print(f"wrote {out} (judge held-out accuracy: {accuracy})")


@toyworld_app.command("info")
def toyworld_info(
    folder: Annotated[Path | None, typer.Argument(help="ToyWorld folder (default: bundled).")] = None,
) -> None:
    """Print a ToyWorld folder's manifest summary: sizes, steps, accuracies."""
    import json

    from ace_erasure.toyworld.assets import manifest

    data = manifest(folder)
    summary = {"config": {k: data["config"][k] for k in ("seed", "steps", "unet_channels", "text_hidden")},
               "stages": data["stages"], "versions": data["versions"]}  # fmt: skip
    typer.echo(json.dumps(summary, indent=2))


def main() -> None:
    """Console-script entry point: run the app, turn our errors into one line and exit code 1."""
    _quiet_libraries()
    try:
        app(standalone_mode=False)
    except AceError as error:
        console.print(f"error: {error}", markup=False, highlight=False)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        console.print("aborted", markup=False)
        sys.exit(130)
    except Exception as error:  # click usage errors carry their own exit code
        import click

        if isinstance(error, click.exceptions.ClickException):
            error.show()
            sys.exit(error.exit_code)
        if isinstance(error, click.exceptions.Exit):
            sys.exit(error.exit_code)
        raise


if __name__ == "__main__":
    main()
