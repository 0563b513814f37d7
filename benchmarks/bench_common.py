"""Shared by ``robustness.py`` and ``compare.py``: erase concepts with several method
variants and evaluate them side by side, on every ToyWorld given.

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
rebuilt from the folders every time. A run claims a (model, concept) while it works on it
(a ``.<concept>.claim`` folder beside it), so several runs started with the same command
share the work, one concept each, on a machine with more cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import ace_erasure
from ace_erasure.attacks import attack_config, parse_attack_settings
from ace_erasure.evaluation.evaluate import DEFAULT_ATTACKS, EvaluateSettings, evaluate
from ace_erasure.evaluation.metrics import lost_from_mistakes, wrong_per_concept
from ace_erasure.methods import build_config
from ace_erasure.methods.base import parse_overrides
from ace_erasure.toyworld.assets import bundled_dir, manifest
from ace_erasure.toyworld.world import ToyWorld
from ace_erasure.training.checkpoint import atomic_write_text

CONCEPTS = ("circle", "heart", "Varela", "Mira Kestrel", "hazard")
HERE = Path(__file__).parent


class Terminated(BaseException):
    """SIGTERM, raised where the benchmark is, so its ``finally`` blocks run (a BaseException,
    like KeyboardInterrupt, so no ``except Exception`` swallows it)."""


def _terminate(signum, frame) -> None:
    raise Terminated


def write_results(out: Path, result: dict, table: str) -> None:
    """A benchmark's ``OUT.json`` (every number) and ``OUT.md`` (its table) beside ``out``,
    each written whole through a temporary file; the table is printed too."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.parent / f"{out.name}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out.parent / f"{out.name}.md", table)
    print(table)


