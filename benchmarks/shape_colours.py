"""Do the ten shapes, erased at once, keep their colours? Erases every ToyWorld shape with ACE
(stage 2 by default) and judges "a picture of a <colour> <shape>" for every colour and shape,
``--images`` seeds each, on the unedited and the erased model: accuracy of the colour head and
the confusions. ``--no-attributes`` erases without the world's attribute words (the colours
the kind's templates do not name; design notes, "A concept in its world's attribute words").

    python benchmarks/shape_colours.py bundled benchmarks/toyworlds/seed1
    python benchmarks/shape_colours.py bundled benchmarks/toyworlds/seed1 --no-attributes \
        --out benchmarks/results/shape_colours_without_attributes
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from pathlib import Path

import torch

import ace_erasure
from ace_erasure.errors import AceError
from ace_erasure.toyworld.assets import manifest
from ace_erasure.toyworld.vocab import vocabulary
from ace_erasure.toyworld.world import ToyWorld
from bench_common import interruptible, model_folder, write_results

HERE = Path(__file__).resolve().parent


def colour_accuracy(pipe, judge, prompts: list[str], colours: list[str], images: int) -> dict:
    drawn = []
    for k in range(images):
        drawn += ace_erasure.generate(pipe, prompts, seed=100_000 + 1000 * k)
    read = judge.predict(drawn)["colour"]
    wanted = colours * images
    wrong = Counter(f"{w} -> {r}" for w, r in zip(wanted, read) if w != r)
    correct = sum(w == r for w, r in zip(wanted, read))
    return {"accuracy": correct / len(wanted), "n": len(wanted), "wrong": dict(wrong.most_common())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="ToyWorld folders or 'bundled'")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=2)
    parser.add_argument("--images", type=int, default=2, help="seeds per prompt")
    parser.add_argument("--no-attributes", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "shape_colours")
    args = parser.parse_args()
    if args.images < 1:
        parser.error("--images must be >= 1")
    folders = [model_folder(m) for m in args.models]
    try:
        seeds = [manifest(f)["config"]["seed"] for f in folders]
    except AceError as error:
        parser.error(str(error))
    if args.no_attributes:
        ToyWorld.attributes = None  # type: ignore[assignment,method-assign]
    vocab = vocabulary()
    shapes, colour_names = list(vocab.shapes), list(vocab.colour_names)
    prompts = [f"a picture of a {c} {s}" for c in colour_names for s in shapes]
    colours = [c for c in colour_names for _ in shapes]
    rows = []
    for folder, seed in zip(folders, seeds):
        pipe = ace_erasure.load_pipeline(folder)
        judge = ToyWorld.of_pipeline(pipe).judge()
        base = colour_accuracy(pipe, judge, prompts, colours, args.images)
        start = time.perf_counter()
        erasure = ace_erasure.erase(pipe, shapes, "ace", {"stage": args.stage}, seed=0)
        seconds = time.perf_counter() - start
        with ace_erasure.apply(erasure, pipe):
            erased = colour_accuracy(pipe, judge, prompts, colours, args.images)
        rows.append(
            {"toyworld_seed": seed, "base": base, "erased": erased, "erase_seconds": seconds}
        )
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "benchmark": "shape_colours",
        "stage": args.stage,
        "attributes": not args.no_attributes,
        "images_per_prompt": args.images,
        "erase_seed": 0,
        "generation_seeds": f"100000 + 1000 k, k < {args.images}",
        "rows": rows,
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "ace_erasure": ace_erasure.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    lines = [
        f"# Colours of the ten shapes erased at once (ACE stage {args.stage}, attribute words "
        f"{'on' if result['attributes'] else 'off'})",
        "",
        "| ToyWorld seed | unedited | erased | images | wrong (erased) | erase s |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        wrong = ", ".join(f"{k} {v}" for k, v in row["erased"]["wrong"].items()) or "–"
        lines.append(
            f"| {row['toyworld_seed']} | {row['base']['accuracy']:.3f} | "
            f"{row['erased']['accuracy']:.3f} | {row['erased']['n']} | {wrong} | "
            f"{row['erase_seconds']:.0f} |"
        )
    write_results(args.out, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    interruptible(main)
