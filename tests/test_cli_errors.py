"""One error path: every subcommand given bad input prints one line on stderr that names the
problem, exits with status 2, shows no traceback and writes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rediff.cli import main
from rediff.runs import load_config, to_toml
from rediff.training import train

SMALL = ["data.n=400", "model.width=16", "model.depth=1", "train.steps=3", "train.log_every=1"]


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    """A folder with a toy config, runs of several kinds and data files."""
    root = tmp_path_factory.mktemp("cli")
    config = root / "toy.toml"
    config.write_text(to_toml(load_config(None, SMALL)))
    (root / "bad.toml").write_text("[train\nsteps = 3")
    train(load_config(config), root / "toy", progress=False)
    np.save(root / "five.npy", np.zeros((64, 5), dtype=np.float32))
    np.save(root / "images.npy", np.zeros((64, 1, 8, 8), dtype=np.float32))
    for name in ("five", "images"):
        overrides = [*SMALL, "data.kind='array'", f"data.path='{root / name}.npy'"]
        train(load_config(None, overrides), root / name, progress=False)
    digits = [*SMALL, "data.kind='digits'", "model.num_classes=10", "train.batch_size=16"]
    train(load_config(None, digits), root / "digits", progress=False)
    old = root / "old"
    train(load_config(config), old, progress=False)
    (old / "run.json").unlink()  # as written by an older rediff
    corrupt = root / "corrupt"
    train(load_config(config), corrupt, progress=False)
    weights = (corrupt / "ema.safetensors").read_bytes()
    (corrupt / "ema.safetensors").write_bytes(weights[: len(weights) // 2])
    (root / "folder.png").mkdir()
    (root / "afile").write_text("not a folder")
    return root


CASES = {
    "train: out of range": (
        ["train", "{toy.toml}", "--set", "train.lr=-1"],
        "train.lr must be > 0, got -1",
    ),
    "train: no such config": (["train", "{missing.toml}"], "config file not found"),
    "train: not TOML": (["train", "{bad.toml}"], "is not valid TOML"),
    "train: unknown key": (
        ["train", "{toy.toml}", "--set", "model.lr=1"],
        "unknown key(s) ['lr'] in model",
    ),
    "train: --set without value": (
        ["train", "{toy.toml}", "--set", "train.steps"],
        "--set expects key=value",
    ),
    "train: images without a path": (
        ["train", "{toy.toml}", "--set", "data.kind=images"],
        "needs data.path",
    ),
    "train: missing image folder": (
        [
            "train",
            "{toy.toml}",
            "--set",
            "data.kind=images",
            "--set",
            "data.path={nowhere}",
            "--run-dir",
            "{new}",
        ],
        "image folder not found",
    ),
    "train: resume a typo": (
        ["train", "{toy.toml}", "--run-dir", "{typo}", "--resume"],
        "holds no run to resume",
    ),
    "train: run exists": (["train", "{toy.toml}", "--run-dir", "{toy}"], "already holds a run"),
    "train: resume another config": (
        ["train", "{toy.toml}", "--run-dir", "{toy}", "--resume", "--set", "train.lr=0.5"],
        "train.lr: 0.001 in the run, 0.5 now",
    ),
    "train: old run": (["train", "{toy.toml}", "--run-dir", "{old}", "--resume"], "rediff upgrade"),
    "train: unknown flag": (
        ["train", "{toy.toml}", "--stepz", "3"],
        "unrecognized arguments: --stepz",
    ),
    "sample: no samples": (
        ["sample", "{toy}", "--n", "0"],
        "number of samples must be >= 1, got 0",
    ),
    "sample: not a run": (["sample", "{missing}"], "is not a run directory"),
    "sample: unknown sampler": (["sample", "{toy}", "--sampler", "nope"], "unknown sampler 'nope'"),
    "sample: picture format": (["sample", "{toy}", "--out", "{x.gif}"], "a picture must end in"),
    "sample: cannot picture": (["sample", "{five}", "--out", "{x.png}"], "cannot be pictured"),
    "sample: folder as --out": (["sample", "{toy}", "--out", "{folder.png}"], "is a folder"),
    "sample: class of an unconditional model": (
        ["sample", "{toy}", "--class", "3"],
        "class-conditional",
    ),
    "sample: bad threshold": (
        ["sample", "{digits}", "--dynamic-threshold", "1.5", "--out", "{x.npz}"],
        "percentile must lie in (0, 1]",
    ),
    "sample: corrupt weights": (["sample", "{corrupt}"], "truncated"),
    "sample: old run": (["sample", "{old}"], "rediff upgrade"),
    "sample: not a number": (["sample", "{toy}", "--steps", "many"], "invalid int value: 'many'"),
    "eval: not a run": (["eval", "{missing}"], "is not a run directory"),
    "eval: nothing to measure": (["eval", "{images}"], "sample scores need points"),
    "eval: unknown sampler": (["eval", "{toy}", "--sampler", "nope"], "unknown sampler 'nope'"),
    "eval: no samples": (["eval", "{toy}", "--n", "0"], "must be >= 1"),
    "nll: bound of continuous data": (["nll", "{toy}", "--method", "vlb"], "needs quantised data"),
    "nll: data of another shape": (
        ["nll", "{toy}", "--data", "{five.npy}"],
        "the run's model takes [2]",
    ),
    "nll: no data": (["nll", "{toy}", "--n", "0"], "--n must be >= 1"),
    "nll: unknown method": (["nll", "{toy}", "--method", "elbo"], "invalid choice: 'elbo'"),
    "upgrade: not a run": (["upgrade", "{missing}"], "is not a run directory"),
    "demo: a file as --out": (
        ["demo", "--out", "{afile}", "--no-train"],
        "is a file; give a folder",
    ),
}


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_written(place, case, capsys):
    command, message = CASES[case]
    args = [re.sub(r"\{([^}]+)\}", lambda m: str(place / m.group(1)), a) for a in command]
    before = snapshot(place)
    try:
        status = main(args)
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    err = capsys.readouterr().err
    assert status == 2, (case, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err
    assert err.startswith("rediff"), err
    assert snapshot(place) == before, "bad input changed files"


def test_a_real_process_prints_one_line_and_debug_shows_the_traceback(place):
    command = [sys.executable, "-m", "rediff", "sample", str(place / "missing")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    env = {**os.environ, "REDIFF_DEBUG": "1"}
    debug = subprocess.run(command, capture_output=True, text=True, env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    with pytest.raises(FileNotFoundError):
        main(["sample", str(place / "missing"), "--debug"])
