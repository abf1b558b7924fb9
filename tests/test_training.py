"""The training loop: it learns, it resumes exactly, it refuses bad input before touching files."""

from __future__ import annotations

import pytest
import torch

import rediff
from rediff import data, metrics
from rediff._io import load_tensors
from rediff.training import build_model, load_config, train

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
    assert not run.exists()


def test_existing_runs_are_protected(tmp_path):
    run = tmp_path / "run"
    config = load_config(None, [*SMALL, "train.steps=10"])
    train(config, run, progress=False)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(config, run, progress=False)
    other = load_config(None, [*SMALL, "train.steps=10", "train.lr=1e-4"])
    with pytest.raises(ValueError, match="different config"):
        train(other, run, resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
