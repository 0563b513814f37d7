"""The committed ToyWorld weights: they load offline, generate, and the judge is accurate."""

import json
import sys

import numpy as np
import pytest

from ace_erasure.toyworld.assets import bundled_dir, manifest
from ace_erasure.toyworld.judge import head_accuracy, labelled_batch
from ace_erasure.toyworld.train import sha256_file
from ace_erasure.toyworld.vocab import vocabulary


def _one_line(err: str) -> bool:
    """One "error: ..." line and nothing else (no traceback, no blank line before it)."""
    return err.startswith("error: ") and err.count("\n") == 1


def test_manifest_hashes_match_the_committed_files():
    folder = bundled_dir()
    files = manifest()["files"]
    assert {"model/unet/diffusion_pytorch_model.safetensors", "judge/judge.safetensors"} <= set(
        files
    )
    for name, digest in files.items():
        assert sha256_file(folder / name) == digest, name
    total = sum((folder / name).stat().st_size for name in files)
    assert total < 40 * 2**20


def test_pipeline_generates_deterministically(toyworld_pipe):
    from ace_erasure.models.loading import generate

    a = generate(toyworld_pipe, ["a picture of a red circle"], seed=3)
    b = generate(toyworld_pipe, ["a picture of a red circle"], seed=3)
    assert a[0].size == (32, 32)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))


def test_judge_is_accurate_on_rendered_ground_truth(toyworld_judge):
    from ace_erasure.toyworld.judge import JudgeTrainConfig

    rng = np.random.default_rng(12345)
    images, targets = labelled_batch(400, rng, vocabulary(), JudgeTrainConfig(), augment=False)
    accuracy = head_accuracy(toyworld_judge, images, targets)
    assert min(accuracy.values()) >= 0.98, accuracy
    labels = toyworld_judge.predict(images[:5])
    assert set(labels) == {"shape", "colour", "style", "character", "hazard"}
    assert all(len(v) == 5 for v in labels.values())


def test_model_draws_and_the_default_erasure_removes_a_shape(toyworld_pipe, toyworld_judge):
    from ace_erasure import erase, generate

    prompts = [f"a picture of a {c} triangle" for c in vocabulary().colour_names]
    before = toyworld_judge.predict(generate(toyworld_pipe, prompts, seed=100))["shape"]
    erasure = erase(toyworld_pipe, ["triangle"])
    with erasure.fuse(toyworld_pipe):
        after = generate(toyworld_pipe, prompts, seed=100)
    after_labels = toyworld_judge.predict(after)["shape"]
    assert before.count("triangle") >= 6, before
    assert after_labels.count("triangle") <= 1, after_labels


def _run(monkeypatch, capsys, *args):
    from ace_erasure.cli import main

    monkeypatch.setattr(sys, "argv", ["ace-erasure", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, *capsys.readouterr()


def test_generate_warns_about_unknown_words(monkeypatch, capsys, tmp_path):
    out = tmp_path / "img.png"
    code, _, err = _run(monkeypatch, capsys, "generate", "a red dragon", "--out", str(out))
    assert code == 0 and out.is_file()
    assert "not in ToyWorld's vocabulary" in err and "dragon" in err


def test_erase_refuses_unknown_toyworld_concepts(monkeypatch, capsys, tmp_path):
    out = tmp_path / "e"
    code, _, err = _run(monkeypatch, capsys, "erase", "--concept", "dragon", "--out", str(out))
    assert code == 1 and "dragon" in err and "known concepts" in err and _one_line(err)
    assert not out.exists()


def test_info_prints_a_summary_and_the_manifest(monkeypatch, capsys):
    code, out, _ = _run(monkeypatch, capsys, "toyworld", "info")
    assert code == 0 and "seed 0" in out and "held-out accuracy shape" in out
    code, out, _ = _run(monkeypatch, capsys, "toyworld", "info", "--json")
    assert code == 0 and json.loads(out) == manifest()


@pytest.mark.parametrize("head", ["shape", "colour", "style", "character", "hazard"])
def test_judge_reports_its_held_out_accuracy(toyworld_judge, head):
    assert toyworld_judge.metadata["held_out_accuracy"][head] >= 0.99
