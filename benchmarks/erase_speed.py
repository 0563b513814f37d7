"""How long does ACE stage 1 take? (issue #3 acceptance: time excluding model loading)

Times ``ace_erasure.erase`` for 1 and for 100 concepts on (a) the bundled ToyWorld model and
(b) a random-weight pipeline with Stable Diffusion 1.5's shapes (UNet ~860 M parameters,
CLIP ViT-L/14-sized text encoder), built from configs, on this machine's CPU. Reports the median
of repeated runs, the per-stage split (text encoding of targets / preserve set, solve, gates),
the prompts that went through the text encoder, and the peak resident memory. Two
configurations: the defaults, and ``--set`` overrides.

    python benchmarks/erase_speed.py     # defaults, 3 repeats of the 1-concept runs
    python benchmarks/erase_speed.py --repeats 1 --methods uce rece speed   # with the closed-form baselines
    python benchmarks/erase_speed.py --repeats 1 --set encode_dtype=bfloat16 \
        --set gate_resolution=128 --set gate_steps=1   # the published table (13 min)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

import ace_erasure
from ace_erasure import AceConfig, erase
from ace_erasure.methods import build_config
from ace_erasure.methods.base import parse_overrides
from bench_common import write_results

# 100 everyday object names (erased together in the 100-concept run)
OBJECTS = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
    "apple",
    "banana",
    "bicycle",
    "bottle",
    "bowl",
    "bus",
    "cake",
    "car",
    "chair",
    "clock",
    "couch",
    "cup",
    "donut",
    "elephant",
    "giraffe",
    "guitar",
    "hat",
    "kite",
    "knife",
    "laptop",
    "lamp",
    "lion",
    "monkey",
    "motorcycle",
    "mouse",
    "orange",
    "oven",
    "penguin",
    "piano",
    "pizza",
    "rabbit",
    "refrigerator",
    "rose",
    "sandwich",
    "scissors",
    "sheep",
    "shoe",
    "sofa",
    "spoon",
    "squirrel",
    "strawberry",
    "suitcase",
    "table",
    "teapot",
    "telephone",
    "television",
    "tiger",
    "toaster",
    "tomato",
    "toothbrush",
    "tractor",
    "train",
    "tree",
    "umbrella",
    "vase",
    "violin",
    "whale",
    "wolf",
    "zebra",
    "backpack",
    "balloon",
    "basket",
    "bear",
    "bee",
    "bench",
    "bridge",
    "butterfly",
    "camel",
    "candle",
    "castle",
    "cloud",
    "cow",
    "crab",
    "drum",
    "duck",
    "eagle",
    "feather",
    "fence",
    "fish",
    "flower",
    "fork",
    "fox",
    "goat",
    "hammer",
    "helmet",
    "kangaroo",
    "key",
    "ladder",
    "leaf",
]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_erase(pipe, concepts: list[str], method: str, config, repeats: int) -> dict:
    runs = []
    for seed in range(repeats):
        gc.collect()
        start = time.perf_counter()
        erasure = erase(pipe, concepts, method=method, config=config, seed=seed)
        runs.append((time.perf_counter() - start, erasure.stats.get("seconds", {})))
        passes = erasure.stats.get("encoder_passes")
    totals = [r[0] for r in runs]
    median_run = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    return {
        "concepts": len(concepts),
        "seconds_median": statistics.median(totals),
        "seconds_all": totals,
        "stage_seconds_of_median_run": median_run[1],
        "rank": erasure.rank,
        "encoder_passes": passes,
    }


def markdown(results: dict, override: dict | None) -> str:
    """The table of ``results`` (what :func:`main` writes as JSON)."""
    lines = [
        "# Erase time: ACE stage 1 and the closed-form baselines (CPU, excluding model loading)",
        "",
        f"{results['torch_threads']} torch threads; median of {results['repeats']} runs (100-concept runs: "
        f"{max(1, results['repeats'] // 3)}); peak RSS of the whole process {results['peak_rss_mb']:.0f} MB.",
        "",
        f"Command: `{results.get('command', 'python benchmarks/erase_speed.py')}`",
        "",
        "| model | config | concepts | seconds | targets | preserve | solve | gates | rank "
        "| encoder passes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, entries in results["models"].items():
        for name in results["configs"]:
            for count, r in entries[name].items():
                stages = r["stage_seconds_of_median_run"]
                st = [
                    f"{stages[k]:.2f}" if k in stages else "–"
                    for k in ("targets", "preserve", "solve", "gates")
                ]
                lines.append(
                    f"| {model} | {name} | {count} | {r['seconds_median']:.2f} | "
                    + " | ".join(st)
                    + f" | {r['rank']} | "
                    f"{r['encoder_passes'] if r['encoder_passes'] is not None else '–'} |"
                )
    if override:
        lines += ["", f"override: `{json.dumps(override)}`"]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--set", action="append", default=[], help="AceConfig override key=value (second config)"
    )
    parser.add_argument("--skip-sd15", action="store_true")
    parser.add_argument(
        "--methods",
        nargs="*",
        default=[],
        help="other methods to time with their defaults (uce rece speed)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "erase_speed"
    )
    args = parser.parse_args()

    configs = {"default": ("ace", AceConfig())}
    if args.set:
        configs["override"] = ("ace", AceConfig(**parse_overrides(args.set)))
    for name in args.methods:
        configs[name] = (name, build_config(name))
    results: dict = {
        "benchmark": "erase_speed",
        "command": "python benchmarks/erase_speed.py " + " ".join(sys.argv[1:]),
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "configs": {k: {"method": m, **dataclasses.asdict(v)} for k, (m, v) in configs.items()},
        "models": {},
    }

    from ace_erasure.toyworld.vocab import vocabulary

    toy = ace_erasure.load_pipeline()
    shapes = list(vocabulary().shapes)
    results["models"]["toyworld"] = {
        name: {
            "1": time_erase(toy, ["circle"], method, cfg, args.repeats),
            "10": time_erase(toy, shapes, method, cfg, args.repeats),
        }
        for name, (method, cfg) in configs.items()
    }
    del toy
    if not args.skip_sd15:
        from ace_erasure.testing import sd15_sized_pipeline

        rss_before = peak_rss_mb()
        start = time.perf_counter()
        pipe = sd15_sized_pipeline()
        build = time.perf_counter() - start
        unet_params = sum(p.numel() for p in pipe.unet.parameters())
        text_params = sum(p.numel() for p in pipe.text_encoder.parameters())
        results["models"]["sd15_sized_random"] = {
            "build_seconds_not_counted": build,
            "unet_parameters": unet_params,
            "text_encoder_parameters": text_params,
            "peak_rss_mb_before_erasing": rss_before,
        }
        for name, (method, cfg) in configs.items():
            results["models"]["sd15_sized_random"][name] = {
                "1": time_erase(pipe, ["cat"], method, cfg, args.repeats),
                "100": time_erase(pipe, OBJECTS[:100], method, cfg, max(1, args.repeats // 3)),
            }
    results["peak_rss_mb"] = peak_rss_mb()
    table = markdown(results, parse_overrides(args.set) if args.set else None)
    write_results(args.out, results, table)


if __name__ == "__main__":
    main()
