"""Reverse-SDE samplers: Euler-Maruyama, predictor-corrector, and NCSN's annealed Langevin.

The reverse SDE of dx = f(t) x dt + g(t) dw is (Anderson 1982; Song et al. 2021, eq. 6)

    dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dw_bar,

with score = (alpha x0_hat - x) / sigma^2. A step into t = 0 returns x0_hat.
"""

from __future__ import annotations

import itertools
import math

from rediff._choices import Choice
from rediff._tensor import Combination, Tensor
from rediff.model import Denoiser
from rediff.noise import Randomness
from rediff.parametrization import Target
from rediff.samplers._common import (
    Callback,
    check_positive,
    evaluate,
    noise_like,
    notify,
    push,
    working,
)
from rediff.samplers.ancestral import family_step
from rediff.samplers.dpm_solver import SolverType, pp_sde_step
from rediff.transitions import Point, points, posterior_variance, transition_variance


def _score(denoiser: Denoiser, x: Tensor, p: Point) -> tuple[Tensor, Tensor]:
    """(score, x0_hat) at point p."""
    return evaluate(denoiser, x, p, Target.SCORE)


def _euler_maruyama_step(
    denoiser: Denoiser, x: Tensor, score: Tensor, p: Point, q: Point, generator, i: int
) -> Tensor:
    """x_q = x_p - [f x_p - g^2 score] (t_p - t_q) + g sqrt(t_p - t_q) z, with f and g at p."""
    dt = p.t - q.t
    schedule = denoiser.schedule
    f, g2 = float(schedule.drift_coef(p.t)), float(schedule.diffusion_squared(p.t))
    return x - (f * x - g2 * score) * dt + math.sqrt(g2 * dt) * noise_like(x, generator, i, p, q)


def euler_maruyama(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Randomness = None,
    callback: Callback | None = None,
) -> Tensor:
    """Euler-Maruyama on the reverse SDE (Song et al. 2021, appendix G)."""
    grid, x_in = points(denoiser.schedule, ts), x
    x = working(x)
    for i, (p, q) in enumerate(itertools.pairwise(grid)):
        score, x0 = _score(denoiser, x, p)
        x = x0 if q.is_data else _euler_maruyama_step(denoiser, x, score, p, q, generator, i)
        notify(callback, i, p, q, x, x0)
    return x.to(x_in.dtype)


class Predictor(Choice):
    """The predictor of ``predictor_corrector``: SDE-DPM-Solver++(2M) (the default; Lu et al.
    2022b, section 5; multistep: it reuses the previous predictor step's x0_hat, so it is
    weakly second order at one evaluation a step; measured against the others:
    docs/design.md), DDPM's ancestral step, reverse diffusion, or Euler-Maruyama."""

    ANCESTRAL = "ancestral"
    REVERSE_DIFFUSION = "reverse_diffusion"
    EULER_MARUYAMA = "euler_maruyama"
    SDE_DPM_SOLVER_PP = "sde_dpm_solver_pp"


def _langevin_step(
    denoiser: Denoiser, x: Tensor, p: Point, a: float, snr: float, generator, i: int
) -> Tensor:
    """One Langevin corrector step (Song et al. 2021, algorithm 5):
    x += eps score + sqrt(2 eps) z with eps = 2 a (snr ||z|| / ||score||)^2.

    The norms are replaced by their expectations, E||z||^2 = d and E||score||^2 ~ d /
    sigma^2, so eps = 2 a (snr sigma)^2: a step that depends neither on the batch (score_sde
    averages the norms over it) nor on the noise draw or state of the sample, which would
    bias the chain's stationary law.
    """
    score, _ = _score(denoiser, x, p)
    step = 2.0 * a * (snr * p.sigma) ** 2
    return x + step * score + math.sqrt(2.0 * step) * noise_like(x, generator, i, p, p)


def _reverse_diffusion(x: Tensor, score: Tensor, p: Point, q: Point, generator, i: int) -> Tensor:
    """Reverse-diffusion predictor (Song et al. 2021, eq. 46) for the forward transition
    x_p = (alpha_p/alpha_q) x_q + G z, G^2 = sigma_p^2 (1 - e^{-2h}):
    x_q = x_p - (alpha_p/alpha_q - 1) x_p + G^2 score + G z."""
    g2 = transition_variance(p, q)
    mean = (2.0 - p.alpha / q.alpha) * x + g2 * score
    return mean + math.sqrt(g2) * noise_like(x, generator, i, p, q)


def _ancestral(x: Tensor, x0: Tensor, p: Point, q: Point, generator, i: int) -> Tensor:
    """Ancestral predictor (Ho et al. 2020, algorithm 2, with sigma^2 = beta, for any pair of
    grid times; score_sde's ancestral-sampling predictor): DDPM's posterior mean given
    x0_hat, alpha_q x0_hat + sqrt(sigma_q^2 - c^2) eps_hat with c^2 = beta_tilde, plus noise
    of the forward transition's variance beta = sigma_p^2 (1 - e^{-2h})."""
    return family_step(
        x, x0, p, q, posterior_variance(p, q), transition_variance(p, q), generator, i
    )


