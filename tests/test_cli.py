"""The command line: ``rediff demo`` writes its pictures where it says."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rediff
from rediff import demo
from rediff.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_demo_writes_pngs(tmp_path, capsys):
    out = tmp_path / "pictures"
    assert main(["demo", "--out", str(out), "--seed", "3", "--no-train"]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"forward_2d.png", "forward_digits.png", "log_snr.png", "samplers_2d.png"}
    for path in out.iterdir():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert str(out) in printed.splitlines()[-1]


def test_demo_trains_samples_and_summarises(tmp_path, monkeypatch, capsys):
    """The training half of ``rediff demo``, with the runs and draws cut short."""
    short = {
        name: dataclasses.replace(run, steps=5, draws=(("ddim", 2), ("dpm++2m", 2)))
        for name, run in demo.DEMO_RUNS.items()
    }
    monkeypatch.setattr(demo, "DEMO_RUNS", short)
    monkeypatch.setattr(demo, "GUIDED_N", 40)
    monkeypatch.setattr(demo, "GUIDED_STEPS", 2)
    monkeypatch.setattr(demo, "INPAINT_STEPS", 4)
    monkeypatch.setattr(demo, "RESAMPLING", rediff.Resampling(2, 2))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    for name in short:
        assert (out / f"{name}_samples.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / "runs" / name / "loss.png").is_file()
    summary = (out / "summary.md").read_text()
    assert summary.count("| toy_2d |") == 4 and summary.count("| digits |") == 4
    assert summary.count("| digits, CFG scale") == 2 * len(demo.GUIDANCE_SCALES)
    for picture in ("guided_digits.png", "inpainted_digits.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG"
    assert "Frechet distance" in summary and summary in capsys.readouterr().out
    assert "toy_2d: 5 steps in" in summary and "below the floor" in summary
    # a second demo reuses the finished runs: nothing is trained again
    log = (out / "runs" / "digits" / "metrics.csv").read_text()
    demo.train_demo_run("digits", out, progress=False)
    assert (out / "runs" / "digits" / "metrics.csv").read_text() == log


def test_module_entry_point_shows_help():
    result = subprocess.run(
        [sys.executable, "-m", "rediff", "--help"], capture_output=True, text=True, check=True
    )
    assert "demo" in result.stdout


def test_unknown_command_is_refused(capsys):
    with pytest.raises(SystemExit) as info:
        main(["trian"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and len(err.strip().splitlines()) == 1


def test_train_then_sample_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "train",
        "configs/toy_2d.toml",
        "--run-dir",
        str(run),
        "--set",
        "train.steps=30",
        "--set",
        "train.log_every=10",
    ]
    assert main(args) == 0
    assert {
        "config.toml",
        "model.safetensors",
        "ema.safetensors",
        "checkpoints",
        "metrics.csv",
        "loss.png",
    } <= {p.name for p in run.iterdir()}
    out = tmp_path / "samples.png"
    assert (
        main(
            [
                "sample",
                str(run),
                "--sampler",
                "unipc",
                "--steps",
                "5",
                "--n",
                "200",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "5 evaluations" in capsys.readouterr().out
    fast = ["--device", "cpu", "--precision", "bf16", "--channels-last"]
    assert main(["sample", str(run), "--steps", "5", "--n", "50", "--out", str(out), *fast]) == 0
    assert "wrote 50 samples" in capsys.readouterr().out
    capsys.readouterr()
    for command, message in (
        (args, "already holds a run"),
        (["sample", str(run), "--class", "3", "--out", str(out)], "class-conditional"),
        (["sample", str(tmp_path), "--out", str(out)], "not a run directory"),
    ):
        assert main(command) == 2
        assert message in capsys.readouterr().err


def test_configs_parse():
    from rediff.training import load_config

    paths = sorted(CONFIGS.glob("*.toml"))
    assert paths
    for path in paths:
        config = load_config(path)
        config.schedule.build(categories=17 if config.schedule.discrete else None)


def test_image_grid_places_tiles_row_by_row():
    from rediff.plots import image_grid

    x = torch.linspace(-0.9, 0.9, 5)[:, None, None, None].expand(5, 1, 2, 2)
    grid = image_grid(x, cols=3, gap=1)
    assert grid.shape == (6, 9)
    tiles = [grid[r * 3 : r * 3 + 2, c * 3 : c * 3 + 2] for r in range(2) for c in range(3)]
    for i in range(5):
        assert torch.all(tiles[i] == x[i, 0])
    assert torch.all(tiles[5] == -1) and torch.all(grid[2] == 0)


def test_guided_and_shared_noise_sampling_from_the_command_line(tmp_path, capsys):
    """A class-conditional run with label dropout and a classifier run, a few steps each:
    every guidance option samples, and bad guidance input is a clear error."""
    model, classifier = tmp_path / "cfg", tmp_path / "cls"
    short = ["--set", "train.steps=3", "--set", "train.sample_every=0"]
    assert main(["train", "configs/digits_cfg.toml", "--run-dir", str(model), *short]) == 0
    assert (
        main(["train", "configs/digits_classifier.toml", "--run-dir", str(classifier), *short]) == 0
    )
    out = tmp_path / "s.png"
    common = [str(model), "--steps", "3", "--n", "8", "--out", str(out)]
    for extra in (
        ["--class", "3", "--guidance-scale", "2.5"],
        ["--class", "3", "--guidance-scale", "2", "--classifier", str(classifier)],
        ["--share-noise-until", "2", "--groups", "2"],
    ):
        assert main(["sample", *common, *extra]) == 0
        assert out.is_file()
        out.unlink()
    capsys.readouterr()
    for extra, message in (
        (["--class", "10"], "class labels must lie in [0, 9]"),
        (["--class", "1", "--guidance-scale", "inf"], "finite number"),
        (["--share-noise-until", "2", "--groups", "3"], "must divide the number of samples"),
        (["--class", "1", "--classifier", str(model)], "is not a classifier run"),
    ):
        assert main(["sample", *common, *extra]) == 2
        assert message in capsys.readouterr().err
    assert main(["eval", str(classifier)]) == 0
    assert "accuracy at noise level" in capsys.readouterr().out


def test_what_a_sampling_user_expects(tmp_path, capsys, monkeypatch):
    """--out into a folder that does not exist yet, pictures in the format their name says,
    arrays with labels and settings, 100 images by default (not 2000 drawn and 100 kept), and
    a read-only run still evaluated (with a warning instead of eval.md)."""
    import numpy as np

    np.save(tmp_path / "images.npy", np.zeros((64, 1, 8, 8), dtype=np.float32))
    run = tmp_path / "run"
    overrides = [f"data.path='{tmp_path / 'images.npy'}'", "model.width=16", "model.depth=1"]
    config = ["data.kind='array'", "train.steps=2", "train.batch_size=16", *overrides]
    assert (
        main(
            [
                "train",
                "configs/toy_2d.toml",
                "--run-dir",
                str(run),
                *[arg for c in config for arg in ("--set", c)],
            ]
        )
        == 0
    )
    jpeg, arrays = tmp_path / "new" / "deeper" / "s.jpg", tmp_path / "s.npz"
    assert main(["sample", str(run), "--steps", "2", "--out", str(jpeg), "--clip-x0"]) == 0
    assert jpeg.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, as the name says
    assert main(["sample", str(run), "--steps", "2", "--out", str(arrays)]) == 0
    saved = np.load(arrays)
    assert saved["samples"].shape == (100, 1, 8, 8) and "labels" not in saved
    assert '"sampler": "unipc (logsnr, first interval x2, no jump)"' in str(
        saved["settings"]
    )  # 2 steps' default
    capsys.readouterr()
    monkeypatch.setattr("rediff.evaluation.os.access", lambda path, mode: False)
    toy = tmp_path / "toy"
    short = ["--set", "train.steps=2", "--set", "data.n=400", "--set", "model.width=16"]
    assert main(["train", "configs/toy_2d.toml", "--run-dir", str(toy), *short]) == 0
    capsys.readouterr()
    assert main(["eval", str(toy), "--n", "100", "--steps", "2"]) == 0
    out, err = capsys.readouterr()
    assert "| sliced Wasserstein |" in out and "read-only; eval.md is not written" in err
    assert not (toy / "eval.md").exists()


def test_nll_help_names_both_units(capsys):
    with pytest.raises(SystemExit):
        main(["nll", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "bits/dim for quantised data" in text and "nats/dim for continuous data" in text


def test_an_interrupted_demo_says_how_to_continue(tmp_path, monkeypatch, capsys):
    """Ctrl-C during training stops with a checkpoint; the message names the command that
    continues (rediff demo, not --resume)."""
    import signal

    from rediff.training import TrainingInterruptedError

    def interrupted(name, out, progress=True):
        raise TrainingInterruptedError("SIGINT", 7, out / "runs" / name)

    monkeypatch.setattr(demo, "train_demo_run", interrupted)
    monkeypatch.setattr(demo, "plot_sampler_comparison", lambda path, generator: path)
    out = tmp_path / "d"
    assert main(["demo", "--out", str(out)]) == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert f"run `rediff demo --out {out}` again to continue" in err and "--resume" not in err
