"""Sample-quality measures: the Frechet distance against closed forms, the digits classifier,
and rediff eval on a trained run."""

from __future__ import annotations

import math

import pytest
import scipy.linalg
import torch

import rediff
from rediff import data, evaluation, metrics
from rediff.cli import main
from rediff.runs import Dataset, draw, load_run
from rediff.runs.kinds import digits, points_scores
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
    assert digits.digits_accuracy(*held_out) > 0.97
    a = digits.digits_classifier.__wrapped__(epochs=1).state_dict()
    b = digits.digits_classifier.__wrapped__(epochs=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_digits_frechet_floor_ranks_real_above_degraded():
    floor = digits.digits_frechet_floor()
    images = data.digits_split("held_out")[0]
    noisy = images + 0.3 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    uniform = torch.rand(360, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert floor < digits.digits_frechet(noisy.clamp(-1, 1)) < digits.digits_frechet(uniform)


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


def test_point_scores_reach_their_floor_for_data_and_only_for_data():
    """The floor is the distance between two halves of the data: fresh samples of the data's
    own distribution meet it (their mean over 8 draws lies within 4 standard errors of the
    floor's mean over the same draws), blurred samples do not (beyond 10)."""
    moons = Dataset(data.two_moons(4000, generator=torch.Generator().manual_seed(0)))
    fresh, blurred, floors = [], [], []
    for seed in range(8):
        samples = data.two_moons(1000, generator=torch.Generator().manual_seed(100 + seed))
        noisy = samples + 0.4 * torch.randn(
            samples.shape, generator=torch.Generator().manual_seed(seed)
        )
        fresh.append(points_scores(samples, None, moons, seed)[0].value)
        blurred.append(points_scores(noisy, None, moons, seed)[0].value)
        floors.append(points_scores(samples, None, moons, seed)[0].floor)
    gap, noisy_gap = (
        torch.tensor(fresh) - torch.tensor(floors),
        torch.tensor(blurred) - torch.tensor(floors),
    )
    se = float(gap.std() / math.sqrt(8))
    assert abs(float(gap.mean())) < 4 * se, (fresh, floors)
    assert float(noisy_gap.mean()) > 10 * se, (blurred, floors)


def _small_run(tmp_path, *overrides, steps=5):
    run = tmp_path / "run"
    base = ["data.n=2000", "model.width=32", "model.depth=1", f"train.steps={steps}"]
    train(load_config(None, [*base, *overrides]), run, progress=False)
    return run


def test_rediff_eval_reports_what_the_measures_give(tmp_path, capsys):
    """eval.md holds the scores of the samples the run's model draws with the given seed:
    recomputed here from the same draw, they agree exactly."""
    run = _small_run(tmp_path)
    assert main(["eval", str(run), "--n", "500", "--steps", "5", "--seed", "3"]) == 0
    report = (run / "eval.md").read_text()
    assert report in capsys.readouterr().out
    loaded = load_run(run)
    assert loaded.config.sample.sampler is None  # the budget's default, named in the report
    assert "sampler unipc (logsnr, first interval x2, no jump), 5 steps" in report
    drawn = draw(loaded, 500, sampler=None, steps=5, generator=torch.Generator().manual_seed(3))
    for score in points_scores(drawn.x, None, loaded.data(), 3):
        assert f"| {score.name} | {score.value:.4g} | {score.floor:.4g} |" in report


def test_rediff_eval_of_a_class_conditional_digits_run(tmp_path):
    """Class-conditional samples are drawn class by class in turn and scored by the digits
    classifier against the labels they were asked for."""
    run = _small_run(
        tmp_path, "data.kind='digits'", "model.num_classes=10", "train.batch_size=16", steps=3
    )
    scores, report = evaluation.evaluate_run(run, steps=3, n=40, seed=1)
    names = [s.name for s in scores]
    assert names == [
        "Frechet distance (digits features)",
        "classifier accuracy (class-conditional)",
    ]
    drawn = draw(
        load_run(run), 40, sampler=None, steps=3, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(torch.bincount(drawn.labels), torch.full((10,), 4))
    fd, accuracy = scores
    assert fd.value == digits.digits_frechet(drawn.x)
    assert accuracy.value == digits.digits_accuracy(drawn.x, drawn.labels)
    assert accuracy.floor == digits.digits_accuracy(*data.digits_split("held_out"))
    assert report == (run / "eval.md").read_text()


def test_rediff_nll_on_continuous_and_discrete_runs(tmp_path, capsys):
    toy = _small_run(tmp_path, "data.n=400", "model.width=16", steps=3)
    assert main(["nll", str(toy), "--n", "32", "--rtol", "1e-3"]) == 0
    assert "| ode | nats/dim |" in (toy / "nll_ode.md").read_text()
    assert main(["nll", str(toy), "--n", "32"]) == 0  # default: the 40-evaluation solver
    assert (toy / "nll_ode.md").read_text().rstrip().endswith("| 40 |")
    assert "nats/dim" in capsys.readouterr().out
    with pytest.raises(ValueError, match="needs quantised data"):
        evaluation.run_nll(toy, "vlb")
    digits_run = tmp_path / "digits"
    overrides = ["data.kind='digits'", "model.width=16", "model.depth=1", "train.steps=3"]
    train(load_config(None, overrides), digits_run, progress=False)
    bound = evaluation.run_nll(digits_run, "vlb", n=16, vlb_steps=4).row
    ode = evaluation.run_nll(digits_run, "ode", n=16, probes=1, rtol=1e-3).row
    assert bound.unit == ode.unit == "bits/dim" and bound.nfe == 5 and ode.nfe > 0
    # an untrained model: both are far above log2(17) = 4.09 bits of a uniform guess
    assert bound.mean > 4.09 and ode.mean > 4.09
    assert "| vlb | bits/dim |" in (digits_run / "nll_vlb.md").read_text()
    # the bound the report gives is the bound of the held-out digits, drawn with its seed
    x = data.digits_split("held_out")[0]
    x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:16]]
    direct = rediff.vlb(
        load_run(digits_run).model,
        x,
        levels=17,
        num_steps=4,
        generator=torch.Generator().manual_seed(0),
    )
    assert bound.mean == pytest.approx(float(direct.bits_per_dim.mean()), rel=1e-12)


def test_rediff_nll_on_user_data_checks_its_shape(tmp_path):
    import numpy as np

    run = _small_run(tmp_path, "data.n=400", "model.width=16", steps=3)
    np.save(
        tmp_path / "points.npy", np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    )
    row = evaluation.run_nll(run, "ode", data_path=tmp_path / "points.npy", rtol=1e-3).row
    assert row.n == 20 and "points.npy" in (run / "nll_ode.md").read_text()
    np.save(tmp_path / "wrong.npy", np.zeros((20, 1, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \[1, 8, 8\], but the run's model takes \[2\]"):
        evaluation.run_nll(run, "ode", data_path=tmp_path / "wrong.npy")
