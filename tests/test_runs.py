"""The run layer: typed configs with each schedule's own defaults, a Run that loads without
its data, run directories that one process at a time trains into and that survive crashes,
restarts and kills, and old run directories converted or refused."""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_RUN
from tqdm.auto import tqdm

import rediff
from rediff import schedules
from rediff._io import load_tensors
from rediff.cli import main
from rediff.losses import Loss
from rediff.runs import KINDS, NETS, draw, load_config, load_run, to_toml
from rediff.runs.config import Device, ScheduleKind
from rediff.runs.directory import RunLock, RunLockedError, read_metrics
from rediff.training import train

SMALL = [*SMALL_RUN, "train.log_every=1", "train.checkpoint_every=5"]


def small(*overrides: str):
    return load_config(None, [*SMALL, *overrides])


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ---- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("edm", schedules.EDM(sigma_min=0.002, sigma_max=80.0)),
        ("ve", schedules.VE(sigma_min=0.01, sigma_max=50.0)),
        ("linear_vp", schedules.LinearVP(beta_min=0.1, beta_max=20.0)),
        ("subvp", schedules.SubVP(beta_min=0.1, beta_max=20.0)),
        ("discrete_vp", schedules.DiscreteVP.linear(1000, 1e-4, 0.02)),
    ],
)
def test_each_schedule_kind_takes_its_own_defaults(kind, expected):
    """EDM without sigma values is EDM's 0.002 / 80 (it silently got VE's 0.01 / 50); the
    values are written into the run's config.toml, so the run records them."""
    config = load_config(None, [f"schedule.kind='{kind}'"])
    assert config.schedule.build() == expected
    assert _reread(to_toml(config)) == config


def _reread(text: str):
    from rediff.runs.config import from_values, tomllib

    return from_values(tomllib.loads(text))


def test_cosine_betas_and_parameters_of_other_kinds():
    cosine = load_config(None, ["schedule.betas='cosine'", "schedule.T=200"]).schedule
    assert cosine.build() == schedules.DiscreteVP.cosine(200)
    with pytest.raises(ValueError, match=r"schedule.sigma_min is not a parameter of schedule.kind"):
        load_config(None, ["schedule.sigma_min=0.1"])
    with pytest.raises(ValueError, match=r"schedule.beta_start is not a parameter .* 'cosine'"):
        load_config(None, ["schedule.betas='cosine'", "schedule.beta_start=0.1"])
    with pytest.raises(ValueError, match=r"schedule.betas is a parameter of 'discrete_vp'"):
        load_config(None, ["schedule.kind='edm'", "schedule.betas='linear'"])


def test_config_choices_are_parsed_into_typed_values():
    config = load_config(
        None, ["data.kind='digits'", "loss.kind='vlb'", "loss.time_sampler='steps'"]
    )
    assert config.data.kind is KINDS["digits"] and config.model.net is NETS["mlp"]
    assert config.loss.kind is Loss.VLB and config.train.device is Device.AUTO
    assert config.schedule.kind is ScheduleKind.DISCRETE_VP
    assert _reread(to_toml(config)) == config
    with pytest.raises(ValueError, match=r"unknown data.kind 'pixels'; valid kinds: .*'digits'"):
        load_config(None, ["data.kind='pixels'"])
    with pytest.raises(ValueError, match=r"unknown model.net 'resnet'; valid: 'mlp'"):
        load_config(None, ["model.net='resnet'"])


