"""The benchmark scripts check their whole command line before the first erasure: a bad
attack, variant, model folder or concept is one ``error:`` line and exit code 2, not a
traceback after an hour of work, and nothing is written."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--attacks", "soft", "conditioning"], "unknown attack 'conditioning'"),
        (["--attack-set", "soft.rate=0.1"], "unknown soft attack option(s): rate"),
        (["--attack-set", "lr=0.1"], "--attack-set takes attack.key=value, got 'lr'"),
        (["--attack-set", "soft.lr=-1"], "lr must be > 0"),
        (["--variants", "x=ace:stage=3"], "stage must be one of 1, 2"),
        (["--variants", "x=nomethod"], "unknown method 'nomethod'"),
        (["--model", "/nonexistent/toyworld"], "does not exist"),
        (["--concepts", "circle", "octopus"], "not a ToyWorld concept: 'octopus'"),
        (["--concepts", "Mira-Kestrel"], "not a ToyWorld concept: 'Mira-Kestrel'"),
    ],
)
def test_a_bad_benchmark_command_line_fails_at_once_in_one_line(
    arguments, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from bench_common import main

    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["robustness.py", *arguments, "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        main("robustness", ["stage 1=ace:stage=1"], out)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert not out.exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--only", "circle", "octopus"], "--only: not a ToyWorld concept: octopus"),
        (["--set", "stage=3"], "stage must be one of 1, 2"),
        (["--sweep", "ridge"], "expected key=v1,v2"),
        (["--sweep", "stage=1,5"], "stage must be one of 1, 2, got 5"),
        (["--model", "/nonexistent/toyworld"], "does not exist"),
    ],
)
def test_a_bad_erase_toyworld_command_line_fails_at_once_in_one_line(
    arguments, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import erase_toyworld

    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["erase_toyworld.py", *arguments, "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        erase_toyworld.main()
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["/nonexistent/toyworld"], "does not exist"), (["bundled", "--images", "0"], "--images")],
)
def test_shape_colours_refuses_a_bad_command_line_before_erasing(
    arguments, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import shape_colours

    out = tmp_path / "colours"
    monkeypatch.setattr(sys, "argv", ["shape_colours.py", *arguments, "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        shape_colours.main()
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--model", "/nonexistent/toyworld"], "does not exist"),
        (["--repeats", "0"], "--images and --repeats must be >= 1"),
    ],
)
def test_generation_speed_refuses_a_bad_command_line_before_loading(
    arguments, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import generation_speed

    out = tmp_path / "speed"
    monkeypatch.setattr(sys, "argv", ["generation_speed.py", *arguments, "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        generation_speed.main()
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert not list(tmp_path.iterdir())


def test_ctrl_c_in_a_benchmark_is_one_line_and_exit_130(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from bench_common import interruptible

    def stopped() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        interruptible(stopped)
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: interrupted (finished results are kept)"
    ]


def test_sigterm_in_a_benchmark_releases_its_claims_and_exits_143(monkeypatch, capsys, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from bench_common import interruptible

    claim = tmp_path / ".circle.claim"
    before = signal.getsignal(signal.SIGTERM)

    def killed() -> None:
        claim.mkdir()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        finally:
            claim.rmdir()

    with pytest.raises(SystemExit) as exit_info:
        interruptible(killed)
    assert exit_info.value.code == 143
    assert not claim.exists()
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: terminated (finished results are kept)"
    ]
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is not left behind


def test_the_tables_most_lost_column_reads_old_and_new_result_files(monkeypatch):
    """Result files written before ``others_lost`` existed give the same column, from their
    wrong-answer counts."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from bench_common import most_lost, others_lost

    new = {"others_lost": {"hexagon": 3, "diamond": 1}, "others_images": {"hexagon": 16}}
    old = {
        "others_wrong": {"hexagon -> circle": 2, "diamond -> none": 1, "hexagon -> none": 1},
        "others_wrong_base": {"star -> none": 1, "diamond -> ambiguous": 1},
    }
    assert others_lost(new) == {"hexagon": 3, "diamond": 1}
    assert others_lost(old) == {"hexagon": 2 + 1}  # diamond: 1 wrong, as on the unedited model
    assert most_lost({"others_lost": others_lost(new), "others_images": {"hexagon": 16}}) == (
        "hexagon 3/16"
    )
    assert most_lost({"others_lost": others_lost(old), "others_images": {}}) == "hexagon 3"
    assert most_lost({"others_lost": {}, "others_images": {}}) == "0"


def _write_result(folder: Path, concept: str, label: str, attacks: dict) -> None:
    """A minimal ``compare.py`` result file: one erasure of ``concept`` under ``attacks``."""
    metrics = {"H": 1.0, "acc_e": 0.0, "acc_g": 0.0, "acc_s": 1.0, "acc_s_base": 1.0}
    metrics |= {"others_images": {"square": 16, "star": 4}}
    result = {"concept": concept, "metrics": metrics, "attacks": attacks}
    entry = {"label": label, "erase_seconds": 1.0, "cost": {"peak_rss_mb": 1}}
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"erasures": [{**entry, "results": [result]}]}))


