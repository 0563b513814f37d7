"""The command line: outputs, and one clear line + non-zero exit for bad input."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from ace_erasure.cli import main


def _one_line(err: str) -> bool:
    """One "error: ..." line and nothing else (no traceback, no blank line before it)."""
    return err.startswith("error: ") and err.count("\n") == 1


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["ace-erasure", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from ace_erasure.testing import tiny_pipeline

    folder = tmp_path_factory.mktemp("models") / "tiny-sd1"
    tiny_pipeline("sd1").save_pretrained(folder)
    return folder


def test_generate_grid_on_a_local_pipeline(monkeypatch, capsys, tiny_folder, tmp_path):
    out = tmp_path / "grid.png"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "generate",
        "a red circle",
        "a blue square",
        "--model",
        str(tiny_folder),
        "--steps",
        "2",
        "--images-per-prompt",
        "2",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert Image.open(out).size == (2 * 32, 2 * 32)  # 2 prompts x 2 images, 32 px each
    again = tmp_path / "again.png"
    run_cli(
        monkeypatch,
        capsys,
        "generate",
        "a red circle",
        "a blue square",
        "--model",
        str(tiny_folder),
        "--steps",
        "2",
        "--images-per-prompt",
        "2",
        "--out",
        str(again),
    )
    assert out.read_bytes() == again.read_bytes()  # same seed, same bytes


def _erase(monkeypatch, capsys, folder, out, *extra):
    code, _, err = run_cli(
        monkeypatch, capsys, "erase", "--model", str(folder), "--out", str(out), "--no-grid", *extra
    )
    assert code == 0, err


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_erase_then_generate_compare_and_strength(monkeypatch, capsys, tiny_folder, tmp_path):
    circle, star = tmp_path / "circle", tmp_path / "star"
    _erase(monkeypatch, capsys, tiny_folder, circle, "--concept", "circle", "--synonym", "disc")
    assert (circle / "pytorch_lora_weights.safetensors").is_file()
    _erase(monkeypatch, capsys, tiny_folder, star, "--concept", "star")
    # --overwrite replaces an erasure folder (the README's first command runs twice)
    _erase(monkeypatch, capsys, tiny_folder, star, "--concept", "star", "--overwrite")

    def generate(out, *extra):
        args = ["generate", "a red circle", "--model", str(tiny_folder), "--steps", "2"]
        code, _, err = run_cli(monkeypatch, capsys, *args, "--out", str(out), *extra)
        assert code == 0, err
        return _pixels(out)

    base = generate(tmp_path / "base.png")
    erased = generate(tmp_path / "after.png", "--erasure", str(circle))
    both = generate(tmp_path / "both.png", "--erasure", str(circle), "--erasure", str(star))
    off = generate(tmp_path / "off.png", "--erasure", str(circle), "--strength", "0")
    assert not np.array_equal(base, erased) and not np.array_equal(erased, both)
    assert np.abs(off.astype(int) - base.astype(int)).max() <= 1  # strength 0 = the base model
    record = json.loads(Image.open(tmp_path / "both.png").info["ace-erasure"])
    assert record["erasures"] == [str(circle), str(star)] and record["seed"] == 0
    assert record["steps"] == 2 and not record["forced"]
    compare = tmp_path / "compare.png"
    generate(compare, "--erasure", str(circle), "--compare", "--images-per-prompt", "2")
    grid = Image.open(compare)
    assert grid.width > 2 * 128 and grid.height >= 2 * 128  # two labelled rows of upscaled tiles


def test_methods_are_listed_with_their_options(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "methods")
    assert code == 0 and out.startswith("ace\t")
    code, out, _ = run_cli(monkeypatch, capsys, "methods", "ace")
    assert code == 0 and "preserve_weight = 5.0" in out and "gate = 'layer'" in out


def test_erase_with_concept_file_and_grid(monkeypatch, capsys, tiny_folder, tmp_path):
    concepts = tmp_path / "concepts.yaml"
    concepts.write_text("- circle\n- {name: square, synonyms: [box]}\n")
    out = tmp_path / "erasure"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "erase",
        "--model",
        str(tiny_folder),
        "--concepts",
        str(concepts),
        "--out",
        str(out),
        "--set",
        "rank=4",
    )
    assert code == 0, err
    card = (out / "README.md").read_text()
    assert (out / "grid.png").is_file() and "grid.png" in card
    assert "Prompts, left to right: “circle”" in card or "a photo of a circle" in card
    record = json.loads((out / "erasure.json").read_text())
    assert [c["name"] for c in record["concepts"]] == ["circle", "square"] and record["rank"] == 4


def test_a_killed_training_erase_resumes_when_given_the_same_command(
    monkeypatch, capsys, tiny_folder, tmp_path
):
    """A method that trains checkpoints beside --out by default: the same command after an
    interruption continues to the bytes of an uninterrupted run, and a finished run leaves
    neither the checkpoints nor their path behind."""
    import ace_erasure.methods.esd as esd

    options = ["--concept", "circle", "--method", "esd-x", "--set", "steps=4", "--set", "images=1"]
    options += ["--set", "checkpoint_every=1"]
    _erase(monkeypatch, capsys, tiny_folder, tmp_path / "whole", *options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whole"]
    record = json.loads((tmp_path / "whole" / "erasure.json").read_text())
    assert record["config"]["checkpoint_dir"] is None
    original, calls = esd.add_noise, {"n": 0}

    def interrupted_at_the_third_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(esd, "add_noise", interrupted_at_the_third_step)
    args = ["erase", "--model", str(tiny_folder), "--out", str(tmp_path / "e"), "--no-grid"]
    code, _, err = run_cli(monkeypatch, capsys, *args, *options)
    assert code == 130 and err == "error: interrupted (nothing was written)\n"
    assert (tmp_path / ".e.checkpoints").is_dir() and not (tmp_path / "e").exists()
    monkeypatch.setattr(esd, "add_noise", original)
    code, _, err = run_cli(monkeypatch, capsys, *args, *options)
    assert code == 0 and f"resuming from {tmp_path / '.e.checkpoints'}" in err, err
    lora = "pytorch_lora_weights.safetensors"
    assert (tmp_path / "e" / lora).read_bytes() == (tmp_path / "whole" / lora).read_bytes()
    assert not (tmp_path / ".e.checkpoints").exists()
