"""Forward processes: closed forms, the SDE, inverses, and bad input."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import SCHEDULES, interior_times

from rediff import schedules
from rediff.schedules import EDM, VE, DiscreteVP, FlowMatching, LinearVP, SubVP

F64 = torch.float64


def endpoint_and_interior_times(schedule):
    return torch.cat(
        [torch.tensor([schedule.t_min, schedule.t_max], dtype=F64), interior_times(schedule)]
    )


# ---- DDPM closed form ------------------------------------------------------------------------


def test_discrete_vp_reproduces_cumulative_products():
    betas = np.linspace(1e-4, 0.02, 1000)
    alpha_bar = np.cumprod(1.0 - betas)
    sched = DiscreteVP.linear(1000, beta_start=1e-4, beta_end=0.02)
    k = torch.arange(1, 1001, dtype=F64)
    np.testing.assert_allclose(sched.alpha(k / 1000).square().numpy(), alpha_bar, rtol=1e-12)
    np.testing.assert_allclose(sched.sigma(k / 1000).square().numpy(), 1 - alpha_bar, rtol=1e-12)
    np.testing.assert_allclose(sched.alphas_cumprod().numpy(), alpha_bar, rtol=1e-12)


def test_discrete_vp_from_arbitrary_betas_matches_product():
    betas = [0.3, 0.01, 0.2, 0.5]
    sched = DiscreteVP(betas)
    expected = np.cumprod(1.0 - np.array(betas))
    got = sched.alpha(torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=F64)).square()
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-13)


def test_ddpm_marginal_equals_iterated_one_step_chain():
    """Run x_k = sqrt(1 - beta_k) x_{k-1} + sqrt(beta_k) z and compare moments with q(x_k | x0)."""
    sched = DiscreteVP.linear(1000)
    betas = torch.tensor(sched.betas, dtype=F64)
    gen = torch.Generator().manual_seed(0)
    n = 20000
    x0 = torch.tensor([-1.0, 0.3, 1.0], dtype=F64)
    x = x0.expand(n, 3).clone()
    checked = 0
    for k in range(1, 1001):
        z = torch.randn(n, 3, generator=gen, dtype=F64)
        x = torch.sqrt(1 - betas[k - 1]) * x + torch.sqrt(betas[k - 1]) * z
        if k in (1, 10, 100, 500, 1000):
            alpha, sigma = sched.alpha(k / 1000), sched.sigma(k / 1000)
            mean_se = sigma / math.sqrt(n)
            var_se = sigma**2 * math.sqrt(2.0 / (n - 1))
            assert ((x.mean(0) - alpha * x0).abs() < 4 * mean_se).all(), k
            assert ((x.var(0) - sigma**2).abs() < 4 * var_se).all(), k
            checked += 1
    assert checked == 5


def test_prior_kl_closed_form_and_ddpm_magnitude():
    """L_T = KL(q(x_T | x0) || N(0, I)) per dim = (-log(1 - a) - a + a x0^2) / 2, a = alpha_bar_T.

    Ho et al. (2020, table 2 discussion) quote L_T of about 1e-5 bits/dim for this schedule.
    """
    sched = DiscreteVP.linear(1000, beta_start=1e-4, beta_end=0.02)
    a = float(np.prod(1.0 - np.linspace(1e-4, 0.02, 1000)))
    pixels = torch.arange(256, dtype=F64) / 127.5 - 1.0  # the 8-bit grid in [-1, 1]
    x0 = pixels.reshape(4, 64)
    expected = 0.5 * (-math.log1p(-a) - a + a * x0.square()).sum(1)
    np.testing.assert_allclose(sched.prior_kl(x0).numpy(), expected.numpy(), rtol=1e-10)
    bits_per_dim = sched.prior_kl(x0).sum() / x0.numel() / math.log(2)
    assert 5e-6 < float(bits_per_dim) < 2e-5


def test_prior_kl_is_zero_when_marginal_equals_prior():
    sched = VE(sigma_min=0.01, sigma_max=50.0)
    assert float(sched.prior_kl(torch.zeros(2, 3, dtype=F64)).abs().max()) < 1e-12
    assert (sched.prior_kl(torch.ones(2, 3, dtype=F64)) > 0).all()


def test_discrete_cosine_matches_its_definition():
    """Nichol & Dhariwal (2021), eq. 17: alpha_bar = f(k)/f(0), betas clipped at 0.999."""
    T, s = 1000, 0.008
    sched = DiscreteVP.cosine(T, s=s)
    k = np.arange(T + 1)
    f = np.cos((k / T + s) / (1 + s) * np.pi / 2) ** 2
    raw_betas = 1 - f[1:] / f[:-1]
    np.testing.assert_allclose(sched.betas, np.minimum(raw_betas, 0.999), rtol=1e-12)
    unclipped = int(np.argmax(raw_betas > 0.999)) if (raw_betas > 0.999).any() else T
    assert unclipped > 990  # only the last steps are clipped
    np.testing.assert_allclose(
        sched.alphas_cumprod().numpy()[:unclipped], f[1 : unclipped + 1] / f[0], rtol=1e-10
    )


def test_discrete_linear_converges_to_vp_sde():
    """DDPM with beta_k = beta(k/T)/T tends to the VP SDE as T grows (Song et al. 2021, app. B);
    the error in log alpha is O(1/T): ten times the steps, a tenth of the error."""
    vp = LinearVP(beta_min=0.1, beta_max=20.0)
    t = torch.linspace(0.01, 1.0, 100, dtype=F64)

    def error(T):
        ddpm = DiscreteVP.linear(T, beta_start=0.1 / T, beta_end=20.0 / T)
        return float((ddpm.log_alpha(t) - vp.log_alpha(t)).abs().max())

    coarse, fine = error(1000), error(10000)
    assert coarse < 0.05
    assert 8 < coarse / fine < 12


# ---- properties of every schedule ------------------------------------------------------------


def test_alpha_sigma_relations(schedule):
    t = endpoint_and_interior_times(schedule)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    assert alpha.dtype == sigma.dtype == F64
    if isinstance(schedule, (DiscreteVP, LinearVP)):
        np.testing.assert_allclose((alpha**2 + sigma**2).numpy(), 1.0, rtol=0, atol=1e-14)
    elif isinstance(schedule, SubVP):  # sigma = 1 - alpha^2 = -expm1(-B), without cancellation
        B = schedule.beta_min * t + 0.5 * (schedule.beta_max - schedule.beta_min) * t**2
        np.testing.assert_allclose(sigma.numpy(), (-torch.expm1(-B)).numpy(), rtol=1e-12)
        np.testing.assert_allclose(alpha.numpy(), torch.exp(-B / 2).numpy(), rtol=1e-14)
    elif isinstance(schedule, FlowMatching):  # the straight path: alpha + sigma = 1
        np.testing.assert_allclose((alpha + sigma).numpy(), 1.0, rtol=0, atol=1e-15)
        np.testing.assert_allclose(sigma[t > 0].numpy(), t[t > 0].numpy(), rtol=1e-15)
    else:
        assert (alpha == 1).all()
    np.testing.assert_allclose(schedule.noise_level(t).numpy(), (sigma / alpha).numpy(), rtol=1e-13)
    np.testing.assert_allclose(
        schedule.log_snr(t).numpy(), torch.log(alpha**2 / sigma**2).numpy(), rtol=1e-10, atol=1e-10
    )


def test_log_snr_strictly_decreasing(schedule):
    t = interior_times(schedule, n=20001, margin=0.0)
    assert (torch.diff(schedule.log_snr(t)) < 0).all()


def test_t_from_log_snr_inverts_log_snr(schedule):
    gen = torch.Generator().manual_seed(3)
    lo, hi = schedule.t_min, schedule.t_max
    random_t = lo + (hi - lo) * torch.rand(200, generator=gen, dtype=F64)
    t = torch.cat([endpoint_and_interior_times(schedule), random_t])
    back = schedule.t_from_log_snr(schedule.log_snr(t))
    assert float((back - t).abs().max()) < 1e-10


def test_sde_coefficients_match_moment_derivatives(schedule):
    """For x0 fixed, m(t) = alpha x0 and v(t) = sigma^2 obey dm/dt = f m and
    dv/dt = 2 f v + g^2; check f and g^2 against central differences of alpha and sigma."""
    t = interior_times(schedule, n=40, margin=0.05)
    if isinstance(schedule, DiscreteVP):  # log alpha is piecewise linear: use segment midpoints
        T = schedule.num_steps
        t = (torch.floor(t * T) + 0.5) / T
    h = 1e-6 * t
    alpha_dot = (schedule.alpha(t + h) - schedule.alpha(t - h)) / (2 * h)
    var_dot = (schedule.sigma(t + h) ** 2 - schedule.sigma(t - h) ** 2) / (2 * h)
    f, g2 = schedule.drift_coef(t), schedule.diffusion_squared(t)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    np.testing.assert_allclose((f * alpha).numpy(), alpha_dot.numpy(), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(
        (2 * f * sigma**2 + g2).numpy(), var_dot.numpy(), rtol=1e-6, atol=1e-12
    )
    assert (g2 > 0).all()


def test_named_sde_coefficients():
    """The SDEs of Song et al. (2021), eq. 9, 11, 12, and EDM's g^2 = 2 t."""
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    beta = 0.1 + t * 19.9
    B = 0.1 * t + 0.5 * 19.9 * t**2
    vp, subvp, ve = LinearVP(), SubVP(), VE(sigma_min=0.01, sigma_max=50.0)
    np.testing.assert_allclose(vp.drift_coef(t).numpy(), (-0.5 * beta).numpy(), rtol=1e-13)
    np.testing.assert_allclose(vp.diffusion_squared(t).numpy(), beta.numpy(), rtol=1e-12)
    np.testing.assert_allclose(
        subvp.diffusion_squared(t).numpy(), (beta * (1 - torch.exp(-2 * B))).numpy(), rtol=1e-12
    )
    sigma_ve = 0.01 * 5000**t
    np.testing.assert_allclose(
        ve.diffusion_squared(t).numpy(), (sigma_ve**2 * 2 * math.log(5000)).numpy(), rtol=1e-12
    )
    np.testing.assert_allclose(ve.drift_coef(t).numpy(), 0.0)
    np.testing.assert_allclose(EDM().diffusion_squared(t).numpy(), (2 * t).numpy(), rtol=1e-12)


