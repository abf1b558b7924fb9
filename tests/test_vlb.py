"""DDPM's discrete variational bound against closed-form truth for Gaussian data."""

from __future__ import annotations

import math

import pytest
import torch

from rediff import losses, schedules
from rediff import variational as vlb
from rediff.data import GaussianMixture
from rediff.model import Denoiser, DiffusionModel

MEAN = torch.tensor([0.2, -0.1], dtype=torch.float64)
COV = torch.tensor([[0.04, 0.01], [0.01, 0.03]], dtype=torch.float64)


def gaussian():
    return GaussianMixture(MEAN[None], COV[None])


def expected_kl(schedule, variance: str) -> torch.Tensor:
    """E L_{k-1} for k = 2..T with the exact denoiser: the Gaussian KL's constant part plus
    c0^2 E|x0 - E[x0 | x_k]|^2 / s^2, where Cov(x0 | x_k) = (COV^-1 + alpha^2/sigma^2 I)^-1."""
    T, d = schedule.num_steps, 2
    abar = schedule.alphas_cumprod()
    beta = 1.0 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    out = []
    for k in range(2, T + 1):
        a2, s2k, a2prev = abar[k - 1], 1 - abar[k - 1], abar[k - 2]
        bt = (1 - a2prev) * beta[k - 1] / s2k
        c0 = a2prev.sqrt() * beta[k - 1] / s2k
        s2 = beta[k - 1] if variance == "beta" else bt
        post = torch.linalg.inv(torch.linalg.inv(COV) + a2 / s2k * torch.eye(2))
        out.append(0.5 * (d * (math.log(s2 / bt) + bt / s2 - 1) + c0**2 * post.trace() / s2))
    return torch.stack(out)


def expected_prior(schedule) -> float:
    a2 = float(schedule.alpha(1.0)) ** 2
    s2 = 1 - a2
    ex2 = MEAN.square() + COV.diagonal()
    return float((-0.5 * math.log(s2) + (s2 - 1 + a2 * ex2) / 2).sum())


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_bound_of_exact_gaussian_denoiser_matches_closed_form(variance):
    schedule = schedules.DiscreteVP.linear(100, 1e-3, 0.2)
    den = gaussian().denoiser(schedule)
    gen = torch.Generator().manual_seed(0)
    x0 = (
        gaussian().sample(4000, generator=gen).clamp(-1, 1)
    )  # 4 std from +-1: clamps ~1e-4 of draws
    bound = vlb.vlb(den, x0, variance=variance, generator=gen)
    # every term's batch mean within 5 standard errors of its closed form
    truth = expected_kl(schedule, variance)
    assert bound.terms.shape == truth.shape
    # summed: the diffusion part and the prior term
    se = float(bound.diffusion.std() / math.sqrt(len(x0)))
    assert abs(float(bound.diffusion.mean()) - float(truth.sum())) < 5 * se + 1e-9
    assert torch.allclose(bound.terms, truth, rtol=0.05)
    assert abs(float(bound.prior.mean()) - expected_prior(schedule)) < 0.01 * expected_prior(
        schedule
    ) + 5 * float(bound.prior.std() / math.sqrt(len(x0)))


def test_subsampled_bound_is_unbiased_with_honest_error():
    schedule = schedules.DiscreteVP.linear(50, 1e-3, 0.3)
    den = gaussian().denoiser(schedule)
    gen = torch.Generator().manual_seed(1)
    x0 = gaussian().sample(2000, generator=gen).clamp(-1, 1)
    full = vlb.vlb(den, x0, generator=gen)
    sub = vlb.vlb(den, x0, num_steps=8, generator=gen)
    diff = sub.diffusion.mean() - full.diffusion.mean()
    se = (sub.diffusion - full.diffusion).std() / math.sqrt(len(x0))
    assert abs(float(diff)) < 5 * float(se)
    # the per-sample standard error reflects the spread of the per-sample estimates
    assert float(sub.diffusion_se.mean()) > 0
    assert torch.all(full.diffusion_se == 0)


