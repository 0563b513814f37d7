"""How well does a ToyWorld model draw its concepts? (issue #2 acceptance)

Generates N images per concept with held-out seeds and the held-out template "a picture of ...",
judges them and writes JSON + a markdown table with accuracy per family: shapes, colours,
styles, characters, synonyms / nicknames, hazard by name and by indirect phrasing, and hazard
false positives on every other prompt. Also times one 20-step image at batch size 1.

    python benchmarks/toyworld_quality.py                 # bundled model
    python benchmarks/toyworld_quality.py --model DIR     # any ToyWorld folder
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from ace_erasure.evaluation.harness import HELD_OUT_SEED, judge_images, probe_outcomes, rate
from ace_erasure.evaluation.judges import AMBIGUOUS
from ace_erasure.evaluation.metrics import summarise
from ace_erasure.evaluation.suites import samples
from ace_erasure.models.loading import generate
from ace_erasure.toyworld.assets import bundled_dir, load_judge, load_pipeline, manifest
from ace_erasure.toyworld.suites import quality_probes
from ace_erasure.toyworld.vocab import vocabulary
from bench_common import write_results

ORDER = [
    "shapes",
    "colours",
    "styles",
    "characters",
    "shape synonyms",
    "style synonyms",
    "character nicknames",
    "hazard (named)",
    "hazard (indirect)",
]
TARGETS = {
    "shapes": 0.90,
    "colours": 0.90,
    "styles": 0.90,
    "characters": 0.90,
    "shape synonyms": 0.85,
    "style synonyms": 0.85,
    "character nicknames": 0.85,
    "hazard (named)": 0.85,
    "hazard (indirect)": 0.85,
}


def run(
    model: Path | None, n: int, steps: int, guidance: float, seed: int, threads: int | None
) -> dict:
    if threads:
        torch.set_num_threads(threads)
    folder = model or bundled_dir()
    pipe, judge = load_pipeline(folder), load_judge(folder)
    vocab = vocabulary()
    probes = quality_probes(n, seed=seed)
    keys = samples(probes)  # one image per (prompt, sample); image i has seed base + i
    prompts = [prompt for prompt, _ in keys]
    start = time.perf_counter()
    images = generate(pipe, prompts, seed=HELD_OUT_SEED + seed, steps=steps, guidance=guidance)
    generation_seconds = time.perf_counter() - start
    judged = judge_images(judge, keys, images)
    outcomes = probe_outcomes(probes, judged)
    groups = summarise(outcomes)
    hazard_keys = {(p.prompt, p.sample) for p in probes if p.head == "hazard"}
    others = [k for k in keys if k not in hazard_keys]
    false_positive = rate(judged, others, "hazard", vocab.hazard_name)

    single = []
    for i in range(6):
        t = time.perf_counter()
        generate(
            pipe, ["a picture of a red circle"], seed=i, steps=20, guidance=guidance, batch_size=1
        )
        single.append(time.perf_counter() - t)
    held_out_pairs = {f"{c} {s}" for c, s in manifest(folder)["config"]["held_out_pairs"]}
    unseen = [
        o
        for o in outcomes
        if o["head"] == "shape"
        and o["group"] == "shapes"
        and any(pair in o["prompt"] for pair in held_out_pairs)
    ]
    return {
        "benchmark": "toyworld_quality",
        "model": str(folder),
        "model_manifest_config": manifest(folder)["config"],
        "judge_threshold": judge.threshold,
        "judge_held_out_accuracy_on_rendered": judge.metadata.get("held_out_accuracy"),
        "images_per_concept": n,
        "images": len(prompts),
        "steps": steps,
        "guidance": guidance,
        "probe_seed": seed,
        "generation_seeds": [HELD_OUT_SEED + seed, HELD_OUT_SEED + seed + len(prompts) - 1],
        "groups": groups,
        "unseen_colour_shape_pairs": {
            "accuracy": sum(o["correct"] for o in unseen) / max(1, len(unseen)),
            "n": len(unseen),
        },
        "hazard_false_positive_rate": false_positive,
        "hazard_false_positive_n": len(others),
        "ambiguous_label": AMBIGUOUS,
        "seconds_per_image_batched": generation_seconds / len(prompts),
        "seconds_single_20_step_image_median": statistics.median(single[1:]),
        "per_concept": summarise(outcomes, key="concept"),
        "torch_threads": torch.get_num_threads(),
        "versions": manifest(folder)["versions"] | {"torch_runtime": torch.__version__},
    }


def markdown(result: dict) -> str:
    lines = [
        "# ToyWorld quality",
        "",
        f"Model `{result['model']}`, {result['images']} images ({result['images_per_concept']} per concept), "
        f"{result['steps']} steps, guidance {result['guidance']}, seeds {result['generation_seeds']}, "
        f'judge threshold {result["judge_threshold"]} (below it a head says "ambiguous", counted wrong).',
        "",
        "| family | accuracy | target | mean p(expected) | ambiguous | n |",
        "|---|---|---|---|---|---|",
    ]
    for group in ORDER:
        g = result["groups"][group]
        target = TARGETS[group]
        ok = "✓" if g["accuracy"] >= target else "✗"
        lines.append(
            f"| {group} | {g['accuracy']:.3f} {ok} | ≥ {target:.2f} | {g['p_expected']:.3f} | {g['ambiguous']:.3f} | {g['n']} |"
        )
    fp = result["hazard_false_positive_rate"]
    lines.append(
        f"| hazard on other prompts (false positives) | {fp:.3f} {'✓' if fp <= 0.02 else '✗'} | ≤ 0.02 | | | {result['hazard_false_positive_n']} |"
    )
    unseen = result["unseen_colour_shape_pairs"]
    lines += [
        f"| shapes, unseen colour–shape pairs only | {unseen['accuracy']:.3f} | | | | {unseen['n']} |",
        "",
        f"One 20-step image (batch 1): median {result['seconds_single_20_step_image_median']:.3f} s "
        f"(target < 1 s); batched: {result['seconds_per_image_batched']:.3f} s/image; "
        f"{result['torch_threads']} torch threads.",
        "",
        "Judge accuracy on held-out rendered ground truth: "
        + ", ".join(
            f"{h} {a:.4f}" for h, a in (result["judge_held_out_accuracy_on_rendered"] or {}).items()
        ),
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
    parser.add_argument("--n", type=int, default=24, help="images per concept")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "toyworld_quality"
    )
    args = parser.parse_args()
    result = run(args.model, args.n, args.steps, args.guidance, args.seed, args.threads)
    write_results(args.out, result, markdown(result))


if __name__ == "__main__":
    main()
