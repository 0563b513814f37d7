"""Real signals: Ctrl-C (SIGINT) exits 130 with one line and writes nothing; a killed
(SIGKILL) erase leaves either no output or the previous one, never half of one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_STARTED: list[subprocess.Popen] = []


def _default_sigint() -> None:
    """In the child: SIGINT back to its default. A shell runs a background job (``cmd &``)
    with SIGINT ignored, its children inherit that, and Python then installs no Ctrl-C
    handler: the test is about our handler, not about how the suite was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "ace_erasure.cli", *args]
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    _STARTED.append(process)
    return process


@pytest.fixture(autouse=True)
def _no_process_left():
    """A failed test must not leave its CLI process running (and loading the machine)."""
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.communicate()


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run the CLI to the end."""
    command = [sys.executable, "-m", "ace_erasure.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def _signal_when_busy(
    process: subprocess.Popen, sig: int, cpu: float, timeout: float = 120
) -> None:
    """Send ``sig`` once the process has used ``cpu`` seconds of CPU (past imports and model
    loading, into the work), whatever the load of the machine."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if _cpu_seconds(process.pid) >= cpu:
            process.send_signal(sig)
            return
        time.sleep(0.05)
    raise AssertionError(
        f"the process ended or stalled before {cpu} s of CPU: {process.communicate()}"
    )


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny_pipes):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_pipes("sd1").save_pretrained(folder)
    return folder


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_ctrl_c_during_generation_exits_130_and_writes_nothing(tiny_folder, tmp_path):
    args = ["generate", "a red circle", "--model", str(tiny_folder), "--steps", "400"]
    process = _start([*args, "--images-per-prompt", "64", "--out", "out.png"], tmp_path)
    _signal_when_busy(process, signal.SIGINT, cpu=_baseline_cpu() + 2)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err == "error: interrupted (nothing was written)\n"
    assert "Traceback" not in err and _files(tmp_path) == []


def test_ctrl_c_during_erase_exits_130_and_writes_nothing(tiny_folder, tmp_path):
    concepts = [
        a
        for name in ("circle", "square", "star", "heart", "cross", "arrow")
        for a in ("--concept", name)
    ]
    args = [
        "erase",
        "--model",
        str(tiny_folder),
        *concepts,
        "--set",
        "neighbours=400",
        "--out",
        "e",
    ]
    process = _start(args, tmp_path)
    _signal_when_busy(process, signal.SIGINT, cpu=_baseline_cpu() + 2)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err == "error: interrupted (nothing was written)\n"
    assert _files(tmp_path) == []


@pytest.mark.slow
def test_a_killed_erase_leaves_the_previous_erasure(tiny_folder, tmp_path):
    first = _run(
        ["erase", "--model", str(tiny_folder), "--concept", "circle", "--out", "e", "--no-grid"],
        tmp_path,
    )
    assert first.returncode == 0, first.stderr
    before = {p: (tmp_path / "e" / p).read_bytes() for p in _files(tmp_path / "e")}
    args = [
        "erase",
        "--model",
        str(tiny_folder),
        "--concept",
        "square",
        "--set",
        "neighbours=400",
        "--out",
        "e",
        "--overwrite",
    ]
    process = _start(args, tmp_path)
    _signal_when_busy(process, signal.SIGKILL, cpu=_baseline_cpu() + 2)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    after = {p: (tmp_path / "e" / p).read_bytes() for p in _files(tmp_path / "e")}
    assert after == before  # the old erasure, whole


_BASELINE: list[float] = []


def _baseline_cpu() -> float:
    """CPU seconds a command needs before its work starts (imports, loading), measured once
    with `ace-erasure methods`."""
    if not _BASELINE:
        process = _start(["methods"], Path.cwd())
        peak = 0.0
        while process.poll() is None:
            peak = max(peak, _cpu_seconds(process.pid))
            time.sleep(0.02)
        _BASELINE.append(peak + 1.0)  # + loading a tiny model
    return _BASELINE[0]


@pytest.mark.slow
def test_ctrl_c_during_evaluate_exits_130_and_leaves_no_report(tmp_path):
    erase = _run(["erase", "--concept", "circle", "--out", "e", "--no-grid"], tmp_path)
    assert erase.returncode == 0, erase.stderr
    before = _files(tmp_path)
    process = _start(["evaluate", "--erasure", "e", "--quick", "--out", "report"], tmp_path)
    _signal_when_busy(process, signal.SIGINT, cpu=_baseline_cpu() + 4)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err == "error: interrupted (nothing was written)\n"
    assert _files(tmp_path) == before  # no report, no temporary folder


def test_a_ctrl_c_dropped_by_a_finaliser_is_delivered_again(monkeypatch):
    """Python ignores a KeyboardInterrupt raised in ``__del__``; the CLI re-delivers it."""
    from ace_erasure import cli

    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored afterwards
    # Python's Ctrl-C handler, as in a foreground command (a background job ignores SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    cli._keep_interrupts()

    class Finaliser:
        def __del__(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Finaliser()  # collected at once: the exception inside __del__ is dropped by Python
        try:
            for _ in range(500):  # the re-delivered interrupt arrives within this loop
                time.sleep(0.01)
        finally:
            signal.signal(signal.SIGINT, previous)


_INTERRUPT_WHILE_ONE_IS_PENDING = """
import time
from ace_erasure import cli

class Finaliser:
    def __del__(self):
        raise KeyboardInterrupt

def app(args, standalone_mode):
    Finaliser()  # dropped by Python: the CLI schedules its re-delivery
    raise KeyboardInterrupt  # and the command itself is interrupted as well

cli.app = app
try:
    cli.main([])
finally:
    time.sleep(1)  # a slow unwinding of the exit, where the pending re-delivery would land
"""


def test_an_interrupt_re_delivered_while_exiting_does_not_replace_the_exit_code(tmp_path):
    process = subprocess.run(
        [sys.executable, "-c", _INTERRUPT_WHILE_ONE_IS_PENDING],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_default_sigint,
    )
    assert process.returncode == 130, process.stderr
    assert process.stderr.strip() == "error: interrupted (nothing was written)"
