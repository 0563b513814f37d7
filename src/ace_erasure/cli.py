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
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ace_erasure.errors import AceError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Erase concepts from text-to-image diffusion models (ACE) and measure the result.",
)
toyworld_app = typer.Typer(no_args_is_help=True, help="The bundled ToyWorld model: train, inspect.")
app.add_typer(toyworld_app, name="toyworld")
console = Console(stderr=True, soft_wrap=True)


def _quiet_libraries() -> None:
    """Silence third-party chatter that is not for our users (torchvision fallbacks, shard bars)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore", message=".*requires torchvision.*")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def _save_image_atomically(image, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    image.save(tmp, format=(out.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG"))
    tmp.replace(out)


@app.command()
def generate(
    prompts: Annotated[list[str], typer.Argument(help="One or more prompts; several make a grid.")],
    out: Annotated[
        Path, typer.Option(help="Output image (PNG); a grid when several prompts/images.")
    ] = Path("generated.png"),
    model: Annotated[
        str | None,
        typer.Option(
            help="Pipeline folder, ToyWorld folder or hub id (default: bundled ToyWorld)."
        ),
    ] = None,
    erasure: Annotated[
        Path | None, typer.Option(help="Erasure folder (from `ace-erasure erase`) to apply first.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Image i uses seed + i.")] = 0,
    steps: Annotated[
        int | None, typer.Option(help="Sampling steps (default: 20 on ToyWorld, 30 otherwise).")
    ] = None,
    guidance: Annotated[
        float | None,
        typer.Option(help="Classifier-free guidance (default: 5 on ToyWorld, 7.5 otherwise)."),
    ] = None,
    images_per_prompt: Annotated[
        int, typer.Option(min=1, help="Images per prompt (grid columns).")
    ] = 1,
) -> None:
    """Generate images (a grid for several prompts) with any Stable Diffusion pipeline."""
    from diffusers.utils import make_image_grid

    from ace_erasure.api import apply as apply_erasure
    from ace_erasure.api import generate as sample
    from ace_erasure.worlds import load_pipeline, world_for

    if not prompts or any(not p.strip() for p in prompts):
        raise AceError("every prompt must be non-empty text")
    if steps is not None and steps <= 0:
        raise AceError(f"--steps must be positive, got {steps}")
    pipe = load_pipeline(model)
    world = world_for(pipe)
    unknown = sorted({w for p in prompts for w in world.unknown_words(p)})
    if unknown:
        console.print(
            f"warning: not in {world.name}'s vocabulary (generating anyway): {', '.join(unknown)}"
        )
    if erasure is not None:
        from ace_erasure.erasure import Erasure

        apply_erasure(Erasure.load(erasure), pipe)
    expanded = [p for p in prompts for _ in range(images_per_prompt)]
    start = time.perf_counter()
    images = sample(pipe, expanded, seed=seed, steps=steps, guidance=guidance)
    seconds = time.perf_counter() - start
    grid = (
        images[0]
        if len(images) == 1
        else make_image_grid(images, rows=len(prompts), cols=images_per_prompt)
    )
    _save_image_atomically(grid, out)
    console.print(f"wrote {out} ({len(images)} image(s) in {seconds:.2f} s)")


@app.command()
def erase(
    out: Annotated[
        Path, typer.Option(help="Output erasure folder (LoRA + erasure.json + model card).")
    ],
    concept: Annotated[
        list[str] | None, typer.Option(help="Concept to erase (repeatable).")
    ] = None,
    synonym: Annotated[
        list[str] | None,
        typer.Option(help="Synonym to erase too (repeatable; one --concept only)."),
    ] = None,
    kind: Annotated[
        str | None, typer.Option(help="object | style | celebrity | explicit (ToyWorld: inferred).")
    ] = None,
    anchor: Annotated[
        str | None,
        typer.Option(help="What the concept becomes (default: '' or 'a person' for celebrities)."),
    ] = None,
    preserve: Annotated[
        list[str] | None, typer.Option(help="Concept to keep intact (repeatable).")
    ] = None,
    concepts: Annotated[
        Path | None, typer.Option(help="YAML/JSON file with many concepts.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Pipeline folder, ToyWorld folder or hub id (default: bundled ToyWorld)."
        ),
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="Erasure method (default: ace; see `ace-erasure methods`).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="YAML/JSON file with the method's options (e.g. AceConfig fields)."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="One method option, key=value (repeatable; wins over --config)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    grid: Annotated[bool, typer.Option(help="Put a before/after grid in the model card.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Erase concepts from a model; writes a diffusers LoRA that `load_lora_weights` loads."""
    from ace_erasure.api import erase as run_erase
    from ace_erasure.concepts import Concept, load_concepts
    from ace_erasure.methods import DEFAULT_METHOD, build_config, get_method
    from ace_erasure.methods.base import parse_overrides
    from ace_erasure.worlds import load_pipeline, world_for

    if out.exists() and any(out.iterdir()) and not overwrite:
        raise AceError(f"{out} already exists and is not empty (use --overwrite to replace it)")
    if not concept and concepts is None:
        raise AceError("give --concept NAME or --concepts FILE")
    if synonym and (not concept or len(concept) != 1):
        raise AceError("--synonym needs exactly one --concept")
    chosen = get_method(method or DEFAULT_METHOD)
    options = build_config(chosen, file=config, overrides=parse_overrides(set_ or []))
    pipe = load_pipeline(model)
    world = world_for(pipe)
    items: list = list(load_concepts(concepts)) if concepts is not None else []
    for name in concept or []:
        if kind is None and anchor is None and not synonym and not preserve:
            items.append(name)  # the world gives its kind (and canonical name)
            continue
        found = world.resolve(name) if kind is None else Concept(name)
        items.append(
            Concept(
                found.name,
                kind=kind or found.kind,  # type: ignore[arg-type]  # Concept validates the kind
                synonyms=tuple(synonym or ()),
                anchor=anchor,
                preserve=tuple(preserve or ()),
            )
        )
    # the bar starts with the first stage: an input error raised before it stays one line
    bar, tasks = _progress(), dict[str, TaskID]()

    def report(stage: str, step: int, total: int, info=None) -> None:
        if not tasks:
            bar.start()
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total, info="")
        bar.update(tasks[stage], completed=step)

    start = time.perf_counter()
    try:
        result = run_erase(
            pipe, items, method=chosen.name, config=options, seed=seed, progress=report, world=world
        )
    finally:
        if tasks:
            bar.stop()
    seconds = time.perf_counter() - start
    image_grid = _before_after_grid(pipe, result, seed) if grid else None
    result.save(out, grid=image_grid, overwrite=overwrite)
    names = ", ".join(c.name for c in result.concepts)
    console.print(f"erased {names} in {seconds:.2f} s (rank {result.rank}); wrote {out}")


