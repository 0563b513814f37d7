"""The ``ace-erasure`` command line: thin wrappers that parse, call the library and print.

:func:`main` is the one edge where errors become lines: every failure is one ``error: …`` line
on stderr — exit code 2 for a usage error (an option the parser or the command refuses), 1 for
a failure (a missing model, a corrupt file, a model an erasure was not made for), 130 for
Ctrl-C — and no traceback (``ACE_ERASURE_DEBUG=1`` shows it). Output paths are checked before
any work starts, and outputs are written to a temporary path and renamed, so an interrupted
command leaves the previous state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn

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

from ace_erasure.errors import AceError, UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Erase concepts from text-to-image diffusion models (ACE) and measure the result.",
)
toyworld_app = typer.Typer(no_args_is_help=True, help="The bundled ToyWorld model: train, inspect.")
app.add_typer(toyworld_app, name="toyworld")
console = Console(stderr=True, soft_wrap=True)

MODEL_HELP = "Pipeline folder, ToyWorld folder or hub id (default: bundled ToyWorld)."
DEVICE_HELP = "cpu | cuda | mps | auto (a GPU when there is one)."
IMAGE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
DTYPE_HELP = "float32 | float16 | bfloat16 | auto (float16 on a GPU, float32 on the CPU)."

# options shared by every command that loads a model or writes a folder
ModelOption = Annotated[str | None, typer.Option(help=MODEL_HELP)]
DeviceOption = Annotated[str, typer.Option(help=DEVICE_HELP)]
DtypeOption = Annotated[str, typer.Option(help=DTYPE_HELP)]
OverwriteOption = Annotated[bool, typer.Option(help="Replace OUT if it exists.")]
# the evaluation options `evaluate` and `compare` share
ALL_ATTACKS = ",".join(("random", "soft", "hard", "ti", "cond"))
AttacksOption = Annotated[
    str, typer.Option(help="Comma-separated attacks: random,soft,hard,ti,cond (or 'none').")
]
AttackSetOption = Annotated[
    list[str] | None,
    typer.Option(help="An attack option, attack.key=value (e.g. soft.k=3); repeatable."),
]
SuiteOption = Annotated[
    str, typer.Option(help="'world' (the model's own suites, e.g. ToyWorld's) or a YAML file.")
]
JudgeOption = Annotated[
    str, typer.Option(help="'world' (the model's own judge), 'nudenet' or 'clip:DIR'.")
]
ImagesOption = Annotated[
    int | None, typer.Option(min=1, help="Images per named / synonym set (default 16).")
]
ImagesOtherOption = Annotated[
    int | None, typer.Option(min=1, help="Images per other concept (default 4).")
]
PairsOption = Annotated[
    int | None, typer.Option(min=1, help="Attacked (prompt, seed) pairs per concept (8).")
]
EvalStepsOption = Annotated[
    int | None, typer.Option(help="Sampling steps (default: the model's world).")
]
EvalGuidanceOption = Annotated[
    float | None, typer.Option(help="Classifier-free guidance (default: the model's world).")
]


def _quiet_libraries() -> None:
    """Silence third-party chatter that is not for our users (torchvision fallbacks, shard bars)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore", message=".*requires torchvision.*")


class Bars:
    """The library's progress callback as rich progress bars with an ETA, one per stage; the
    bars start with the first report, so an input error raised before it stays one line."""

    def __init__(self) -> None:
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self.tasks: dict[str, TaskID] = {}

    def __call__(
        self, stage: str, step: int, total: int, info: Mapping[str, float] | None = None
    ) -> None:
        if not self.tasks:
            self.bar.start()
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total, info="")
        text = " ".join(f"{k} {v:.4g}" for k, v in (info or {}).items())
        self.bar.update(self.tasks[stage], completed=step, total=total, info=text)

    def __enter__(self) -> Bars:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if not self.tasks:
            return
        if kind is None:
            self.bar.stop()
            return
        # an error or Ctrl-C: its one line stands alone (the bars vanish, print nothing)
        self.bar.live.transient = True
        quiet = console.quiet
        console.quiet = True
        try:
            self.bar.stop()
        finally:
            console.quiet = quiet


