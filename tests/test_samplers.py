"""Samplers against closed-form truth: equivalences, orders of convergence, moments."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import GAUSS_COV, GAUSS_MEAN, gaussian_data, gaussian_flow

import rediff
from rediff import data, grids, samplers, schedules
from rediff.noise import NoiseSource
from rediff.samplers import GammaTable, estimate_gamma
from rediff.samplers.ancestral import optimal_variance
from rediff.sampling import CountingDenoiser
from rediff.transitions import Point, posterior_variance

F64 = torch.float64

ODE_SCHEDULES = {
    "vp": schedules.LinearVP(),
    "ddpm": schedules.DiscreteVP.linear(1000),
    "edm": schedules.EDM(),
    "ve": schedules.VE(),
    "flow": schedules.FlowMatching(),
}


# ---- equivalences ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ODE_SCHEDULES))
@pytest.mark.parametrize("final_step", [True, False])
def test_first_order_methods_coincide(name, final_step):
    """DDIM(eta=0) = Euler in noise level = DPM-Solver-1 = DPM-Solver++-1 = UniP-1: the same
    exponential-integrator step written five ways (Lu et al. 2022, section 4.1)."""
    sched = ODE_SCHEDULES[name]
    den = data.eight_gaussians_mixture().denoiser(sched)
    x = sched.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    ts = grids.make(sched, 10, "logsnr", final_step=final_step)
    reference = samplers.ddim(den, x, ts, eta=0.0)
    others = {
        "euler": samplers.euler(den, x, ts),
        "dpm_solver1": samplers.dpm_solver(den, x, ts, order=1),
        "dpm++1": samplers.dpm_solver_pp(den, x, ts, order=1),
        "unip1": samplers.unipc(den, x, ts, order=1, corrector=False),
    }
    for label, out in others.items():
        assert float((out - reference).abs().max()) < 1e-10, label


def test_ddpm_posterior_variance_is_ddim_eta_one():
    sched = schedules.DiscreteVP.linear(1000)
    den = data.eight_gaussians_mixture().denoiser(sched)
    x = sched.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    ts = grids.make(sched, 20, "trailing")
    a = samplers.ddpm(den, x, ts, variance="beta_tilde", generator=torch.Generator().manual_seed(1))
    b = samplers.ddim(den, x, ts, eta=1.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


class _Fraction(rediff.Denoiser):
    """An exact denoiser that reports a constant learned-variance fraction."""

    def __init__(self, inner, fraction):
        self.inner, self.schedule, self.fraction = inner, inner.schedule, fraction

    def __call__(self, x_t, t, **cond):
        return self.inner(x_t, t)

    def with_variance(self, x_t, t, **cond):
        return self.inner(x_t, t), torch.full_like(x_t, self.fraction)


@pytest.mark.parametrize("fraction, fixed", [(1.0, "beta"), (0.0, "beta_tilde")])
def test_learned_variance_at_its_ends_is_a_fixed_variance(fraction, fixed):
    """Nichol & Dhariwal's exp(f log beta + (1 - f) log beta_tilde) on any grid."""
    sched = schedules.DiscreteVP.linear(1000)
    den = data.eight_gaussians_mixture().denoiser(sched)
    x = sched.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    ts = grids.make(sched, 20, "trailing")
    learned = _Fraction(den, fraction)
    a = samplers.ddpm(
        learned, x, ts, variance="learned", generator=torch.Generator().manual_seed(1)
    )
    b = samplers.ddpm(den, x, ts, variance=fixed, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    out = rediff.sample(learned, (8, 2), sampler="ddpm", steps=5, variance="learned")
    assert out.nfe == 5


def test_variances_match_ddpm_closed_forms():
    """For VP, beta_tilde = (1 - abar_q)/(1 - abar_p) (1 - abar_p/abar_q) (Ho et al. 2020,
    eq. 7) and, between consecutive steps, beta = beta_k."""
    sched = schedules.DiscreteVP.linear(1000)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    for k in (2, 10, 500, 1000):
        j = k - 1  # the step before
        p = Point(
            k / 1000,
            *(float(v) for v in (sched.alpha(k / 1000), sched.sigma(k / 1000))),
            float(0.5 * sched.log_snr(k / 1000)),
        )
        q = Point(
            j / 1000,
            *(float(v) for v in (sched.alpha(j / 1000), sched.sigma(j / 1000))),
            float(0.5 * sched.log_snr(j / 1000)),
        )
        ap, aq = abar[k - 1], abar[j - 1]
        expected = (1 - aq) / (1 - ap) * (1 - ap / aq)
        assert posterior_variance(p, q) == pytest.approx(expected, rel=1e-9)
        beta_k = p.sigma**2 * -math.expm1(-2 * (q.lam - p.lam))
        assert beta_k == pytest.approx(np.linspace(1e-4, 0.02, 1000)[k - 1], rel=1e-9)


def test_data_steps_are_exact_for_polynomial_denoisers():
    """DPM-Solver++'s first- and third-order steps integrate the ODE exactly when D is a
    polynomial of degree 0 and 2 in lam, the 2M 'heun' step for degree 1; the 2M 'midpoint'
    step (Lu et al. 2022b, eq. 9, D taken at the interval's midpoint) is exact for constant D
    and has local error O(h^3) for linear D; 3M with the peers' halved D2 is exact for linear
    D only."""
    from scipy.integrate import quad

    from rediff._tensor import Combination
    from rediff.samplers.dpm_solver import SolverType, _pp_ode_step

    def point(lam):  # VE coordinates: alpha = 1, sigma = e^{-lam}
        return Point(0.5, 1.0, math.exp(-lam), lam)

    def step_error(order, coef, h, solver_type=SolverType.MIDPOINT, exact_d2=True):
        D = np.polynomial.Polynomial(coef)
        lams = [0.7 - 1.5 * h, 0.7 - 0.8 * h, 0.7]  # non-uniform history
        p, q = point(0.7), point(0.7 + h)
        history = [(lam, Combination.of(torch.tensor([D(lam)], dtype=F64))) for lam in lams]
        exact = (q.sigma / p.sigma) * 1.7 + quad(
            lambda lam: math.exp(lam - q.lam) * D(lam), p.lam, q.lam, epsabs=1e-15
        )[0]
        x = Combination.of(torch.tensor([1.7], dtype=F64))
        step = _pp_ode_step(x, history, p, q, order, solver_type, exact_d2)
        return float(step.value()) - exact

    assert abs(step_error(1, [0.3], 0.4)) < 1e-13
    assert abs(step_error(2, [0.3], 0.4)) < 1e-13
    assert abs(step_error(3, [0.3, 0.2, -0.05], 0.4)) < 1e-13
    assert abs(step_error(3, [0.3, 0.2], 0.4, exact_d2=False)) < 1e-13
    assert abs(step_error(3, [0.3, 0.2, -0.05], 0.4, exact_d2=False)) > 1e-4
    assert abs(step_error(2, [0.3, 0.2], 0.4, SolverType.HEUN)) < 1e-13
    assert abs(step_error(2, [0.3, 0.2, -0.05], 0.4, SolverType.HEUN)) > 1e-4
    ratio = step_error(2, [0.3, 0.2], 0.2) / step_error(2, [0.3, 0.2], 0.1)
    assert 7.0 < ratio < 9.0  # O(h^3)


def _k_diffusion_3m(den, sched, x: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """k-diffusion's dpmpp_3m rule (its 3M SDE sampler at eta = 0, written from its source),
    in its variables y = x / alpha and s = sigma / alpha, h = log(s / s_next):
    y <- (s_next / s) y + (1 - e^{-h}) D, then + phi_2 D1 on the second step and
    + phi_2 D1 - phi_3 D2 after it (phi_2 = (e^{-h} - 1) / h + 1, phi_3 = phi_2 / h - 1/2;
    D1, D2 the divided differences with D2 not doubled); the step to s = 0 returns D."""
    y, outputs, widths = x / float(sched.alpha(float(ts[0]))), [], []
    for t, t_next in itertools.pairwise(float(u) for u in ts):
        d = den(float(sched.alpha(t)) * y, t)
        if t_next == 0.0:
            return d
        h = math.log(float(sched.noise_level(t)) / float(sched.noise_level(t_next)))
        phi_2 = math.expm1(-h) / h + 1.0
        y = math.exp(-h) * y - math.expm1(-h) * d
        if outputs:
            d1_0 = (d - outputs[-1]) * h / widths[-1]
            if len(outputs) == 1:
                y = y + phi_2 * d1_0
            else:
                r0, r1 = widths[-1] / h, widths[-2] / h
                d1_1 = (outputs[-1] - outputs[-2]) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                y = y + phi_2 * d1 - (phi_2 / h - 0.5) * (d1_0 - d1_1) / (r0 + r1)
        outputs, widths = [*outputs, d], [*widths, h]
    return float(sched.alpha(float(ts[-1]))) * y


def test_3m_with_halved_d2_and_heun_warm_up_is_k_diffusions_dpmpp_3m(mixture):
    """k-diffusion's dpmpp_3m is dpm++3m with the halved D2, the 'heun' weight on its one
    second-order step (diffusers' and the official 3M use 'midpoint') and no lowered order;
    on a 12-step log-SNR grid with the jump the two agree to rounding, and with the midpoint
    weight they do not."""
    sched = schedules.DiscreteVP.linear(1000)
    den = mixture.denoiser(sched)
    x_T = sched.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    ts = grids.make(sched, 12, "logsnr")
    theirs = _k_diffusion_3m(den, sched, x_T, ts)
    options = {"exact_d2": False, "lower_order_final": False}
    ours = samplers.dpm_solver_pp(den, x_T, ts, order=3, solver_type="heun", **options)
    midpoint = samplers.dpm_solver_pp(den, x_T, ts, order=3, **options)
    assert float((ours - theirs).abs().max()) < 1e-10
    assert float((midpoint - theirs).abs().max()) > 1e-7  # one early step apart: 1.1e-5


@pytest.mark.parametrize("name", ["dpm++2m", "dpm++3m", "unipc", "unipc3"])
def test_jump_counted_outside_the_steps_is_a_final_denoising(name, mixture):
    """With ``count_jump=False`` a short grid's final jump to t = 0 lies outside the steps
    that lower_order_final counts down: N steps ending with it are the official DPM-Solver's
    denoise_to_zero, the same sampler on the N - 1 steps that stop at t_min (its last step
    first order) followed by x0_hat there. By default (samplers._common.reads_out) a jump
    from t_min is counted so, and one from above t_min (a trailing grid's t = T/N) among the
    steps, as diffusers counts it; the two differ."""
    entry = samplers.get(name)
    sched = schedules.DiscreteVP.linear(1000)
    den = mixture.denoiser(sched)
    x_T = sched.prior_sample((64, 2), generator=torch.Generator().manual_seed(0)).double()

    def run(ts, **options):
        return entry.function(den, x_T, ts, **entry.options, **options)

    for steps in (5, 8, 14):
        ts = grids.make(sched, steps, "logsnr")
        outside, inside = run(ts, count_jump=False), run(ts, count_jump=True)
        t_min = torch.full((len(x_T),), float(ts[-2]), dtype=F64)
        read_out = den.predict(run(ts[:-1]), t_min).x0
        torch.testing.assert_close(outside, read_out, rtol=0, atol=1e-12)
        assert float((outside - inside).abs().max()) > 1e-3  # the rule changes a step
        assert torch.equal(run(ts), outside), steps
        trailing = grids.make(sched, steps, "trailing")
        assert float(trailing[-2]) > sched.t_min
        assert torch.equal(run(trailing), run(trailing, count_jump=True)), steps
        assert not torch.equal(run(trailing), run(trailing, count_jump=False)), steps


# ---- order of convergence --------------------------------------------------------------------

DETERMINISTIC = [
    ("euler", samplers.euler, {}, 1),
    ("ddim", samplers.ddim, {}, 1),
    ("heun", samplers.heun, {}, 2),
    ("dpm_solver1", samplers.dpm_solver, {"order": 1}, 1),
    ("dpm_solver2", samplers.dpm_solver, {"order": 2}, 2),
    ("dpm_solver3", samplers.dpm_solver, {"order": 3}, 3),
    ("dpm++1", samplers.dpm_solver_pp, {"order": 1}, 1),
    ("dpm++2m", samplers.dpm_solver_pp, {"order": 2}, 2),
    # exact D2 (the default from 20 steps): the peers' halved D2 leaves 3M second order
    ("dpm++3m", samplers.dpm_solver_pp, {"order": 3, "exact_d2": True}, 3),
    # UniC-p raises UniP-p to order p + 1 (Zhao et al. 2023, theorem 3.2)
    ("unipc1", samplers.unipc, {"order": 1}, 2),
    ("unipc2", samplers.unipc, {"order": 2}, 3),
    ("unipc3", samplers.unipc, {"order": 3}, 4),
    ("unip2", samplers.unipc, {"order": 2, "corrector": False}, 2),
]


@pytest.mark.parametrize("schedule_name", ["vp", "edm"])
@pytest.mark.parametrize(
    ("name", "sampler", "options", "order"), DETERMINISTIC, ids=[d[0] for d in DETERMINISTIC]
)
def test_order_of_convergence(schedule_name, name, sampler, options, order):
    """Slope of log error against log steps on Gaussian data, where the flow's end point is
    known (conftest.gaussian_flow). The solve ends at noise level 0.5, inside the denoiser's
    transition, so no error term cancels by accident."""
    sched = ODE_SCHEDULES[schedule_name]
    den = gaussian_data().denoiser(sched)
    x = sched.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    t_end = float(sched.t_from_noise_level(0.5))
    steps = [16, 32, 64, 128]
    errors = []
    for n in steps:
        ts = grids.make(sched, n, "logsnr", t_min=t_end, final_step=False)
        exact = gaussian_flow(x, sched, float(ts[0]), float(ts[-1]))
        errors.append(float((sampler(den, x, ts, **options) - exact).norm(dim=1).mean()))
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.3, (name, slope, errors)


def test_adaptive_ode_reaches_the_exact_end_point():
    sched = schedules.LinearVP()
    den = gaussian_data().denoiser(sched)
    x = sched.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    ts = grids.make(sched, 1, final_step=False)
    errors = []
    for rtol in (1e-3, 1e-6):
        out = samplers.ode(den, x, ts, rtol=rtol, atol=rtol)
        errors.append(float((out - gaussian_flow(x, sched, sched.t_max, sched.t_min)).abs().max()))
    assert errors[1] < 1e-4 and errors[1] < errors[0]


# ---- stochastic samplers: moments ------------------------------------------------------------

STOCHASTIC = [
    ("ddpm-beta", "ddpm-linear", samplers.ddpm, {}, (500, "trailing")),
    (
        "ddpm-beta-tilde",
        "ddpm-linear",
        samplers.ddpm,
        {"variance": "beta_tilde"},
        (1000, "trailing"),
    ),
    ("ddim-eta-0.5", "ddpm-linear", samplers.ddim, {"eta": 0.5}, (1000, "trailing")),
    ("euler-maruyama-vp", "vp", samplers.euler_maruyama, {}, (500, "uniform")),
    ("euler-maruyama-ve", "ve", samplers.euler_maruyama, {}, (500, "uniform")),
    ("pc-ve", "ve", samplers.predictor_corrector, {"snr": 0.16}, (300, "uniform")),
    (
        "pc-reverse-diffusion-vp",
        "vp",
        samplers.predictor_corrector,
        {"predictor": "reverse_diffusion"},
        (500, "uniform"),
    ),
    (
        "pc-em-vp",
        "vp",
        samplers.predictor_corrector,
        {"snr": 0.05, "predictor": "euler_maruyama"},
        (500, "uniform"),
    ),
    (
        "pc-ancestral-vp",
        "vp",
        samplers.predictor_corrector,
        {"predictor": "ancestral"},
        (500, "uniform"),
    ),
    (
        "annealed-langevin",
        "ve",
        samplers.annealed_langevin,
        {"steps_per_level": 25},
        (100, "logsnr"),
    ),
    ("dpm++2m-sde", "vp", samplers.dpm_solver_pp, {"order": 2, "sde": True}, (200, "logsnr")),
    ("heun-churn", "edm", samplers.heun, {"churn": 40.0}, (200, "karras")),
]
STOCHASTIC_SCHEDULES = {
    "ddpm-linear": schedules.DiscreteVP.linear(1000),
    "vp": schedules.LinearVP(),
    "ve": schedules.VE(),
    "edm": schedules.EDM(),
    "flow": schedules.FlowMatching(),
}


@pytest.mark.parametrize(
    ("name", "schedule_name", "sampler", "options", "grid"),
    STOCHASTIC,
    ids=[s[0] for s in STOCHASTIC],
)
def test_stochastic_samplers_match_gaussian_moments(name, schedule_name, sampler, options, grid):
    """Every stochastic sampler's samples have the data's mean and covariance within 4
    standard errors of 10,000 samples (the grids are fine enough for the bias to stay below
    that; the exact-law tests above measure the bias itself for three of them)."""
    sched = STOCHASTIC_SCHEDULES[schedule_name]
    den = gaussian_data().denoiser(sched)
    n = 10000
    gen = torch.Generator().manual_seed(1)
    ts = grids.make(sched, grid[0], grid[1])
    x = sampler(
        den, sched.prior_sample((n, 2), generator=gen, dtype=F64), ts, generator=gen, **options
    )
    var = torch.diagonal(GAUSS_COV)
    mean_se = torch.sqrt(var / n)
    cov_se = torch.sqrt((var[:, None] * var[None, :] + GAUSS_COV**2) / n)
    assert ((x.mean(0) - GAUSS_MEAN).abs() < 4 * mean_se).all(), (name, x.mean(0))
    assert ((torch.cov(x.T) - GAUSS_COV).abs() < 4 * cov_se).all(), (name, torch.cov(x.T))


PC_PREDICTORS_ALONE = [
    ("ancestral", samplers.ddpm, {}),
    (
        "sde_dpm_solver_pp",
        samplers.dpm_solver_pp,
        {"order": 2, "sde": True, "lower_order_final": False},
    ),
]


@pytest.mark.parametrize(
    ("predictor", "sampler", "options"),
    PC_PREDICTORS_ALONE,
    ids=[p[0] for p in PC_PREDICTORS_ALONE],
)
def test_pc_without_corrector_is_its_predictors_sampler(mixture, predictor, sampler, options):
    """With no corrector steps pc draws exactly what its predictor's own sampler draws from
    the same noise: the ancestral predictor is DDPM's step (Ho et al. 2020, algorithm 2,
    sigma^2 = beta); sde_dpm_solver_pp is SDE-DPM-Solver++(2M), first order until it knows
    two outputs and never lowered at the end. The Langevin corrector changes either."""
    sched = schedules.LinearVP()
    den = mixture.denoiser(sched)
    ts = grids.make(sched, 12, "logsnr")
    x_T = sched.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=F64)

    def run(function, **kwargs):
        return function(den, x_T, ts, generator=torch.Generator().manual_seed(1), **kwargs)

    alone = run(sampler, **options)
    pc = samplers.predictor_corrector
    assert torch.equal(run(pc, corrector_steps=0, predictor=predictor), alone)
    assert not torch.allclose(run(pc, predictor=predictor), alone)


# ---- weak order of the stochastic samplers, from exact moments -----------------------------


class BasisNoise(NoiseSource):
    """Noise that makes a sampler's output reveal its exact law on Gaussian data. With an
    affine denoiser every step is affine in x and in the step's noise, so the output is
    x = m + A x_T + sum_k N_k z_k: sample 0 gets x_T = 0 and no noise (m), samples 1..d get
    x_T = e_j (the columns of A), and sample 1 + d + k d + j gets z_k = e_j alone (N_k e_j).
    The output's mean is m and its covariance prior_std^2 A A^T + sum_k N_k N_k^T."""

    def __init__(self, d: int) -> None:
        self.d, self.asked = d, set()

    def noise(self, shape, dtype, device, *, step, t, t_next):
        assert step not in self.asked, "one draw per step"
        self.asked.add(step)
        z = torch.zeros(shape, dtype=dtype)
        z[1 + self.d * (1 + step) + torch.arange(self.d), torch.arange(self.d)] = 1.0
        return z


def exact_law(sampler, schedule, steps: int, spacing: str, **options):
    """The mean and covariance of a sampler's output on N(GAUSS_MEAN, GAUSS_COV) data."""
    d = 2
    x = torch.zeros(1 + d * (steps + 1), d, dtype=F64)
    x[1 : 1 + d] = torch.eye(d, dtype=F64) * schedule.prior_std
    ts = grids.make(schedule, steps, spacing)
    out = sampler(gaussian_data().denoiser(schedule), x, ts, generator=BasisNoise(d), **options)
    columns = out[1:] - out[0]
    return out[0], columns.T @ columns


HEUN_SDE = {"order": 2, "sde": True, "solver_type": "heun"}
WEAK = [
    ("euler_maruyama", samplers.euler_maruyama, {}, 1),
    ("ddpm", samplers.ddpm, {}, 1),
    ("dpm++2m-sde", samplers.dpm_solver_pp, {"order": 2, "sde": True}, 2),
    ("dpm++2m-sde-heun", samplers.dpm_solver_pp, HEUN_SDE, 2),
]


@pytest.mark.parametrize(("name", "sampler", "options", "order"), WEAK, ids=[w[0] for w in WEAK])
def test_weak_order_of_stochastic_samplers(name, sampler, options, order):
    """The error of the sampled law (mean and covariance, exact: no Monte Carlo) falls as
    steps^-order on log-SNR grids of the VP SDE: Euler-Maruyama and DDPM's ancestral steps
    are weakly first order, SDE-DPM-Solver++(2M) second order (Lu et al. 2022b, section 5).
    The local slope between 256 and 512 steps is compared with the order; the measured
    pre-asymptotic deviation there is 0.01-0.03, the tolerance 0.1."""
    sched = schedules.LinearVP()
    errors = []
    for steps in (256, 512):
        mean, cov = exact_law(sampler, sched, steps, "logsnr", **options)
        errors.append(float((mean - GAUSS_MEAN).norm() + (cov - GAUSS_COV).norm()))
    assert abs(math.log2(errors[0] / errors[1]) - order) < 0.1, errors


def test_exact_law_agrees_with_monte_carlo():
    """The moment construction above against plain sampling (20,000 samples, 4 standard
    errors): the BasisNoise bookkeeping is right."""
    sched = schedules.LinearVP()
    mean, cov = exact_law(samplers.ddpm, sched, 20, "logsnr")
    gen = torch.Generator().manual_seed(2)
    x0 = samplers.ddpm(
        gaussian_data().denoiser(sched),
        sched.prior_sample((20000, 2), generator=gen, dtype=F64),
        grids.make(sched, 20, "logsnr"),
        generator=gen,
    )
    var = torch.diagonal(cov)
    assert ((x0.mean(0) - mean).abs() < 4 * torch.sqrt(var / 20000)).all()
    cov_se = torch.sqrt((var[:, None] * var[None, :] + cov**2) / 20000)
    assert ((torch.cov(x0.T) - cov).abs() < 4 * cov_se).all()
    # 20 steps leave a covariance bias many standard errors wide: the comparison can tell
    assert ((cov - GAUSS_COV).abs() > 4 * cov_se).any()


class RecordingNoise(NoiseSource):
    def __init__(self) -> None:
        self.asked = []

    def noise(self, shape, dtype, device, *, step, t, t_next):
        self.asked.append((step, t, t_next))
        return torch.zeros(shape, dtype=dtype)


@pytest.mark.parametrize("name", ["ddpm", "euler_maruyama", "dpm++2m-sde", "pc", "heun"])
def test_noise_sources_are_asked_for_each_step_by_number_and_times(name, mixture):
    """Every draw names its step and the two grid times it moves between (the same time for
    Langevin corrector steps, EDM's raised level for Heun's churn); x_T is step -1."""
    den = mixture.denoiser(schedules.EDM())
    source = RecordingNoise()
    options = {"churn": 10.0} if name == "heun" else {}
    out = rediff.sample(den, (3, 2), sampler=name, steps=4, generator=source, **options)
    ts = out.ts.tolist()
    assert source.asked[0] == (-1, ts[0], ts[0])
    for step, t, t_next in source.asked[1:]:
        assert 0 <= step < 4 and t == ts[step]
        if name == "pc":
            assert t_next in (ts[step], ts[step + 1])
        elif name == "heun":
            assert t_next > t  # the churn raises the noise level
        else:
            assert t_next == ts[step + 1]
    # no noise into t = 0 (the last step), correctors run there too, no churn at sigma_max
    expected = {"pc": {0, 1, 2, 3}, "heun": {1, 2, 3}}.get(name, {0, 1, 2})
    assert {step for step, _, _ in source.asked[1:]} == expected


# ---- Analytic-DPM ----------------------------------------------------------------------------


def gaussian_gamma(sched, t):
    """Gamma_t = E||E[eps | x_t]||^2 / d = sigma^2 tr(C^-1) / d, C = alpha^2 Sigma + sigma^2 I."""
    a, s = float(sched.alpha(t)), float(sched.sigma(t))
    C = a**2 * GAUSS_COV + s**2 * torch.eye(2, dtype=F64)
    return s**2 * torch.trace(torch.linalg.inv(C)) / 2, C, s


def test_gamma_estimate_matches_closed_form(tmp_path):
    sched = schedules.DiscreteVP.linear(1000)
    den = gaussian_data().denoiser(sched)
    n = 20000
    x0 = gaussian_data().sample(n, generator=torch.Generator().manual_seed(2), dtype=F64)
    ts = grids.make(sched, 10, "trailing")
    table = estimate_gamma(den, x0, ts, generator=torch.Generator().manual_seed(3))
    for t in ts[:-1].tolist():
        truth, C, s = gaussian_gamma(sched, t)
        # ||E[eps|x_t]||^2 is a Gaussian quadratic form with variance 2 tr((s^2 C^-1)^2)
        se = math.sqrt(
            2 * float(torch.trace((s**2 * torch.linalg.inv(C)) @ (s**2 * torch.linalg.inv(C))))
        ) / (2 * math.sqrt(n))
        assert abs(table(t) - float(truth)) < 4 * se, (t, table(t), float(truth))
    table.save(tmp_path / "gamma.safetensors")
    loaded = GammaTable.load(tmp_path / "gamma.safetensors")
    assert torch.equal(loaded.t, table.t) and torch.equal(loaded.gamma, table.gamma)
    with pytest.raises(ValueError, match="tabulated"):
        table(0.0001)


def test_optimal_variance_matches_closed_form():
    """w* = v + k^2 E||x0 - E[x0|x_p]||^2 / d with k the coefficient of x0 in the mean, and
    E||x0 - E[x0|x_p]||^2 / d = tr((Sigma^-1 + alpha^2/sigma^2 I)^-1) / d (Bao et al. 2022)."""
    sched = schedules.DiscreteVP.linear(1000)
    for t_p, t_q, eta in ((0.5, 0.4, 1.0), (0.9, 0.2, 0.5), (0.05, 0.01, 1.0)):
        p = Point(
            t_p, float(sched.alpha(t_p)), float(sched.sigma(t_p)), float(0.5 * sched.log_snr(t_p))
        )
        q = Point(
            t_q, float(sched.alpha(t_q)), float(sched.sigma(t_q)), float(0.5 * sched.log_snr(t_q))
        )
        v = eta**2 * posterior_variance(p, q)
        gamma, _, _ = gaussian_gamma(sched, t_p)
        k = q.alpha - math.sqrt(q.sigma**2 - v) * p.alpha / p.sigma
        post = torch.linalg.inv(
            torch.linalg.inv(GAUSS_COV) + (p.alpha / p.sigma) ** 2 * torch.eye(2, dtype=F64)
        )
        expected = v + k**2 * float(torch.trace(post)) / 2
        assert optimal_variance(p, q, v, float(gamma)) == pytest.approx(expected, rel=1e-10)


def test_analytic_ddpm_matches_gaussian_moments():
    sched = schedules.DiscreteVP.linear(1000)
    den = gaussian_data().denoiser(sched)
    ts = grids.make(sched, 1000, "trailing")
    gamma = estimate_gamma(
        den,
        gaussian_data().sample(2000, generator=torch.Generator().manual_seed(4), dtype=F64),
        ts,
        generator=torch.Generator().manual_seed(5),
    )
    n = 10000
    gen = torch.Generator().manual_seed(6)
    x = samplers.ddpm(
        den,
        sched.prior_sample((n, 2), generator=gen, dtype=F64),
        ts,
        variance="analytic",
        gamma=gamma,
        generator=gen,
    )
    var = torch.diagonal(GAUSS_COV)
    assert ((x.mean(0) - GAUSS_MEAN).abs() < 4 * torch.sqrt(var / n)).all()
    cov_se = torch.sqrt((var[:, None] * var[None, :] + GAUSS_COV**2) / n)
    assert ((torch.cov(x.T) - GAUSS_COV).abs() < 4 * cov_se).all()


# ---- every sampler: determinism, dtypes, finiteness, evaluation points -----------------------


@pytest.fixture(scope="module")
def mixture():
    return data.eight_gaussians_mixture()


@pytest.mark.parametrize("name", list(samplers.REGISTRY))
def test_deterministic_given_generator_and_keeps_dtype(name, mixture):
    entry = samplers.get(name)
    sched = schedules.DiscreteVP.linear(1000)
    den = mixture.denoiser(sched)
    ts = grids.make(sched, 5)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = sched.prior_sample((32, 2), generator=torch.Generator().manual_seed(0), dtype=dtype)
        outs = [
            entry.function(den, x, ts, generator=torch.Generator().manual_seed(7), **entry.options)
            for _ in range(2)
        ]
        assert outs[0].dtype == dtype and outs[0].shape == x.shape
        assert torch.equal(outs[0], outs[1])
        assert torch.isfinite(outs[0]).all()


FINITE_CASES = [
    (sched_name, spacing)
    for sched_name, spacings in {
        "ddpm-linear": [
            "uniform",
            "linear",
            "logsnr",
            "karras",
            "quadratic",
            "leading",
            "trailing",
        ],
        "vp": ["uniform", "linear", "logsnr", "karras", "quadratic"],
        "ve": ["uniform", "linear", "logsnr", "karras", "quadratic"],
        "edm": ["uniform", "linear", "logsnr", "karras", "quadratic"],
    }.items()
    for spacing in spacings
]


@pytest.mark.parametrize(("schedule_name", "spacing"), FINITE_CASES)
def test_no_nan_for_few_steps_on_every_grid(schedule_name, spacing, mixture):
    """Every sampler stays finite on every grid at 1-5 steps, where steps are widest (more
    steps are covered by the property tests and the convergence tests)."""
    sched = STOCHASTIC_SCHEDULES[schedule_name]
    den = mixture.denoiser(sched)
    x = sched.prior_sample((16, 2), generator=torch.Generator().manual_seed(0))
    for name, entry in samplers.REGISTRY.items():
        for steps in (1, 2, 3, 5):
            for final_step in (True, False) if spacing != "linear" else (True,):
                ts = grids.make(sched, steps, spacing, final_step=final_step)
                out = entry.function(
                    den, x, ts, generator=torch.Generator().manual_seed(0), **entry.options
                )
                assert torch.isfinite(out).all(), (name, steps, final_step)


class Recorder(rediff.Denoiser):
    """Records the time of every evaluation."""

    def __init__(self, denoiser):
        self.denoiser, self.schedule, self.times = denoiser, denoiser.schedule, []

    def __call__(self, x, t, **cond):
        t = torch.as_tensor(t, dtype=F64)
        self.times.append(float(t.flatten()[0]))
        return self.denoiser(x, t)


def expected_times(name, ts, sched, options):
    """Where each sampler claims to evaluate the denoiser on the grid ts."""
    t = ts.tolist()
    steps = list(itertools.pairwise(t))
    if name in ("heun",):
        out = []
        for p, q in steps:
            out += [p] + ([q] if q > 0 else [])
        return out
    if name.startswith("dpm_solver") and options.get("order", 1) > 1:
        order, out = options["order"], []
        for p, q in steps:
            out.append(p)
            if q > 0:
                lp, lq = 0.5 * float(sched.log_snr(p)), 0.5 * float(sched.log_snr(q))
                rs = [0.5] if order == 2 else [1 / 3, 2 / 3]
                out += [float(sched.t_from_log_snr(2 * (lp + r * (lq - lp)))) for r in rs]
        return out
    if name == "pc":
        return [p for p, _ in steps for _ in range(2)]
    if name == "annealed_langevin":
        levels = [p for p in t if p > 0]
        return [p for p in levels for _ in range(5)] + ([levels[-1]] if t[-1] == 0 else [])
    return [p for p, _ in steps]


@pytest.mark.parametrize("name", [n for n in samplers.REGISTRY if n != "ode"])
@pytest.mark.parametrize("final_step", [True, False])
def test_denoiser_is_evaluated_where_claimed(name, final_step, mixture):
    entry = samplers.get(name)
    sched = schedules.LinearVP()
    recorder = Recorder(mixture.denoiser(sched))
    ts = grids.make(sched, 6, "logsnr", final_step=final_step)
    x = sched.prior_sample((8, 2), generator=torch.Generator().manual_seed(0))
    entry.function(recorder, x, ts, generator=torch.Generator().manual_seed(0), **entry.options)
    expected = expected_times(name, ts, sched, entry.options)
    assert len(recorder.times) == len(expected)
    np.testing.assert_allclose(recorder.times, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", [n for n in samplers.REGISTRY if n != "ode"])
def test_steps_within_a_budget_spend_it_and_one_more_step_would_not(name, mixture):
    """Entry.steps_within(nfe): the grid of that many steps costs at most nfe evaluations
    (counted) and the grid of one more step costs more, with and without the final jump."""
    entry = samplers.get(name)
    sched = schedules.LinearVP()
    den = mixture.denoiser(sched)
    x = sched.prior_sample((4, 2), generator=torch.Generator().manual_seed(0))

    def cost(steps, final_step):
        if steps == 0:
            return 0
        counting = CountingDenoiser(den)
        ts = grids.make(sched, steps, "logsnr", final_step=final_step)
        entry.function(counting, x, ts, generator=torch.Generator().manual_seed(0), **entry.options)
        return counting.calls

    for final_step in (True, False):
        for nfe in range(1, 13):
            steps = entry.steps_within(nfe, final_step)
            assert cost(steps, final_step) <= nfe < cost(steps + 1, final_step), (nfe, steps)
    with pytest.raises(ValueError, match="adaptive sampler chooses its own steps"):
        samplers.get("ode").steps_within(10)
    with pytest.raises(ValueError, match="nfe must be an integer >= 0"):
        entry.steps_within(-1)


def test_one_call_form_counts_evaluations(mixture):
    sched = schedules.EDM()
    den = mixture.denoiser(sched)
    for name, expected in (("dpm++2m", 10), ("heun", 19), ("dpm_solver3", 28), ("pc", 20)):
        result = rediff.sample(
            den, (8, 2), sampler=name, steps=10, spacing="karras", progress=False
        )
        assert result.nfe == expected, name
        assert result.x.shape == (8, 2) and len(result.ts) == 11
    tol = {"rtol": 1e-4, "atol": 1e-4}
    gen = torch.Generator().manual_seed(0)
    adaptive = rediff.sample(
        den, (8, 2), sampler="ode", steps=2, progress=False, generator=gen, **tol
    )
    recorder = Recorder(den)
    x = sched.prior_sample((8, 2), generator=torch.Generator().manual_seed(0))
    samplers.ode(recorder, x, adaptive.ts, **tol)
    assert adaptive.nfe == len(recorder.times) > 10


def test_without_a_sampler_the_budget_picks_sampler_spacing_and_final_step(mixture):
    den = mixture.denoiser(schedules.LinearVP())

    def draw(**options):
        gen = torch.Generator().manual_seed(0)
        return rediff.sample(den, (16, 2), generator=gen, progress=False, **options)

    for steps, chosen in (
        (8, samplers.SHORT_BUDGET),
        (samplers.FULL_BUDGET_FROM, samplers.FULL_BUDGET),
    ):
        assert samplers.default(steps) == chosen
        spell = {"sampler": chosen.sampler, "final_step": chosen.final_step}
        # the user's spacing wins over the budget's, and brings its plain first interval
        for spacing, first in ((None, chosen.first_interval), ("karras", 1.0)):
            auto = draw(steps=steps, spacing=spacing)
            given = draw(
                steps=steps, spacing=spacing or chosen.spacing, first_interval=first, **spell
            )
            assert auto.sampler == chosen.sampler and torch.equal(auto.ts, given.ts)
            assert torch.equal(auto.x, given.x)
    assert samplers.SHORT_BUDGET.label == "unipc (logsnr, first interval x2, no jump)"
    assert samplers.describe(None, 20) == "dpm++2m (logsnr)"


def narrow_ring() -> data.GaussianMixture:
    """The eight Gaussians at std 0.05, weights 1:2:...:8 (the 2-D mixture of
    benchmarks/samplers.py)."""
    ring = data.eight_gaussians_mixture(std=0.05)
    weights = torch.arange(1, 9, dtype=torch.float64)
    return data.GaussianMixture(ring.means, ring.covariances, weights / weights.sum())


@pytest.mark.parametrize("steps", [5, 6, 8])
def test_short_budget_default_is_nearer_the_exact_log_density(steps):
    """Below FULL_BUDGET_FROM steps the default (UniPC, log-SNR with a first interval twice
    the others, stopping at t_min) misses the exact mean log-density E_p[log p] by less than
    DPM-Solver++(2M) with the final jump (the default from FULL_BUDGET_FROM steps) on the
    same x_T, by more than 4 standard errors of the two estimates (the benchmark's 2-D
    mixture: 2.6 against 5.7 nats at 5 steps, 0.3 against 1.0 at 8; at 5 steps the plain
    log-SNR grid gave 6.6, further than 2M)."""
    ring = narrow_ring()
    den, n = ring.denoiser(schedules.DiscreteVP.linear(1000)), 4000
    exact = ring.log_prob(ring.sample(20000, generator=torch.Generator().manual_seed(1)))

    def draw(**options):
        gen = torch.Generator().manual_seed(2)
        x = rediff.sample(
            den, (n, 2), steps=steps, generator=gen, dtype=torch.float64, progress=False, **options
        ).x
        return ring.log_prob(x)

    short, full = draw(), draw(sampler="dpm++2m", spacing="logsnr", final_step=True)
    se = math.sqrt(exact.var() / len(exact) + max(short.var(), full.var()) / n)
    gap = {
        name: abs(float(exact.mean() - lp.mean()))
        for name, lp in (("short", short), ("full", full))
    }
    assert gap["short"] + 4 * se < gap["full"], (gap, se)


def test_callback_sees_every_step(mixture):
    sched = schedules.VE()
    seen = []
    ts = grids.make(sched, 7)
    samplers.dpm_solver_pp(
        mixture.denoiser(sched), sched.prior_sample((4, 2)), ts, callback=seen.append
    )
    assert [s.index for s in seen] == list(range(7))
    assert [s.t for s in seen] == ts[:-1].tolist() and seen[-1].t_next == 0.0


# ---- bad input -------------------------------------------------------------------------------


def test_bad_sampler_input_is_refused(mixture):
    sched = schedules.LinearVP()
    den = mixture.denoiser(sched)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"unknown sampler 'dpm\+\+4m'.*dpm\+\+2m"):
        rediff.sample(den, (4, 2), sampler="dpm++4m")
    with pytest.raises(ValueError, match=r"unknown spacing 'cosine'.*'karras'"):
        rediff.sample(den, (4, 2), spacing="cosine")
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match="steps must be an integer >= 1"):
            grids.make(sched, steps)
    with pytest.raises(ValueError, match="strictly decreasing"):
        samplers.ddim(den, x, torch.tensor([0.1, 0.5, 1.0]))
    with pytest.raises(ValueError, match="strictly decreasing"):
        samplers.euler(den, x, torch.tensor([1.0, 0.5, 0.5, 0.1]))
    with pytest.raises(ValueError, match="only be the last"):
        samplers.euler(den, x, torch.tensor([1.0, 0.0, -0.5]))
    with pytest.raises(ValueError, match="at least 2"):
        samplers.euler(den, x, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="outside"):
        samplers.euler(den, x, torch.tensor([2.0, 0.5]))
    with pytest.raises(ValueError, match="order must be one of"):
        samplers.dpm_solver_pp(den, x, grids.make(sched, 3), order=4)
    with pytest.raises(ValueError, match="order must be one of"):
        samplers.dpm_solver_pp(den, x, grids.make(sched, 3), order=3, sde=True)
    with pytest.raises(ValueError, match="eta must be finite"):
        samplers.ddim(den, x, grids.make(sched, 3), eta=-1.0)
    with pytest.raises(ValueError, match="needs Gamma_t"):
        samplers.ddpm(den, x, grids.make(sched, 3), variance="analytic")
    with pytest.raises(ValueError, match="unknown variance 'large'"):
        samplers.ddpm(den, x, grids.make(sched, 3), variance="large")
    with pytest.raises(ValueError, match="needs a DiscreteVP"):
        grids.make(sched, 3, "trailing")
    with pytest.raises(ValueError, match="makes Langevin diverge"):
        samplers.annealed_langevin(den, x, grids.make(sched, 3), step_size=1.0)


