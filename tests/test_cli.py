"""The command line: outputs, and one clear line + non-zero exit for bad input."""

import shutil
import sys

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


def test_missing_model_path_is_one_line(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "generate",
        "a red circle",
        "--model",
        str(tmp_path / "nope"),
        "--out",
        str(tmp_path / "x.png"),
    )
    assert code == 1
    assert _one_line(err) and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_folder_without_pipeline_is_one_line(monkeypatch, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "generate", "x", "--model", str(tmp_path / "empty"))
    assert code == 1 and "not a diffusers pipeline folder" in err and _one_line(err)


def test_corrupt_weights_are_one_line(monkeypatch, capsys, tiny_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "generate",
        "a red circle",
        "--model",
        str(broken),
        "--out",
        str(tmp_path / "x.png"),
    )
    assert code == 1 and "corrupt" in err and _one_line(err)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--concept", " "], "cannot be empty"),
        (["--concept", "circle", "--anchor", "circle"], "equals its anchor"),
        (["--concept", "circle", "--preserve", "circle"], "preserve list contains"),
        (
            ["--concept", "circle", "--synonym", "disc", "--concept", "square"],
            "exactly one --concept",
        ),
        ([], "--concept NAME or --concepts FILE"),
        (["--concept", "circle", "--set", "gate=pixel"], "gate must be one of"),
        (["--concept", "circle", "--set", "ridge=nan"], "ridge must be a finite number"),
        (["--concept", "circle", "--set", "rnak=3"], "unknown ace option"),
        (["--concept", "circle", "--set", "rank"], "--set takes key=value"),
        (["--concept", "circle", "--method", "magic"], "unknown method"),
    ],
)
def test_erase_bad_input_writes_nothing(monkeypatch, capsys, tiny_folder, tmp_path, extra, message):
    out = tmp_path / "erasure"
    code, _, err = run_cli(
        monkeypatch, capsys, "erase", "--model", str(tiny_folder), "--out", str(out), *extra
    )
    assert code == 1 and message in err and _one_line(err)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_erase_then_generate_and_refuse_another_model(monkeypatch, capsys, tiny_folder, tmp_path):
    from ace_erasure.testing import tiny_pipeline

    out = tmp_path / "erasure"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "erase",
        "--model",
        str(tiny_folder),
        "--concept",
        "circle",
        "--synonym",
        "disc",
        "--out",
        str(out),
        "--no-grid",
    )
    assert code == 0, err
    assert (out / "pytorch_lora_weights.safetensors").is_file() and (out / "erasure.json").is_file()
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "erase",
        "--model",
        str(tiny_folder),
        "--concept",
        "circle",
        "--out",
        str(out),
        "--no-grid",
    )
    assert code == 1 and "already exists" in err
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "generate",
        "a red circle",
        "--model",
        str(tiny_folder),
        "--erasure",
        str(out),
        "--steps",
        "2",
        "--out",
        str(tmp_path / "after.png"),
    )
    assert code == 0, err
    other = tmp_path / "other-model"
    tiny_pipeline("sd1", seed=5).save_pretrained(other)
    capsys.readouterr()  # drop save_pretrained's own progress output
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "generate",
        "a red circle",
        "--model",
        str(other),
        "--erasure",
        str(out),
        "--out",
        str(tmp_path / "x.png"),
    )
    assert code == 1 and "made for another base model" in err and _one_line(err)
    assert not (tmp_path / "x.png").exists()


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
    assert (out / "grid.png").is_file() and "grid.png" in (out / "README.md").read_text()
    import json

    record = json.loads((out / "erasure.json").read_text())
    assert [c["name"] for c in record["concepts"]] == ["circle", "square"] and record["rank"] == 4