def _save_image_atomically(image, out: Path, info: dict | None = None) -> None:
    """Write ``image`` to ``out`` through a temporary file; PNGs carry ``info`` as JSON text
    (prompts, seeds, erasures: what made the image)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    kind = IMAGE_FORMATS[out.suffix.lower()]
    try:
        if kind == "PNG" and info:
            from PIL.PngImagePlugin import PngInfo

            meta = PngInfo()
            meta.add_text("ace-erasure", json.dumps(info))
            image.save(tmp, format=kind, pnginfo=meta)
        else:
            image.convert("RGB").save(tmp, format=kind)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def _check_sampling(steps: int | None, guidance: float | None, strength: float) -> None:
    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be at least 1, got {steps}")
    if guidance is not None and (not math.isfinite(guidance) or guidance < 0):
        raise UsageError(f"--guidance must be a finite number >= 0, got {guidance}")
    if not math.isfinite(strength) or strength < 0:
        raise UsageError(f"--strength must be a finite number >= 0, got {strength}")


def _check_size(pipe, height: int | None, width: int | None) -> None:
    """Height and width must be multiples of what the VAE and the UNet's downsampling need."""
    blocks = len(pipe.unet.config.block_out_channels)
    multiple = int(pipe.vae_scale_factor) * 2 ** (blocks - 1)
    for name, value in (("--height", height), ("--width", width)):
        if value is not None and (value < multiple or value % multiple):
            raise UsageError(f"{name} must be a positive multiple of {multiple} for this model")


def _warn_long_prompts(pipe, prompts: list[str]) -> None:
    from ace_erasure.models.plumbing import tokenizers

    tokenizer = tokenizers(pipe)[0]
    limit = int(tokenizer.model_max_length)
    for prompt in dict.fromkeys(prompts):
        n = len(tokenizer(prompt).input_ids)
        if n > limit:
            console.print(
                f"warning: prompt {prompt[:40]!r}… is {n} tokens; the model reads the first "
                f"{limit} (the rest is ignored)",
                markup=False,
            )


