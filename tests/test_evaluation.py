"""Sample-quality measures: the Frechet distance against closed forms, the digits classifier,
and rediff eval on a trained run."""

from __future__ import annotations

import pytest
import scipy.linalg
import torch

from rediff import data, evaluation, metrics
from rediff.cli import main
from rediff.training import load_config, train


def test_frechet_distance_matches_its_formula():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(400, 4, generator=gen, dtype=torch.float64) @ torch.randn(
        4, 4, generator=gen, dtype=torch.float64
    )
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    assert abs(metrics.frechet_distance(x, x)) < 1e-9
    # same covariance, shifted mean: the distance is |shift|^2
    assert abs(metrics.frechet_distance(x, x + shift) - float(shift.square().sum())) < 1e-9
    # non-commuting covariances: against scipy's matrix square root
    cx, cy = torch.cov(x.T).numpy(), torch.cov(y.T).numpy()
    truth = (x.mean(0) - y.mean(0)).square().sum().item() + float(
        (cx + cy - 2 * scipy.linalg.sqrtm(cx @ cy).real).trace()
    )
    assert abs(metrics.frechet_distance(x, y) - truth) < 1e-8 * max(1.0, truth)
    with pytest.raises(ValueError, match="differ in dimension"):
        metrics.frechet_distance(x, y[:, :3])


def test_digits_classifier_is_accurate_and_deterministic():
    held_out = data.digits_split("held_out")
    assert evaluation.digits_accuracy(*held_out) > 0.97
    a = evaluation.digits_classifier.__wrapped__(epochs=1).state_dict()
    b = evaluation.digits_classifier.__wrapped__(epochs=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_digits_frechet_floor_ranks_real_above_degraded():
    floor = evaluation.digits_frechet_floor()
    images = data.digits_split("held_out")[0]
    noisy = images + 0.3 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    assert (
        floor
        < evaluation.digits_frechet(noisy.clamp(-1, 1))
        < evaluation.digits_frechet(
            torch.rand(360, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
        )
    )


def test_splits_are_disjoint_and_fixed():
    train_x, _ = data.digits_split("train")
    held_x, _ = data.digits_split("held_out")
    assert train_x.shape[0] == 1437 and held_x.shape[0] == 360
    flat = torch.cat([train_x, held_x]).flatten(1)
    assert (
        torch.unique(flat, dim=0).shape[0]
        == torch.unique(data.load_digits()[0].flatten(1), dim=0).shape[0]
    )
    assert torch.equal(data.digits_split("train")[0], train_x)


def test_rediff_eval_reports_a_2d_run(tmp_path, capsys):
    config = load_config(None, ["data.n=2000", "model.width=32", "model.depth=1", "train.steps=5"])
    train(config, tmp_path / "run", progress=False)
    assert main(["eval", str(tmp_path / "run"), "--n", "500", "--steps", "5"]) == 0
    report = (tmp_path / "run" / "eval.md").read_text()
    assert "| sliced Wasserstein |" in report and "| energy distance |" in report
    assert report in capsys.readouterr().out
    scores = evaluation.evaluate_run(tmp_path / "run", n=500, steps=5)
    assert all(s.value > s.floor for s in scores)  # five steps of training are not enough


def test_rediff_eval_of_a_class_conditional_digits_run(tmp_path):
    overrides = [
        "data.kind='digits'",
        "model.num_classes=10",
        "model.width=32",
        "model.depth=1",
        "train.steps=3",
        "train.batch_size=16",
    ]
    train(load_config(None, overrides), tmp_path / "run", progress=False)
    scores = evaluation.evaluate_run(tmp_path / "run", steps=3, n=40)
    names = [s.name for s in scores]
    assert names == [
        "Frechet distance (digits features)",
        "classifier accuracy (class-conditional)",
    ]
    fd, accuracy = scores
    assert fd.value > fd.floor  # three steps of training
    assert 0 <= accuracy.value <= 1 and accuracy.floor > 0.97
    assert "classifier accuracy" in (tmp_path / "run" / "eval.md").read_text()


def test_rediff_nll_on_continuous_and_discrete_runs(tmp_path, capsys):
    toy = tmp_path / "toy"
    train(
        load_config(None, ["data.n=400", "model.width=16", "model.depth=1", "train.steps=3"]),
        toy,
        progress=False,
    )
    assert main(["nll", str(toy), "--n", "32", "--rtol", "1e-3"]) == 0
    assert "| ode | nats/dim |" in (toy / "nll_ode.md").read_text()
    with pytest.raises(ValueError, match="needs discrete data"):
        evaluation.run_nll(toy, "vlb")
    digits = tmp_path / "digits"
    overrides = ["data.kind='digits'", "model.width=16", "model.depth=1", "train.steps=3"]
    train(load_config(None, overrides), digits, progress=False)
    bound = evaluation.run_nll(digits, "vlb", n=16, vlb_steps=4)
    ode = evaluation.run_nll(digits, "ode", n=16, probes=1, rtol=1e-3)
    assert bound.unit == ode.unit == "bits/dim" and bound.nfe == 5 and ode.nfe > 0
    # an untrained model: both are far above log2(17) = 4.09 bits of a uniform guess
    assert bound.mean > 4.09 and ode.mean > 4.09
    assert "| vlb | bits/dim |" in (digits / "nll_vlb.md").read_text()
    assert "| ode | nats/dim |" in capsys.readouterr().out


def test_rediff_nll_on_user_data_checks_its_shape(tmp_path):
    import numpy as np

    run = tmp_path / "toy"
    train(
        load_config(None, ["data.n=400", "model.width=16", "model.depth=1", "train.steps=3"]),
        run,
        progress=False,
    )
    np.save(
        tmp_path / "points.npy", np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    )
    row = evaluation.run_nll(run, "ode", data_path=tmp_path / "points.npy", rtol=1e-3)
    assert row.n == 20 and "points.npy" in (run / "nll_ode.md").read_text()
    np.save(tmp_path / "wrong.npy", np.zeros((20, 1, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \[1, 8, 8\], but the run's model takes \[2\]"):
        evaluation.run_nll(run, "ode", data_path=tmp_path / "wrong.npy")
