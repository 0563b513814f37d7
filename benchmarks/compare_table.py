"""One table from several ``compare.py`` / ``robustness.py`` output folders (each a
``--out`` of theirs): rows ordered by concept, model and first appearance of the variant.

    python benchmarks/compare_table.py results/compare_closed_form results/compare_trained \\
        --out results/compare_circle_heart.md [--concepts circle heart]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench_common import fmt, most_lost, rows_from


def table(folders: list[Path], concepts: list[str] | None = None) -> str:
    rows = [r | {"folder": folder.name} for folder in folders for r in rows_from(folder)]
    if concepts:
        rows = [r for r in rows if r["concept"] in concepts]
        if not rows:
            raise ValueError(f"no rows for the concepts {', '.join(concepts)}")
    order: dict[str, int] = {}
    for r in rows:
        order.setdefault(r["variant"], len(order))
    rows.sort(key=lambda r: (r["concept"], r["model"], order[r["variant"]]))
    attacks = list(dict.fromkeys(a for r in rows for a in r["attacks"]))
    lines = [
        "| concept | model | method | Acc_e / Acc_g / Acc_s (base) | most lost | H | no attack | "
        + " | ".join(f"{a} ASR" for a in attacks)
        + " | erase s |",
        "|---" * (8 + len(attacks)) + "|",
    ]
    for r in rows:
        asr = [f"{r['attacks'][a]['asr']:.2f}" if a in r["attacks"] else "–" for a in attacks]
        first = next(iter(r["attacks"].values()), {})
        lines.append(
            f"| {r['concept']} | {r['model']} | {r['variant']} | {r['acc_e']:.2f} / "
            f"{r['acc_g']:.2f} / {r['acc_s']:.2f} ({r['acc_s_base']:.2f}) | {most_lost(r)} | "
            f"{r['H']:.2f} | "
            f"{first.get('no_attack_rate', float('nan')):.2f} | "
            + " | ".join(asr)
            + f" | {r['erase_seconds']:.0f} |"
        )
    # the sanity controls depend on the model, concept and pairs, not on the method
    lines += [
        "",
        "Sanity controls (ASR on the unedited model / the text-blind control, its chance rate):",
        "",
        "| concept | model | " + " | ".join(attacks) + " |",
        "|---" * (2 + len(attacks)) + "|",
    ]
    # per (concept, model) and attack, each distinct control with the folders that measured
    # it: merged folders each hold the controls of their own attacks, and two runs of one
    # attack (another configuration, another machine) can disagree; both are shown then
    controls: dict[tuple[str, str], dict[str, dict[str, list[str]]]] = {}
    for r in rows:
        for a, x in r["attacks"].items():
            cell = (
                f"{fmt(x['asr_unedited'])} / {fmt(x['asr_text_blind'])} "
                f"({fmt(x.get('no_attack_rate_text_blind'))})"
            )
            sources = controls.setdefault((r["concept"], r["model"]), {}).setdefault(a, {})
            if r["folder"] not in sources.setdefault(cell, []):
                sources[cell].append(r["folder"])
    for (concept, model), by_attack in controls.items():
        cells = []
        for a in attacks:
            found = by_attack.get(a, {})
            cells.append(
                "; ".join(
                    cell if len(found) == 1 else f"{cell} [{', '.join(where)}]"
                    for cell, where in found.items()
                )
                or "–"
            )
        lines.append(f"| {concept} | {model} | " + " | ".join(cells) + " |")
    n_pairs = sorted({x["n_pairs"] for r in rows for x in r["attacks"].values()})
    modes = sorted({x["mode"] for r in rows for x in r["attacks"].values()})
    lines += [
        "",
        f"Attack pairs per cell: {n_pairs}; mode: {', '.join(modes)}. Most lost: the other "
        "concept that lost the most images against the unedited model (/ its images, where the "
        "result file records them).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--concepts", nargs="+", default=None, help="only these concepts' rows")
    args = parser.parse_args()
    missing = [str(f) for f in args.folders if not any(f.glob("*/*/results.json"))]
    if missing:
        parser.error(f"no <model>/<concept>/results.json under {', '.join(missing)}")
    try:
        text = table(args.folders, args.concepts)
    except ValueError as error:
        parser.error(str(error))
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
    print(text, end="")


if __name__ == "__main__":
    main()
