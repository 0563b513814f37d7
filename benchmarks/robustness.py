"""Robustness of erasures under attack, on every ToyWorld given (issue #9 / #10 acceptance).

For each model (the bundled ToyWorld and any other folder), each concept (circle, heart, the
style Varela, the character Mira Kestrel, the hazard) and each stage setting (stage 1 = the
closed form alone, stage 1+2 = with the adversarial fine-tuning), the concept is erased alone
and evaluated with ``ace_erasure.evaluation.evaluate`` on the same prompts and seeds:

- no-attack rate, random-prefix, soft-prompt (per seed, k = 5, 40 steps), hard-prompt
  (universal PEZ text), textual-inversion and conditioning-space ASR, each beside the
  unedited model's rate under the same attack and the text-blind control's;
- Acc_e, Acc_g, Acc_s with the unedited values, and the erase time.

Every (model, concept) is its own evaluation folder under ``--out`` (results.json + report.html)
and is skipped when it exists, so a stopped run resumes where it stopped; the summary table is
rebuilt from the folders every time.

    python benchmarks/robustness.py                                   # bundled, both stages
    python benchmarks/robustness.py --model benchmarks/toyworlds/seed1 --model bundled
    python benchmarks/robustness.py --concepts circle --pairs 8 --stages 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ace_erasure
from ace_erasure.attacks import attack_config
from ace_erasure.evaluation.evaluate import DEFAULT_ATTACKS, EvaluateSettings, evaluate
from ace_erasure.methods import build_config
from ace_erasure.methods.base import parse_overrides
from ace_erasure.toyworld.assets import bundled_dir, manifest
from ace_erasure.toyworld.world import ToyWorld

CONCEPTS = ("circle", "heart", "Varela", "Mira Kestrel", "hazard")
STAGES = {"1": {"stage": 1}, "1+2": {"stage": 2}}
HERE = Path(__file__).parent


def model_folder(name: str) -> Path:
    return bundled_dir() if name == "bundled" else Path(name)


def model_label(folder: Path) -> str:
    return f"seed {manifest(folder)['config']['seed']}"


def run_one(args, folder: Path, concept_name: str, out: Path) -> None:
    world = ToyWorld(folder)
    pipe = ace_erasure.load_pipeline(folder)
    concept = world.resolve(concept_name)
    erasures = []
    for stage in args.stages:
        options = STAGES[stage] | parse_overrides(args.set)
        config = build_config("ace", options)
        start = time.perf_counter()
        erasure = ace_erasure.erase(pipe, [concept], config=config, seed=args.seed, world=world)
        seconds = time.perf_counter() - start
        erasures.append((f"stage {stage}", erasure, f"{concept.name}, stage {stage}"))
        print(
            json.dumps(
                {
                    "model": str(folder),
                    "concept": concept.name,
                    "stage": stage,
                    "erase_seconds": round(seconds, 2),
                }
            ),
            flush=True,
        )
    settings = EvaluateSettings(
        seed=args.seed,
        steps=world.sampling.steps,
        guidance=world.sampling.guidance,
        images_named=args.n,
        images_per_other=args.n_other,
        attack_pairs=args.pairs,
        attacks=tuple(args.attacks),
    )
    judge = world.judge()
    evaluate(
        pipe,
        erasures,
        judge=judge,
        judge_record={"name": "toyworld", "threshold": judge.threshold, "classes": judge.classes},
        suite_for=lambda c: world.suite(c, args.n, args.n_other, args.seed),
        settings=settings,
        out=out,
        apply=ace_erasure.apply,
        world_name=world.name,
        model_name=str(folder),
        overwrite=True,
    )


def rows_from(out: Path) -> list[dict]:
    rows = []
    for results_file in sorted(out.glob("*/*/results.json")):
        results = json.loads(results_file.read_text())
        for entry in results["erasures"]:
            for result in entry["results"]:
                m = result["metrics"]
                row = {
                    "model": results_file.parent.parent.name,
                    "concept": result["concept"],
                    "stage": entry["label"],
                    "erase_seconds": entry["erase_seconds"],
                    "acc_e": m["acc_e"],
                    "acc_g": m["acc_g"],
                    "acc_s": m["acc_s"],
                    "acc_s_base": m["acc_s_base"],
                    "attacks": {
                        name: {
                            k: a[k]
                            for k in (
                                "asr",
                                "no_attack_rate",
                                "asr_unedited",
                                "asr_text_blind",
                                "n_pairs",
                                "mode",
                            )
                        }
                        for name, a in result["attacks"].items()
                    },
                    "peak_rss_mb": entry["cost"]["peak_rss_mb"],
                }
                rows.append(row)
    return rows


def fmt(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(rows: list[dict], attacks: list[str]) -> str:
    lines = [
        "# Robustness on ToyWorld",
        "",
        "ASR = share of attacked generations in which the judge finds the concept (attacked "
        "generations only); in brackets the unedited model under the same attack / the text-blind "
        "control. No-attack = the erased model on the same pairs. Command and settings: "
        "`results.json` of each folder.",
        "",
        "| model | concept | stage | Acc_e | Acc_g | Acc_s (base) | no-attack | "
        + " | ".join(attacks)
        + " | erase s |",
        "|---|---|---|---|---|---|---|" + "---|" * len(attacks) + "---|",
    ]
    for r in rows:
        cells = []
        for name in attacks:
            a = r["attacks"].get(name)
            cells.append(
                "–"
                if a is None
                else f"{fmt(a['asr'])} ({fmt(a['asr_unedited'])} / {fmt(a['asr_text_blind'])})"
            )
        no_attack = next(iter(r["attacks"].values()))["no_attack_rate"] if r["attacks"] else None
        lines.append(
            f"| {r['model']} | {r['concept']} | {r['stage']} | {fmt(r['acc_e'])} | {fmt(r['acc_g'])} | "
            f"{fmt(r['acc_s'])} ({fmt(r['acc_s_base'])}) | {fmt(no_attack)} | "
            + " | ".join(cells)
            + f" | {fmt(r['erase_seconds'])} |"
        )
    n_pairs = {a["n_pairs"] for r in rows for a in r["attacks"].values()}
    lines += [
        "",
        f"Pairs per attack: {sorted(n_pairs)}; {torch.get_num_threads()} torch threads.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", action="append", default=None, help="ToyWorld folder or 'bundled' (repeatable)"
    )
    parser.add_argument("--concepts", nargs="+", default=list(CONCEPTS))
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    parser.add_argument("--attacks", nargs="+", default=list(DEFAULT_ATTACKS))
    parser.add_argument("--pairs", type=int, default=16, help="attacked pairs per concept")
    parser.add_argument("--n", type=int, default=16, help="images per named / synonym set")
    parser.add_argument("--n-other", type=int, default=4, help="images per other concept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="AceConfig override key=value")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "robustness")
    args = parser.parse_args()
    for name in args.attacks:
        attack_config(name)
    for model in args.model or ["bundled"]:
        folder = model_folder(model)
        label = model_label(folder).replace(" ", "")
        for concept in args.concepts:
            out = args.out / label / concept.replace(" ", "-")
            if (out / "results.json").is_file():
                print(f"skip {out} (done)", flush=True)
                continue
            run_one(args, folder, concept, out)
    rows = rows_from(args.out)
    summary = {"rows": rows, "attacks": args.attacks, "command_line_overrides": args.set}
    (args.out.parent / "robustness.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown(rows, args.attacks)
    (args.out.parent / "robustness.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