def test_training_estimate_has_the_bound_as_its_mean():
    """E_k[L_T + T L_{k-1}] over k uniform on 1..T is the whole bound (bits/dim)."""
    schedule = schedules.DiscreteVP.linear(20, 1e-2, 0.5)
    den = gaussian().denoiser(schedule)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.round(gaussian().sample(3000, generator=gen).clamp(-1, 1) * 8) / 8  # 17 levels
    full = vlb.vlb(den, x0, levels=17, generator=gen)
    objective = losses.Objective("vlb", time_sampler="steps", levels=17)
    est = []
    for _ in range(20):
        draws = objective.draw(schedule, x0, gen)
        k = torch.round(draws["t"] * 20).long()
        terms = vlb.step_terms(den, x0, k, draws["noise"], levels=17)
        est.append((full.prior + 20 * terms) / (2 * math.log(2)))
    est = torch.cat(est)
    se = float(est.std() / math.sqrt(len(est)))
    assert abs(float(est.mean()) - float(full.bits_per_dim.mean())) < 5 * se


@pytest.mark.parametrize("levels", [17, 256])
def test_decoder_is_a_distribution_over_the_levels(levels):
    grid = torch.linspace(-1, 1, levels, dtype=torch.float64)[:, None]
    for mean, std in [(0.3, 0.05), (-0.99, 0.5), (0.0, 1e-3), (2.0, 0.2)]:
        logp = vlb.decoder_log_prob(grid, torch.full_like(grid, mean), std, levels)
        assert abs(float(torch.logsumexp(logp, 0)) - 0.0) < 1e-10


def test_decoder_tends_to_density_times_bin_width():
    """For a scale much wider than a bin, P(bin) = N(x; mean, std^2) * width (1 + O(w^2/s^2))."""
    x = torch.linspace(-0.5, 0.5, 11, dtype=torch.float64)[:, None]
    mean, std = 0.1, 0.3
    logp = vlb.decoder_log_prob(x, torch.full_like(x, mean), std, 256)
    dens = -0.5 * ((x - mean) / std) ** 2 - math.log(std * math.sqrt(2 * math.pi))
    assert torch.allclose(logp, dens[:, 0] + math.log(2 / 255), atol=1e-4)


def test_bad_input_is_refused():
    ve = GaussianMixture(MEAN[None], COV[None]).denoiser(schedules.VE())
    with pytest.raises(ValueError, match="DiscreteVP"):
        vlb.vlb(ve, torch.zeros(3, 2))
    den = gaussian().denoiser(schedules.DiscreteVP.linear(10))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        vlb.vlb(den, torch.full((3, 2), 1.5))
    with pytest.raises(ValueError, match=r"1\.\.10"):
        vlb.step_terms(den, torch.zeros(2, 2), torch.tensor([0, 3]), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="time_sampler = 'steps'"):
        losses.Objective("vlb")


class ConstantFraction(Denoiser):
    """The exact denoiser with a learned-variance fraction: a constant, or one learnable value
    per step k (shared by every element)."""

    def __init__(self, inner, fraction):
        self.inner, self.schedule, self.fraction = inner, inner.schedule, fraction

    def __call__(self, x_t, t, **cond):
        return self.inner(x_t, t)

    def with_variance(self, x_t, t, **cond):
        f = self.fraction
        if isinstance(f, torch.Tensor):  # per step: index by k = T t
            k = torch.round(torch.as_tensor(t) * self.schedule.num_steps).long()
            f = f[k - 1][:, None].expand_as(x_t)
        return self.inner(x_t, t), torch.as_tensor(f, dtype=torch.float64).expand_as(x_t)


def test_learned_variance_at_its_ends_is_beta_and_beta_tilde():
    schedule = schedules.DiscreteVP.linear(30, 1e-3, 0.3)
    den = gaussian().denoiser(schedule)
    gen = torch.Generator().manual_seed(4)
    x0 = torch.round(gaussian().sample(64, generator=gen).clamp(-1, 1) * 127.5) / 127.5
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    k = torch.randint(1, 31, (64,), generator=gen)
    for fraction, fixed in [(1.0, "beta"), (0.0, "beta_tilde")]:
        learned = vlb.step_terms(ConstantFraction(den, fraction), x0, k, noise, variance="learned")
        torch.testing.assert_close(learned, vlb.step_terms(den, x0, k, noise, variance=fixed))


