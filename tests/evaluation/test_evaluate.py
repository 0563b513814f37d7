"""`ace-erasure evaluate` end to end on the bundled ToyWorld (small settings)."""

import json
import sys

import pytest

from ace_erasure.cli import main


def _run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["ace-erasure", *args])
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, *capsys.readouterr()


@pytest.mark.slow
def test_evaluate_without_attacks_is_quick_and_complete(monkeypatch, capsys, tmp_path):
    code, _, err = _run(
        monkeypatch, capsys, "erase", "--concept", "star", "--out", str(tmp_path / "e"), "--no-grid"
    )
    assert code == 0, err
    out = tmp_path / "report"
    args = ["evaluate", "--erasure", str(tmp_path / "e"), "--out", str(out), "--attacks", "none"]
    code, _, err = _run(monkeypatch, capsys, *args, "--images", "2", "--images-other", "1")
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    entry = results["erasures"][0]["results"][0]
    assert entry["concept"] == "star" and entry["attacks"] == {}
    assert entry["metrics"]["n"] == {"named": 2, "synonyms": 2, "others": 9, "attributes": 11}
    assert results["erasures"][0]["quality"]["n_images"] == 9
    assert (out / "report.html").is_file() and sorted(p.name for p in tmp_path.iterdir()) == [
        "e",
        "report",
    ]


@pytest.mark.slow
def test_evaluate_writes_results_and_a_report(monkeypatch, capsys, tmp_path):
    code, _, err = _run(
        monkeypatch,
        capsys,
        "erase",
        "--concept",
        "square",
        "--out",
        str(tmp_path / "e"),
        "--no-grid",
    )
    assert code == 0, err
    out = tmp_path / "report"
    args = [
        "evaluate",
        "--erasure",
        str(tmp_path / "e"),
        "--erasure",
        str(tmp_path / "e"),
        "--out",
        str(out),
        "--attacks",
        "random,soft",
        "--attack-set",
        "soft.steps=3",
        "--images",
        "2",
        "--images-other",
        "1",
        "--pairs",
        "1",
    ]
    code, _, err = _run(monkeypatch, capsys, *args)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["format_version"] == 1 and results["world"] == "ToyWorld"
    assert results["settings"]["attack_configs"]["soft"]["steps"] == 3
    first, second = results["erasures"]
    assert first["results"][0]["metrics"] == second["results"][0]["metrics"]  # same prompts, seeds
    entry = first["results"][0]
    assert entry["concept"] == "square" and entry["metrics"]["acc_e_base"] == 1.0
    soft = entry["attacks"]["soft"]
    assert soft["n_pairs"] == 1 and len(soft["loss_curves"][0]) == 3
    assert soft["config"]["k"] == 5 and soft["config"]["steps"] == 3  # what ran, for a shape
    assert soft["asr_unedited"] is not None and soft["asr_text_blind"] is not None
    assert soft["no_attack_rate_text_blind"] is not None
    # attack pairs are pairs the unedited model draws the concept in (UnlearnDiffAtk's rule)
    selection = soft["pair_selection"]
    assert selection["filtered"] and selection["kept"] == 1 <= selection["drawn"]
    assert soft["no_attack_rate_unedited"] == 1.0
    for path in entry["images"]["before"] + entry["images"]["after"] + soft["images"]["attacked"]:
        assert (out / path).is_file()
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e", "report"]  # no temporary left
    # refused without --overwrite, replaced with it
    code, _, err = _run(monkeypatch, capsys, *args)
    assert code == 1 and "already exists" in err
