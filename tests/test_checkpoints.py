"""Fault tolerance: checkpoints are verified, corrupt ones skipped, pickled code never runs,
and a run killed or stopped by a signal resumes to the parameters of an unbroken run."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SMALL_RUN

from rediff._io import load_tensors
from rediff.runs.directory import read_metrics
from rediff.training import checkpoint as ckpt
from rediff.training import load_config, load_run, to_toml, train

SMALL = SMALL_RUN


def run_to(tmp_path: Path, name: str, steps: int, **kwargs) -> Path:
    config = load_config(None, [*SMALL, f"train.steps={steps}", "train.checkpoint_every=5"])
    train(config, tmp_path / name, progress=False, **kwargs)
    return tmp_path / name


def assert_same_parameters(a: Path, b: Path) -> None:
    pa, pb = load_tensors(a / "model.safetensors"), load_tensors(b / "model.safetensors")
    assert pa.keys() == pb.keys()
    for key in pa:
        assert torch.equal(pa[key], pb[key]), key


def test_checkpoints_are_directories_with_a_manifest_and_the_last_ones_are_kept(tmp_path):
    run = run_to(tmp_path, "run", 20)
    assert [p.name for p in ckpt.steps(run)] == ["step_0000015", "step_0000020"]
    manifest = json.loads((run / "checkpoints" / "step_0000020" / "manifest.json").read_text())
    assert manifest["step"] == 20 and set(manifest["sha256"]) == set(ckpt.FILES)
    assert not list((run / "checkpoints").glob(".*"))  # no temporary directory left


def test_a_corrupt_newest_checkpoint_is_skipped_with_a_warning(tmp_path):
    full = run_to(tmp_path, "full", 20)
    run = run_to(tmp_path, "run", 20, stop_after=12)  # checkpoints at 10 and 12
    newest = run / "checkpoints" / "step_0000012" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[-3] ^= 0xFF  # damage in the weights
    newest.write_bytes(bytes(data))
    assert "does not match its checksum" in ckpt.problem(newest.parent)
    config = load_config(run / "config.toml")
    with pytest.warns(UserWarning, match=r"skipping checkpoint .*step_0000012"):
        train(config, run, resume=True, progress=False)
    assert_same_parameters(run, full)  # resumed from step 10: the same end


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_weights_are_never_loaded_silently(tmp_path, damage):
    run = run_to(tmp_path, "run", 5)
    path = run / "ema.safetensors"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(data[:-8] + bytes(b ^ 0x55 for b in data[-8:]))
    with pytest.raises(ValueError, match=r"truncated|corrupt"):
        load_run(run)
    state = run / "checkpoints" / "step_0000005" / "train_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(ValueError, match="no valid checkpoint"):
        train(load_config(run / "config.toml"), run, resume=True, progress=False)


class _Payload:
    """Unpickling this runs ``touch`` on a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_crafted_to_run_code_does_not_run_it(tmp_path):
    run = run_to(tmp_path, "run", 5)
    marker = tmp_path / "pwned"
    latest = run / "checkpoints" / "step_0000005"
    with open(latest / "train_state.pt", "wb") as f:
        pickle.dump({"step": _Payload(marker)}, f)
    manifest = json.loads((latest / "manifest.json").read_text())  # the attacker fixes it too
    manifest["sha256"]["train_state.pt"] = ckpt.sha256(latest / "train_state.pt")
    (latest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a plain training state"):
        train(load_config(run / "config.toml"), run, resume=True, progress=False)
    assert not marker.exists()


def _train_process(config: Path, run: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "rediff", "train", str(config), "--run-dir", str(run)]
    return subprocess.Popen([*command, *extra], env=env, stderr=subprocess.PIPE, text=True)


def _wait_for_step(run: Path, step: int, process: subprocess.Popen) -> None:
    """Until the run's own log shows ``step`` (however fast or slow the machine is)."""
    deadline = time.monotonic() + 300
    while not (rows := read_metrics(run / "metrics.csv")) or rows[-1]["step"] < step:
        assert time.monotonic() < deadline and process.poll() is None, "training stalled"
        time.sleep(0.02)


def _endless(tmp_path: Path, *overrides: str) -> Path:
    """A config whose run never ends by itself (it is stopped from outside)."""
    config = tmp_path / "endless.toml"
    config.write_text(to_toml(load_config(None, [*SMALL, "train.steps=1000000", *overrides])))
    return config


def _finish(tmp_path: Path, config: Path, run: Path, end: int) -> None:
    """Resume ``run`` to ``end`` steps and check it ends where an unbroken run of ``end``
    steps ends."""
    steps = f"train.steps={end}"
    assert _train_process(config, run, "--resume", "--set", steps).wait() == 0
    assert _train_process(config, tmp_path / "full", "--set", steps).wait() == 0
    assert_same_parameters(run, tmp_path / "full")


def test_sigkill_at_a_random_step_then_resume_ends_where_an_unbroken_run_ends(tmp_path):
    config = _endless(tmp_path, "train.log_every=1", "train.checkpoint_every=3")
    run = tmp_path / "run"
    process = _train_process(config, run)
    _wait_for_step(run, random.Random(0).randrange(3, 40), process)
    process.kill()
    process.communicate()
    latest = ckpt.latest(run)  # the kill may come before the first checkpoint too
    _finish(tmp_path, config, run, (int(latest.name[5:]) if latest else 0) + 5)


def test_sigterm_writes_a_checkpoint_and_resumes(tmp_path):
    config = _endless(tmp_path, "train.checkpoint_every=100000")
    run = tmp_path / "run"
    process = _train_process(config, run)
    _wait_for_step(run, 10, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM received: stopped at step" in err and "--resume" in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "rediff train: SIGTERM"
    )
    stopped = int(ckpt.latest(run).name[5:])
    assert stopped >= 10 and f"stopped at step {stopped} " in err  # not a scheduled checkpoint
    _finish(tmp_path, config, run, stopped + 5)


def test_run_files_never_lead_outside_the_run_directory(tmp_path):
    """A run directory whose files are symbolic links to elsewhere is refused before anything
    is written: the linked file is not appended to, a linked checkpoint is not loaded."""
    outside = tmp_path / "precious.csv"
    outside.write_text("keep me\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").symlink_to(outside)
    config = load_config(None, [*SMALL, "train.steps=5", "train.checkpoint_every=5"])
    with pytest.raises(ValueError, match=r"metrics.csv leads outside .*remove the link"):
        train(config, run, progress=False)
    assert outside.read_text() == "keep me\n"
    assert [p.name for p in run.iterdir()] == ["metrics.csv"]

    good = run_to(tmp_path, "good", 5)
    elsewhere = tmp_path / "elsewhere"
    (good / "checkpoints" / "step_0000005").rename(elsewhere)
    (good / "checkpoints" / "step_0000005").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match=r"step_0000005 leads outside"):
        train(config, good, resume=True, progress=False)
    (good / "ema.safetensors").unlink()
    (good / "ema.safetensors").symlink_to(elsewhere / "ema.safetensors")
    with pytest.raises(ValueError, match=r"ema.safetensors leads outside"):
        load_run(good)