# ---- grids -----------------------------------------------------------------------------------


def test_grids_follow_their_definitions():
    ddpm = schedules.DiscreteVP.linear(1000)
    trailing = grids.make(ddpm, 10, "trailing") * 1000
    assert trailing.tolist() == [1000, 900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    leading = grids.make(ddpm, 10, "leading") * 1000
    assert leading.round().tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1, 0]
    vp = schedules.LinearVP()
    ts = grids.make(vp, 8, "logsnr", final_step=False)
    assert len(ts) == 9 and ts[0] == vp.t_max and ts[-1] == pytest.approx(vp.t_min)
    np.testing.assert_allclose(
        torch.diff(vp.log_snr(ts)).numpy(), float(torch.diff(vp.log_snr(ts))[0]), rtol=1e-9
    )
    edm = schedules.EDM()
    karras = grids.make(edm, 18, "karras")  # EDM's own 18-step grid
    i = torch.arange(18, dtype=F64)
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(karras[:-1].numpy(), expected.numpy(), rtol=1e-10)
    assert karras[-1] == 0
    quad = grids.make(vp, 4, "quadratic", final_step=False)
    u = torch.linspace(1, 0, 5, dtype=F64)
    np.testing.assert_allclose(quad.numpy(), (vp.t_min + (1 - vp.t_min) * u**2).numpy(), rtol=1e-12)
    assert grids.make(vp, 1).tolist() == [1.0, 0.0]
    linear = grids.make(vp, 4, "linear")
    assert linear.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    with pytest.raises(ValueError, match="needs final_step=True"):
        grids.make(vp, 4, "linear", final_step=False)