def test_compare_table_keeps_the_concepts_asked_for(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from compare_table import table

    attack = {"asr": 0.0, "no_attack_rate": 0.0, "asr_unedited": 1.0, "asr_text_blind": 0.0}
    attack |= {"no_attack_rate_text_blind": 0.0, "n_pairs": 8, "mode": "per-seed"}
    for concept in ("circle", "heart"):
        _write_result(tmp_path / "seed0" / concept, concept, "ace", {"soft": attack})

    def concepts(text: str) -> list[str]:  # of the result rows and the control rows
        return [line.split(" | ")[0][2:] for line in text.splitlines() if "| seed0 |" in line]

    assert concepts(table([tmp_path])) == ["circle", "heart", "circle", "heart"]
    assert concepts(table([tmp_path], ["heart"])) == ["heart", "heart"]
    with pytest.raises(ValueError, match="no rows for the concepts octopus"):
        table([tmp_path], ["octopus"])


def test_compare_table_takes_each_attacks_controls_from_the_folder_that_ran_it(
    monkeypatch, tmp_path
):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from compare_table import table

    for run, name, unedited in (("a", "soft", 1.0), ("b", "ti", 0.75)):
        attack = {"asr": 0.0, "no_attack_rate": 0.0, "asr_unedited": unedited}
        attack |= {"asr_text_blind": 0.25, "no_attack_rate_text_blind": 0.25}
        attack |= {"n_pairs": 8, "mode": "per-seed"}
        _write_result(tmp_path / run / "seed0" / "circle", "circle", "uce", {name: attack})
    text = table([tmp_path / "a", tmp_path / "b"])
    controls = text.split("Sanity controls")[1]
    assert "| circle | seed0 | 1.00 / 0.25 (0.25) | 0.75 / 0.25 (0.25) |" in controls


def test_compare_table_shows_both_controls_where_two_runs_of_an_attack_disagree(
    monkeypatch, tmp_path
):
    """Two folders that ran the same attack with different sanity controls (another attack
    configuration, another machine): the table names each control with its folder instead of
    showing the first one for both."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from compare_table import table

    for run, label, unedited in (("old", "ace", 0.375), ("new", "ace", 1.0), ("same", "uce", 1.0)):
        attack = {"asr": 0.0, "no_attack_rate": 0.0, "asr_unedited": unedited}
        attack |= {"asr_text_blind": 0.0, "no_attack_rate_text_blind": 0.0}
        attack |= {"n_pairs": 8, "mode": "universal"}
        _write_result(tmp_path / run / "seed0" / "Mira", "Mira", label, {"ti": attack})
    text = table([tmp_path / "old", tmp_path / "new", tmp_path / "same"])
    controls = text.split("Sanity controls")[1]
    assert "| Mira | seed0 | 0.38 / 0.00 (0.00) [old]; 1.00 / 0.00 (0.00) [new, same] |" in controls
    # one folder, or agreeing folders: the control alone
    controls = table([tmp_path / "new", tmp_path / "same"]).split("Sanity controls")[1]
    assert "| Mira | seed0 | 1.00 / 0.00 (0.00) |" in controls


def _attack(asr: float, n_pairs: int = 8, unedited: float = 1.0) -> dict:
    return {
        "asr": asr,
        "no_attack_rate": 0.0,
        "asr_unedited": unedited,
        "asr_text_blind": 0.0,
        "no_attack_rate_text_blind": 0.0,
        "n_pairs": n_pairs,
        "mode": "per-seed",
    }


def _by_seed_rows(text: str) -> dict[str, list[str]]:
    """``by_seed``'s result rows: method -> its cells after the set and the method."""
    rows = {}
    for line in text.split("Sanity controls")[0].splitlines()[2:]:
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip("| ").split(" | ")]
            rows[cells[1]] = cells[2:]
    return rows


