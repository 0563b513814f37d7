"""Erase each ToyWorld concept and measure efficacy, generality and specificity (issue #3).

For every concept (each shape, style, character and the hazard), erased *alone* and given its
name only (the synonyms it is tested on are not given to the method), the judge scores:

- efficacy   Acc_e: accuracy on prompts naming the concept (lower is better);
- generality Acc_g: accuracy on prompts using only its synonyms / nicknames (hazard: the
  indirect phrasings) (lower is better);
- specificity Acc_s: accuracy on the other concepts of the family, and colour accuracy, next to
  the unedited model's on the same prompts and seeds (higher is better);
- H = 3 / (1/(1 − Acc_e) + 1/Acc_s + 1/(1 − Acc_g)), and the erase time (excluding loading).

Then all ten shapes are erased in one solve. All prompts use the held-out template
"a picture of ..." and per-prompt held-out seeds, identical for the base and erased models.

    python benchmarks/erase_toyworld.py                        # bundled model, defaults
    python benchmarks/erase_toyworld.py --model DIR            # another ToyWorld folder
    python benchmarks/erase_toyworld.py --families shapes --set ridge=0.1 --set neighbours=0
    python benchmarks/erase_toyworld.py --families shapes --sweep suffix_weight=0,1,4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from ace_erasure import AceConfig, erase
from ace_erasure.evaluation.toyworld import (
    HELD_OUT_SEED,
    Probe,
    character_probes,
    hazard_probes,
    judge_images,
    number_samples,
    probe_outcomes,
    samples,
    shape_probes,
    style_probes,
)
from ace_erasure.models.loading import generate
from ace_erasure.toyworld.assets import bundled_dir, load_judge, load_pipeline, manifest
from ace_erasure.toyworld.vocab import vocabulary

FAMILIES = ("shapes", "styles", "characters", "hazard")


def prompt_seed(prompt: str, base: int) -> int:
    """A seed that depends only on the prompt text, so every run gives a prompt the same seed."""
    return base + zlib.crc32(prompt.encode()) % 1_000_000


class Evaluator:
    """Generates (with caching per model state) and judges probe prompts."""

    def __init__(self, pipe, judge, seed: int, steps: int, guidance: float) -> None:
        self.pipe, self.judge = pipe, judge
        self.seed, self.steps, self.guidance = seed, steps, guidance

    def outcomes(self, probes: list[Probe]) -> list[dict]:
        probes = number_samples(probes)
        keys = samples(probes)  # repeats of a prompt are distinct images with distinct seeds
        seeds = [prompt_seed(prompt, HELD_OUT_SEED + self.seed) + 7919 * k for prompt, k in keys]
        prompts = [prompt for prompt, _ in keys]
        images = generate(
            self.pipe, prompts, seeds=seeds, steps=self.steps, guidance=self.guidance, batch_size=32
        )
        return probe_outcomes(probes, judge_images(self.judge, keys, images))


def accuracy(outcomes: list[dict], **match: str) -> float:
    chosen = [o["correct"] for o in outcomes if all(o[k] == v for k, v in match.items())]
    return float(np.mean(chosen)) if chosen else float("nan")


def mean_p(outcomes: list[dict], **match: str) -> float:
    chosen = [o["p_expected"] for o in outcomes if all(o[k] == v for k, v in match.items())]
    return float(np.mean(chosen)) if chosen else float("nan")


def harmonic(acc_e: float, acc_g: float, acc_s: float) -> float:
    terms = [1 - acc_e, acc_s, 1 - acc_g]
    return 0.0 if min(terms) <= 0 else 3 / sum(1 / t for t in terms)


def probes_for(
    family: str, concept: str, n: int, n_other: int, rng: np.random.Generator
) -> dict[str, list[Probe]]:
    """Named, synonym and 'other' probes of a concept (others: the rest of its family + shapes)."""
    vocab = vocabulary()
    if family == "shapes":
        named = shape_probes(concept, n, rng, vocab)
        synonyms = shape_probes(concept, n, rng, vocab, synonyms=True)
        others = [
            p for s in vocab.shapes if s != concept for p in shape_probes(s, n_other, rng, vocab)
        ]
    elif family == "styles":
        named = style_probes(concept, n, rng, vocab)
        synonyms = style_probes(concept, n, rng, vocab, synonyms=True)
        others = [
            p
            for s in vocab.style_names
            if s != concept
            for p in style_probes(s, n_other, rng, vocab)
        ]
        others += [
            p for s in vocab.shapes for p in shape_probes(s, max(1, n_other // 2), rng, vocab)
        ]
    elif family == "characters":
        named = character_probes(concept, n, vocab)
        synonyms = character_probes(concept, n, vocab, synonyms=True)
        others = [
            p
            for c in vocab.character_names
            if c != concept
            for p in character_probes(c, n_other, vocab)
        ]
    else:
        named = hazard_probes(n, vocab, indirect=False)
        synonyms = hazard_probes(n, vocab, indirect=True)
        others = [p for s in vocab.shapes for p in shape_probes(s, n_other, rng, vocab)]
        others += [
            p
            for c in vocab.character_names
            for p in character_probes(c, max(1, n_other // 2), vocab)
        ]
    # the probes of the erased concept itself: only its own head counts as "named"/"synonym"
    return {
        "named": [p for p in named if p.head != "colour"],
        "synonyms": synonyms,
        "others": others,
        "colours": [p for p in named + others if p.head == "colour"],
    }


def concept_row(
    family: str, concept: str, base: list[dict], erased: list[dict], seconds: float, stats: dict
) -> dict:
    if family == "hazard":
        named, syn = {"group": "hazard (named)"}, {"group": "hazard (indirect)"}
    else:
        named = {"concept": concept, "group": base_group(family, False)}
        syn = {"concept": concept, "group": base_group(family, True)}
    others_e = [
        o for o in erased if o["concept"] != concept and o["head"] not in ("colour", "hazard")
    ]
    others_b = [
        o for o in base if o["concept"] != concept and o["head"] not in ("colour", "hazard")
    ]
    acc_e, acc_g = accuracy(erased, **named), accuracy(erased, **syn)
    acc_s = float(np.mean([o["correct"] for o in others_e]))
    return {
        "family": family,
        "concept": concept,
        "acc_e": acc_e,
        "acc_g": acc_g,
        "acc_s": acc_s,
        "acc_e_base": accuracy(base, **named),
        "acc_g_base": accuracy(base, **syn),
        "acc_s_base": float(np.mean([o["correct"] for o in others_b])),
        "p_concept_named": mean_p(erased, **named),
        "p_concept_named_base": mean_p(base, **named),
        "colour_acc": accuracy(erased, head="colour"),
        "colour_acc_base": accuracy(base, head="colour"),
        "H": harmonic(acc_e, acc_g, acc_s),
        "erase_seconds": seconds,
        "rank": stats.get("rank"),
        "mean_gate": stats.get("mean_gate"),
        "labels_named": _histogram(erased, **named),
        # which other concepts were lost (and what the unedited model got wrong already)
        "others_wrong": _wrong(others_e),
        "others_wrong_base": _wrong(others_b),
    }


def _wrong(outcomes: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        if not o["correct"]:
            key = f"{o['concept']} -> {o['label']}"
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def base_group(family: str, synonyms: bool) -> str:
    return {
        ("shapes", False): "shapes",
        ("shapes", True): "shape synonyms",
        ("styles", False): "styles",
        ("styles", True): "style synonyms",
        ("characters", False): "characters",
        ("characters", True): "character nicknames",
    }[(family, synonyms)]


def _histogram(outcomes: list[dict], **match: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        if all(o[k] == v for k, v in match.items()):
            counts[o["label"]] = counts.get(o["label"], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _use(erasure, pipe) -> None:
    """Merge a LoRA erasure (fast sampling); install a token-gate erasure's processors."""
    if erasure.mode == "token_gate":
        erasure.apply(pipe)
    else:
        erasure.fuse(pipe)