def _before_after_grid(pipe, result, seed: int):
    """Top row: base model; bottom row: with the erasure (same seeds), 4 prompts."""
    from diffusers.utils import make_image_grid

    from ace_erasure.api import apply as apply_erasure
    from ace_erasure.api import generate as sample
    from ace_erasure.concepts import prompt_pairs

    prompts = []
    for concept in result.concepts:
        prompts += [p.text for p in prompt_pairs(concept, names=[concept.name])][1:]
    prompts = prompts[:4]
    before = sample(pipe, prompts, seed=seed)
    with apply_erasure(result, pipe):
        after = sample(pipe, prompts, seed=seed)
    return make_image_grid(before + after, rows=2, cols=len(prompts))


@toyworld_app.command("train")
def toyworld_train(
    out: Annotated[Path, typer.Option(help="Output ToyWorld folder (resumes if it holds a run).")],
    seed: Annotated[int, typer.Option(help="Seeds every stage.")] = 0,
    steps: Annotated[
        int | None, typer.Option(help="UNet + text-encoder steps (default from config).")
    ] = None,
    vae_steps: Annotated[int | None, typer.Option(help="VAE steps (default from config).")] = None,
    judge_steps: Annotated[
        int | None, typer.Option(help="Judge steps (default from config).")
    ] = None,
    n_images: Annotated[int | None, typer.Option(help="Images in the latent dataset.")] = None,
    threads: Annotated[
        int | None, typer.Option(help="torch CPU threads (default: torch's choice).")
    ] = None,
) -> None:
    """Rebuild ToyWorld from scratch (judge, VAE, text encoder + UNet) into OUT; resumable."""
    import dataclasses

    import torch

    from ace_erasure.toyworld.train import ToyWorldTrainConfig, train_toyworld

    if threads:
        torch.set_num_threads(threads)
    config = ToyWorldTrainConfig(seed=seed)
    overrides: dict[str, Any] = {"steps": steps, "vae_steps": vae_steps, "n_images": n_images}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if judge_steps is not None:
        config.judge = dataclasses.replace(config.judge, steps=judge_steps)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=out / "train.log",
        level=logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
    )
    with _progress() as bar:
        tasks: dict[str, TaskID] = {}

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
    folder: Annotated[
        Path | None, typer.Argument(help="ToyWorld folder (default: bundled).")
    ] = None,
) -> None:
    """Print a ToyWorld folder's manifest summary: sizes, steps, accuracies."""
    import json

    from ace_erasure.toyworld.assets import manifest

    data = manifest(folder)
    summary = {
        "config": {k: data["config"][k] for k in ("seed", "steps", "unet_channels", "text_hidden")},
        "stages": data["stages"],
        "versions": data["versions"],
    }
    typer.echo(json.dumps(summary, indent=2))


def main() -> None:
    """Console-script entry point: run the app, turn our errors into one line and exit code 1."""
    _quiet_libraries()
    try:
        app(standalone_mode=False)
    except AceError as error:
        # plain text, never wrapped: one line a user (or a script) can read
        sys.stderr.write(f"error: {' '.join(str(error).split())}\n")
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
