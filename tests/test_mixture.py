"""The exact Gaussian-mixture denoiser, score and densities, against independent truth."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import interior_times

from rediff import Denoiser, data
from rediff.data import GaussianMixture
from rediff.schedules import VE, LinearVP

F64 = torch.float64
MVN = torch.distributions.MultivariateNormal


def rotation(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s], [s, c]], dtype=F64)


def full_cov(angle: float, variances: tuple[float, float]) -> torch.Tensor:
    R = rotation(angle)
    return R @ torch.diag(torch.tensor(variances, dtype=F64)) @ R.T


@pytest.fixture
def mixture():
    means = torch.tensor([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]], dtype=F64)
    covs = torch.stack(
        [full_cov(0.3, (0.5, 0.05)), full_cov(-1.0, (0.2, 0.8)), full_cov(2.0, (0.1, 0.3))]
    )
    return GaussianMixture(means, covs, torch.tensor([0.2, 0.5, 0.3], dtype=F64))


def reference_posterior_mean(mix, x, alpha, sigma):
    """E[x0 | x_t] by the textbook formula with linear solves (Bishop 2006, eq. 2.116)."""
    means, covs, w = mix.means, mix.covariances, mix.weights
    eye = torch.eye(mix.dim, dtype=F64)
    out = []
    for xi, a, s in zip(x, alpha, sigma, strict=True):
        C = a**2 * covs + s**2 * eye
        log_r = torch.log(w) + MVN(a * means, C).log_prob(xi)
        r = torch.softmax(log_r, 0)
        gain = torch.linalg.solve(C, (xi - a * means).unsqueeze(-1)).squeeze(-1)
        comp = means + a * torch.einsum("kij,kj->ki", covs, gain)
        out.append((r[:, None] * comp).sum(0))
    return torch.stack(out)


@pytest.mark.parametrize("schedule", [LinearVP(), VE(sigma_min=0.01, sigma_max=50.0)], ids=str)
def test_denoiser_equals_monte_carlo_posterior_mean(mixture, schedule):
    """Self-normalised importance sampling with p0 as proposal: E[x0 | x_t] is
    sum_i w_i x0_i / sum_i w_i with w_i = N(x_t; alpha x0_i, sigma^2 I)."""
    gen = torch.Generator().manual_seed(0)
    t = float(schedule.t_from_log_snr(torch.tensor(1.0, dtype=F64)))  # sigma/alpha ~ 0.6
    alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
    x_t = schedule.marginal(mixture.sample(6, generator=gen, dtype=F64), t, generator=gen)
    exact = mixture.denoiser(schedule)(x_t, t)
    x0 = mixture.sample(400_000, generator=gen, dtype=F64)
    for i in range(x_t.shape[0]):
        log_w = -((x_t[i] - alpha * x0).square().sum(1)) / (2 * sigma**2)
        w = torch.softmax(log_w, 0)
        estimate = (w[:, None] * x0).sum(0)
        se = torch.sqrt((w[:, None] ** 2 * (x0 - estimate).square()).sum(0))
        assert float(1 / w.square().sum()) > 1000  # enough effective samples to mean something
        assert ((exact[i] - estimate).abs() < 4.5 * se).all(), (i, exact[i], estimate, se)


def test_denoiser_equals_reference_formula(mixture, schedule):
    gen = torch.Generator().manual_seed(1)
    t = interior_times(schedule, n=12)
    x_t = schedule.marginal(mixture.sample(12, generator=gen, dtype=F64), t, generator=gen)
    expected = reference_posterior_mean(mixture, x_t, schedule.alpha(t), schedule.sigma(t))
    torch.testing.assert_close(mixture.denoiser(schedule)(x_t, t), expected, rtol=1e-9, atol=1e-9)


def test_score_is_gradient_of_log_prob_and_tweedie_holds(mixture, schedule):
    gen = torch.Generator().manual_seed(2)
    t = interior_times(schedule, n=10)
    x_t = schedule.marginal(mixture.sample(10, generator=gen, dtype=F64), t, generator=gen)
    den = mixture.denoiser(schedule)
    x = x_t.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(den.log_prob(x, t).sum(), x)
    score = den.score(x_t, t)
    torch.testing.assert_close(score, grad, rtol=1e-10, atol=1e-10)
    alpha, sigma = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    torch.testing.assert_close(den(x_t, t), (x_t + sigma**2 * score) / alpha, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(den.predict(x_t, t).score, score, rtol=1e-8, atol=1e-8)


def test_densities_equal_multivariate_normal_mixtures(mixture):
    gen = torch.Generator().manual_seed(3)
    x = 2 * torch.randn(20, 2, generator=gen, dtype=F64)
    comps = MVN(mixture.means, mixture.covariances)
    expected = torch.logsumexp(torch.log(mixture.weights) + comps.log_prob(x[:, None]), 1)
    torch.testing.assert_close(mixture.log_prob(x), expected, rtol=1e-12, atol=1e-12)
    sched, t = LinearVP(), 0.3
    a, s = float(sched.alpha(t)), float(sched.sigma(t))
    noised = MVN(a * mixture.means, a**2 * mixture.covariances + s**2 * torch.eye(2, dtype=F64))
    log_joint = torch.log(mixture.weights) + noised.log_prob(x[:, None])
    torch.testing.assert_close(
        mixture.noised_log_prob(x, t, sched), torch.logsumexp(log_joint, 1), rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(
        mixture.posterior_probs(x, t, sched), torch.softmax(log_joint, 1), rtol=1e-12, atol=1e-12
    )


def test_ill_conditioned_covariance_stays_exact():
    """Condition number 1e12: no explicit inverse, so the denoiser stays accurate and finite."""
    cov = full_cov(0.5, (1e-12, 1.0)).unsqueeze(0)
    mix = GaussianMixture(torch.zeros(1, 2, dtype=F64), cov)
    sched = LinearVP()
    gen = torch.Generator().manual_seed(4)
    t = torch.tensor([1e-5, 1e-3, 0.1, 0.9], dtype=F64)
    x_t = torch.randn(4, 2, generator=gen, dtype=F64)
    x0_hat = mix.denoiser(sched)(x_t, t)
    expected = reference_posterior_mean(mix, x_t, sched.alpha(t), sched.sigma(t))
    torch.testing.assert_close(x0_hat, expected, rtol=1e-8, atol=1e-10)
    # the estimate lies on the data's line (the direction of the large eigenvalue)
    direction = rotation(0.5)[:, 1]
    residual = x0_hat - (x0_hat @ direction)[:, None] * direction
    assert float(residual.abs().max()) < 1e-5
    assert torch.isfinite(mix.log_prob(x_t)).all()


def test_sample_moments(mixture):
    gen = torch.Generator().manual_seed(5)
    n = 200_000
    x, labels = mixture.sample(n, generator=gen, dtype=F64, return_labels=True)
    w, mu, cov = mixture.weights, mixture.means, mixture.covariances
    mean = (w[:, None] * mu).sum(0)
    second = (w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])).sum(0)
    total_cov = second - torch.outer(mean, mean)
    se = torch.sqrt(torch.diagonal(total_cov) / n)
    assert ((x.mean(0) - mean).abs() < 4 * se).all()
    torch.testing.assert_close(torch.cov(x.T), total_cov, rtol=0.02, atol=0.02)
    counts = torch.bincount(labels, minlength=3).double() / n
    assert ((counts - w).abs() < 4 * torch.sqrt(w * (1 - w) / n)).all()
    # each component's samples have that component's covariance
    torch.testing.assert_close(torch.cov(x[labels == 1].T), cov[1], rtol=0.03, atol=0.01)


def test_sampling_is_seeded(mixture):
    a = mixture.sample(5, generator=torch.Generator().manual_seed(9))
    b = mixture.sample(5, generator=torch.Generator().manual_seed(9))
    c = mixture.sample(5, generator=torch.Generator().manual_seed(10))
    assert a.dtype == torch.float32 and torch.equal(a, b) and not torch.equal(a, c)


def test_images_and_dtypes_pass_through():
    gen = torch.Generator().manual_seed(6)
    D = 64
    means = torch.randn(2, D, generator=gen, dtype=F64)
    mix = GaussianMixture(means, 0.1 * torch.eye(D, dtype=F64).expand(2, D, D))
    den = mix.denoiser(LinearVP())
    assert isinstance(den, Denoiser)
    x_t = torch.randn(3, 1, 8, 8, generator=gen)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        out = den(x_t.to(dtype), 0.4)
        assert out.shape == x_t.shape and out.dtype == dtype
    assert den.log_prob(x_t, 0.4).shape == (3,)


def test_eight_gaussians_mixture_matches_its_samples():
    mix = data.eight_gaussians_mixture(radius=2.0, std=0.1)
    x = data.eight_gaussians(4000, generator=torch.Generator().manual_seed(0))
    radii = x.double().norm(dim=1)
    assert abs(float(radii.mean()) - 2.0) < 0.02
    assert mix.num_components == 8 and torch.isfinite(mix.log_prob(x)).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(means=torch.zeros(2), covariances=torch.eye(2)[None]),
            r"means must have shape \[K, D\]",
        ),
        (
            dict(means=torch.zeros(1, 2), covariances=torch.eye(3)[None]),
            "covariances must have shape",
        ),
        (dict(means=torch.zeros(1, 2), covariances=-torch.eye(2)[None]), "not positive definite"),
        (dict(means=torch.zeros(1, 2), covariances=torch.zeros(1, 2, 2)), "not positive definite"),
        (
            dict(means=torch.zeros(1, 2), covariances=torch.tensor([[[1.0, 0.5], [0.0, 1.0]]])),
            "symmetric",
        ),
        (
            dict(
                means=torch.zeros(2, 2),
                covariances=torch.eye(2).expand(2, 2, 2),
                weights=[0.5, 0.4],
            ),
            "sum to 1",
        ),
        (
            dict(
                means=torch.zeros(2, 2),
                covariances=torch.eye(2).expand(2, 2, 2),
                weights=[1.5, -0.5],
            ),
            "non-negative",
        ),
        (
            dict(means=torch.zeros(2, 2), covariances=torch.eye(2).expand(2, 2, 2), weights=[1.0]),
            r"weights must have shape \[K\]",
        ),
        (
            dict(means=torch.tensor([[float("nan"), 0.0]]), covariances=torch.eye(2)[None]),
            "NaN",
        ),
    ],
)
def test_bad_mixture_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixture(**kwargs)


def test_bad_mixture_inputs_are_refused(mixture):
    den = mixture.denoiser(LinearVP())
    with pytest.raises(ValueError, match="dimension 2"):
        den(torch.zeros(4, 3), 0.5)
    with pytest.raises(ValueError, match="outside"):
        den(torch.zeros(4, 2), 2.0)
    with pytest.raises(TypeError, match="only labels"):
        den(torch.zeros(4, 2), 0.5, mask=torch.zeros(4))
    with pytest.raises(ValueError, match=r"components in \[0, 2\]"):
        den(torch.zeros(4, 2), 0.5, labels=torch.tensor([0, 1, 3, 0]))
    with pytest.raises(TypeError, match="Schedule"):
        mixture.denoiser("vp")
