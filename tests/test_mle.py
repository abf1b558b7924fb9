"""Maximum-likelihood training of diffusion ODEs: the likelihood weighting's importance
sampler (Song et al. 2021) and Lu et al. 2022's second- and third-order denoising score
matching, checked against mixtures whose scores are known in closed form (their derivatives by
autograd of the closed form)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from rediff import data, losses, schedules
from rediff.model import DiffusionModel
from rediff.nets import MLP

F64 = torch.float64


def _mixture() -> data.GaussianMixture:
    """A 2-D mixture of three components (Lu et al.'s toy experiments are mixtures)."""
    return data.GaussianMixture(
        torch.tensor([[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]], dtype=F64),
        torch.tensor(
            [[[0.05, 0.0], [0.0, 0.3]], [[0.2, 0.1], [0.1, 0.1]], [[0.1, 0.0], [0.0, 0.1]]],
            dtype=F64,
        ),
        torch.tensor([0.3, 0.5, 0.2], dtype=F64),
    )


@pytest.mark.parametrize(
    "schedule",
    [schedules.LinearVP(), schedules.EDM(), schedules.FlowMatching()],
    ids=["linear_vp", "edm", "flow"],
)
def test_importance_times_follow_their_closed_form_cdf(schedule):
    """t has density g^2 / sigma^2 / Z, i.e. F(t) = (lambda(t_min) - lambda(t)) / (lambda(t_min)
    - lambda(t_max)); checked at nine quantiles (binomial standard errors)."""
    n = 40000
    t = losses.sample_times(schedule, n, "importance", generator=torch.Generator().manual_seed(0))
    high, low = schedule.log_snr(schedule.t_min), schedule.log_snr(schedule.t_max)
    for q in torch.linspace(0.1, 0.9, 9, dtype=F64):
        quantile = schedule.t_from_log_snr(high + q * (low - high))
        fraction = float((t <= quantile).double().mean())
        assert abs(fraction - float(q)) < 4 * math.sqrt(q * (1 - q) / n)
    # that density is g^2 / sigma^2 = -d lambda / dt (central differences, interior times)
    u = torch.linspace(0.05, 0.95, 19, dtype=F64)
    t = schedule.t_min + u * (schedule.t_max - schedule.t_min)
    step = 1e-6 * (schedule.t_max - schedule.t_min)
    slope = (schedule.log_snr(t + step) - schedule.log_snr(t - step)) / (2 * step)
    rate = schedule.diffusion_squared(t) / schedule.sigma(t).square()
    torch.testing.assert_close(rate, -slope, rtol=1e-6, atol=0)


def _small_model(schedule) -> DiffusionModel:
    torch.manual_seed(0)
    return DiffusionModel(MLP(2, 32, 2), schedule, "eps").double()


def test_importance_sampled_likelihood_loss_has_the_uniform_expectation():
    """The likelihood-weighted loss of a fixed model estimated with t uniform and with t from
    the importance sampler (reweighted) agree within their standard errors."""
    schedule = schedules.LinearVP(t_min=1e-2)
    model, mix = _small_model(schedule), _mixture()
    estimates = {}
    for sampler in ("uniform", "importance"):
        g = torch.Generator().manual_seed(1)
        values = []
        with torch.no_grad():
            for _ in range(40):
                x0 = mix.sample(500, generator=g).double()
                loss = losses.denoising_loss(
                    model, x0, weighting="likelihood", time_sampler=sampler, generator=g
                )
                values.append(float(loss))
        mean = sum(values) / len(values)
        se = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
        estimates[sampler] = (mean, se)
    (mu, su), (mi, si) = estimates["uniform"], estimates["importance"]
    assert abs(mu - mi) < 4 * math.hypot(su, si), estimates


class _Perturbed:
    """The exact mixture's score plus theta times a bump: ``smooth`` sin(x) changes every
    derivative smoothly; ``fine`` eps^k sin(x / eps) (small eps) changes the k-th derivative
    of the score by O(theta) and the lower ones by O(eps), so a loss can be probed in its own
    argument (the paper's view: the lower orders fixed)."""

    def __init__(self, mix, schedule, theta: torch.Tensor, bump: str, k: int, eps: float = 1e-3):
        self.exact, self.schedule = mix.denoiser(schedule), schedule
        self.theta, self.bump, self.k, self.eps = theta, bump, k, eps

    def predict(self, x, t):
        if self.bump == "smooth":
            change = torch.sin(x)
        else:
            change = self.eps**self.k * torch.sin(x / self.eps)
        return SimpleNamespace(score=self.exact.predict(x, t).score + self.theta * change)


def _chunks(order, theta, bump, chunks=24, n=500):
    """The high-order loss and its derivative in theta over independent chunks of draws (the
    same draws for every call)."""
    schedule, mix = schedules.LinearVP(t_min=0.05, t_max=0.95), _mixture()
    g = torch.Generator().manual_seed(3)
    values, grads = [], []
    for _ in range(chunks):
        x0 = mix.sample(n, generator=g).double()
        t = losses.sample_times(schedule, n, "uniform", generator=g)
        noise = torch.randn(x0.shape, generator=g, dtype=F64)
        probes = torch.sign(torch.randn((1, *x0.shape), generator=g, dtype=F64))
        th = torch.tensor(theta, dtype=F64, requires_grad=True)
        model = _Perturbed(mix, schedule, th, bump, order - 1)
        loss = losses.high_order_loss(model, x0, t, noise, probes, order)
        (grad,) = torch.autograd.grad(loss, th)
        values.append(float(loss))
        grads.append(float(grad))
    return torch.tensor(values, dtype=F64), torch.tensor(grads, dtype=F64)


def _se(x: torch.Tensor) -> float:
    return float(x.std() / math.sqrt(x.numel()))


@pytest.mark.parametrize("order", [2, 3])
def test_high_order_losses_are_minimised_by_the_exact_derivatives(order):
    """The loss's gradient at the exact model in a smooth perturbation vanishes (within 4
    standard errors; it is E[residual | x_t] against a smooth function, zero only if the
    residual's conditional mean is), while at a perturbed model it does not; and the loss at
    the exact model is below that of a model whose top derivative alone is perturbed (paired
    draws, by 4 standard errors of the difference)."""
    _, grads = _chunks(order, 0.0, "smooth")
    assert abs(float(grads.mean())) < 4 * _se(grads), (float(grads.mean()), _se(grads))
    _, off = _chunks(order, 0.3, "smooth")
    assert abs(float(off.mean())) > 4 * _se(off), (float(off.mean()), _se(off))
    exact, _ = _chunks(order, 0.0, "fine")
    perturbed, _ = _chunks(order, 0.3, "fine")
    gap = perturbed - exact
    assert float(gap.mean()) > 4 * _se(gap), (float(gap.mean()), _se(gap))


def test_a_first_order_run_is_fine_tuned_with_dsm2_from_its_weights(tmp_path, capsys):
    """rediff train with loss.kind = dsm2 and train.init = a first-order run starts from that
    run's EMA weights (its first logged loss is the first-order loss of those weights plus the
    second-order term), and a missing init run is one clear error."""
    from rediff import cli
    from rediff.runs import load_run
    from rediff.training import load_config

    first, tuned = tmp_path / "first", tmp_path / "tuned"
    short = ["--set", "train.steps=3", "--set", "train.sample_every=0"]
    short += ["--set", "train.warmup=0", "--set", "train.ema_half_life=1e-9"]  # EMA = weights
    assert cli.main(["train", "configs/toy_2d.toml", "--run-dir", str(first), *short]) == 0
    settings = ["--set", "loss.kind=dsm2", "--set", f'train.init="{first}"']
    settings += ["--set", "train.lr=1e-12"]
    assert (
        cli.main(["train", "configs/toy_2d.toml", "--run-dir", str(tuned), *short, *settings]) == 0
    )
    start, after = load_run(first).model, load_run(tuned).model  # lr 1e-12: they stay
    for a, b in zip(start.state_dict().values(), after.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert load_config(tuned / "config.toml").train.init == str(first)
    capsys.readouterr()
    missing = ["--set", f'train.init="{tmp_path / "nowhere"}"']
    assert (
        cli.main(["train", "configs/toy_2d.toml", "--run-dir", str(tmp_path / "x"), *missing]) == 2
    )
    assert "holds no ema.safetensors" in capsys.readouterr().err