class SampleFraction(Denoiser):
    """The exact denoiser with one learned-variance fraction per sample, f: [B]."""

    def __init__(self, inner, fraction):
        self.inner, self.schedule, self.fraction = inner, inner.schedule, fraction

    def __call__(self, x_t, t, **cond):
        return self.inner(x_t, t)

    def with_variance(self, x_t, t, **cond):
        return self.inner(x_t, t), self.fraction[:, None].expand_as(x_t)


def test_the_learned_bound_is_stationary_at_the_optimal_variance():
    """With the exact mean, E L_{k-1} as a function of an isotropic s_k^2 is minimal at
    s_k^2* = beta_tilde_k + c0_k^2 tr Cov(x0 | x_k) / d (Bao et al. 2022's optimum in this
    family; coefficients from abar here, not from rediff). The bound's gradient in the
    learned fraction f, averaged over 20,000 draws, vanishes at the f that gives s_k^2* (within
    4 standard errors of the per-draw gradients) and points back towards it from f* -+ 0.3
    (beyond 10 standard errors)."""
    T, n = 10, 20000
    schedule = schedules.DiscreteVP.linear(T, 1e-2, 0.4)
    den = gaussian().denoiser(schedule)
    abar = schedule.alphas_cumprod()
    gen = torch.Generator().manual_seed(5)
    x0 = gaussian().sample(n, generator=gen)
    for k in (2, 5, 10):
        a2, a2prev = abar[k - 1], abar[k - 2]
        beta = 1 - a2 / a2prev
        beta_tilde = (1 - a2prev) * beta / (1 - a2)
        c0 = a2prev.sqrt() * beta / (1 - a2)
        post = torch.linalg.inv(torch.linalg.inv(COV) + a2 / (1 - a2) * torch.eye(2))
        optimum = beta_tilde + c0**2 * post.trace() / 2
        f_star = float(torch.log(optimum / beta_tilde) / torch.log(beta / beta_tilde))
        noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        for offset in (0.0, -0.3, 0.3):
            f = torch.full((n,), f_star + offset, dtype=torch.float64, requires_grad=True)
            kl = vlb.kl_term(
                SampleFraction(den, f), x0, torch.full((n,), k), noise, variance="learned"
            )
            (grad,) = torch.autograd.grad(kl.sum(), f)  # one gradient per draw
            mean, se = float(grad.mean()), float(grad.std()) / math.sqrt(n)
            if offset == 0.0:
                assert abs(mean) < 4 * se, (k, mean, se)
            else:  # descent moves f back towards f*
                assert math.copysign(1.0, offset) * mean > 10 * se, (k, offset, mean, se)


def test_learned_variance_model_shapes_and_errors():
    from rediff.nets import MLP

    schedule = schedules.DiscreteVP.linear(10)
    model = DiffusionModel(MLP(2, 16, 1, outputs=2), schedule, learned_variance=True)
    x = torch.randn(5, 2)
    x0, fraction = model.with_variance(x, 0.5)
    assert x0.shape == fraction.shape == (5, 2)
    torch.testing.assert_close(model(x, 0.5), x0)
    with pytest.raises(ValueError, match="outputs=2"):
        DiffusionModel(MLP(2, 16, 1), schedule, learned_variance=True)(x, 0.5)
    with pytest.raises(TypeError, match="does not learn its reverse variance"):
        gaussian().denoiser(schedule).with_variance(x, 0.5)
    with pytest.raises(ValueError, match="variance = 'learned'"):
        losses.Objective("hybrid", time_sampler="steps")
    objective = losses.Objective("vlb", time_sampler="steps", variance="learned")
    with pytest.raises(ValueError, match="learned_variance"):
        objective.check_model(DiffusionModel(MLP(2, 16, 1), schedule))