def interruptible(entry: Callable[[], None]) -> None:
    """Run a benchmark's ``entry``; Ctrl-C is one line and exit code 130, SIGTERM (``kill``, a
    job scheduler) one line and 143 (results are written whole or not at all, finished folders
    are kept for a rerun to skip, and the run's claims on unfinished ones are released)."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        entry()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted (finished results are kept)\n")
        sys.exit(130)
    except Terminated:
        sys.stderr.write("error: terminated (finished results are kept)\n")
        sys.exit(143)
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_variant(text: str) -> tuple[str, str, dict]:
    """``label=method:key=value,key=value`` (label and options optional) -> (label, method,
    options): "ace", "stage 2=ace:stage=2", "uce:lamb=1"."""
    head, _, options = text.partition(":")
    label, _, method = head.rpartition("=")
    parsed = parse_overrides([o for o in options.split(",") if o]) if options else {}
    return label or text, method, parsed


def model_folder(name: str) -> Path:
    return bundled_dir() if name == "bundled" else Path(name)


def model_label(folder: Path) -> str:
    return f"seed {manifest(folder)['config']['seed']}"


def run_one(args, variants, folder: Path, concept_names: list[str], out: Path) -> None:
    world = ToyWorld(folder)
    pipe = ace_erasure.load_pipeline(folder)
    concepts = [world.resolve(name) for name in concept_names]
    erasures = []
    for label, method, options in variants:
        config = build_config(method, options)
        start = time.perf_counter()
        erasure = ace_erasure.erase(
            pipe, concepts, method=method, config=config, seed=args.seed, world=world
        )
        seconds = time.perf_counter() - start
        erasure.stats.setdefault("seconds", {})["total"] = seconds
        erasures.append((label, erasure, f"{', '.join(concept_names)}, {label}"))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        record = {"model": str(folder), "concepts": concept_names, "variant": label}
        record |= {"erase_seconds": round(seconds, 2), "peak_rss_mb": round(rss)}
        print(json.dumps(record), flush=True)
    settings = EvaluateSettings(
        seed=args.seed,
        steps=world.sampling.steps,
        guidance=world.sampling.guidance,
        images_named=args.n,
        images_per_other=args.n_other,
        attack_pairs=args.pairs,
        attacks=tuple(args.attacks),
        attack_options=args.attack_options,
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


def others_lost(metrics: dict) -> dict[str, int]:
    """Per other concept, the images it lost against the unedited model (``others_lost``; for
    result files written before it existed, from the wrong-answer counts, which give the same
    numbers)."""
    if "others_lost" in metrics:
        return metrics["others_lost"]
    return lost_from_mistakes(
        metrics.get("others_wrong") or {}, metrics.get("others_wrong_base") or {}
    )


def most_lost(row: dict) -> str:
    """The other concept that lost the most images, as "hexagon 3/16" (of its images); "0"
    when none lost any."""
    if not row["others_lost"]:
        return "0"
    concept, lost = next(iter(row["others_lost"].items()))
    of = row["others_images"].get(concept)
    return f"{concept} {lost}" + (f"/{of}" if of else "")


def images_per_other(metrics: dict, settings: dict) -> str | None:
    """The images each other concept's Acc_s rests on: "16", or "8–16" where they differ
    (a style's suite has fewer of each shape than of each other style)."""
    counts = sorted(set((metrics.get("others_images") or {}).values()))
    if not counts:
        setting = settings.get("images_per_other")
        return None if setting is None else str(setting)
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def family_accuracy(concept: str, metrics: dict) -> dict | None:
    """Acc_s over the other concepts of ``concept``'s own ToyWorld family only (a style's
    suite also draws the shapes, 8 images each; #10's 3-point target is the family's), with
    the unedited model's value and the images it rests on. None where the suite has no other
    member of the family or only the family (then it is Acc_s), or the file lacks the counts."""
    from ace_erasure.toyworld.vocab import vocabulary

    images = metrics.get("others_images") or {}
    if not images or "others_wrong" not in metrics:
        return None
    family = vocabulary().family_of
    own = [c for c in images if family(c) == family(concept)]
    if not own or len(own) == len(images):
        return None
    n = sum(images[c] for c in own)

    def accuracy(counts: dict) -> float:
        wrong = wrong_per_concept(counts)
        return 1 - sum(wrong.get(c, 0) for c in own) / n

    return {
        "acc": accuracy(metrics["others_wrong"]),
        "base": accuracy(metrics["others_wrong_base"]),
        "images": n,
    }


def rows_from(out: Path) -> list[dict]:
    rows = []
    for results_file in sorted(out.glob("*/*/results.json")):
        results = json.loads(results_file.read_text())
        for entry in results["erasures"]:
            for result in entry["results"]:
                m = result["metrics"]
                row = {
                    "model": results_file.parent.parent.name,
                    # the folder's concept set: one concept, or e.g. "all-shapes" for ten
                    "set": results_file.parent.name,
                    "concept": result["concept"],
                    "variant": entry["label"],
                    "H": m["H"],
                    "erase_seconds": entry["erase_seconds"],
                    "acc_e": m["acc_e"],
                    "acc_g": m["acc_g"],
                    "acc_s": m["acc_s"],
                    "acc_s_base": m["acc_s_base"],
                    # the colour (attribute) accuracy of the concept's own prompts: the
                    # specificity that is left when every shape is erased at once
                    "attribute_acc": m.get("attribute_acc"),
                    "attribute_acc_base": m.get("attribute_acc_base"),
                    "others_lost": others_lost(m),
                    "others_images": m.get("others_images", {}),
                    # images per other concept behind Acc_s, fewest and most (older files:
                    # the setting)
                    "images_per_other": images_per_other(m, results.get("settings", {})),
                    "acc_s_family": family_accuracy(result["concept"], m),
                    "attacks": {
                        name: {
                            k: a.get(k)
                            for k in (
                                "asr",
                                "no_attack_rate",
                                "asr_unedited",
                                "asr_text_blind",
                                "no_attack_rate_text_blind",
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
        "# Erasures under attack on ToyWorld",
        "",
        "ASR = share of attacked generations in which the judge finds the concept (attacked "
        "generations only; optimised attacks consult the judge every few steps and stop early on "
        "success); in brackets the unedited model under the same attack / the text-blind "
        "control. No-attack = the erased model on the same pairs; blind chance = the text-blind "
        "control without attack (it ignores the conditioning, so no attack can change its images). "
        "Command and settings: `results.json` of each folder.",
        "",
        "Most lost = the other concept that lost the most images against the unedited model "
        "(more of its images judged wrong after the erasure than before), of its images.",
        "",
        "| model | concept | variant | Acc_e | Acc_g | Acc_s (base) | most lost | H | no-attack | "
        "blind chance | " + " | ".join(attacks) + " | erase s |",
        "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(attacks) + "---|",
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
        first = next(iter(r["attacks"].values()), {})
        no_attack, chance = first.get("no_attack_rate"), first.get("no_attack_rate_text_blind")
        lines.append(
            f"| {r['model']} | {r['concept']} | {r['variant']} | {fmt(r['acc_e'])} | {fmt(r['acc_g'])} | "
            f"{fmt(r['acc_s'])} ({fmt(r['acc_s_base'])}) | {most_lost(r)} | {fmt(r['H'])} | "
            f"{fmt(no_attack)} | "
            f"{fmt(chance)} | " + " | ".join(cells) + f" | {fmt(r['erase_seconds'])} |"
        )
    n_pairs = {a["n_pairs"] for r in rows for a in r["attacks"].values()}
    lines += [
        "",
        f"Pairs per attack: {sorted(n_pairs)}; {torch.get_num_threads()} torch threads.",
        "",
    ]
    return "\n".join(lines)


def main(description: str, default_variants: list[str], default_out: Path) -> None:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", action="append", default=None, help="ToyWorld folder or 'bundled' (repeatable)"
    )
    parser.add_argument(
        "--concepts",
        nargs="+",
        default=list(CONCEPTS),
        help="concepts, each erased alone ('all-shapes': the ten shapes at once)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=default_variants,
        help="label=method:key=value,... (see parse_variant)",
    )
    parser.add_argument("--attacks", nargs="+", default=list(DEFAULT_ATTACKS))
    parser.add_argument(
        "--attack-set",
        nargs="+",
        default=[],
        metavar="ATTACK.KEY=VALUE",
        help="override an attack's setting, as in `ace-erasure evaluate` (soft.lr=0.03)",
    )
    parser.add_argument("--pairs", type=int, default=16, help="attacked pairs per concept")
    parser.add_argument("--n", type=int, default=16, help="images per named / synonym set")
    parser.add_argument("--n-other", type=int, default=4, help="images per other concept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    from ace_erasure.toyworld.vocab import vocabulary

    # bad input fails now, in one line, not after an hour
    try:
        args.attack_options = parse_attack_settings(args.attack_set)
        for name in {*args.attacks, *args.attack_options}:
            attack_config(name, args.attack_options.get(name, {}))
        variants = [parse_variant(v) for v in args.variants]
        for _, method, options in variants:
            build_config(method, options)
        folders = [model_folder(model) for model in args.model or ["bundled"]]
        labels = [model_label(folder).replace(" ", "") for folder in folders]
        unknown = [c for c in args.concepts if c != "all-shapes" and not vocabulary().canonical(c)]
        if unknown:
            raise ace_erasure.errors.ConceptError(
                f"--concepts: not a ToyWorld concept: {', '.join(map(repr, unknown))} "
                "(a shape, style, character or 'hazard'; or 'all-shapes')"
            )
    except ace_erasure.errors.AceError as error:
        parser.error(str(error))

    for folder, label in zip(folders, labels):
        for concept in args.concepts:
            names = list(vocabulary().shapes) if concept == "all-shapes" else [concept]
            out = args.out / label / concept.replace(" ", "-")
            if (out / "results.json").is_file():
                print(f"skip {out} (done)", flush=True)
                continue
            claim = out.parent / f".{out.name}.claim"
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                claim.mkdir()  # atomic: several runs can share the work
            except FileExistsError:
                print(f"skip {out} (another run is on it; remove {claim} if none is)", flush=True)
                continue
            try:
                run_one(args, variants, folder, names, out)
            finally:
                claim.rmdir()
    rows = rows_from(args.out)
    summary = {
        "rows": rows,
        "attacks": args.attacks,
        "attack_options": args.attack_options,
        "variants": args.variants,
    }
    table = markdown(rows, args.attacks)
    if args.attack_set:
        table += f"\nAttack settings changed from their defaults: {' '.join(args.attack_set)}.\n"
    write_results(args.out, summary, table)