@pytest.mark.parametrize("steps", [2, 5, 13])
def test_a_longer_first_interval_keeps_the_others_equal(steps):
    """first_interval = r: in the spacing's own coordinate (log-SNR; Karras' sigma^(1/rho))
    the first interval is r times each of the others, which are equal, and the ends stay put
    (r = 1: every interval equal, the plain spacing)."""
    vp, edm = schedules.LinearVP(), schedules.EDM()
    for r in (0.5, 1.0, 2.0, 3.5):
        ts = grids.make(vp, steps, "logsnr", final_step=False, first_interval=r)
        gaps = torch.diff(vp.log_snr(ts))
        assert ts[0] == vp.t_max and ts[-1] == vp.t_min and len(ts) == steps + 1
        np.testing.assert_allclose(gaps[1:].numpy(), float(gaps[1]), rtol=1e-9)
        assert float(gaps[0] / gaps[1]) == pytest.approx(r, rel=1e-9)
        karras = grids.make(edm, steps, "karras", final_step=False, first_interval=r)
        root = torch.diff(edm.noise_level(karras) ** (1 / 7))
        assert float(root[0] / root[1]) == pytest.approx(r, rel=1e-9)


def test_first_interval_is_refused_where_the_spacing_fixes_its_points():
    ddpm = schedules.DiscreteVP.linear(1000)
    with pytest.raises(ValueError, match="'trailing' spacing fixes its points"):
        grids.make(ddpm, 5, "trailing", first_interval=2.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="first_interval must be positive and finite"):
            grids.make(ddpm, 5, "logsnr", first_interval=bad)


class TinyNet(torch.nn.Module):
    """An untrained MLP on (x, time): any network must run through every sampler."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 2)
        )

    def forward(self, x, time):
        return 0.1 * self.layers(torch.cat([x, time[:, None].to(x.dtype)], dim=1))


@pytest.mark.parametrize("target", ["eps", "x0", "v", "score", "edm"])
def test_every_sampler_runs_a_network_of_every_target(target):
    torch.manual_seed(0)
    for sched, time_input in (
        (schedules.DiscreteVP.linear(1000), "step"),
        (schedules.EDM(), "c_noise"),
    ):
        model = rediff.DiffusionModel(TinyNet(), sched, target=target, time_input=time_input)
        for name in samplers.REGISTRY:
            out = rediff.sample(
                model,
                (8, 2),
                sampler=name,
                steps=4,
                progress=False,
                generator=torch.Generator().manual_seed(0),
            )
            assert out.x.shape == (8, 2) and torch.isfinite(out.x).all(), (name, target)