def test_set_takes_bare_words_as_text():
    """``--set data.path=cifar_png`` exactly as the README writes it (it was a TOML error)."""
    config = load_config(None, ["data.kind=images", "data.path=cifar_png"])
    assert config.data.path == "cifar_png" and config.data.kind is KINDS["images"]
    with pytest.raises(ValueError, match=r"train.lr must be of type float, got 'fast'"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(ValueError, match=r"data.path must be of type str, got 2024 \(quote text"):
        load_config(None, ["data.path=2024"])


def test_images_need_a_path():
    """data.kind = 'images' without data.path trained on the PNGs under the current folder."""
    with pytest.raises(ValueError, match=r"data.kind = 'images' needs data.path"):
        load_config(None, ["data.kind='images'"])


# ---- a run without its data ------------------------------------------------------------------


def test_a_run_is_sampled_and_loaded_without_its_data(tmp_path):
    """run.json records the data's shape, so loading reads the run directory only."""
    points = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)
    np.save(tmp_path / "points.npy", points)
    config = small("data.kind='array'", f"data.path='{tmp_path / 'points.npy'}'", "train.steps=5")
    train(config, tmp_path / "run", progress=False)
    (tmp_path / "points.npy").unlink()
    run = load_run(tmp_path / "run")
    assert run.spec.shape == (3,) and run.spec.levels is None and run.spec.classes == 0
    drawn = draw(run, 7, sampler="ddim", steps=3, generator=torch.Generator().manual_seed(0))
    assert drawn.x.shape == (7, 3) and drawn.labels is None
    with pytest.raises(FileNotFoundError, match="array file not found"):
        run.data()


def test_a_run_of_integer_pixels_records_256_levels(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 1, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "pixels.npz", x=pixels)
    overrides = ["data.kind='array'", f"data.path='{tmp_path / 'pixels.npz'}'", "train.steps=2"]
    train(small(*overrides), tmp_path / "run", progress=False)
    assert load_run(tmp_path / "run").spec.levels == 256


# ---- one trainer at a time -------------------------------------------------------------------


def test_a_second_trainer_is_refused_and_the_lock_of_a_dead_one_taken_over(tmp_path):
    run = tmp_path / "run"
    with RunLock(run), pytest.raises(RunLockedError, match=rf"process {os.getpid()} on "):
        train(small("train.steps=3"), run, progress=False)
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing else was written
    (run / ".lock").write_text("process 999999 on elsewhere\n")  # its owner died holding it
    with pytest.warns(UserWarning, match="taking over .*process 999999"):
        train(small("train.steps=3"), run, progress=False)
    assert (run / ".lock").read_text() == ""  # released cleanly