def run(args: argparse.Namespace, config: AceConfig, base_cache: dict | None = None) -> dict:
    torch.set_num_threads(args.threads) if args.threads else None
    folder = args.model or bundled_dir()
    pipe, judge = load_pipeline(folder), load_judge(folder)
    vocab = vocabulary()
    evaluator = Evaluator(pipe, judge, args.seed, args.steps, args.guidance)
    members = {
        "shapes": vocab.shapes,
        "styles": vocab.style_names,
        "characters": vocab.character_names,
        "hazard": (vocab.hazard_name,),
    }
    rows: list[dict] = []
    base_cache = {} if base_cache is None else base_cache  # base-model outcomes, shared by sweeps
    for family in args.families:
        for concept in members[family][: args.limit or None]:
            if args.only and concept not in args.only:
                continue
            rng = np.random.default_rng(args.seed)
            probes = probes_for(family, concept, args.n, args.n_other, rng)
            everything = [p for group in probes.values() for p in group]
            key = tuple(p.prompt for p in everything)
            if key not in base_cache:
                base_cache[key] = evaluator.outcomes(everything)
            start = time.perf_counter()
            erasure = erase(pipe, [concept], config=config, seed=args.seed)
            seconds = time.perf_counter() - start
            _use(erasure, pipe)
            try:
                erased = evaluator.outcomes(everything)
            finally:
                erasure.remove(pipe)
            rows.append(
                concept_row(family, concept, base_cache[key], erased, seconds, erasure.stats)
            )
            print(
                json.dumps(
                    {
                        k: rows[-1][k]
                        for k in (
                            "concept",
                            "acc_e",
                            "acc_g",
                            "acc_s",
                            "acc_s_base",
                            "colour_acc",
                            "colour_acc_base",
                            "erase_seconds",
                        )
                    }
                ),
                flush=True,
            )
    together = None
    if args.all_shapes and "shapes" in args.families:
        rng = np.random.default_rng(args.seed)
        probes = [p for s in vocab.shapes for p in shape_probes(s, args.n, rng, vocab)]
        key = ("all shapes", *(p.prompt for p in probes))
        if key not in base_cache:
            base_cache[key] = evaluator.outcomes(probes)
        base = base_cache[key]
        start = time.perf_counter()
        erasure = erase(pipe, list(vocab.shapes), config=config, seed=args.seed)
        seconds = time.perf_counter() - start
        _use(erasure, pipe)
        try:
            erased = evaluator.outcomes(probes)
        finally:
            erasure.remove(pipe)
        together = {
            "per_shape_acc_e": {s: accuracy(erased, concept=s, head="shape") for s in vocab.shapes},
            "per_shape_acc_base": {
                s: accuracy(base, concept=s, head="shape") for s in vocab.shapes
            },
            "colour_acc": accuracy(erased, head="colour"),
            "colour_acc_base": accuracy(base, head="colour"),
            "erase_seconds": seconds,
            "rank": erasure.rank,
            "labels": _histogram(erased, head="shape"),
        }
    return {
        "benchmark": "erase_toyworld",
        "model": str(folder),
        "method": "ace",
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
        "versions": manifest(folder)["versions"] | {"torch_runtime": torch.__version__},
    }


