"""One table from several ``compare.py`` / ``robustness.py`` output folders (each a
``--out`` of theirs): rows ordered by concept, model and first appearance of the variant.

    python benchmarks/compare_table.py results/compare_closed_form results/compare_trained \\
        --out results/compare_circle_heart.md [--concepts circle heart]
    python benchmarks/compare_table.py FOLDER... --by-seed [--concepts Varela all-shapes] \\
        [--variants uce mace] [--rename "ace (stage 2, 64 images)=ace"]
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
    lines += controls(rows, attacks)
    n_pairs = sorted({x["n_pairs"] for r in rows for x in r["attacks"].values()})
    modes = sorted({x["mode"] for r in rows for x in r["attacks"].values()})
    lines += [
        "",
        f"Attack pairs per cell: {n_pairs}; mode: {', '.join(modes)}. Most lost: the other "
        "concept that lost the most images against the unedited model (/ its images, where the "
        "result file records them).",
    ]
    return "\n".join(lines) + "\n"


def controls(rows: list[dict], attacks: list[str], key: str = "concept") -> list[str]:
    """The sanity-control table: per (concept, model) and attack, each distinct control with
    the folders that measured it. They depend on the model, concept and pairs, not on the
    method; merged folders each hold the controls of their own attacks, and two runs of one
    attack (another configuration, another machine) can disagree: both are shown then."""
    lines = [
        "",
        "Sanity controls (ASR on the unedited model / the text-blind control, its chance rate):",
        "",
        f"| {key} | model | " + " | ".join(attacks) + " |",
        "|---" * (2 + len(attacks)) + "|",
    ]
    found_by: dict[tuple[str, str], dict[str, dict[str, list[str]]]] = {}
    for r in rows:
        for a, x in r["attacks"].items():
            cell = (
                f"{fmt(x['asr_unedited'])} / {fmt(x['asr_text_blind'])} "
                f"({fmt(x.get('no_attack_rate_text_blind'))})"
            )
            sources = found_by.setdefault((r[key], r["model"]), {}).setdefault(a, {})
            if r["folder"] not in sources.setdefault(cell, []):
                sources[cell].append(r["folder"])
    for (name, model), by_attack in found_by.items():
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
        lines.append(f"| {name} | {model} | " + " | ".join(cells) + " |")
    return lines


CONTROL_KEYS = ("asr_unedited", "asr_text_blind", "no_attack_rate_text_blind")


def pooled(rows: list[dict]) -> dict:
    """One erasure's rows (one folder, model and method; several rows when it erased a set of
    concepts at once) as one: Acc_e and Acc_g the highest over the set, the colour accuracy the mean,
    and each attack's rates pooled over all the set's pairs."""
    first = rows[0]
    out = {k: first[k] for k in ("model", "variant", "folder")}
    # a folder of one concept is named after it ("Mira-Kestrel"): show the concept's name
    out["set"] = out["concept"] = first["concept"] if len(rows) == 1 else first["set"]
    out["acc_e"] = max(r["acc_e"] for r in rows)
    out["acc_g"] = max(r["acc_g"] for r in rows)
    # Acc_s of a set erased at once counts the set's other members, erased too: not shown
    out["acc_s"] = first["acc_s"] if len(rows) == 1 else None
    out["acc_s_base"] = first["acc_s_base"]
    out["images_per_other"] = first.get("images_per_other")
    out["acc_s_family"] = first.get("acc_s_family") if len(rows) == 1 else None
    out["most_lost"] = most_lost(first) if len(rows) == 1 else "–"
    for key in ("attribute_acc", "attribute_acc_base"):
        values = [r.get(key) for r in rows]
        out[key] = None if None in values else sum(values) / len(values)
    out["attacks"] = {}
    for name in dict.fromkeys(a for r in rows for a in r["attacks"]):
        runs = [r["attacks"][name] for r in rows if name in r["attacks"]]
        n = sum(x["n_pairs"] for x in runs)
        pool = {"n_pairs": n, "mode": runs[0]["mode"]}
        for k in ("asr", "no_attack_rate", *CONTROL_KEYS):
            values = [(x[k], x["n_pairs"]) for x in runs if x.get(k) is not None]
            pool[k] = sum(v * w for v, w in values) / n if len(values) == len(runs) else None
        out["attacks"][name] = pool
    return out


def acc_s_text(row: dict) -> str:
    """Acc_s with the unedited model's value and, where recorded, the images per other
    concept it rests on: "0.98 (1.00) ×16" (×8–16: from 8 to 16 images per concept)."""
    if row["acc_s"] is None:
        return "–"
    of = f" ×{row['images_per_other']}" if row.get("images_per_other") else ""
    return f"{fmt(row['acc_s'])} ({fmt(row['acc_s_base'])}){of}"


def family_text(family: dict | None) -> str:
    """The family's Acc_s: "0.89 (0.93) of 80" (images of the family's other concepts)."""
    if family is None:
        return "–"
    return f"{fmt(family['acc'])} ({fmt(family['base'])}) of {family['images']}"


def _order(seen: list[str], asked: list[str]) -> dict[str, int]:
    """A sort key per name: the names asked for first, in their order, then the others in
    the order they were first seen."""
    order = {name: i for i, name in enumerate(dict.fromkeys(seen))}
    for i, name in enumerate(asked):
        if name in order:
            order[name] = i - len(asked)
    return order


def distinct(texts: list[str]) -> list[str]:
    """Values that differ: "hexagon 4" is "hexagon 4/4" from a result file that did not
    record how many images hexagon had."""
    return [t for t in texts if not any(o.startswith(t + "/") for o in texts)]


def by_seed(
    folders: list[Path],
    sets: list[str] | None = None,
    variants: list[str] | None = None,
    rename: dict[str, str] | None = None,
    worst: tuple[str, ...] = ("soft", "hard", "ti"),
) -> str:
    """One row per (concept set, method), every model side by side in one cell ("seed0 ‖
    seed1"), merged over folders: the view of the field the issue notes quote. ``variants``
    keeps those methods (by their name after ``rename``, which maps a folder's label to the
    name shown, e.g. one ACE configuration measured in several folders under several labels)."""
    rename = rename or {}
    rows = [
        r | {"folder": folder.name, "variant": rename.get(r["variant"], r["variant"])}
        for folder in folders
        for r in rows_from(folder)
    ]
    if sets:
        wanted = set(sets) | {name.replace(" ", "-") for name in sets}
        rows = [r for r in rows if r["set"] in wanted]
    if variants:
        rows = [r for r in rows if r["variant"] in variants]
    if not rows:
        raise ValueError("no rows for " + ", ".join((sets or []) + (variants or [])))
    erasures: dict[tuple[str, str, str, str], list[dict]] = {}
    for r in rows:
        erasures.setdefault((r["set"], r["variant"], r["model"], r["folder"]), []).append(r)
    runs = [pooled(group) for group in erasures.values()]
    models = sorted({r["model"] for r in runs})
    attacks = list(dict.fromkeys(a for r in runs for a in r["attacks"]))
    worst = tuple(a for a in attacks if a in worst)
    cells: dict[tuple[str, str], dict[str, dict[str, list[str]]]] = {}
    highest: dict[tuple[str, str, str], float] = {}
    for r in runs:
        cell = cells.setdefault((r["set"], r["variant"]), {}).setdefault(r["model"], {})
        found = [
            ("acc_e", fmt(r["acc_e"])),
            ("acc_g", fmt(r["acc_g"])),
            ("acc_s", acc_s_text(r)),
            ("acc_s_family", family_text(r["acc_s_family"])),
            ("most_lost", r["most_lost"]),
        ]
        if r["attribute_acc"] is not None:
            found.append(("colours", f"{fmt(r['attribute_acc'])} ({fmt(r['attribute_acc_base'])})"))
        for name, x in r["attacks"].items():
            found += [(name, fmt(x["asr"])), ("no attack", fmt(x["no_attack_rate"]))]
            if name in worst and x["asr"] is not None:
                key = (r["set"], r["variant"], r["model"])
                highest[key] = max(highest.get(key, 0.0), x["asr"])
        for column, text in found:
            if text not in cell.setdefault(column, []):
                cell[column].append(text)
    columns = ["acc_e", "acc_g", "acc_s", "most_lost", "no attack", *attacks]
    heads = [
        "Acc_e",
        "Acc_g",
        "Acc_s (base) ×images each",
        "most lost",
        "no attack",
        *(f"{a} ASR" for a in attacks),
    ]
    if any(r["attribute_acc"] is not None for r in runs):
        columns.insert(4, "colours")
        heads.insert(4, "colours (base)")
    if any(r.get("acc_s_family") for r in runs):
        columns.insert(3, "acc_s_family")
        heads.insert(3, "family Acc_s (base)")
    lines = [
        "| set | method | " + " | ".join(heads) + (" | worst |" if worst else " |"),
        "|---" * (2 + len(heads) + bool(worst)) + "|",
    ]
    # rows in the order of ``sets`` and ``variants`` where given, else of first appearance
    shown = {r["set"] for r in runs}  # "Mira Kestrel" for the folder Mira-Kestrel
    asked = [n if n in shown else n.replace("-", " ") for n in sets or []]
    set_order = _order([r["set"] for r in runs], asked)
    method_order = _order([r["variant"] for r in runs], variants or [])
    for (name, variant), by_model in sorted(
        cells.items(), key=lambda item: (set_order[item[0][0]], method_order[item[0][1]])
    ):
        row = [
            " ‖ ".join("; ".join(distinct(by_model.get(m, {}).get(c, []))) or "–" for m in models)
            for c in columns
        ]
        if worst:
            row.append(" ‖ ".join(fmt(highest.get((name, variant, m))) for m in models))
        lines.append(f"| {name} | {variant} | " + " | ".join(row) + " |")
    lines += controls(runs, attacks, key="set")
    n_pairs = sorted({x["n_pairs"] for r in runs for x in r["attacks"].values()})
    modes = sorted({x["mode"] for r in runs for x in r["attacks"].values()})
    lines += [
        "",
        f"Each cell: {' ‖ '.join(models)}; where two folders measured a number differently, "
        "each value, separated by ;. "
        + (f"Worst: the highest ASR of {', '.join(worst)}. " if worst else "")
        + "Colours: the asked colour read in the concept's own images. A set of several "
        "concepts erased at once: Acc_e and Acc_g the highest over them, the colours their mean, ASR "
        "pooled over all their pairs (no Acc_s: the other concepts are erased too). "
        f"Attack pairs per cell: {n_pairs}; mode: {', '.join(modes)}. "
        f"Folders: {', '.join(f.name for f in folders)}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--concepts", nargs="+", default=None, help="only these concepts' rows")
    parser.add_argument(
        "--by-seed",
        action="store_true",
        help="one row per (concept set, method) with every model side by side, merged over "
        "the folders (--concepts then names concept sets, e.g. all-shapes)",
    )
    parser.add_argument(
        "--variants", nargs="+", default=None, help="with --by-seed: only these methods"
    )
    parser.add_argument(
        "--rename",
        nargs="+",
        default=[],
        metavar="LABEL=NAME",
        help="with --by-seed: show a folder's method LABEL as NAME",
    )
    args = parser.parse_args()
    bad = [r for r in args.rename if "=" not in r or not r.split("=", 1)[1]]
    if bad:
        parser.error(f"--rename takes LABEL=NAME, not {bad[0]!r}")
    if (args.variants or args.rename) and not args.by_seed:
        parser.error("--variants and --rename go with --by-seed")
    missing = [str(f) for f in args.folders if not any(f.glob("*/*/results.json"))]
    if missing:
        parser.error(f"no <model>/<concept>/results.json under {', '.join(missing)}")
    try:
        if args.by_seed:
            rename = dict(r.split("=", 1) for r in args.rename)
            text = by_seed(args.folders, args.concepts, args.variants, rename)
        else:
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
