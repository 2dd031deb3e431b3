"""Real signals on a real acdc run (a subprocess on the default zoo model): SIGINT, SIGTERM and SIGKILL at
several points, then `--resume`, must give the same circuit.json, byte for byte, as an uninterrupted run,
and a run record whose parts add up. One SIGKILL point runs in the default suite; the rest is slow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["discover", "--method", "acdc", "--n-examples", "64", "--quiet", "--checkpoint-every", "0"]


def cli(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "acdc_lite", *ARGS, "--out", str(out), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def done_receivers(out: Path) -> int:
    """Receivers the checkpoint covers, once the run record of that checkpoint is written too (right after it)."""
    try:
        state = json.loads((out / "checkpoint.json").read_text())["state"]
        record = json.loads((out / "run.json").read_text())
        return len(state["done_receivers"]) if record["parts"][-1]["forward_passes"] == round(state["forward_passes"], 3) else 0
    except (OSError, ValueError, KeyError):
        return 0


def interrupt_at(out: Path, sig: int, receivers: int) -> tuple[int, str]:
    """Start a run, send `sig` once its checkpoint covers `receivers` receivers; (exit code, stderr)."""
    proc = cli(out)
    deadline = time.monotonic() + 600
    while done_receivers(out) < receivers:
        assert proc.poll() is None, f"the run ended before {receivers} receivers: {proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = cli(out)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    return (out / "circuit.json").read_bytes()


def check_resume(out: Path, reference: bytes, outcomes: list[str]) -> None:
    proc = cli(out, "--resume")
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    assert (out / "circuit.json").read_bytes() == reference
    assert not (out / "checkpoint.json").exists() and not (out / "run.lock").exists()
    record = json.loads((out / "run.json").read_text())
    assert [p["outcome"] for p in record["parts"]] == outcomes
    assert record["total"]["forward_passes"] == pytest.approx(sum(p["forward_passes"] for p in record["parts"]), abs=1e-3)
    assert all(p["forward_passes"] > 0 for p in record["parts"])


def test_sigkill_then_resume_gives_the_same_circuit(tmp_path, reference):
    out = tmp_path / "run"
    code, _ = interrupt_at(out, signal.SIGKILL, 4)
    assert code == -signal.SIGKILL and (out / "run.lock").exists()  # a dead process's lock: reported, taken over
    check_resume(out, reference, ["killed (cost as of its last checkpoint)", "finished"])


@pytest.mark.slow
# ACDC's node steps save where a layer ends: on the 2-layer default model, once (logits and layer 1) before the end
@pytest.mark.parametrize("sig,receivers", [(signal.SIGINT, 1), (signal.SIGTERM, 1)])
def test_signal_then_resume_gives_the_same_circuit(tmp_path, reference, sig, receivers):
    out = tmp_path / "run"
    code, err = interrupt_at(out, sig, receivers)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        outcomes = ["killed (cost as of its last checkpoint)", "finished"]
    else:
        assert code == (130 if sig == signal.SIGINT else 143) and "--resume" in err and "Traceback" not in err, err
        assert not (out / "run.lock").exists()
        outcomes = ["interrupted", "finished"]
    assert done_receivers(out) >= receivers and not (out / "circuit.json").exists()
    check_resume(out, reference, outcomes)


@pytest.mark.slow
def test_second_run_on_a_busy_folder_refuses(tmp_path):
    out = tmp_path / "run"
    first = cli(out)
    while done_receivers(out) < 1:
        assert first.poll() is None
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # frozen while it holds the folder: no race with its end
    try:
        second = cli(out, "--force")
        _, err = second.communicate(timeout=600)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2 and f"in use by process {first.pid}" in err, err
    _, err = first.communicate(timeout=900)
    assert first.returncode == 0 and (out / "circuit.json").is_file() and not (out / "run.lock").exists(), err