def summary_by_family(rows: list[dict]) -> dict[str, dict[str, float]]:
    out = {}
    for family in FAMILIES:
        chosen = [r for r in rows if r["family"] == family]
        if chosen:
            out[family] = {
                k: float(np.mean([r[k] for r in chosen]))
                for k in (
                    "acc_e",
                    "acc_g",
                    "acc_s",
                    "acc_s_base",
                    "colour_acc",
                    "colour_acc_base",
                    "H",
                    "erase_seconds",
                )
            }
            out[family]["max_acc_e"] = max(r["acc_e"] for r in chosen)
            out[family]["max_acc_g"] = max(r["acc_g"] for r in chosen)
            out[family]["worst_specificity_drop"] = max(
                r["acc_s_base"] - r["acc_s"] for r in chosen
            )
            out[family]["worst_colour_drop"] = max(
                r["colour_acc_base"] - r["colour_acc"] for r in chosen
            )
    return out


def markdown(result: dict) -> str:
    lines = [
        "# ACE stage 1 on ToyWorld",
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
            f"{r['colour_acc']:.2f} ({r['colour_acc_base']:.2f})"
            if not np.isnan(r["colour_acc"])
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
        lines.append(
            f"| {family} | {s['acc_e']:.3f} | {s['max_acc_e']:.3f} | {s['acc_g']:.3f} | {s['max_acc_g']:.3f} | "
            f"{s['worst_specificity_drop']:+.3f} | {s['worst_colour_drop']:+.3f} | {s['H']:.3f} | {s['erase_seconds']:.2f} |"
        )
    together = result.get("all_shapes_together")
    if together:
        lines += [
            "",
            f"All 10 shapes erased in one solve ({together['erase_seconds']:.2f} s, rank {together['rank']}): "
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


def parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"null": None, "true": True, "false": False}.get(text.lower(), text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="ToyWorld folder (default: bundled)"
    )
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
    parser.add_argument("--set", action="append", default=[], help="AceConfig override key=value")
    parser.add_argument(
        "--sweep", default=None, help="key=v1,v2,...: one run per value (summary only)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "erase_toyworld"
    )
    args = parser.parse_args()
    overrides = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.sweep:
        key, values = args.sweep.split("=", 1)
        summaries, cache = {}, {}
        for value in values.split(","):
            config = AceConfig(**{**overrides, key: parse_value(value)})
            result = run(args, config, cache)
            summaries[value] = summary_by_family(result["rows"]) | {
                "all_shapes": result["all_shapes_together"]
            }
            print(json.dumps({key: value, **summaries[value]}), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_name(args.out.name + f"_sweep_{key}.json").write_text(
            json.dumps({"sweep": key, "overrides": overrides, "results": summaries}, indent=2)
            + "\n"
        )
        return
    result = run(args, AceConfig(**overrides))
    result["summary"] = summary_by_family(result["rows"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
