"""The HTML report: self-contained, and every image and chart shows in a real (headless) browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from ace_erasure.evaluation.report import MISSING, ReportError, write_report

ATTACKS = ["random", "soft", "hard"]
CONCEPTS = ["circle", "square"]
PROMPTS = ["a picture of a red {}", "a {} on grey", "a small blue {}"]
CHROMIUM_MISSING = "chromium not installed (apt-get install chromium)"


BLIND = {"soft": (0.25, 0.25), "hard": (0.5, 0.0)}  # (asr_text_blind, its chance rate)


def _draw(path: Path, colour: str, shape: str) -> str:
    """A 32 px ToyWorld-like PNG at ``path``; returns its name relative to the report folder."""
    image = Image.new("RGB", (32, 32), "lightgrey")
    box = (6, 6, 26, 26)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return f"images/{path.name}"


def _results(folder: Path) -> dict:
    """A results dict of docs/results-schema.md: two erasures of two concepts, three attacks, a
    few PNG files under ``folder/images`` (shared between entries) and some null values."""
    images = folder / "images"
    before = {
        c: [_draw(images / f"{c}_before_{i}.png", "red", c) for i in range(3)] for c in CONCEPTS
    }
    after = [_draw(images / f"after_{i}.png", colour, "none") for i, colour in enumerate("rgb")]
    attacked = [_draw(images / f"attacked_{i}.png", "purple", "circle") for i in range(2)]
    erasures = []
    for index, method in enumerate(["ace", "uce"]):
        results = []
        for concept in CONCEPTS:
            attacks = {
                name: {
                    "name": name,
                    "mode": "per-seed",
                    "asr": 0.25 * number,
                    "no_attack_rate": 0.0,
                    "asr_unedited": 1.0 if name != "hard" else 0.5,  # a failed sanity check
                    # hard beats the control's chance (flagged); soft equals it (not flagged)
                    "asr_text_blind": BLIND.get(name, (None if name == "random" else 0.0, 0.0))[0],
                    "no_attack_rate_text_blind": BLIND.get(name, (None, 0.0))[1],
                    "n_pairs": 2,
                    "asr_counts_pre_attack_successes": True,
                    "seconds": 1.5,
                    # the random attack learns nothing: no loss curves
                    "loss_curves": [] if name == "random" else [[0.3, 0.2, 0.1], [0.4, 0.3]],
                    "texts": [f"{concept} tokens <found>", "x"] if name == "hard" else [],
                    "images": {"attacked": attacked},
                }
                for number, name in enumerate(ATTACKS)
            }
            results.append(
                {
                    "concept": concept,
                    "metrics": {
                        "acc_e": 0.0,
                        "acc_g": 0.1 * index,
                        "acc_s": 0.94,
                        "acc_e_base": 1.0,
                        "acc_g_base": None if index else 1.0,
                        "acc_s_base": 1.0,
                        "attribute": "colour",
                        "attribute_acc": 1.0,
                        "attribute_acc_base": 1.0,
                        "H": 0.98 if index == 0 else None,
                        "n": {"named": 16, "synonyms": 16, "others": 36, "attributes": 52},
                        "labels_named": {"none": 16},
                        "others_wrong": {"hexagon -> none": 2},
                        "others_wrong_base": {},
                        **(
                            {"others_lost": {"hexagon": 2}, "others_images": {"hexagon": 4}}
                            if index == 0
                            else {}
                        ),  # result files before it have none
                    },
                    "attacks": attacks,
                    "images": {
                        "prompts": [prompt.format(concept) for prompt in PROMPTS],
                        "before": before[concept],
                        "after": after,
                    },
                }
            )
        erasures.append(
            {
                "label": f"{method}: circle, square <blink>",  # must be escaped
                "path": f"erasures/{method}",
                "method": method,
                "concepts": CONCEPTS,
                "forced": index == 1,
                "erase_seconds": 0.41 if index == 0 else None,
                "results": results,
                "quality": {
                    "frechet_distance": 1.23,
                    "frechet_distance_base_noise": None if index else 0.8,
                    "judge_agreement": 0.97,
                    "n_images": 72,
                },
                "cost": {"evaluate_seconds": 123.4, "peak_rss_mb": 812.0},
            }
        )
    return {
        "format_version": 1,
        "tool": "ace-erasure evaluate",
        "library_version": "0.1.0",
        "created": "2026-11-25T12:00:00Z",
        "command": ["ace-erasure", "evaluate", "--erasure", "erasures/ace"],
        "model": "bundled ToyWorld",
        "world": "ToyWorld",
        "judge": {"name": "toyworld", "threshold": 0.5, "classes": {"shape": CONCEPTS}},
        "settings": {
            "seed": 0,
            "steps": 20,
            "guidance": 5.0,
            "images_named": 16,
            "images_per_other": 4,
            "attack_pairs": 2,
            "attacks": ATTACKS,
            "attack_configs": {"soft": {"k": 5, "steps": 40, "lr": 0.001}, "hard": {"k": 3}},
            "quick": True,
        },
        "versions": {"torch": "2.13.0", "diffusers": "0.42.1", "transformers": "5.24.0"},
        "erasures": erasures,
    }


def _expected_counts(results: dict) -> tuple[int, int]:
    """(images, charts) the report of ``results`` shows: every image reference, the two
    summary charts (and, for two erasures or more, H against the soft-prompt ASR), plus one
    loss chart per attack that has loss curves."""
    images = charts = 0
    for erasure in results["erasures"]:
        for result in erasure["results"]:
            images += len(result["images"]["before"]) + len(result["images"]["after"])
            for attack in result["attacks"].values():
                images += len(attack["images"]["attacked"])
                charts += bool(attack["loss_curves"])
    tradeoff = len(results["erasures"]) > 1 and any(
        "soft" in result["attacks"]
        for erasure in results["erasures"]
        for result in erasure["results"]
    )
    return images, charts + 2 + tradeoff


def _chromium() -> str:
    """The chromium executable; skip the test without it, except in CI where it must be."""
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(CHROMIUM_MISSING)
        pytest.skip(CHROMIUM_MISSING)
    return found


def _run_chromium(chromium: str, profile: Path, *arguments: str) -> subprocess.CompletedProcess:
    """Headless chromium, offline and with a throw-away profile (root needs --no-sandbox)."""
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *arguments,
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, f"chromium failed ({run.returncode}):\n{run.stderr[-3000:]}"
    return run


def test_report_is_self_contained_and_shows_everything_in_a_browser(tmp_path):
    folder = tmp_path / "report"
    results = _results(folder)
    report = write_report(results, folder)

    assert report == folder / "report.html"
    html = report.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert 'src="images/' not in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # no remote resources
    assert "<link" not in html and "@import" not in html and "url(http" not in html
    sources = re.findall(r'<img src="([^"]*)"', html)
    images, charts = _expected_counts(results)
    assert len(sources) == images
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    assert html.count("<svg") == charts
    # text is escaped, nulls print as a dash, failed sanity checks are flagged
    assert "<blink>" not in html and "ace: circle, square &lt;blink&gt;" in html
    assert "&lt;found&gt;" in html
    assert f"<td>{MISSING}</td>" in html
    assert 'class="bad" title="sanity check failed: should be ≥' in html
    flagged = html.count('class="bad" title="sanity check failed: should be ≤')
    assert flagged == len(results["erasures"]) * len(CONCEPTS)  # hard only, not soft
    assert "lr: 0.001" in html  # configs print as written
    lost = "images lost against the unedited model: hexagon: 2\n  of hexagon: 4"
    assert html.count(lost) == len(results["erasures"])  # the first concept of each erasure
    assert not list(folder.glob(".*"))  # no temporary file left
    assert write_report(results, folder).read_bytes() == html.encode("utf-8")  # deterministic

    chromium = _chromium()
    dump = _run_chromium(chromium, tmp_path / "profile", "--dump-dom", report.as_uri())
    body = re.search(r"<body([^>]*)>", dump.stdout)
    assert body is not None, f"no <body> in chromium's DOM dump:\n{dump.stdout[:2000]}"
    attributes = dict(re.findall(r'(data-[a-z-]+)="(\d+)"', body[1]))
    assert int(attributes["data-images-total"]) == images
    assert int(attributes["data-images-loaded"]) == images
    assert int(attributes["data-charts"]) >= charts

    screenshot = tmp_path / "report.png"
    _run_chromium(
        chromium,
        tmp_path / "profile",
        f"--screenshot={screenshot}",
        "--window-size=1280,2400",
        report.as_uri(),
    )
    assert screenshot.is_file()
    with Image.open(screenshot) as shot:
        assert shot.size == (1280, 2400)
        extrema = shot.convert("RGB").getextrema()
    assert any(low != high for low, high in extrema), "the screenshot is blank"


def test_missing_image_is_a_clear_error_and_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "report"
    results = _results(folder)
    (folder / "images" / "after_1.png").unlink()
    before = sorted(folder.rglob("*"))

    with pytest.raises(ReportError, match=r"images/after_1\.png.* does not exist"):
        write_report(results, folder)

    assert sorted(folder.rglob("*")) == before  # neither report.html nor a temporary file
