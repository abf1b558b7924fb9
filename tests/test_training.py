"""The training loop: it learns, it resumes exactly, it refuses bad input before touching files."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rediff
from rediff import data, metrics
from rediff._io import load_tensors
from rediff.training import build_model, build_objective, load_config, load_run, to_toml, train

SMALL = [
    "data.name='moons'",
    "data.n=4000",
    "model.width=64",
    "model.depth=2",
    "train.batch_size=128",
    "train.lr=2e-3",
    "train.warmup=20",
    "train.log_every=10",
    "train.checkpoint_every=20",
    "train.ema_half_life=2000",
]


def test_a_2d_model_learns_the_data(tmp_path):
    config = load_config(None, [*SMALL, "train.steps=800"])
    model = train(config, tmp_path / "run", progress=False)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    first, last = float(rows[0].split(",")[1]), float(rows[-1].split(",")[1])
    assert last < first
    gen = torch.Generator().manual_seed(0)
    out = rediff.sample(
        model, (2000, 2), sampler="dpm++2m", steps=20, generator=gen, progress=False
    )
    target = data.two_moons(2000, generator=gen)
    untrained = build_model(config, (2,))
    before = rediff.sample(untrained, (2000, 2), steps=20, generator=gen, progress=False)
    sw_after = metrics.sliced_wasserstein(out.x, target, generator=gen)
    sw_before = metrics.sliced_wasserstein(before.x, target, generator=gen)
    assert sw_after < 0.15 and sw_after < sw_before / 3, (sw_after, sw_before)


def test_interrupted_run_resumes_to_the_same_parameters(tmp_path):
    config = load_config(None, [*SMALL, "train.steps=60"])
    train(config, tmp_path / "straight", progress=False)
    train(config, tmp_path / "broken", progress=False, stop_after=25)
    train(config, tmp_path / "broken", progress=False, resume=True)
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_tensors(tmp_path / "straight" / name)
        b = load_tensors(tmp_path / "broken" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


def test_saved_model_predicts_identically(tmp_path):
    config = load_config(None, [*SMALL, "train.steps=20"])
    trained = train(config, tmp_path / "run", progress=False)
    fresh = build_model(config, (2,))
    fresh.load_state_dict(load_tensors(tmp_path / "run" / "ema.safetensors"))
    x, t = torch.randn(8, 2), torch.rand(8) * 0.9 + 0.05
    torch.testing.assert_close(fresh(x, t), trained(x, t), rtol=0, atol=0)
    assert load_config(tmp_path / "run" / "config.toml") == config


def test_bad_config_is_refused_before_any_file_changes(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lr'\] in model"):
        load_config(None, ["model.lr=1e-3"])
    with pytest.raises(ValueError, match=r"train.steps must be of type int"):
        load_config(None, ["train.steps='many'"])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['optim'\]"):
        load_config(None, ["optim.lr=1"])
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 3")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ValueError, match=r"unknown schedule.kind"):
        train(load_config(None, ["schedule.kind='cosmic'"]), run, progress=False)
    with pytest.raises(ValueError, match=r"unknown train.precision 'fp8'; valid values"):
        train(load_config(None, ["train.precision='fp8'"]), run, progress=False)
    with pytest.raises(ValueError, match=r"unknown sampler"):
        train(load_config(None, ["sample.sampler='dpm+++'"]), run, progress=False)
    with pytest.raises(ValueError, match=r"loss"):
        train(load_config(None, ["loss.kind='elbo'"]), run, progress=False)
    assert not run.exists()


def test_existing_runs_are_protected(tmp_path):
    run = tmp_path / "run"
    config = load_config(None, [*SMALL, "train.steps=10"])
    train(config, run, progress=False)
    before = snapshot(run)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(config, run, progress=False)
    other = load_config(None, [*SMALL, "train.steps=10", "train.lr=1e-4"])
    with pytest.raises(ValueError, match="different config"):
        train(other, run, resume=True, progress=False)
    assert snapshot(run) == before


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file under a run directory, by relative path."""
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def _params(run):
    return load_tensors(run / "model.safetensors")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_match_one(tmp_path):
    """Two gloo processes, each on half of the global batch in two micro-batches, end where
    one process ends; a checkpoint the two wrote half-way resumes on one process to the same
    end. The two are started by the README's multi-machine command (c10d rendezvous) with one
    machine."""
    config = tmp_path / "small.toml"
    overrides = [*SMALL, "train.steps=8", "train.batch_size=64", "train.checkpoint_every=4"]
    config.write_text(to_toml(load_config(None, overrides)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rediff_cli = [sys.executable, "-m", "rediff", "train", str(config), "--run-dir"]
    subprocess.run([*rediff_cli, str(tmp_path / "one")], check=True, env=env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--node_rank"]
    rendezvous = ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"localhost:{_free_port()}"]
    subprocess.run(
        [
            *torchrun,
            "0",
            "--nproc_per_node",
            "2",
            *rendezvous,
            "--rdzv_id",
            "test",
            "-m",
            "rediff",
            "train",
            str(config),
            "--run-dir",
            str(tmp_path / "two"),
            "--set",
            "train.accumulate=2",
        ],
        check=True,
        env=env,
    )
    one, two = _params(tmp_path / "one"), _params(tmp_path / "two")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6)
    assert not torch.equal(
        one["net.out.2.weight"],
        build_model(load_config(config), (2,)).state_dict()["net.out.2.weight"],
    )
    # the run as two processes left it at step 4, resumed by one process
    half = tmp_path / "half"
    shutil.copytree(
        tmp_path / "two" / "checkpoints" / "step_0000004", half / "checkpoints" / "step_0000004"
    )
    for name in ("config.toml", "run.json"):
        shutil.copy(tmp_path / "two" / name, half / name)
    subprocess.run([*rediff_cli, str(half), "--resume"], check=True, env=env)
    resumed = _params(half)
    for key in one:
        torch.testing.assert_close(resumed[key], one[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [
        [
            "loss.kind='vlb'",
            "loss.time_sampler='steps'",
            "model.target='eps'",
            "data.kind='digits'",
        ],
        [
            "loss.kind='hybrid'",
            "loss.time_sampler='steps'",
            "loss.variance='learned'",
            "model.learned_variance=true",
            "model.target='eps'",
            "data.kind='digits'",
        ],
        ["loss.kind='sliced_sm'", "model.target='score'", "schedule.kind='ve'"],
        ["loss.kind='exact_sm'", "model.target='score'", "schedule.kind='ve'"],
        ["train.precision='bf16'"],
    ],
    ids=["vlb", "hybrid", "sliced_sm", "exact_sm", "bf16"],
)
def test_every_objective_and_bf16_autocast_train(tmp_path, overrides):
    config = load_config(None, [*SMALL, "train.steps=200", *overrides])
    model = train(config, tmp_path / "run", progress=False)
    losses_logged = [
        float(row.split(",")[1])
        for row in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    ]
    assert all(math.isfinite(v) for v in losses_logged)
    early, late = sum(losses_logged[:3]) / 3, sum(losses_logged[-3:]) / 3
    assert late < early, (early, late)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_sample_grids_are_written_during_training(tmp_path):
    config = load_config(None, [*SMALL, "train.steps=20", "train.sample_every=10", "sample.n=200"])
    train(config, tmp_path / "run", progress=False)
    grids = sorted(p.name for p in (tmp_path / "run" / "samples").iterdir())
    assert grids == ["step_0000010.png", "step_0000020.png"]


def test_data_the_bound_cannot_model_is_refused_before_the_run_starts(tmp_path):
    config = load_config(None, [*SMALL, "loss.kind='vlb'", "loss.time_sampler='steps'"])
    with pytest.raises(ValueError, match=r"data in \[-1, 1\]"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_incompatible_checkpoint_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    train(load_config(None, [*SMALL, "train.steps=5"]), run, progress=False)
    text = (run / "config.toml").read_text().replace("width = 64", "width = 32")
    (run / "config.toml").write_text(text)
    with pytest.raises(ValueError, match="does not fit the run's config"):
        load_run(run)


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.glob("configs/*.toml")))
def test_every_shipped_config_builds_and_trains(tmp_path, path):
    """Each config in configs/ loads strictly, builds its model and objective, and (except the
    GPU-sized CIFAR-10 one, whose data the user provides) trains a few steps."""
    config = load_config(path, ["train.steps=3", "train.batch_size=8", "train.sample_every=0"])
    build_objective(config)
    if config.data.kind.name == "images":
        assert sum(p.numel() for p in build_model(config, (3, 32, 32)).parameters()) > 35e6
        return
    train(config, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "ema.safetensors").is_file()


def test_resume_refuses_weights_from_another_model_without_changing_files(tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    config = load_config(None, [*SMALL, "train.steps=4"])
    train(config, run, progress=False, stop_after=2)
    train(load_config(None, [*SMALL, "train.steps=4", "model.width=32"]), other, progress=False)
    # a valid checkpoint of another model, newer than the run's own
    shutil.copytree(other / "checkpoints" / "step_0000004", run / "checkpoints" / "step_0000004")
    before = snapshot(run)
    with pytest.raises(ValueError, match="does not fit the run's config"):
        train(config, run, resume=True, progress=False)
    assert snapshot(run) == before


def test_label_dropout_replaces_that_fraction_by_the_null_label():
    from rediff.training.session import _batch
    from rediff.training.world import World

    config = load_config(None, ["model.num_classes=3", "train.label_dropout=0.25"])
    x, labels = torch.zeros(1000, 2), torch.arange(1000) % 3
    objective, schedule = build_objective(config), config.schedule.build()
    g = torch.Generator().manual_seed(0)
    drawn = torch.cat(
        [_batch(x, labels, config, objective, schedule, g, World())[2]["labels"] for _ in range(40)]
    )
    null = float((drawn == rediff.NULL_LABEL).double().mean())
    assert abs(null - 0.25) < 4 * math.sqrt(0.25 * 0.75 / drawn.numel())
    assert set(drawn[drawn != rediff.NULL_LABEL].tolist()) == {0, 1, 2}


def test_a_noise_conditional_classifier_learns(tmp_path):
    """The digits classifier config, briefly trained: far above chance on lightly noised
    held-out digits, near chance where the noise has drowned them."""
    from rediff.evaluation import classifier_scores

    config = load_config(Path("configs/digits_classifier.toml"), ["train.steps=150"])
    classifier = train(config, tmp_path / "run", progress=False)
    assert isinstance(classifier, rediff.NoisyClassifier)
    x, labels = data.digits_split("held_out")
    scores = classifier_scores(classifier, x, labels)
    assert scores[0].value > 0.8 and scores[-1].value < 0.3, scores
    loaded = load_run(tmp_path / "run").model
    t = torch.full((8,), 0.1, dtype=torch.float64)
    torch.testing.assert_close(loaded.logits(x[:8], t), classifier.logits(x[:8], t))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.label_dropout=0.1"], "needs a class-conditional model"),
        (
            ["model.num_classes=3", "train.label_dropout=1.0"],
            r"label_dropout must be in \[0, 1\), got 1.0",
        ),
        (
            [
                "data.kind='digits'",
                "model.num_classes=10",
                "loss.kind='classifier'",
                "train.label_dropout=0.1",
            ],
            "a classifier needs every label",
        ),
        (["data.kind='digits'", "loss.kind='classifier'"], "num_classes >= 2"),
        (
            [
                "data.kind='digits'",
                "model.num_classes=10",
                "loss.kind='classifier'",
                "train.sample_every=5",
            ],
            "a classifier draws no samples",
        ),
    ],
)
def test_bad_conditioning_options_are_refused_before_the_run_starts(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(load_config(None, [*SMALL, *overrides]), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["loss.kind='sliced_sm'", "loss.probes=2", "model.target='score'", "schedule.kind='ve'"],
        [
            "data.kind='digits'",
            "model.num_classes=10",
            "train.label_dropout=0.3",
            "train.batch_size=64",
        ],
    ],
    ids=["denoising", "sliced_sm", "conditional"],
)
def test_gradient_accumulation_takes_the_full_batch_step(tmp_path, overrides):
    """train.accumulate = 4 splits each batch (data, times, noise, probes, labels) into four
    micro-batches whose summed gradients are the full batch's: the same parameters."""
    base = [*SMALL, "train.steps=6", "train.checkpoint_every=3", *overrides]
    train(load_config(None, base), tmp_path / "one", progress=False)
    train(load_config(None, [*base, "train.accumulate=4"]), tmp_path / "four", progress=False)
    one, four = _params(tmp_path / "one"), _params(tmp_path / "four")
    for key in one:
        torch.testing.assert_close(four[key], one[key], rtol=1e-5, atol=1e-6)
    # a run may resume with another accumulation (it computes the same step)
    train(load_config(None, base), tmp_path / "mixed", progress=False, stop_after=3)
    resumed = load_config(None, [*base, "train.accumulate=2"])
    train(resumed, tmp_path / "mixed", progress=False, resume=True)
    mixed = _params(tmp_path / "mixed")
    for key in one:
        torch.testing.assert_close(mixed[key], one[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.accumulate=0"], r"train.accumulate must be >= 1, got 0"),
        (["train.accumulate=3"], r"must divide evenly over 1 process\(es\) x train.accumulate = 3"),
        (
            ["train.precision='fp16'"],
            r"unknown train.precision 'fp16'; valid values: 'fp32', 'bf16'",
        ),
    ],
)
def test_bad_execution_options_are_refused_before_the_run_starts(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(load_config(None, [*SMALL, *overrides]), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_the_gpu_path_on_cpu_bf16_autocast_and_channels_last_train_the_unet(tmp_path):
    """The GPU options on CPU (compile off): bf16 autocast and channels-last train the digits
    UNet; its checkpoints load into a plain model with the same predictions; the loss falls."""
    overrides = [
        "data.kind='digits'",
        "model.net='unet_digits'",
        "model.target='eps'",
        "train.steps=40",
        "train.batch_size=32",
        "train.log_every=5",
        "train.checkpoint_every=20",
        "train.precision='bf16'",
        "train.channels_last=true",
    ]
    model = train(load_config(None, overrides), tmp_path / "run", progress=False)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    logged = [float(row.split(",")[1]) for row in rows]
    assert all(math.isfinite(v) for v in logged) and logged[-1] < logged[0], logged
    loaded = load_run(tmp_path / "run").model
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 0.5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), model(x, t), rtol=0, atol=0)


@pytest.mark.parametrize("batch_size", [10, 250])
def test_ema_forgets_half_its_weight_every_half_life(batch_size):
    """theta_ema follows a parameter that jumped from 0 to 1: after half_life samples, in any
    batch size, it has come half-way (0.5), after twice that three quarters (float32 lerps:
    rounding ~ steps x 6e-8)."""
    from rediff.training import EMA

    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, half_life=1000.0)
    torch.nn.init.ones_(model.weight)
    for expected in (0.5, 0.75):
        for _ in range(1000 // batch_size):
            ema.update(model, batch_size)
        assert abs(float(ema.model.weight) - expected) < 1e-5
