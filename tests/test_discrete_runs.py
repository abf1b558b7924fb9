"""Discrete diffusion through the run layer: networks over categories, the objective, training
on 17-level digits and on token sequences, rediff train / sample / eval / nll on discrete
runs, and bad input refused before any run file is written."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rediff import discrete
from rediff.cli import main
from rediff.discrete import DiscreteModel, DiscreteObjective, DiscreteProcess
from rediff.evaluation import run_nll
from rediff.nets import Transformer, accelerate
from rediff.nets.categorical import logistic_logits
from rediff.runs import load_config, load_run
from rediff.training import train

FAST = [
    "train.warmup=20",
    "train.lr=2e-3",
    "train.ema_half_life=500",
    "train.log_every=10",
    "train.checkpoint_every=50",
    "train.sample_every=0",
]


class Spy(torch.nn.Module):
    """Records what the network is given; predicts uniform logits."""

    def __init__(self, categories: int) -> None:
        super().__init__()
        self.categories, self.seen = categories, []
        self.scale = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x_t, time, **cond):
        self.seen.append(x_t.clone())
        return self.scale * torch.zeros(*x_t.shape, self.categories)


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_the_network_receives_x_t_not_x0(kind):
    """The objective hands the net x_t ~ q(x_t | x0) drawn from its own uniforms (recomputed
    here), never x0: at t = T of the absorbing chain every token is [MASK]."""
    process = DiscreteProcess.make(kind, 5, T=10)
    net = Spy(5)
    model, objective = DiscreteModel(net, process), DiscreteObjective("discrete_hybrid")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 5, (64, 6), generator=g)
    draws = objective.draw(process, x0, g)
    loss = objective(model, x0, draws)
    assert torch.isfinite(loss)
    expected = discrete.process.categorical(process.marginal(x0, draws["t"]), u=draws["u"])
    assert torch.equal(net.seen[-1], expected) and not torch.equal(expected, x0)
    draws["t"] = torch.full((64,), 10)
    objective(model, x0, draws)
    if kind == "absorbing":
        assert bool((net.seen[-1] == process.mask).all())


def test_the_logistic_head_is_a_discretised_logistic():
    """Bin probabilities are differences of the logistic CDF at the bins' edges, renormalised
    over the K bins (truncation), checked against the sigmoid directly."""
    loc, log_scale = torch.tensor([0.1, -0.7]), torch.tensor([-1.0, 0.5])
    probs = torch.softmax(logistic_logits(loc, log_scale, 17), -1)
    edges = torch.linspace(-1, 1, 17)[None, :] + torch.tensor([-1, 1])[:, None, None] / 16
    cdf = torch.sigmoid((edges - loc[:, None]) / log_scale.exp()[:, None])
    mass = cdf[1] - cdf[0]
    torch.testing.assert_close(probs, mass / mass.sum(-1, keepdim=True), rtol=1e-5, atol=1e-6)


def test_a_discrete_model_runs_under_bf16_autocast_with_integer_inputs():
    process = DiscreteProcess.make("absorbing", 5, T=10)
    net = Transformer(5, process.num_states, 6, width=16, depth=1, heads=2)
    model = DiscreteModel(net, process)
    fast = model.with_net(accelerate(net, precision="bf16"))
    x = torch.randint(0, 6, (4, 6))
    out = fast(x, 3)
    assert out.dtype == torch.float32 and out.shape == (4, 6, 5)
    torch.testing.assert_close(out, model(x, 3), atol=0.05, rtol=0.05)


def test_a_brief_run_on_17_level_digits_lowers_the_bound_well_below_a_uniform_guess(tmp_path):
    """80 steps of D3PM (discretised Gaussian, hybrid loss, T = 20) on the digits: the full
    bound of 64 held-out digits is far below log2(17) = 4.09 bits/dim (measured 3.20, standard
    error 0.04)."""
    config = load_config(
        "configs/digits_d3pm.toml",
        ["schedule.T=20", "sample.steps=20", "train.steps=80", "train.batch_size=32", *FAST],
    )
    train(config, tmp_path / "run", progress=False)
    row = run_nll(tmp_path / "run", n=64, vlb_steps=0).row
    assert row.unit == "bits/dim" and row.nfe == 20
    assert row.mean + 10 * row.se < math.log2(17), (row.mean, row.se)


def test_discrete_runs_through_the_command_line(tmp_path, capsys):
    """The absorbing digits config, a few steps: train, sample (PNG and arrays of levels in
    [-1, 1]), eval (the digits measures on the samples), nll (the bound by default)."""
    run = tmp_path / "run"
    short = ["train.steps=6", "train.batch_size=16", "schedule.T=20", "sample.steps=10", *FAST]
    command = ["train", "configs/digits_d3pm_absorbing.toml", "--run-dir", str(run)]
    assert main([*command, *[a for s in short for a in ("--set", s)]]) == 0
    assert isinstance(load_run(run).model, DiscreteModel)
    png, arrays = tmp_path / "s.png", tmp_path / "s.npz"
    assert main(["sample", str(run), "--n", "20", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["sample", str(run), "--n", "20", "--out", str(arrays), "--steps", "5"]) == 0
    levels = np.load(arrays)["samples"] * 8 + 8  # 17 levels in [-1, 1]
    assert levels.shape == (20, 1, 8, 8) and np.allclose(levels, np.round(levels))
    capsys.readouterr()
    assert main(["eval", str(run), "--n", "40"]) == 0
    assert "Frechet distance" in capsys.readouterr().out
    assert main(["nll", str(run), "--n", "8", "--vlb-steps", "4"]) == 0
    assert "| vlb | bits/dim |" in capsys.readouterr().out
    assert main(["nll", str(run), "--method", "ode"]) == 2
    assert "has no probability-flow ODE" in capsys.readouterr().err
    assert main(["sample", str(run), "--sampler", "dpm++2m"]) == 2
    assert "unknown discrete sampler 'dpm++2m'" in capsys.readouterr().err


def test_token_sequences_train_a_transformer(tmp_path):
    """Integer token data (the categories kind) with the transformer: the samples are tokens
    in 0..K-1 of the data's length, and the bound is reported."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 7, (256, 12), generator=g).numpy().astype(np.int64)
    np.save(tmp_path / "tokens.npy", tokens)
    overrides = [
        "data.kind='categories'",
        f"data.path='{tmp_path / 'tokens.npy'}'",
        "schedule.kind='d3pm_absorbing'",
        "schedule.T=20",
        "loss.kind='discrete_vlb'",
        "model.net='transformer'",
        "model.width=32",
        "model.depth=1",
        "train.steps=4",
        "train.batch_size=16",
        *FAST,
    ]
    train(load_config(None, overrides), tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    assert run.spec.integer and not run.spec.ordinal and run.spec.levels == 7
    out = tmp_path / "tokens_out.npz"
    assert main(["sample", str(tmp_path / "run"), "--n", "5", "--out", str(out)]) == 0
    samples = np.load(out)["samples"]
    assert samples.shape == (5, 12) and samples.min() >= 0 and samples.max() <= 6
    assert run_nll(tmp_path / "run", n=8, vlb_steps=0).row.nfe == 20


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["schedule.kind='d3pm_uniform'", "loss.kind='discrete_vlb'", "model.net='transformer'"],
            "needs quantised data",
        ),
        (["schedule.kind='d3pm_uniform'"], "does not train schedule.kind = 'd3pm"),
        (["loss.kind='discrete_vlb'"], "does not train schedule.kind = 'discrete_vp'"),
        (
            ["schedule.kind='d3pm_uniform'", "loss.kind='discrete_ce'", "model.net='mlp'"],
            "model.net = 'mlp' has no discrete form",
        ),
        (["model.net='transformer'"], "serves discrete processes only"),
        (
            [
                "schedule.kind='d3pm_absorbing'",
                "loss.kind='discrete_ce'",
                "data.kind='digits'",
                "model.net='unet_digits'",
                "model.head='logistic'",
            ],
            "model.head = 'logistic' needs ordinal levels",
        ),
        (["schedule.kind='discrete_vp'", "schedule.betas='mutual_info'"], "for the d3pm kinds"),
        (
            ["schedule.kind='d3pm_uniform'", "schedule.T=10", "loss.kind='discrete_ce'"],
            r"sample.steps = 20 exceeds schedule.T = 10",
        ),
    ],
)
def test_bad_discrete_configs_are_refused_before_the_run_starts(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(load_config(None, ["data.n=100", *overrides]), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_bad_categorical_data_are_refused_before_the_run_starts(tmp_path):
    """Categories beyond data.categories, float values given as categories, an ordinal
    process on unordered tokens, and integer categories given to a continuous model."""
    np.save(tmp_path / "tokens.npy", np.array([[0, 1, 5], [2, 3, 4]], dtype=np.int64))
    np.save(tmp_path / "floats.npy", np.zeros((4, 3), dtype=np.float32))
    base = [f"data.path='{tmp_path / 'tokens.npy'}'", "data.kind='categories'"]
    discrete_run = ["loss.kind='discrete_vlb'", "model.net='transformer'", "model.width=16"]
    cases = [
        (
            [*base, "data.categories=4", "schedule.kind='d3pm_uniform'", *discrete_run],
            r"outside the categories 0..3",
        ),
        (
            [
                "data.kind='categories'",
                f"data.path='{tmp_path / 'floats.npy'}'",
                "schedule.kind='d3pm_uniform'",
                *discrete_run,
            ],
            "categories must be integers",
        ),
        (
            [*base, "schedule.kind='d3pm_gaussian'", *discrete_run],
            "these categories are unordered tokens",
        ),
        ([*base, "model.width=16"], "which a continuous schedule cannot model"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            train(load_config(None, overrides), tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()
