"""What does an erasure cost at generation time? (issue #10: "the fused erasure adds 0 %")

Times the same images drawn by a ToyWorld model (bundled or ``--model``) four ways: unedited;
with a fused erasure (two stage-1 erasures, circle and Varela, combined in closed form by
``ace_erasure.combine``) merged into the weights (``fuse``); the same erasure as a LoRA adapter
(``apply``); and a stage-2-shaped erasure of circle (its default modules: the k/v factors and
the rank-16 UNet LoRA; a few steps only, since the time at generation does not depend on them)
as an adapter and merged. The ways are interleaved, ``--repeats`` rounds, so that a machine's
load falls on all of them alike; the table gives the median, min and max seconds per round and
the median's difference from the unedited model.

    python benchmarks/generation_speed.py                  # bundled ToyWorld, 8 images, 5 rounds
    python benchmarks/generation_speed.py --images 16 --repeats 9 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import diffusers
import torch

import ace_erasure
from ace_erasure.methods.ace import AceConfig
from ace_erasure.toyworld.assets import bundled_dir, manifest
from bench_common import write_results

PROMPTS = ["a picture of a red circle", "a picture of a blue star in Varela style"]
# stage 2's default modules and ranks, a handful of steps: generation time depends on the
# modules an erasure touches, not on how long it trained
STAGE2_SHAPED = {"stage": 2, "finetune_steps": 2, "adversarial_every": 0}
STAGE2_SHAPED |= {"finetune_images": 2, "finetune_preserve_images": 4, "finetune_cache": False}


def draw(pipe, images: int, seed: int) -> float:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(images)]
    start = time.perf_counter()
    ace_erasure.generate(pipe, prompts, seed=seed)
    return time.perf_counter() - start


def markdown(results: dict) -> str:
    base = results["ways"]["unedited"]["median"]
    lines = [
        "# Generation time with an erasure (ToyWorld, CPU)",
        "",
        f"{results['images']} images of {results['steps']} steps per round, {results['repeats']} "
        f"interleaved rounds, {results['torch_threads']} torch threads; model "
        f"`{results['model']}`. Command: `{results['command']}`",
        "",
        "| way | modules edited | median s | min s | max s | median vs unedited |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["ways"].items():
        change = 100 * (r["median"] - base) / base
        lines.append(
            f"| {name} | {r['modules']} | {r['median']:.3f} | {min(r['seconds']):.3f} | "
            f"{max(r['seconds']):.3f} | {change:+.1f} % |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="ToyWorld folder")
    parser.add_argument("--images", type=int, default=8, help="images per round")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "generation_speed"
    )
    args = parser.parse_args()
    try:
        if args.images < 1 or args.repeats < 1:
            raise ace_erasure.errors.UsageError("--images and --repeats must be >= 1")
        manifest(args.model)  # a ToyWorld folder
    except ace_erasure.errors.AceError as error:
        parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = ace_erasure.load_pipeline(args.model or bundled_dir())
    circle = ace_erasure.erase(pipe, ["circle"])
    varela = ace_erasure.erase(pipe, ["Varela"])
    fused = ace_erasure.combine(pipe, [circle, varela])
    stage2 = ace_erasure.erase(pipe, ["circle"], config=AceConfig(**STAGE2_SHAPED))
    ways = {
        "unedited": (None, None),
        "fused erasure, merged (fuse)": (fused, "fuse"),
        "fused erasure, LoRA adapter (apply)": (fused, "apply"),
        "stage-2-shaped erasure, merged (fuse)": (stage2, "fuse"),
        "stage-2-shaped erasure, LoRA adapter (apply)": (stage2, "apply"),
    }
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    draw(pipe, args.images, seed=0)  # warm-up, not counted
    for round_ in range(args.repeats):
        for name, (erasure, how) in ways.items():
            if erasure is None:
                seconds[name].append(draw(pipe, args.images, seed=round_))
                continue
            with getattr(erasure, how)(pipe):
                seconds[name].append(draw(pipe, args.images, seed=round_))
    results = {
        "benchmark": "generation_speed",
        "command": "python benchmarks/generation_speed.py " + " ".join(sys.argv[1:]),
        "model": str(args.model or "bundled"),
        "images": args.images,
        "steps": 20,
        "repeats": args.repeats,
        "seeds": list(range(args.repeats)),
        "prompts": PROMPTS,
        "torch_threads": torch.get_num_threads(),
        "stage2_shaped_config": STAGE2_SHAPED,
        "versions": {
            "ace_erasure": ace_erasure.__version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
        },
        "ways": {
            name: {
                "modules": len(erasure.edits) if erasure is not None else 0,
                "seconds": seconds[name],
                "median": statistics.median(seconds[name]),
            }
            for name, (erasure, _) in ways.items()
        },
    }
    write_results(args.out, results, markdown(results))


if __name__ == "__main__":
    from bench_common import interruptible

    interruptible(main)
