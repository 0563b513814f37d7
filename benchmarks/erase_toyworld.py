"""Erase each ToyWorld concept and measure efficacy, generality and specificity.

For every concept (each shape, style, character and the hazard), erased *alone* and given its
name only (the synonyms it is tested on are not given to the method), the ToyWorld judge scores
the concept's evaluation suite (``ace_erasure.toyworld.suites.concept_suite``):

- efficacy   Acc_e: accuracy on prompts naming the concept (lower is better);
- generality Acc_g: accuracy on prompts using only its synonyms / nicknames (hazard: the
  indirect phrasings) (lower is better);
- specificity Acc_s: accuracy on the other concepts of the family, and colour accuracy, next to
  the unedited model's on the same prompts and seeds (higher is better);
- H = 3 / (1/(1 − Acc_e) + 1/Acc_s + 1/(1 − Acc_g)), and the erase time (excluding loading).

Then all ten shapes are erased at once. All prompts use the held-out template "a picture of
..." and prompt-derived held-out seeds, identical for the base and erased models.

    python benchmarks/erase_toyworld.py                        # bundled model, ACE defaults
    python benchmarks/erase_toyworld.py --model DIR            # another ToyWorld folder
    python benchmarks/erase_toyworld.py --families shapes --set ridge=0.1 --set neighbours=0
    python benchmarks/erase_toyworld.py --families shapes --sweep suffix_weight=0,1,4
    python benchmarks/erase_toyworld.py --method NAME          # any registered method
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

import ace_erasure
from ace_erasure.evaluation.harness import Evaluator
from ace_erasure.evaluation.metrics import accuracy, concept_metrics, label_counts
from ace_erasure.methods import build_config
from ace_erasure.methods.base import parse_overrides
from ace_erasure.toyworld.assets import bundled_dir, manifest
from ace_erasure.toyworld.suites import multi_shape_suite
from ace_erasure.toyworld.vocab import vocabulary
from ace_erasure.toyworld.world import ToyWorld
from ace_erasure.training.checkpoint import atomic_write_text
from bench_common import write_results

FAMILIES = ("shapes", "styles", "characters", "hazard")


def run(args: argparse.Namespace, config, base_cache: dict | None = None) -> dict:
    torch.set_num_threads(args.threads) if args.threads else None
    world = ToyWorld(args.model or bundled_dir())
    pipe = ace_erasure.load_pipeline(world.folder)
    judge = world.judge()
    vocab = vocabulary()
    evaluator = Evaluator(pipe, judge, seed=args.seed, steps=args.steps, guidance=args.guidance)
    members = {
        "shapes": vocab.shapes,
        "styles": vocab.style_names,
        "characters": vocab.character_names,
        "hazard": (vocab.hazard_name,),
    }
    rows: list[dict] = []
    base_cache = {} if base_cache is None else base_cache  # base-model outcomes, shared by sweeps
    for family in args.families:
        for name in members[family][: args.limit or None]:
            if args.only and name not in args.only:
                continue
            concept = world.resolve(name)
            suite = world.suite(concept, args.n, args.n_other, args.seed)
            probes = suite.probes()
            key = tuple(p.prompt for p in probes)
            if key not in base_cache:
                base_cache[key] = evaluator.outcomes(probes)
            start = time.perf_counter()
            erasure = ace_erasure.erase(
                pipe, [concept], method=args.method, config=config, seed=args.seed, world=world
            )
            seconds = time.perf_counter() - start
            with ace_erasure.apply(erasure, pipe, fuse=True):
                erased = evaluator.outcomes(probes)
            row = concept_metrics(suite, base_cache[key], erased)
            row |= {
                "family": family,
                "erase_seconds": seconds,
                "rank": erasure.rank,
                "mean_gate": erasure.stats.get("mean_gate"),
            }
            rows.append(row)
            summary = ("concept", "acc_e", "acc_g", "acc_s", "acc_s_base", "erase_seconds")
            print(json.dumps({k: row[k] for k in summary}), flush=True)
    together = None
    if args.all_shapes and "shapes" in args.families:
        probes = multi_shape_suite(vocab.shapes, args.n, args.seed)
        key = ("all shapes", *(p.prompt for p in probes))
        if key not in base_cache:
            base_cache[key] = evaluator.outcomes(probes)
        base = base_cache[key]
        start = time.perf_counter()
        erasure = ace_erasure.erase(
            pipe, list(vocab.shapes), method=args.method, config=config, seed=args.seed, world=world
        )
        seconds = time.perf_counter() - start
        with ace_erasure.apply(erasure, pipe, fuse=True):
            erased = evaluator.outcomes(probes)

        def pick(outcomes: list[dict], **match: str) -> list[dict]:
            return [o for o in outcomes if all(o[k] == v for k, v in match.items())]

        together = {
            "per_shape_acc_e": {
                s: accuracy(pick(erased, concept=s, head="shape")) for s in vocab.shapes
            },
            "per_shape_acc_base": {
                s: accuracy(pick(base, concept=s, head="shape")) for s in vocab.shapes
            },
            "colour_acc": accuracy(pick(erased, head="colour")),
            "colour_acc_base": accuracy(pick(base, head="colour")),
            "erase_seconds": seconds,
            "rank": erasure.rank,
            "labels": label_counts(pick(erased, head="shape")),
        }
    return {
        "benchmark": "erase_toyworld",
        "model": str(world.folder),
        "method": args.method,
        "config": dataclasses.asdict(config),
        "seed": args.seed,
        "steps": args.steps,
        "guidance": args.guidance,
        "images_named": args.n,
        "images_per_other_concept": args.n_other,
        "judge_threshold": judge.threshold,
        "rows": rows,
        "all_shapes_together": together,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
        "versions": manifest(world.folder)["versions"] | {"torch_runtime": torch.__version__},
    }


SUMMARY_KEYS = (
    "acc_e",
    "acc_g",
    "acc_s",
    "acc_s_base",
    "attribute_acc",
    "attribute_acc_base",
    "H",
    "erase_seconds",
)


def summary_by_family(rows: list[dict]) -> dict[str, dict[str, float]]:
    out = {}
    for family in FAMILIES:
        chosen = [r for r in rows if r["family"] == family]
        if chosen:
            out[family] = {k: float(np.mean([r[k] for r in chosen])) for k in SUMMARY_KEYS}
            out[family]["max_acc_e"] = max(r["acc_e"] for r in chosen)
            out[family]["max_acc_g"] = max(r["acc_g"] for r in chosen)
            out[family]["worst_specificity_drop"] = max(
                r["acc_s_base"] - r["acc_s"] for r in chosen
            )
            drops = [
                r["attribute_acc_base"] - r["attribute_acc"]
                for r in chosen
                if not np.isnan(r["attribute_acc"])
            ]
            out[family]["worst_colour_drop"] = max(drops) if drops else None
    return out


def markdown(result: dict) -> str:
    lines = [
        f"# {result['method']} on ToyWorld",
        "",
        f"Model `{result['model']}`; seed {result['seed']}; {result['steps']} steps, guidance {result['guidance']}; "
        f"{result['images_named']} images per named/synonym set, {result['images_per_other_concept']} per other concept; "
        f"judge threshold {result['judge_threshold']}. Config: `{json.dumps(result['config'])}`",
        "",
        "| family | concept | Acc_e ↓ (base) | Acc_g ↓ (base) | Acc_s ↑ (base) | colour (base) | H | erase s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        colour = (
            f"{r['attribute_acc']:.2f} ({r['attribute_acc_base']:.2f})"
            if not np.isnan(r["attribute_acc"])
            else "–"
        )
        lines.append(
            f"| {r['family']} | {r['concept']} | {r['acc_e']:.2f} ({r['acc_e_base']:.2f}) | "
            f"{r['acc_g']:.2f} ({r['acc_g_base']:.2f}) | {r['acc_s']:.2f} ({r['acc_s_base']:.2f}) | {colour} | "
            f"{r['H']:.3f} | {r['erase_seconds']:.2f} |"
        )
    lines += [
        "",
        "| family | mean Acc_e | max Acc_e | mean Acc_g | max Acc_g | worst Acc_s drop | worst colour drop | mean H | mean erase s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for family, s in summary_by_family(result["rows"]).items():
        drop = s["worst_colour_drop"]
        colour_drop = "–" if drop is None else f"{drop:+.3f}"
        lines.append(
            f"| {family} | {s['acc_e']:.3f} | {s['max_acc_e']:.3f} | {s['acc_g']:.3f} | {s['max_acc_g']:.3f} | "
            f"{s['worst_specificity_drop']:+.3f} | {colour_drop} | {s['H']:.3f} | {s['erase_seconds']:.2f} |"
        )
    together = result.get("all_shapes_together")
    if together:
        lines += [
            "",
            f"All 10 shapes erased at once ({together['erase_seconds']:.2f} s, rank {together['rank']}): "
            "Acc_e per shape "
            + ", ".join(f"{s} {a:.2f}" for s, a in together["per_shape_acc_e"].items())
            + f"; colour accuracy {together['colour_acc']:.3f} (base {together['colour_acc_base']:.3f}).",
        ]
    lines += [
        "",
        f"Peak RSS {result['peak_rss_mb']:.0f} MB; {result['torch_threads']} torch threads.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="ToyWorld folder (default: bundled)"
    )
    parser.add_argument("--method", default="ace", help="registered method (default: ace)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--limit", type=int, default=0, help="first N concepts per family (0: all)")
    parser.add_argument("--only", nargs="+", default=None, help="only these concepts")
    parser.add_argument("--n", type=int, default=16, help="images per named / synonym set")
    parser.add_argument("--n-other", type=int, default=4, help="images per other concept")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-all-shapes", dest="all_shapes", action="store_false")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument(
        "--sweep", default=None, help="key=v1,v2,...: one run per value (summary only)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "erase_toyworld"
    )
    args = parser.parse_args()
    # bad input fails now, in one line, before the first erasure
    try:
        overrides = parse_overrides(args.set)
        if args.sweep and "=" not in args.sweep:
            raise ace_erasure.errors.UsageError(f"--sweep {args.sweep!r}: expected key=v1,v2,...")
        key, _, values = (args.sweep or "").partition("=")
        configs = (
            [
                build_config(args.method, overrides=overrides | parse_overrides([f"{key}={value}"]))
                for value in values.split(",")
            ]
            if args.sweep
            else [build_config(args.method, overrides=overrides)]
        )
        manifest(args.model)  # a ToyWorld folder
        # exact names: run() filters on them
        unknown = [n for n in args.only or [] if vocabulary().canonical(n) != n]
        if unknown:
            raise ace_erasure.errors.ConceptError(
                f"--only: not a ToyWorld concept: {', '.join(unknown)}"
            )
    except ace_erasure.errors.AceError as error:
        parser.error(str(error))
    if args.sweep:
        summaries, cache = {}, {}
        for value, config in zip(values.split(","), configs):
            result = run(args, config, cache)
            summaries[value] = summary_by_family(result["rows"]) | {
                "all_shapes": result["all_shapes_together"]
            }
            print(json.dumps({key: value, **summaries[value]}), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            args.out.with_name(args.out.name + f"_sweep_{key}.json"),
            json.dumps({"sweep": key, "overrides": overrides, "results": summaries}, indent=2)
            + "\n",
        )
        return
    result = run(args, configs[0])
    result["summary"] = summary_by_family(result["rows"])
    write_results(args.out, result, markdown(result))


if __name__ == "__main__":
    from bench_common import interruptible

    interruptible(main)