def test_two_rediff_train_processes_on_one_directory(tmp_path, capsys):
    """A real second process: refused with the trainer's PID; after the trainer is killed
    (SIGKILL: no clean release), --resume takes the directory over and finishes."""
    config = tmp_path / "c.toml"
    config.write_text(to_toml(small("train.steps=100000", "train.checkpoint_every=2")))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "rediff", "train", str(config), "--run-dir", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(read_metrics(run / "metrics.csv")) < 3:  # the trainer's own output
            assert time.monotonic() < deadline and first.poll() is None, "the trainer stalled"
            time.sleep(0.05)
        assert main(["train", str(config), "--run-dir", str(run), "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"is being trained by process {first.pid}" in err and len(err.splitlines()) == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    steps = int(read_metrics(run / "metrics.csv")[-1]["step"])
    with pytest.warns(UserWarning, match=f"taking over .*process {first.pid}"):
        train(
            small(f"train.steps={steps + 4}", "train.checkpoint_every=2"),
            run,
            resume=True,
            progress=False,
        )
    assert int(read_metrics(run / "metrics.csv")[-1]["step"]) == steps + 4


# ---- restarts, resumes, kills ----------------------------------------------------------------


def test_a_run_that_failed_before_its_first_checkpoint_restarts(tmp_path, monkeypatch):
    from rediff.training.session import Session

    run = tmp_path / "run"
    original = Session.train_step

    def crash(self):
        if self.step == 3:
            raise RuntimeError("power cut")
        return original(self)

    monkeypatch.setattr(Session, "train_step", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        train(small("train.steps=20", "train.checkpoint_every=50"), run, progress=False)
    assert {p.name for p in run.iterdir()} >= {"config.toml", "metrics.csv"}
    assert not (run / "checkpoints").exists() or not list((run / "checkpoints").iterdir())
    # everything was released on the way out: the lock, the log (drawn as loss.png), the bar
    with RunLock(run):
        pass
    assert (run / "loss.png").is_file() and (run / ".lock").read_text() == ""
    assert not [bar for bar in tqdm._instances if bar.desc == "train"]
    monkeypatch.setattr(Session, "train_step", original)
    train(small("train.steps=20", "train.checkpoint_every=50"), run, progress=False)
    lines = (run / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("step,") and sum(line.startswith("step") for line in lines) == 1
    assert [int(r["step"]) for r in read_metrics(run / "metrics.csv")] == list(range(1, 21))


def test_metrics_rows_after_the_checkpoint_are_not_duplicated_on_resume(tmp_path):
    """A kill between a log row and a checkpoint leaves rows the resumed run repeats; rows
    cut short and stray headers are skipped on reading. The resumed log equals the unbroken
    run's (losses bit-exact)."""
    full, run = tmp_path / "full", tmp_path / "run"
    train(small("train.steps=12"), full, progress=False)
    train(small("train.steps=12"), run, progress=False, stop_after=5)
    with open(run / "metrics.csv", "a") as f:  # what a killed run may leave after step 5
        f.write(
            "6,0.5,0.001,100.0,1.0\n7,0.4,0.001,100.0,1.1\nstep,loss,lr,samples_per_s,seconds\n8,0.3"
        )
    train(small("train.steps=12"), run, progress=False, resume=True)
    rows, expected = read_metrics(run / "metrics.csv"), read_metrics(full / "metrics.csv")
    assert [r["step"] for r in rows] == [r["step"] for r in expected] == list(range(1, 13))
    assert [r["loss"] for r in rows] == [r["loss"] for r in expected]
    seconds = [r["seconds"] for r in rows]
    assert all(b >= a for a, b in itertools.pairwise(seconds))  # cumulative


def test_an_unfinished_checkpoint_directory_is_removed(tmp_path):
    run = tmp_path / "run"
    train(small("train.steps=5"), run, progress=False)
    unfinished = run / "checkpoints" / ".step_0000010.x1y2"
    unfinished.mkdir()
    (unfinished / "model.safetensors").write_bytes(b"half")
    train(small("train.steps=10"), run, progress=False, resume=True)
    assert not unfinished.exists() and sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_0000005",
        "step_0000010",
    ]


def test_resume_into_a_directory_without_a_run_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"holds no run to resume"):
        train(small("train.steps=3"), tmp_path / "typo", resume=True, progress=False)
    assert not (tmp_path / "typo").exists()


def test_a_finished_run_trains_on_and_a_changed_config_is_named(tmp_path):
    run, straight = tmp_path / "run", tmp_path / "straight"
    train(small("train.steps=10"), run, progress=False)
    train(small("train.steps=16"), run, progress=False, resume=True)
    train(small("train.steps=16"), straight, progress=False)
    a, b = load_tensors(run / "model.safetensors"), load_tensors(straight / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "steps = 16" in (run / "config.toml").read_text()
    before = snapshot(run)
    with pytest.raises(
        ValueError, match=r"model.width: 32 in the run, 16 now; train.lr: 0.001 in the run, 0.0001"
    ):
        train(
            small("train.steps=20", "train.lr=1e-4", "model.width=16"),
            run,
            resume=True,
            progress=False,
        )
    assert snapshot(run) == before


@pytest.mark.parametrize("checkpointed", [True, False])
def test_a_nan_loss_says_which_checkpoint_is_kept(tmp_path, monkeypatch, checkpointed):
    from rediff import losses

    original, calls = losses.Objective.__call__, []

    def poisoned(self, *args, **kwargs):
        calls.append(1)
        loss = original(self, *args, **kwargs)
        return loss * math.nan if len(calls) == 7 else loss

    monkeypatch.setattr(losses.Objective, "__call__", poisoned)
    every = 5 if checkpointed else 50
    message = (
        "the checkpoint of step 5 is kept" if checkpointed else "no checkpoint was written yet"
    )
    with pytest.raises(FloatingPointError, match=rf"loss became nan at step 7; {message}"):
        train(
            small("train.steps=20", f"train.checkpoint_every={every}"),
            tmp_path / "run",
            progress=False,
        )


def test_sample_grids_of_data_that_cannot_be_pictured_are_refused_up_front(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((50, 5), dtype=np.float32))
    overrides = ["data.kind='array'", f"data.path='{tmp_path / 'x.npy'}'", "train.sample_every=5"]
    with pytest.raises(
        ValueError, match=r"train.sample_every draws pictures, but the data are \[5\]"
    ):
        train(small(*overrides), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_threads_are_set_per_run(tmp_path):
    before = torch.get_num_threads()
    try:
        train(small("train.steps=2", "train.threads=1"), tmp_path / "run", progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ---- old run directories ---------------------------------------------------------------------


def _make_old(run: Path) -> None:
    """What rediff wrote before run.json: every schedule key, whatever the kind."""
    (run / "run.json").unlink()
    text = (
        (run / "config.toml")
        .read_text()
        .replace(
            "[model]",
            "beta_min = 0.1\nbeta_max = 20.0\nsigma_min = 0.01\nsigma_max = 50.0\n\n[model]",
        )
    )
    (run / "config.toml").write_text(text)


def test_old_run_directories_are_refused_with_how_to_convert_them(tmp_path, capsys):
    run = tmp_path / "run"
    trained = train(small("train.steps=3"), run, progress=False)
    _make_old(run)
    with pytest.raises(ValueError, match=r"older rediff .*rediff upgrade"):
        load_run(run)
    assert main(["upgrade", str(run)]) == 0
    assert "data.kind = 'toy', shape [2]" in capsys.readouterr().out
    x, t = torch.randn(4, 2), torch.full((4,), 0.5)
    torch.testing.assert_close(load_run(run).model(x, t), trained(x, t), rtol=0, atol=0)
    assert "sigma_min" not in (run / "config.toml").read_text()
    assert main(["upgrade", str(run)]) == 0  # converted runs are left as they are
    train(small("train.steps=5"), run, progress=False, resume=True)  # and go on training


def test_a_conditional_run_without_a_class_draws_every_class_in_turn(tmp_path):
    """Sampling a class-conditional model without --class drew the null label, which a model
    trained without label dropout never saw."""
    run = tmp_path / "run"
    overrides = [
        "data.kind='digits'",
        "model.num_classes=10",
        "train.steps=2",
        "train.batch_size=16",
    ]
    train(small(*overrides), run, progress=False)
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "--steps", "2", "--n", "30", "--out", str(out)]) == 0
    saved = np.load(out)
    assert saved["samples"].shape == (30, 1, 8, 8)
    assert np.bincount(saved["labels"]).tolist() == [3] * 10
    assert rediff.NULL_LABEL not in saved["labels"]


def test_the_gitignore_keeps_runs_out_of_the_repository():
    ignored = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().split()
    assert "/runs/" in ignored  # the run directories at the top, not the rediff.runs package


def test_a_data_kind_is_one_registered_entry(tmp_path, capsys):
    """A new kind registered from outside the package (as a file in rediff/runs/kinds would
    do) trains, samples, is scored and has its likelihood computed with no other change."""
    from rediff.runs.kinds import DataKind, Dataset, points_scores, register

    def ring(config, seed):
        angle = torch.rand(config.n, generator=torch.Generator().manual_seed(seed)) * 2 * math.pi
        return Dataset(torch.stack([angle.cos(), angle.sin()], dim=1))

    register(DataKind("test_ring", ring, score=points_scores))
    try:
        run = tmp_path / "run"
        config = small("data.kind='test_ring'", "data.n=400", "train.steps=3")
        train(config, run, progress=False)
        assert load_run(run).spec.kind is KINDS["test_ring"]
        assert (
            main(
                ["sample", str(run), "--steps", "2", "--n", "50", "--out", str(tmp_path / "s.png")]
            )
            == 0
        )
        assert main(["eval", str(run), "--steps", "2", "--n", "100"]) == 0
        assert main(["nll", str(run), "--n", "8", "--rtol", "1e-2"]) == 0
        assert "| sliced Wasserstein |" in (run / "eval.md").read_text()
    finally:
        KINDS.pop("test_ring")