@app.command()
def generate(
    prompts: Annotated[list[str], typer.Argument(help="One or more prompts; several make a grid.")],
    out: Annotated[
        Path, typer.Option(help="Output image (.png, .jpg, .webp); a grid for several images.")
    ] = Path("generated.png"),
    model: ModelOption = None,
    erasure: Annotated[
        list[Path] | None,
        typer.Option(help="Erasure folder (from `ace-erasure erase`) to apply; repeatable."),
    ] = None,
    strength: Annotated[
        float, typer.Option(help="Erasure strength (LoRA scale of every --erasure).")
    ] = 1.0,
    compare: Annotated[
        bool,
        typer.Option(help="Write a labelled before/after grid (needs --erasure)."),
    ] = False,
    seed: Annotated[int, typer.Option(help="Image i uses seed + i.")] = 0,
    steps: Annotated[
        int | None, typer.Option(help="Sampling steps (default: 20 on ToyWorld, 30 otherwise).")
    ] = None,
    guidance: Annotated[
        float | None,
        typer.Option(help="Classifier-free guidance (default: 5 on ToyWorld, 7.5 otherwise)."),
    ] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="Negative prompt.")] = None,
    height: Annotated[int | None, typer.Option(help="Image height (model default).")] = None,
    width: Annotated[int | None, typer.Option(help="Image width (model default).")] = None,
    images_per_prompt: Annotated[
        int, typer.Option(min=1, help="Images per prompt (grid columns).")
    ] = 1,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    force: Annotated[
        bool, typer.Option(help="Apply erasures made for another base model (recorded).")
    ] = False,
) -> None:
    """Generate images (a grid for several prompts) with any Stable Diffusion pipeline."""
    from diffusers.utils import make_image_grid

    from ace_erasure import __version__
    from ace_erasure.api import apply as apply_erasure
    from ace_erasure.api import generate as sample
    from ace_erasure.erasure import Erasure
    from ace_erasure.images import labelled_grid
    from ace_erasure.io import check_output_file
    from ace_erasure.worlds import load_pipeline, world_for

    if not prompts or any(not p.strip() for p in prompts):
        raise UsageError("every prompt must be non-empty text")
    _check_sampling(steps, guidance, strength)
    if compare and not erasure:
        raise UsageError("--compare shows an erasure's effect: give --erasure FOLDER")
    check_output_file(out)
    erasures = [Erasure.load(folder) for folder in erasure or []]
    pipe = load_pipeline(model, device=device, dtype=dtype)
    _check_size(pipe, height, width)
    world = world_for(pipe)
    unknown = sorted({w for p in prompts for w in world.unknown_words(p)})
    if unknown:
        console.print(
            f"warning: not in {world.name}'s vocabulary (generating anyway): {', '.join(unknown)}",
            markup=False,
        )
    _warn_long_prompts(pipe, prompts)
    for item in erasures:
        item.check_compatible(pipe, force=force)
    if force and erasures:
        console.print("warning: --force: erasures applied without the base-model check")
    expanded = [p for p in prompts for _ in range(images_per_prompt)]
    options: dict[str, Any] = dict(
        seed=seed,
        steps=steps,
        guidance=guidance,
        negative_prompt=negative_prompt,
        height=height,
        width=width,
    )
    start = time.perf_counter()
    with Bars() as bars:
        before = sample(pipe, expanded, progress=bars, **options) if compare else []
        handles = [apply_erasure(e, pipe, strength, force=force) for e in erasures]
        try:
            images = sample(pipe, expanded, progress=bars, **options)
        finally:
            for handle in reversed(handles):
                handle.remove()
    seconds = time.perf_counter() - start
    cols = images_per_prompt
    if compare:
        names = ", ".join(c.name for e in erasures for c in e.concepts)
        rows, labels = [], []
        for i, prompt in enumerate(prompts):
            rows += [before[i * cols : (i + 1) * cols], images[i * cols : (i + 1) * cols]]
            # ASCII separators: Pillow's default font has no dash glyphs
            labels += [f"base model: {prompt}", f"without {names}: {prompt}"]
        grid = labelled_grid(rows, labels)
    else:
        grid = images[0] if len(images) == 1 else make_image_grid(images, len(prompts), cols)
    record = {
        "prompts": prompts,
        "images_per_prompt": images_per_prompt,
        "seed": seed,
        "model": str(model or "bundled ToyWorld"),
        "erasures": [str(e) for e in erasure or []],
        "strength": strength,
        "forced": force,
        "steps": steps or world.sampling.steps,
        "guidance": world.sampling.guidance if guidance is None else guidance,
        "negative_prompt": negative_prompt,
        "ace_erasure": __version__,
    }
    _save_image_atomically(grid, out, record)
    console.print(f"wrote {out} ({len(images)} image(s) in {seconds:.2f} s)", markup=False)


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
    model: ModelOption = None,
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
    stage: Annotated[
        int | None,
        typer.Option(
            help="Stages to run, for methods that have them (ACE: 1 = closed form, 2 = also "
            "the adversarial fine-tuning); the same as --set stage=N."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    grid: Annotated[bool, typer.Option(help="Put a before/after grid in the model card.")] = True,
    overwrite: OverwriteOption = False,
) -> None:
    """Erase concepts from a model; writes a diffusers LoRA that `load_lora_weights` loads."""
    from ace_erasure.api import erase as run_erase
    from ace_erasure.concepts import Concept, load_concepts
    from ace_erasure.errors import ConfigError
    from ace_erasure.io import check_output_folder
    from ace_erasure.methods import DEFAULT_METHOD, build_config, get_method
    from ace_erasure.methods.base import parse_overrides
    from ace_erasure.worlds import load_pipeline, world_for

    check_output_folder(out, overwrite=overwrite)
    if not concept and concepts is None:
        raise UsageError("give --concept NAME or --concepts FILE")
    if synonym and (not concept or len(concept) != 1):
        raise UsageError("--synonym needs exactly one --concept")
    try:
        chosen = get_method(method or DEFAULT_METHOD)
        overrides = parse_overrides(set_ or [])
        if stage is not None:
            overrides["stage"] = stage
        options = build_config(chosen, file=config, overrides=overrides)
    except ConfigError as error:  # the method and its options are command-line input
        raise UsageError(str(error)) from error
    # a method that trains checkpoints next to --out unless told where: a killed run given
    # the same command again continues where it stopped
    checkpoints = _resume_folder(out) if _checkpoints_unset(options) else None
    if checkpoints is not None:
        options = dataclasses.replace(options, checkpoint_dir=str(checkpoints))
        if checkpoints.exists():
            console.print(f"resuming from {checkpoints}", markup=False)
    items: list = list(load_concepts(concepts)) if concepts is not None else []
    pipe = load_pipeline(model, device=device, dtype=dtype)
    world = world_for(pipe)
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
    start = time.perf_counter()
    with Bars() as bars:
        result = run_erase(
            pipe, items, method=chosen.name, config=options, seed=seed, progress=bars, world=world
        )
        seconds = time.perf_counter() - start
        image_grid, prompts = _before_after_grid(pipe, result, seed, bars) if grid else (None, [])
    from ace_erasure.erasure import model_card

    if checkpoints is not None:
        result.config["checkpoint_dir"] = None  # where this run kept them, removed below
    card = model_card(result, has_grid=image_grid is not None, grid_prompts=prompts)
    result.save(out, grid=image_grid, card=card, overwrite=overwrite)
    if checkpoints is not None:
        shutil.rmtree(checkpoints, ignore_errors=True)
    names = ", ".join(c.name for c in result.concepts)
    console.print(
        f"erased {names} in {seconds:.2f} s (rank {result.rank}); wrote {out}", markup=False
    )


def _resume_folder(out: Path) -> Path:
    """Where ``erase --out OUT`` keeps a training method's checkpoints: ``.OUT.checkpoints``
    beside it, removed once OUT is written."""
    return out.parent / f".{out.name}.checkpoints"


def _checkpoints_unset(options: Any) -> bool:
    """Does the method train (it has a checkpoint folder option), with no folder given?"""
    return dataclasses.is_dataclass(options) and getattr(options, "checkpoint_dir", 0) is None


def _before_after_grid(pipe, result, seed: int, bars: Bars):
    """Top row: base model; bottom row: with the erasure (same seeds), up to 4 prompts naming
    the erased concepts, each labelled."""
    from ace_erasure.api import apply as apply_erasure
    from ace_erasure.api import generate as sample
    from ace_erasure.concepts import prompt_pairs
    from ace_erasure.images import labelled_grid

    prompts = []
    for concept in result.concepts:
        prompts += [p.text for p in prompt_pairs(concept, names=[concept.name])][1:]
    prompts = prompts[:4]
    before = sample(pipe, prompts, seed=seed, progress=bars)
    with apply_erasure(result, pipe):
        after = sample(pipe, prompts, seed=seed, progress=bars)
    grid = labelled_grid(
        [before, after], ["base model", "with the erasure"], column_labels=prompts, label_width=140
    )
    return grid, prompts


def _attack_plan(attacks: str, attack_set: list[str] | None, quick: bool):
    """The attacks to run and their options, checked before any model is loaded: an unknown
    attack or option, or an attack named twice, is one line."""
    from ace_erasure.attacks import attack_config, parse_attack_settings
    from ace_erasure.errors import ConfigError
    from ace_erasure.evaluation.evaluate import QUICK_ATTACK_OPTIONS

    names = (
        [] if attacks.strip() == "none" else [a.strip() for a in attacks.split(",") if a.strip()]
    )
    options: dict[str, dict] = dict(QUICK_ATTACK_OPTIONS) if quick else {}
    try:
        for attack, values in parse_attack_settings(attack_set or []).items():
            options[attack] = {**options.get(attack, {}), **values}
        for name in {*names, *options}:
            attack_config(name, options.get(name, {}))  # unknown attacks / options: one line now
    except ConfigError as error:
        raise UsageError(str(error)) from error
    if len(set(names)) != len(names):
        raise UsageError(f"--attacks names an attack twice: {attacks}")
    return names, options


def _evaluation_plan(
    world,
    concept_names: list[str],
    entries: dict | None,
    *,
    judge: str,
    attacks: list[str],
    attack_options: dict,
    quick: bool,
    images: int | None,
    images_other: int | None,
    pairs: int | None,
    seed: int,
    steps: int | None,
    guidance: float | None,
):
    """What `evaluate` and `compare` share once the model is loaded: the judge (the world's,
    NudeNet or CLIP), the prompt suites (the world's or a file's) and the settings."""
    import dataclasses

    from ace_erasure.errors import ConfigError
    from ace_erasure.evaluation.evaluate import QUICK, EvaluateSettings
    from ace_erasure.evaluation.real_judges import load_judge
    from ace_erasure.evaluation.suites import suite_from_entry

    if entries is not None:
        for name in entries:
            world.resolve(name)  # a concept the model cannot draw is a clear error
        missing = sorted(set(concept_names) - set(entries))
        if missing:
            raise ConfigError(f"the suite file has no entry for {', '.join(missing)}")
    class_names = sorted(
        set(concept_names) | {o for e in (entries or {}).values() for o in e["others"]}
    )
    scorer = load_judge(judge, world=world, class_names=class_names)
    settings = EvaluateSettings(
        seed=seed,
        steps=steps or world.sampling.steps,
        guidance=world.sampling.guidance if guidance is None else guidance,
        attacks=tuple(attacks),
        attack_options=attack_options,
    )
    if quick:
        settings = dataclasses.replace(settings, **QUICK)
    settings = dataclasses.replace(
        settings,
        images_named=images or settings.images_named,
        images_per_other=images_other or settings.images_per_other,
        attack_pairs=pairs or settings.attack_pairs,
    )

    def suite_for(concept):
        if entries is None:
            return world.suite(concept, settings.images_named, settings.images_per_other, seed)
        return suite_from_entry(
            concept.name, entries[concept.name], settings.images_named, settings.images_per_other
        )

    describe = getattr(scorer, "describe", None)
    judge_record = describe() if callable(describe) else {"name": judge}
    judge_record |= {"threshold": scorer.threshold, "classes": scorer.classes}
    return settings, scorer, judge_record, suite_for


@app.command()
def evaluate(
    erasure: Annotated[
        list[Path], typer.Option(help="Erasure folder to evaluate (repeatable: side by side).")
    ],
    out: Annotated[Path, typer.Option(help="Report folder (results.json, report.html, images/).")],
    model: ModelOption = None,
    attacks: AttacksOption = ALL_ATTACKS,
    attack_set: AttackSetOption = None,
    suite: SuiteOption = "world",
    judge: JudgeOption = "world",
    quick: Annotated[bool, typer.Option(help="A smaller preset: a first look in ~2 min.")] = False,
    images: ImagesOption = None,
    images_other: ImagesOtherOption = None,
    pairs: PairsOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the run.")] = 0,
    steps: EvalStepsOption = None,
    guidance: EvalGuidanceOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    overwrite: OverwriteOption = False,
    force: Annotated[
        bool, typer.Option(help="Evaluate erasures made for another base model (recorded).")
    ] = False,
) -> None:
    """Measure erasures: efficacy, generality, specificity, attacks, quality; HTML report."""
    from ace_erasure.api import apply as apply_erasure
    from ace_erasure.erasure import Erasure
    from ace_erasure.evaluation.evaluate import evaluate as run_evaluation
    from ace_erasure.evaluation.suites import load_suite_file
    from ace_erasure.io import check_output_folder
    from ace_erasure.worlds import load_pipeline, world_for

    check_output_folder(out, overwrite=overwrite)
    _check_sampling(steps, guidance, 1.0)
    names, options = _attack_plan(attacks, attack_set, quick)
    loaded = [(folder, Erasure.load(folder)) for folder in erasure]
    entries = None
    if suite != "world":
        entries = load_suite_file(suite)
    pipe = load_pipeline(model, device=device, dtype=dtype)
    world = world_for(pipe)
    for _, item in loaded:
        item.check_compatible(pipe, force=force)
    settings, scorer, judge_record, suite_for = _evaluation_plan(
        world,
        [c.name for _, item in loaded for c in item.concepts],
        entries,
        judge=judge,
        attacks=names,
        attack_options=options,
        quick=quick,
        images=images,
        images_other=images_other,
        pairs=pairs,
        seed=seed,
        steps=steps,
        guidance=guidance,
    )
    labels = [f"{item.method}: {', '.join(c.name for c in item.concepts)}" for _, item in loaded]
    from ace_erasure.evaluation import sharding

    shards = sharding.current(cpu=str(pipe.unet.device) == "cpu")
    if force and shards.is_main:
        console.print("warning: --force: erasures evaluated without the base-model check")
    start = time.perf_counter()
    with Bars() if shards.is_main else contextlib.nullcontext() as bars:
        run_evaluation(
            pipe,
            [(label, item, str(folder)) for label, (folder, item) in zip(labels, loaded)],
            judge=scorer,
            judge_record=judge_record,
            suite_for=suite_for,
            settings=settings,
            out=out,
            apply=apply_erasure,
            world_name=world.name,
            model_name=str(model or "bundled ToyWorld"),
            progress=bars,
            force=force,
            overwrite=overwrite,
            shards=shards,
        )
    seconds = time.perf_counter() - start
    if shards.is_main:
        console.print(
            f"evaluated {len(loaded)} erasure(s) in {seconds:.0f} s on {shards.size} "
            f"process(es); wrote {out / 'report.html'}",
            markup=False,
        )


@app.command()
def combine(
    erasure: Annotated[
        list[Path], typer.Option(help="Erasure folder to fuse (repeatable, at least two).")
    ],
    out: Annotated[Path, typer.Option(help="Output erasure folder (one LoRA for all).")],
    model: ModelOption = None,
    preserve_weight: Annotated[
        float, typer.Option(help="Weight of the preserve prompts in the fusion.")
    ] = 1.0,
    rank: Annotated[
        int | None, typer.Option(min=1, help="LoRA rank of the result (default: automatic).")
    ] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    overwrite: OverwriteOption = False,
) -> None:
    """Fuse separately made erasures into one LoRA (closed form, MACE-style)."""
    from ace_erasure.api import combine as fuse_erasures
    from ace_erasure.erasure import Erasure
    from ace_erasure.io import check_output_folder
    from ace_erasure.worlds import load_pipeline

    check_output_folder(out, overwrite=overwrite)
    if len(erasure) < 2:
        raise UsageError("give at least two --erasure folders to fuse")
    if not math.isfinite(preserve_weight) or preserve_weight < 0:
        raise UsageError(f"--preserve-weight must be a finite number >= 0, got {preserve_weight}")
    loaded = [Erasure.load(folder) for folder in erasure]
    pipe = load_pipeline(model, device=device, dtype=dtype)
    result = fuse_erasures(pipe, loaded, preserve_weight=preserve_weight, rank=rank)
    result.save(out, overwrite=overwrite)
    names = ", ".join(c.name for c in result.concepts)
    console.print(f"fused {names} (rank {result.rank}); wrote {out}", markup=False)


@app.command()
def compare(
    out: Annotated[Path, typer.Option(help="Folder: results.json, report.html, erasures/.")],
    methods_: Annotated[
        str,
        typer.Option(
            "--methods",
            help="Comma-separated registered methods (e.g. ace,uce,rece,speed,mace,esd-x).",
        ),
    ],
    concept: Annotated[
        list[str] | None, typer.Option(help="Concept to erase (repeatable).")
    ] = None,
    concepts: Annotated[
        Path | None, typer.Option(help="YAML/JSON file with many concepts.")
    ] = None,
    model: ModelOption = None,
    method_set: Annotated[
        list[str] | None,
        typer.Option(help="A method option, method.key=value (e.g. uce.lamb=1); repeatable."),
    ] = None,
    attacks: AttacksOption = ALL_ATTACKS,
    attack_set: AttackSetOption = None,
    suite: SuiteOption = "world",
    judge: JudgeOption = "world",
    quick: Annotated[bool, typer.Option(help="evaluate's smaller preset.")] = False,
    images: ImagesOption = None,
    images_other: ImagesOtherOption = None,
    pairs: PairsOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the erasures and the evaluation.")] = 0,
    steps: EvalStepsOption = None,
    guidance: EvalGuidanceOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    overwrite: OverwriteOption = False,
) -> None:
    """Erase the same concepts with several methods and evaluate them side by side.

    One report: tables, charts, image grids, H against the soft-prompt ASR. The evaluation
    takes `evaluate`'s options: on a model without its own judge (a hub checkpoint), give
    --judge clip:DIR or nudenet and, for concepts the world does not know, --suite FILE."""
    import shutil
    import tempfile

    from ace_erasure.api import apply as apply_erasure
    from ace_erasure.api import erase as run_erase
    from ace_erasure.concepts import load_concepts
    from ace_erasure.errors import ConfigError
    from ace_erasure.evaluation.evaluate import evaluate as run_evaluation
    from ace_erasure.evaluation.suites import load_suite_file
    from ace_erasure.io import check_output_folder
    from ace_erasure.methods import build_config, get_method
    from ace_erasure.methods.base import parse_overrides
    from ace_erasure.worlds import load_pipeline, world_for

    check_output_folder(out, overwrite=overwrite)
    _check_sampling(steps, guidance, 1.0)
    names = [m.strip() for m in methods_.split(",") if m.strip()]
    if len(names) < 1 or len(set(names)) != len(names):
        raise UsageError(f"--methods needs distinct method names, got {methods_!r}")
    if not concept and concepts is None:
        raise UsageError("give --concept NAME or --concepts FILE")
    attack_names, attack_options = _attack_plan(attacks, attack_set, quick)
    try:
        options: dict[str, dict] = {name: {} for name in names}
        for key, value in parse_overrides(method_set or []).items():
            method_name, _, option = key.partition(".")
            if method_name not in options or not option:
                raise ConfigError(
                    f"--method-set takes method.key=value for a listed method: {key!r}"
                )
            options[method_name][option] = value
        configs = {name: build_config(get_method(name), options[name]) for name in names}
    except ConfigError as error:
        raise UsageError(str(error)) from error
    items: list = list(load_concepts(concepts)) if concepts is not None else []
    items += list(concept or [])
    entries = load_suite_file(suite) if suite != "world" else None
    pipe = load_pipeline(model, device=device, dtype=dtype)
    world = world_for(pipe)
    settings, scorer, judge_record, suite_for = _evaluation_plan(
        world,
        [item if isinstance(item, str) else item.name for item in items],
        entries,
        judge=judge,
        attacks=attack_names,
        attack_options=attack_options,
        quick=quick,
        images=images,
        images_other=images_other,
        pairs=pairs,
        seed=seed,
        steps=steps,
        guidance=guidance,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.erasures.", dir=out.parent))
    try:
        erasures = []
        with Bars() as bars:
            for name in names:
                erasure = run_erase(
                    pipe,
                    items,
                    method=name,
                    config=configs[name],
                    seed=seed,
                    progress=bars,
                    world=world,
                )
                erasure.save(staging / name)
                label = f"{name}: {', '.join(c.name for c in erasure.concepts)}"
                erasures.append((label, erasure, f"erasures/{name}"))
            run_evaluation(
                pipe,
                erasures,
                judge=scorer,
                judge_record=judge_record,
                suite_for=suite_for,
                settings=settings,
                out=out,
                apply=apply_erasure,
                world_name=world.name,
                model_name=str(model or "bundled ToyWorld"),
                progress=bars,
                overwrite=overwrite,
            )
        shutil.move(str(staging), str(out / "erasures"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    console.print(f"compared {', '.join(names)}; wrote {out / 'report.html'}", markup=False)


@app.command()
def methods(
    name: Annotated[str | None, typer.Argument(help="A method: list its options.")] = None,
) -> None:
    """List the registered erasure methods, or one method's options with their defaults."""
    import dataclasses

    from ace_erasure.methods import available, get_method

    if name is None:
        for method_name in available():
            doc = (get_method(method_name).__doc__ or "").strip().splitlines()
            typer.echo(f"{method_name}\t{doc[0] if doc else ''}")
        return
    method = get_method(name)
    for field in dataclasses.fields(method.config_class):
        default = field.default if field.default is not dataclasses.MISSING else "(required)"
        typer.echo(f"{field.name} = {default!r}\t{field.metadata.get('help', '')}")


@toyworld_app.command("train")
def toyworld_train(
    out: Annotated[Path, typer.Option(help="Output ToyWorld folder (resumes if it holds a run).")],
    seed: Annotated[int, typer.Option(help="Seeds every stage.")] = 0,
    steps: Annotated[
        int | None, typer.Option(min=1, help="UNet + text-encoder steps (default from config).")
    ] = None,
    vae_steps: Annotated[
        int | None, typer.Option(min=1, help="VAE steps (default from config).")
    ] = None,
    judge_steps: Annotated[
        int | None, typer.Option(min=1, help="Judge steps (default from config).")
    ] = None,
    n_images: Annotated[
        int | None, typer.Option(min=1, help="Images in the latent dataset.")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch CPU threads (default: torch's choice).")
    ] = None,
) -> None:
    """Rebuild ToyWorld from scratch (judge, VAE, text encoder + UNet) into OUT; resumable."""
    import dataclasses

    import torch

    from ace_erasure.toyworld.train import ToyWorldTrainConfig, train_toyworld

    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file, not a folder")
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
    with Bars() as bars:
        manifest = train_toyworld(config, out, progress=bars)
    accuracy = manifest["stages"]["judge"].get("held_out_accuracy", {})
    console.print(f"wrote {out} (judge held-out accuracy: {accuracy})", markup=False)


@toyworld_app.command("info")
def toyworld_info(
    folder: Annotated[
        Path | None, typer.Argument(help="ToyWorld folder (default: bundled).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole manifest as JSON.")
    ] = False,
) -> None:
    """Summarise a ToyWorld folder: seed, sizes, training steps and times, judge accuracy."""
    from ace_erasure.toyworld.assets import manifest

    data = manifest(folder)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    config, stages = data["config"], data["stages"]
    judge = stages.get("judge", {}).get("held_out_accuracy", {})
    lines = [
        f"ToyWorld {folder or '(bundled)'}: seed {config['seed']}, {config['image_size']} px",
        f"  UNet channels {config['unet_channels']}, {config['steps']} steps "
        f"({stages.get('unet', {}).get('wall_seconds', '?')} s); text encoder "
        f"{config['text_layers']} layers x {config['text_hidden']}",
        f"  VAE {config['vae_steps']} steps; judge {config['judge']['steps']} steps, held-out "
        "accuracy " + ", ".join(f"{k} {v:.4f}" for k, v in judge.items()),
        f"  files: {len(data['files'])} (sha256 in manifest.json); versions "
        + ", ".join(f"{k} {v}" for k, v in data["versions"].items()),
    ]
    typer.echo("\n".join(lines))


def _usage_classes() -> tuple[type[BaseException], ...]:
    """The parser's usage-error classes: typer's vendored click, or click itself."""
    classes: list[type[BaseException]] = []
    base = getattr(typer, "TyperException", None)
    if isinstance(base, type):
        classes.append(base)
    try:
        import click

        classes.append(click.exceptions.ClickException)
    except ImportError:  # pragma: no cover - typer without click
        pass
    return tuple(classes)


def _line(text: object) -> str:
    return " ".join(str(text).split())


def _keep_interrupts() -> threading.Event:
    """Python drops an exception raised inside a finaliser (``__del__``), KeyboardInterrupt
    included: a Ctrl-C landing there (measured: during a library's import, in a regex object's
    ``__del__``) printed "Exception ignored" and the command ran on. Deliver it to the main
    thread again instead, so that Ctrl-C still ends the command with 130.

    Returns the event that stops re-deliveries: set it once the command is exiting on an
    interrupt, or a re-delivery still pending (measured under load: the re-delivered interrupt
    dropped in a finaliser again, then reached the main code) lands in the unwinding of that
    exit and the process ends by the signal (-2) instead of with 130."""
    import _thread

    previous = sys.unraisablehook
    exiting = threading.Event()

    def deliver() -> None:
        if not exiting.is_set():
            _thread.interrupt_main()

    def hook(unraisable) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            if not exiting.is_set():
                # later, not now: an interrupt arriving inside this hook would be dropped again
                timer = threading.Timer(0.1, deliver)
                timer.daemon = True  # never keeps a finishing process alive
                timer.start()
            return
        previous(unraisable)

    sys.unraisablehook = hook
    return exiting


def _exit_interrupted(exiting: threading.Event) -> NoReturn:
    """Exit 130 with one line, and no interrupt re-delivered from here on."""
    exiting.set()
    sys.stderr.write("error: interrupted (nothing was written)\n")
    sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app; every error becomes one line and an exit code
    (2 usage, 1 failure, 130 interrupted)."""
    exiting = _keep_interrupts()
    _quiet_libraries()
    debug = bool(os.environ.get("ACE_ERASURE_DEBUG"))
    try:
        code = app(args=argv, standalone_mode=False)
    except KeyboardInterrupt:
        _exit_interrupted(exiting)
    except UsageError as error:
        sys.stderr.write(f"error: {_line(error)}\n")
        sys.exit(2)
    except AceError as error:
        # plain text, never wrapped: one line a user (or a script) can read
        sys.stderr.write(f"error: {_line(error)}\n")
        sys.exit(1)
    except _usage_classes() as error:
        if type(error).__name__ == "Abort":
            _exit_interrupted(exiting)
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        if not message:  # no arguments: the help was printed
            message = "no command given; the commands are listed above"
        sys.stderr.write(f"error: {_line(message)} (see --help)\n")
        sys.exit(int(getattr(error, "exit_code", 2)) or 2)
    except OSError as error:
        if debug:
            raise
        where = f": {error.filename}" if getattr(error, "filename", None) else ""
        sys.stderr.write(f"error: {_line(error.strerror or error)}{where}\n")
        sys.exit(1)
    except Exception as error:
        if debug:
            raise
        sys.stderr.write(
            f"error: unexpected {type(error).__name__}: {_line(error)} "
            "(a bug: run with ACE_ERASURE_DEBUG=1 for the traceback and report it)\n"
        )
        sys.exit(1)
    if code == 130:  # typer turns Ctrl-C inside a command into an exit code
        _exit_interrupted(exiting)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