def test_compare_table_by_seed_merges_folders_and_puts_the_models_side_by_side(
    monkeypatch, tmp_path
):
    """One row per method: the ACE run measured under two labels in two folders is one row
    after ``rename``, each model in its own half of the cell, and "worst" is the highest of
    the attacks it names (not random)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from compare_table import by_seed

    for model, soft, ti in (("seed0", 0.125, 0.25), ("seed1", 0.5, 0.0)):
        _write_result(
            tmp_path / "a" / model / "Mira-Kestrel",
            "Mira Kestrel",
            "ace (64)",
            {"soft": _attack(soft), "random": _attack(0.75)},
        )
        _write_result(
            tmp_path / "b" / model / "Mira-Kestrel", "Mira Kestrel", "ace", {"ti": _attack(ti)}
        )
        _write_result(tmp_path / "b" / model / "hazard", "hazard", "uce", {"ti": _attack(1.0)})
    folders = [tmp_path / "a", tmp_path / "b"]
    rows = _by_seed_rows(by_seed(folders, ["Mira Kestrel"], rename={"ace (64)": "ace"}))
    assert list(rows) == ["ace"]
    # Acc_e, Acc_g, Acc_s (base), most lost, no attack, soft, random, ti, worst
    assert rows["ace"][2] == "1.00 (1.00) ×4–16 ‖ 1.00 (1.00) ×4–16"  # images per concept
    assert rows["ace"][5:] == ["0.12 ‖ 0.50", "0.75 ‖ 0.75", "0.25 ‖ 0.00", "0.25 ‖ 0.50"]
    # without the rename the two labels stay two rows; a method filter keeps one
    assert list(_by_seed_rows(by_seed(folders, ["Mira-Kestrel"]))) == ["ace (64)", "ace"]
    assert list(_by_seed_rows(by_seed(folders, variants=["uce"]))) == ["uce"]
    assert list(_by_seed_rows(by_seed(folders, variants=["ace", "ace (64)"]))) == [
        "ace",
        "ace (64)",
    ]
    # the sets in the order asked for (hazard's only method is uce)
    assert list(_by_seed_rows(by_seed(folders, ["hazard", "Mira-Kestrel"]))) == [
        "uce",
        "ace (64)",
        "ace",
    ]
    with pytest.raises(ValueError, match="no rows for octopus"):
        by_seed(folders, ["octopus"])


def test_compare_table_by_seed_pools_a_set_of_concepts_and_shows_disagreeing_runs(
    monkeypatch, tmp_path
):
    """Ten concepts erased at once are one row: Acc_e the highest over them, the attack rate
    pooled over all their pairs. Two folders that measured one number differently show both."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from compare_table import by_seed

    for run, second_acc_e in (("a", 0.25), ("b", 0.5)):
        results = []
        for concept, acc_e, asr, n in (("circle", 0.0, 0.5, 2), ("heart", second_acc_e, 0.0, 6)):
            metrics = {"H": 1.0, "acc_e": acc_e, "acc_g": acc_e / 2, "acc_s": 1.0}
            metrics |= {"acc_s_base": 1.0}
            metrics |= {"attribute_acc": 1.0 - asr, "attribute_acc_base": 1.0}
            attacks = {"soft": _attack(asr, n_pairs=n)}
            results.append({"concept": concept, "metrics": metrics, "attacks": attacks})
        folder = tmp_path / run / "seed0" / "all-shapes"
        folder.mkdir(parents=True)
        entry = {"label": "mace", "erase_seconds": 1.0, "cost": {"peak_rss_mb": 1}}
        (folder / "results.json").write_text(
            json.dumps({"erasures": [entry | {"results": results}]})
        )
    text = by_seed([tmp_path / "a", tmp_path / "b"], ["all-shapes"])
    cells = _by_seed_rows(text)["mace"]
    # Acc_e, Acc_g, Acc_s, most lost, colours, no attack, soft, worst
    assert cells[0] == "0.25; 0.50"  # Acc_e: the highest of the set, per folder
    assert cells[1] == "0.12; 0.25"  # Acc_g too
    assert cells[2] == "–"  # Acc_s would count the set's other members, erased too
    assert cells[4] == "0.75 (1.00)"  # the colours: the mean over the set
    assert cells[6] == "0.12"  # soft: 1 of all 8 pairs (not the mean of 0.5 and 0), both folders
    assert "| all-shapes | seed0 | 1.00 / 0.00 (0.00) |" in text.split("Sanity controls")[1]


def test_the_family_accuracy_counts_the_concepts_own_family_only(monkeypatch):
    """A style's suite draws the other styles (16 images each) and the shapes (8 each): #10's
    specificity target is on the styles."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from bench_common import family_accuracy

    metrics = {"others_images": {"Varela": 16, "Okonkwo": 16, "hexagon": 8}}
    metrics |= {"others_wrong": {"Varela -> none": 2, "hexagon -> circle": 5}}
    metrics |= {"others_wrong_base": {"Varela -> none": 1}}
    assert family_accuracy("Lindqvist", metrics) == {
        "acc": 1 - 2 / 32,
        "base": 1 - 1 / 32,
        "images": 32,
    }
    assert family_accuracy("circle", metrics) == {"acc": 1 - 5 / 8, "base": 1.0, "images": 8}
    assert family_accuracy("hazard", metrics) is None  # no other member of its family
    only_styles = metrics | {"others_images": {"Varela": 16, "Okonkwo": 16}}
    assert family_accuracy("Lindqvist", only_styles) is None  # then it is Acc_s itself
    assert family_accuracy("Lindqvist", {"acc_s": 1.0}) is None  # an old file


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--by-seed", "--rename", "ace"], "--rename takes LABEL=NAME, not 'ace'"),
        (["--by-seed", "--rename", "ace="], "--rename takes LABEL=NAME, not 'ace='"),
        (["--variants", "uce"], "--variants and --rename go with --by-seed"),
        (["--by-seed", "--concepts", "octopus"], "no rows for octopus"),
    ],
)
def test_a_bad_compare_table_command_line_is_one_line(
    arguments, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import compare_table

    _write_result(tmp_path / "run" / "seed0" / "circle", "circle", "uce", {"soft": _attack(0.0)})
    out = tmp_path / "table.md"
    argv = ["compare_table.py", str(tmp_path / "run"), *arguments, "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        compare_table.main()
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert not out.exists()