def _sde_dpm_solver_pp(x: Tensor, history: list, p: Point, q: Point, generator, i: int) -> Tensor:
    """SDE-DPM-Solver++(2M) predictor (``dpm_solver.pp_sde_step``, the 'midpoint' weight):
    second order once ``history`` (the predictor's (lam, x0_hat) pairs, x0 at p last) holds
    two outputs, first order before."""
    z = noise_like(x, generator, i, p, q)
    step = pp_sde_step(Combination.of(x), history, p, q, len(history), SolverType.MIDPOINT, z)
    return step.value()


def _predict(
    denoiser: Denoiser,
    predictor: Predictor,
    x: Tensor,
    p: Point,
    q: Point,
    generator,
    i: int,
    history: list,
) -> tuple[Tensor, Tensor, list]:
    """(x_q, x0_hat at p, history): the predictor's step from p to q; into t = 0, x0_hat
    itself (neither that nor the ancestral and SDE-DPM-Solver++ steps need the score).
    ``history`` keeps the last two (lam, x0_hat) of the multistep predictor."""
    if q.is_data or predictor in (Predictor.ANCESTRAL, Predictor.SDE_DPM_SOLVER_PP):
        x0 = denoiser.at(x, p)
        if q.is_data:
            return x0, x0, history
        if predictor is Predictor.ANCESTRAL:
            return _ancestral(x, x0, p, q, generator, i), x0, history
        history = push(history, (p.lam, Combination.of(x0)), 2)
        return _sde_dpm_solver_pp(x, history, p, q, generator, i), x0, history
    score, x0 = _score(denoiser, x, p)
    if predictor is Predictor.REVERSE_DIFFUSION:
        return _reverse_diffusion(x, score, p, q, generator, i), x0, history
    return _euler_maruyama_step(denoiser, x, score, p, q, generator, i), x0, history


def predictor_corrector(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Randomness = None,
    callback: Callback | None = None,
    predictor: Predictor | str = Predictor.SDE_DPM_SOLVER_PP,
    corrector_steps: int = 1,
    snr: float = 0.16,
) -> Tensor:
    """Predictor-corrector sampling (Song et al. 2021, algorithm 1): at each time,
    ``corrector_steps`` Langevin steps at signal-to-noise ratio ``snr``, then one predictor
    step (``Predictor``). Costs 1 + corrector_steps evaluations a step."""
    predictor = Predictor.parse(predictor)
    check_positive("snr", snr)
    if not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be an integer >= 0, got {corrector_steps!r}")
    grid, x_in = points(denoiser.schedule, ts), x
    x, history = working(x), []
    for i, (p, q) in enumerate(itertools.pairwise(grid)):
        for _ in range(corrector_steps):
            x = _langevin_step(denoiser, x, p, (p.alpha / q.alpha) ** 2, snr, generator, i)
        x, x0, history = _predict(denoiser, predictor, x, p, q, generator, i, history)
        notify(callback, i, p, q, x, x0)
    return x.to(x_in.dtype)


def annealed_langevin(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Randomness = None,
    callback: Callback | None = None,
    steps_per_level: int = 5,
    step_size: float | None = None,
) -> Tensor:
    """NCSN's annealed Langevin dynamics (Song & Ermon 2019, algorithm 1).

    At every positive time of ``ts`` (a noise level sigma_i), ``steps_per_level`` steps
    x += (a_i / 2) score + sqrt(a_i) z with a_i = step_size sigma_i^2 / sigma_L^2, sigma_L the
    smallest level. The default step_size is 0.2 sigma_L^2, NCSN's 2e-5 at sigma_L = 0.01, so
    a_i / sigma_i^2 = 0.2 on any grid; step_size >= sigma_L^2 makes the chain unstable and is
    refused. A grid ending with 0 adds the final denoising x0_hat (Jolicoeur-Martineau et al.
    2021; Song & Ermon 2020), one more evaluation.
    """
    if not isinstance(steps_per_level, int) or steps_per_level < 1:
        raise ValueError(f"steps_per_level must be an integer >= 1, got {steps_per_level!r}")
    grid, x_in = points(denoiser.schedule, ts), x
    sigma_last = [p for p in grid if not p.is_data][-1].sigma
    if step_size is None:
        step_size = 0.2 * sigma_last**2
    check_positive("step_size", step_size)
    if step_size >= sigma_last**2:
        raise ValueError(
            f"step_size = {step_size:.3g} >= sigma_L^2 = {sigma_last**2:.3g} (the smallest noise "
            "level squared) makes Langevin diverge; leave step_size unset or lower it"
        )
    x = working(x)

    def anneal(x: Tensor, i: int, p: Point) -> Tensor:
        a = step_size * (p.sigma / sigma_last) ** 2
        for _ in range(steps_per_level):
            score, _ = _score(denoiser, x, p)
            x = x + 0.5 * a * score + math.sqrt(a) * noise_like(x, generator, i, p, p)
        return x

    for i, (p, q) in enumerate(itertools.pairwise(grid)):
        x = anneal(x, i, p)
        x0 = x
        if q.is_data:
            x0 = denoiser.at(x, p)
            x = x0
        notify(callback, i, p, q, x, x0)
    if not grid[-1].is_data:
        x = anneal(x, len(grid) - 1, grid[-1])
    return x.to(x_in.dtype)
