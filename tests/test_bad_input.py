"""Bad input on the command line: for every case, the exit code (2 for a malformed command
line, 1 for a failure), exactly one ``error: …`` line on stderr naming the problem, no
traceback, and nothing left behind in the working folder (not even a hidden temporary)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from ace_erasure.cli import main

# (id, arguments, exit code, text the error line must contain). Arguments may use the
# placeholders {tiny} (a tiny SD pipeline folder), {erasure} (an erasure made on it),
# {other} (the same architecture, other weights), {te} (same UNet, other text encoder),
# {tmp} (the test's own empty folder) and {bad:NAME} (a prepared bad file or folder).
CASES = [
    # the option parser
    ("no-arguments", [], 2, "no command given"),
    ("unknown-command", ["bogus"], 2, "No such command 'bogus'"),
    ("non-integer-seed", ["generate", "x", "--seed", "abc"], 2, "Invalid value for '--seed'"),
    ("unknown-option", ["generate", "x", "--colour", "red"], 2, "No such option: --colour"),
    ("zero-images", ["generate", "x", "--images-per-prompt", "0"], 2, "--images-per-prompt"),
    ("missing-prompt", ["generate"], 2, "Missing argument"),
    ("erase-without-out", ["erase", "--concept", "circle"], 2, "Missing option '--out'"),
    ("float-seed", ["erase", "--out", "{tmp}/e", "--seed", "1.5"], 2, "Invalid value for '--seed'"),
    ("train-zero-steps", ["toyworld", "train", "--out", "{tmp}/t", "--steps", "0"], 2, "--steps"),
    ("unknown-subcommand", ["toyworld", "bogus"], 2, "No such command 'bogus'"),
    # option values the command refuses
    ("empty-prompt", ["generate", "", "--model", "{tiny}"], 2, "non-empty"),
    ("zero-steps", ["generate", "x", "--steps", "0"], 2, "--steps must be at least 1"),
    ("nan-guidance", ["generate", "x", "--guidance", "nan"], 2, "--guidance must be a finite"),
    ("negative-guidance", ["generate", "x", "--guidance", "-1"], 2, "--guidance must be"),
    ("infinite-strength", ["generate", "x", "--strength", "inf"], 2, "--strength must be"),
    ("compare-without-erasure", ["generate", "x", "--compare"], 2, "give --erasure"),
    ("odd-height", ["generate", "x", "--model", "{tiny}", "--height", "30"], 2, "multiple of"),
    ("no-concept", ["erase", "--out", "{tmp}/e"], 2, "--concept NAME or --concepts FILE"),
    (
        "synonym-two-concepts",
        ["erase", "--out", "{tmp}/e", "--concept", "a", "--concept", "b", "--synonym", "c"],
        2,
        "exactly one --concept",
    ),
    (
        "bad-literal",
        ["erase", "--out", "{tmp}/e", "--concept", "circle", "--set", "gate=pixel"],
        2,
        "gate must be one of",
    ),
    (
        "nan-option",
        ["erase", "--out", "{tmp}/e", "--concept", "circle", "--set", "ridge=nan"],
        2,
        "ridge must be a finite number",
    ),
    (
        "unknown-option-set",
        ["erase", "--out", "{tmp}/e", "--concept", "c", "--set", "rnak=3"],
        2,
        "unknown ace option",
    ),
    (
        "set-without-value",
        ["erase", "--out", "{tmp}/e", "--concept", "c", "--set", "rank"],
        2,
        "--set takes key=value",
    ),
    (
        "zero-rank",
        ["erase", "--out", "{tmp}/e", "--concept", "c", "--set", "rank=0"],
        2,
        "rank must be >= 1",
    ),
    (
        "bool-for-int",
        ["erase", "--out", "{tmp}/e", "--concept", "c", "--set", "neighbours=true"],
        2,
        "neighbours must be int",
    ),
    (
        "retired-option",
        ["erase", "--out", "{tmp}/e", "--concept", "c", "--set", "gate_max=2"],
        2,
        "unknown ace option",
    ),
    (
        "stage-three",
        ["erase", "--out", "{tmp}/e", "--concept", "c", "--stage", "3"],
        2,
        "stage must be one of 1, 2",
    ),
    (
        "stage-on-uce",
        ["erase", "--out", "{tmp}/e", "--concept", "c", "--method", "uce", "--stage", "2"],
        2,
        "unknown uce option(s): stage",
    ),
    (
        "compare-no-methods",
        ["compare", "--methods", ",", "--concept", "c", "--out", "{tmp}/r"],
        2,
        "--methods needs distinct",
    ),
    (
        "compare-unknown-method",
        ["compare", "--methods", "ace,magic", "--concept", "c", "--out", "{tmp}/r"],
        2,
        "unknown method 'magic'",
    ),
    (
        "compare-bad-option",
        [
            "compare",
            "--methods",
            "ace,uce",
            "--method-set",
            "uce.lamb=0",
            "--concept",
            "c",
            "--out",
            "{tmp}/r",
        ],
        2,
        "lamb must be > 0",
    ),
    (
        "combine-one",
        ["combine", "--erasure", "{erasure}", "--out", "{tmp}/c"],
        2,
        "at least two --erasure",
    ),
    (
        "unknown-method",
        ["erase", "--out", "{tmp}/e", "--concept", "c", "--method", "magic"],
        2,
        "unknown method 'magic'",
    ),
    (
        "missing-config",
        ["erase", "--out", "{tmp}/e", "--concept", "c", "--config", "{tmp}/no.yaml"],
        2,
        "does not exist",
    ),
    (
        "malformed-config",
        ["erase", "--out", "{tmp}/e", "--concept", "c", "--config", "{bad:yaml}"],
        2,
        "not valid YAML",
    ),
    (
        "list-config",
        ["erase", "--out", "{tmp}/e", "--concept", "c", "--config", "{bad:list}"],
        2,
        "must hold a mapping",
    ),
    # output paths, checked before any work
    (
        "out-is-folder",
        ["generate", "x", "--model", "{tiny}", "--out", "{bad:folder}"],
        1,
        "is a folder",
    ),
    (
        "out-unknown-type",
        ["generate", "x", "--model", "{tiny}", "--out", "{tmp}/x.gif"],
        1,
        "unknown file type '.gif'",
    ),
    (
        "out-read-only",
        ["generate", "x", "--model", "{tiny}", "--out", "/proc/ace-erasure-test/x.png"],
        1,
        "is not writable",
    ),
    (
        "out-under-a-file",
        ["generate", "x", "--model", "{tiny}", "--out", "{bad:file}/x.png"],
        1,
        "is a file, not a folder",
    ),
    (
        "erase-out-not-empty",
        ["erase", "--model", "{tiny}", "--concept", "c", "--out", "{bad:folder}"],
        1,
        "already exists and is not empty",
    ),
    (
        "erase-out-is-file",
        ["erase", "--model", "{tiny}", "--concept", "c", "--out", "{bad:file}"],
        1,
        "is a file, not a folder",
    ),
    (
        "erase-out-read-only",
        ["erase", "--model", "{tiny}", "--concept", "c", "--out", "/proc/ace-erasure-test/e"],
        1,
        "is not writable",
    ),
    (
        "train-out-is-file",
        ["toyworld", "train", "--out", "{bad:file}"],
        2,
        "is a file, not a folder",
    ),
    # models, devices, dtypes
    ("missing-model", ["generate", "x", "--model", "{tmp}/nope"], 1, "does not exist"),
    (
        "not-a-pipeline",
        ["generate", "x", "--model", "{bad:folder}"],
        1,
        "not a diffusers pipeline folder",
    ),
    ("corrupt-weights", ["generate", "x", "--model", "{bad:corrupt}"], 1, "corrupt"),
    ("no-cuda", ["generate", "x", "--model", "{tiny}", "--device", "cuda"], 1, "no CUDA GPU"),
    (
        "unknown-device",
        ["generate", "x", "--model", "{tiny}", "--device", "tpu"],
        1,
        "unknown device 'tpu'",
    ),
    (
        "unknown-dtype",
        ["generate", "x", "--model", "{tiny}", "--dtype", "float8"],
        1,
        "unknown dtype 'float8'",
    ),
    # erasure folders
    (
        "missing-erasure",
        ["generate", "x", "--model", "{tiny}", "--erasure", "{tmp}/none"],
        1,
        "does not exist",
    ),
    (
        "corrupt-record",
        ["generate", "x", "--model", "{tiny}", "--erasure", "{bad:record}"],
        1,
        "erasure.json is corrupt",
    ),
    (
        "record-wrong-shape",
        ["generate", "x", "--model", "{tiny}", "--erasure", "{bad:shape}"],
        1,
        "'concepts' has the wrong type",
    ),
    (
        "corrupt-lora",
        ["generate", "x", "--model", "{tiny}", "--erasure", "{bad:lora}"],
        1,
        "corrupt or not a safetensors file",
    ),
    (
        "another-model",
        ["generate", "x", "--model", "{other}", "--erasure", "{erasure}"],
        1,
        "made for another base model: its text_encoder, unet differ",
    ),
    (
        "another-text-encoder",
        ["generate", "x", "--model", "{te}", "--erasure", "{erasure}"],
        1,
        "its text_encoder differ",
    ),
    (
        "another-architecture",
        ["generate", "x", "--model", "{bad:sd2}", "--erasure", "{erasure}"],
        1,
        "made for another model",
    ),
    # concepts
    (
        "empty-concept",
        ["erase", "--model", "{tiny}", "--out", "{tmp}/e", "--concept", " "],
        1,
        "cannot be empty",
    ),
    (
        "concept-is-anchor",
        [
            "erase",
            "--model",
            "{tiny}",
            "--out",
            "{tmp}/e",
            "--concept",
            "circle",
            "--anchor",
            "circle",
        ],
        1,
        "equals its anchor",
    ),
    (
        "preserve-itself",
        [
            "erase",
            "--model",
            "{tiny}",
            "--out",
            "{tmp}/e",
            "--concept",
            "circle",
            "--preserve",
            "circle",
        ],
        1,
        "preserve list contains",
    ),
    (
        "unknown-kind",
        [
            "erase",
            "--model",
            "{tiny}",
            "--out",
            "{tmp}/e",
            "--concept",
            "circle",
            "--kind",
            "thing",
        ],
        1,
        "unknown kind 'thing'",
    ),
    (
        "missing-concepts-file",
        ["erase", "--model", "{tiny}", "--out", "{tmp}/e", "--concepts", "{tmp}/c.yaml"],
        1,
        "does not exist",
    ),
    (
        "malformed-concepts-file",
        ["erase", "--model", "{tiny}", "--out", "{tmp}/e", "--concepts", "{bad:yaml}"],
        1,
        "not valid YAML/JSON",
    ),
    (
        "concepts-unknown-field",
        ["erase", "--model", "{tiny}", "--out", "{tmp}/e", "--concepts", "{bad:concepts}"],
        1,
        "unknown field(s) colour",
    ),
    (
        "duplicate-concepts",
        ["erase", "--model", "{tiny}", "--out", "{tmp}/e", "--concept", "cat", "--concept", "Cat"],
        1,
        "given twice",
    ),
    (
        "toyworld-unknown-word",
        ["erase", "--out", "{tmp}/e", "--concept", "dragon"],
        1,
        "not in ToyWorld's vocabulary",
    ),
    # evaluate
    (
        "evaluate-unknown-attack",
        ["evaluate", "--erasure", "{erasure}", "--out", "{tmp}/r", "--attacks", "soft,magic"],
        2,
        "unknown attack 'magic'",
    ),
    (
        "evaluate-attack-twice",
        ["evaluate", "--erasure", "{erasure}", "--out", "{tmp}/r", "--attacks", "soft,soft"],
        2,
        "names an attack twice",
    ),
    (
        "evaluate-attack-option",
        ["evaluate", "--erasure", "{erasure}", "--out", "{tmp}/r", "--attack-set", "soft.kk=3"],
        2,
        "unknown soft attack option(s): kk",
    ),
    (
        "evaluate-attack-set-form",
        ["evaluate", "--erasure", "{erasure}", "--out", "{tmp}/r", "--attack-set", "steps=3"],
        2,
        "attack.key=value",
    ),
    (
        "evaluate-missing-erasure",
        ["evaluate", "--erasure", "{tmp}/none", "--out", "{tmp}/r"],
        1,
        "does not exist",
    ),
    (
        "evaluate-another-model",
        ["evaluate", "--erasure", "{erasure}", "--model", "{other}", "--out", "{tmp}/r"],
        1,
        "made for another base model",
    ),
    (
        "evaluate-no-judge",
        ["evaluate", "--erasure", "{erasure}", "--model", "{tiny}", "--out", "{tmp}/r"],
        1,
        "no built-in judge",
    ),
    (
        "evaluate-clip-missing",
        [
            "evaluate",
            "--erasure",
            "{erasure}",
            "--model",
            "{tiny}",
            "--judge",
            "clip:{tmp}/clip",
            "--out",
            "{tmp}/r",
        ],
        1,
        "no CLIP model folder",
    ),
    (
        "evaluate-unknown-judge",
        [
            "evaluate",
            "--erasure",
            "{erasure}",
            "--model",
            "{tiny}",
            "--judge",
            "oracle",
            "--out",
            "{tmp}/r",
        ],
        1,
        "oracle",
    ),
    (
        "evaluate-suite-unknown-concept",
        [
            "evaluate",
            "--erasure",
            "{toy-erasure}",
            "--suite",
            "{bad:suite-dragon}",
            "--out",
            "{tmp}/r",
        ],
        1,
        "'dragon' is not in ToyWorld's vocabulary",
    ),
    (
        "evaluate-suite-without-entry",
        [
            "evaluate",
            "--erasure",
            "{toy-erasure}",
            "--suite",
            "{bad:suite-star}",
            "--out",
            "{tmp}/r",
        ],
        1,
        "no entry for circle",
    ),
    (
        "evaluate-suite-malformed",
        ["evaluate", "--erasure", "{toy-erasure}", "--suite", "{bad:yaml}", "--out", "{tmp}/r"],
        1,
        "not valid YAML",
    ),
    # compare: evaluate's checks, before any erasure
    (
        "compare-no-judge",
        [
            "compare",
            "--methods",
            "uce",
            "--concept",
            "circle",
            "--model",
            "{tiny}",
            "--out",
            "{tmp}/r",
        ],
        1,
        "no built-in judge; use --judge nudenet or --judge clip:DIR",
    ),
    (
        "compare-clip-missing",
        [
            "compare",
            "--methods",
            "uce",
            "--concept",
            "circle",
            "--model",
            "{tiny}",
            "--judge",
            "clip:{tmp}/clip",
            "--out",
            "{tmp}/r",
        ],
        1,
        "no CLIP model folder",
    ),
    (
        "compare-suite-without-entry",
        [
            "compare",
            "--methods",
            "uce",
            "--concept",
            "circle",
            "--suite",
            "{bad:suite-star}",
            "--out",
            "{tmp}/r",
        ],
        1,
        "no entry for circle",
    ),
    (
        "compare-attack-option",
        [
            "compare",
            "--methods",
            "uce",
            "--concept",
            "circle",
            "--attack-set",
            "soft.kk=3",
            "--out",
            "{tmp}/r",
        ],
        2,
        "unknown soft attack option(s): kk",
    ),
    (
        "evaluate-out-not-empty",
        ["evaluate", "--erasure", "{erasure}", "--out", "{bad:folder}"],
        1,
        "already exists and is not empty",
    ),
    # ToyWorld folders
    ("info-missing-folder", ["toyworld", "info", "{tmp}/nope"], 1, "does not exist"),
    ("info-not-toyworld", ["toyworld", "info", "{bad:folder}"], 1, "is not a ToyWorld folder"),
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_pipes, toyworld_pipe):
    """Models, an erasure and bad files, in a folder of their own (never the test's)."""
    from ace_erasure import AceConfig, erase
    from ace_erasure.testing import tiny_pipeline

    root = tmp_path_factory.mktemp("bad-input")
    pipe = tiny_pipes("sd1")
    paths = {"tiny": root / "tiny", "erasure": root / "erasure", "other": root / "other"}
    pipe.save_pretrained(paths["tiny"])
    erase(pipe, ["circle"], config=AceConfig(neighbours=0, gate="none")).save(paths["erasure"])
    tiny_pipeline("sd1", seed=7).save_pretrained(paths["other"])
    te = tiny_pipeline("sd1", seed=0)
    with torch.no_grad():
        te.text_encoder.final_layer_norm.weight.mul_(1.5)
    paths["te"] = root / "te"
    te.save_pretrained(paths["te"])
    bad = root / "bad"
    bad.mkdir()
    (bad / "folder").mkdir()
    (bad / "folder" / "keep.txt").write_text("user data")
    (bad / "file").write_text("a file")
    (bad / "yaml").write_text("rank: [1, 2\n")
    (bad / "list").write_text("- 1\n- 2\n")
    (bad / "concepts").write_text("- {name: circle, colour: red}\n")
    shutil.copytree(paths["tiny"], bad / "corrupt")
    weights = bad / "corrupt" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    for name in ("record", "shape", "lora"):
        shutil.copytree(paths["erasure"], bad / name)
    (bad / "record" / "erasure.json").write_text("{broken")
    record = json.loads((paths["erasure"] / "erasure.json").read_text())
    (bad / "shape" / "erasure.json").write_text(json.dumps({**record, "concepts": "circle"}))
    (bad / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"not safetensors")
    tiny_pipes("sd2").save_pretrained(bad / "sd2")
    toy = toyworld_pipe
    paths["toy-erasure"] = root / "toy-erasure"
    erase(toy, ["circle"], config=AceConfig(neighbours=0, gate="none")).save(paths["toy-erasure"])
    star = "concepts:\n  star:\n    head: shape\n    named: [a picture of a star]\n"
    (bad / "suite-star").write_text(star)
    (bad / "suite-dragon").write_text(star + "  dragon:\n    head: shape\n    named: [a dragon]\n")
    paths |= {f"bad:{p.name}": p for p in bad.iterdir()}
    return paths


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


@pytest.mark.parametrize("case,args,code,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(prepared, tmp_path, monkeypatch, capsys, case, args, code, message):
    monkeypatch.chdir(tmp_path)  # outputs that default to the working folder land here
    values = {k: str(v) for k, v in prepared.items()} | {"tmp": str(tmp_path)}
    argv = [re.sub(r"\{([a-z0-9:-]+)\}", lambda m: values[m[1]], a) for a in args]
    watched = [tmp_path, prepared["bad:folder"], prepared["erasure"], prepared["tiny"]]
    before = [_snapshot(folder) for folder in watched]
    monkeypatch.setattr(sys, "argv", ["ace-erasure", *argv])
    exit_code = 0
    try:
        main(argv)
    except SystemExit as exit_:
        exit_code = int(exit_.code or 0)
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert exit_code == code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err
    assert [_snapshot(folder) for folder in watched] == before  # nothing written anywhere


def test_at_least_forty_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