def test_drift_is_f_times_x(schedule):
    x = torch.randn(3, 1, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = interior_times(schedule, n=3)
    expected = schedule.drift_coef(t)[:, None, None, None] * x
    torch.testing.assert_close(schedule.drift(x, t), expected)


def test_marginal_is_alpha_x0_plus_sigma_noise(schedule, gen):
    x0 = torch.randn(5, 1, 8, 8, generator=gen)
    noise = torch.randn(5, 1, 8, 8, generator=gen)
    t = interior_times(schedule, n=5)
    x_t = schedule.marginal(x0, t, noise)
    expected = (
        schedule.alpha(t).float()[:, None, None, None] * x0
        + schedule.sigma(t).float()[:, None, None, None] * noise
    )
    assert x_t.dtype == torch.float32 and x_t.shape == x0.shape
    torch.testing.assert_close(x_t, expected)
    # a scalar t applies to every sample; drawing noise from a generator is reproducible
    same_t = schedule.marginal(x0, float(t[2]), noise)
    torch.testing.assert_close(same_t[2], x_t[2])
    a = schedule.marginal(x0, t, generator=torch.Generator().manual_seed(7))
    b = schedule.marginal(x0, t, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)


def test_prior_sample_and_log_prob(schedule, gen):
    x = schedule.prior_sample((4000, 3), generator=gen, dtype=F64)
    s = schedule.prior_std
    assert x.shape == (4000, 3) and x.dtype == F64
    assert abs(float(x.std()) / s - 1) < 0.03
    expected = torch.distributions.Normal(0.0, s).log_prob(x).sum(1)
    torch.testing.assert_close(schedule.prior_log_prob(x), expected)
    # VP-type priors are N(0, I); VE-type priors are N(0, sigma_max^2 I) (Song et al. 2021)
    if isinstance(schedule, (VE, EDM)):
        assert s == schedule.sigma_max
        assert float(schedule.sigma(schedule.t_max)) == pytest.approx(s, rel=1e-13)
    else:
        assert s == 1.0


# ---- immutability and bad input --------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedules_are_immutable(name):
    sched = SCHEDULES[name]()
    field = dataclasses.fields(sched)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(sched, field, 0.5)
    assert sched == SCHEDULES[name]()
    assert hash(sched) == hash(SCHEDULES[name]())


def test_discrete_vp_hands_out_copies():
    sched = DiscreteVP.linear(100)
    before = sched.alpha(0.5)
    sched.alphas_cumprod().zero_()
    assert sched.alpha(0.5) == before


def test_times_outside_range_are_refused(schedule):
    span = schedule.t_max - schedule.t_min
    for bad in (schedule.t_max + 0.01 * span, -1.0, float("nan")):
        with pytest.raises(ValueError, match="outside"):
            schedule.alpha(bad)
    with pytest.raises(ValueError, match=r"t_min, t_max"):
        schedule.sigma(torch.tensor([schedule.t_min, schedule.t_max * 2]))
    with pytest.raises(ValueError, match="log_snr"):
        schedule.t_from_log_snr(float(schedule.log_snr(schedule.t_min)) + 1.0)


def test_time_zero_is_clean_data(schedule):
    """t = 0 is accepted by every schedule and means alpha = 1, sigma = 0 (the final jump)."""
    t = torch.tensor([0.0, schedule.t_min], dtype=F64)
    assert schedule.alpha(t)[0] == 1 and schedule.sigma(t)[0] == 0
    assert schedule.log_snr(t)[0] == math.inf and schedule.noise_level(t)[0] == 0
    assert schedule.t_from_log_snr(torch.tensor([math.inf]))[0] == 0
    assert schedule.t_from_noise_level(0.0) == 0
    x0 = torch.randn(2, 3)
    torch.testing.assert_close(schedule.marginal(x0, 0.0), x0)
    with pytest.raises(ValueError, match="outside"):
        schedule.diffusion_squared(0.0)
    if schedule.t_min > 1e-4:  # a time strictly between 0 and t_min is refused
        with pytest.raises(ValueError, match="outside"):
            schedule.alpha(schedule.t_min / 2)


def test_a_log_snr_within_rounding_of_the_range_is_accepted(schedule):
    """A peer's float64 log-SNR at t_min (or t_max) a few dozen ulps past ours (DPM-Solver's
    lambda came 64 ulps out) maps to the endpoint; 1e-9 relative further is an error."""
    for end in (schedule.t_min, schedule.t_max):
        lam = float(schedule.log_snr(end))
        if not math.isfinite(lam):
            continue
        outward = 1.0 if end == schedule.t_min else -1.0
        past = lam + outward * 64 * abs(lam) * torch.finfo(F64).eps
        assert float(schedule.t_from_log_snr(past)) == pytest.approx(end, rel=1e-9)
        with pytest.raises(ValueError, match="log_snr"):
            schedule.t_from_log_snr(lam + outward * 1e-9 * max(abs(lam), 1.0))


def test_t_from_noise_level_inverts_noise_level(schedule):
    t = interior_times(schedule)
    torch.testing.assert_close(schedule.t_from_noise_level(schedule.noise_level(t)), t)


def test_float32_rounding_of_the_endpoints_is_accepted(schedule):
    t = torch.tensor([schedule.t_min, schedule.t_max], dtype=torch.float32)
    alpha = schedule.alpha(t)
    assert torch.isfinite(alpha).all()
    assert float(schedule.t_from_log_snr(schedule.log_snr(t))[0]) >= schedule.t_min


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: LinearVP(beta_min=-1.0), "beta_min"),
        (lambda: LinearVP(beta_min=5.0, beta_max=1.0), "beta_max"),
        (lambda: SubVP(t_min=0.5, t_max=0.1), "t_min < t_max"),
        (lambda: VE(t_min=0.0), r"\(t = 0 means clean data\)"),
        (lambda: VE(sigma_min=5.0, sigma_max=1.0), "sigma_min < sigma_max"),
        (lambda: EDM(sigma_min=0.0), "sigma_min"),
        (lambda: VE(t_max=float("inf")), "finite"),
        (lambda: DiscreteVP([0.5, 1.5]), "open interval"),
        (lambda: DiscreteVP([]), "non-empty"),
        (lambda: DiscreteVP([[0.1, 0.2]]), "1-D"),
        (lambda: DiscreteVP.linear(0), "positive integer"),
    ],
)
def test_bad_schedule_parameters_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_shape_errors_name_the_problem(schedule):
    x0 = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        schedule.marginal(x0, torch.full((3,), schedule.t_max))
    with pytest.raises(ValueError, match="noise has shape"):
        schedule.marginal(x0, schedule.t_max, torch.zeros(4, 3))


def test_public_names():
    names = {"DiscreteVP", "LinearVP", "SubVP", "VE", "EDM", "FlowMatching", "Schedule"}
    assert set(schedules.__all__) == names
