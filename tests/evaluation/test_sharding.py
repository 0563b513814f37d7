"""Data parallelism: the same evaluation in two processes (torchrun, gloo on the CPU) gives
the numbers of one process, and the work is really dealt (each process drew its share)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ace_erasure.evaluation.sharding import SINGLE


def test_blocks_are_dealt_round_robin_and_gathered_in_order():
    assert SINGLE.map_blocks(list(range(7)), 3, lambda block: [x * 10 for x in block]) == [
        0,
        10,
        20,
        30,
        40,
        50,
        60,
    ]


def _numbers(value, path=""):
    """Every number of a results dict, by its path (timings and provenance left out)."""
    skip = ("seconds", "created", "command", "processes", "cost")
    if isinstance(value, dict):
        for key, item in value.items():
            if not any(s in key for s in skip):
                yield from _numbers(item, f"{path}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{path}/{i}")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, value
    else:
        yield path, value


@pytest.mark.slow
def test_two_processes_give_the_numbers_of_one(tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "ace_erasure.cli"]
    erase = subprocess.run(
        [*cli, "erase", "--concept", "circle", "--out", str(tmp_path / "e"), "--no-grid"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert erase.returncode == 0, erase.stderr
    args = [
        "evaluate",
        "--erasure",
        str(tmp_path / "e"),
        "--attacks",
        "random,soft,ti",
        "--attack-set",
        "soft.steps=4",
        "--attack-set",
        "ti.steps=4",
        "--images",
        "4",
        "--images-other",
        "1",
        "--pairs",
        "3",
    ]
    one = subprocess.run(
        [*cli, *args, "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert one.returncode == 0, one.stderr
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    two = subprocess.run(
        [*torchrun, "-m", "ace_erasure.cli", *args, "--out", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert b["settings"]["processes"] == 2 and a["settings"]["processes"] == 1
    numbers_a, numbers_b = dict(_numbers(a)), dict(_numbers(b))
    assert numbers_a.keys() == numbers_b.keys()
    for key, x in numbers_a.items():
        y = numbers_b[key]
        if isinstance(x, float) and isinstance(y, float):
            # losses and distances: the same up to float rounding (threads differ per process)
            assert math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6), key
        else:
            assert x == y, key  # rates, counts, labels: exactly
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e", "one", "two"]
    assert Path(tmp_path / "two" / "report.html").is_file()
