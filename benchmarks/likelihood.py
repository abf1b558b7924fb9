"""Likelihoods: probability-flow ODE error against exact densities, per evaluation; digits.

    .venv/bin/pip install --no-deps k-diffusion torchsde   # the peer (see peers.py)
    .venv/bin/python benchmarks/likelihood.py     # writes benchmarks/results/likelihood.md

Part 1, mixtures with exact denoisers under the VP SDE (beta 0.1 to 20, t in [1e-5, 1]):
the eight-Gaussian 2-D mixture, a random 8-D mixture, and benchmarks/samplers.py's narrow
2-D and full-covariance 16-D mixtures, 64 exact samples each, exact divergence. For each
solver, the evaluations per point (NFE) against two errors in nats per dimension, mean and
maximum over the points, and the error of the 64-point mean (what a data set's bits/dim
sees, where unbiased estimator noise averages out):

- solver error: |ODE nll - (exact -log p_{t_min}(x))| after replacing the prior by the
  exact p_{t_max} (what the integration alone gets wrong);
- total error: |ODE nll + log p_0(x)|, the error a user sees against the data density (it
  adds the prior's mismatch and x taken at t_min, which no solver removes).

Solvers: rediff's default ``Multistep`` (steps + 1 evaluations), rediff's adaptive dopri5
(torchdiffeq) at several tolerances, k-diffusion's ``log_likelihood`` (dopri5 in sigma with
one Rademacher probe per solve, the only divergence it offers), and a labelled reference variant of score_sde's
likelihood (Song et al. 2021, written here from its description; score_sde is not on the
package index): scipy's RK45 in t on dx/dt = f x - g^2 score / 2 and d log p / dt =
-div, whose right-hand side calls the model twice (once for the drift, once inside the
divergence), so its NFE is twice scipy's function evaluations.

Part 2, Hutchinson's estimator: the error of a 512-point mean (8-D mixture, default solver)
against the exact-divergence mean, with 1, 4 and 16 Rademacher probes per point (drawn
once per solve, their vector-Jacobian products batched into one backward pass), over 5
probe draws.

Part 3, a digits model trained by rediff (configs/digits_ddpm.toml, shortened): bits/dim of
the 360 held-out digits by the ODE (uniform dequantisation, one Hutchinson probe; default
and adaptive solvers) and by the discrete VLB (full sum), in units of the 17 grey levels.

diffusers has neither ODE likelihoods nor the VLB; the exact densities are the reference.
"""

from __future__ import annotations

import math
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from rediff import data, divergence, schedules
from rediff.evaluation import run_nll
from rediff.likelihood import Multistep, Solver, log_likelihood
from rediff.training import load_config, train

sys.path.insert(0, str(Path(__file__).parent))
import peers
from samplers import full_16d, narrow_2d

RESULTS = Path(__file__).parent / "results" / "likelihood.md"
SCHEDULE = schedules.LinearVP()
MULTISTEP = (19, 29, 39)
TOLERANCES = (1e-2, 3e-3, 1e-3, 1e-4)
SCORE_SDE_TOLERANCES = (1e-3, 1e-4, 1e-5)
K_TOLERANCES = (1e-2, 1e-3, 1e-4)  # 1e-4 is its default


def random_8d() -> data.GaussianMixture:
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    scales = 0.2 + 0.3 * torch.rand(4, 8, generator=gen, dtype=torch.float64)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    return data.GaussianMixture(means, torch.diag_embed(scales**2), weights)


def mixtures() -> dict[str, data.GaussianMixture]:
    return {
        "eight Gaussians (2-D)": data.eight_gaussians_mixture(),
        "narrow (2-D)": narrow_2d(),
        "random mixture (8-D)": random_8d(),
        "full covariances (16-D)": full_16d(),
    }


def score_sde_nll(mix, x: torch.Tensor, tol: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """score_sde's likelihood rule (reference variant): RK45 in t from t_min to t_max on x and
    the log-density, rtol = atol = tol; returns -log p, the latent, and NFE (2 per call)."""
    from scipy.integrate import solve_ivp

    den, (b, d) = mix.denoiser(SCHEDULE), x.shape
    calls = 0

    def rhs(t: float, state: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        with torch.enable_grad():
            xt = torch.tensor(state[: b * d].reshape(b, d)).requires_grad_(True)
            score = den.predict(xt, t).score
            f, g2 = float(SCHEDULE.drift_coef(t)), float(SCHEDULE.diffusion_squared(t))
            drift = f * xt - 0.5 * g2 * score
            div = divergence.exact(drift, xt)
        return np.concatenate([drift.detach().numpy().ravel(), -div.detach().numpy()])

    start = np.concatenate([x.numpy().ravel(), np.zeros(b)])
    span = (SCHEDULE.t_min, SCHEDULE.t_max)
    out = solve_ivp(rhs, span, start, method="RK45", rtol=tol, atol=tol).y[:, -1]
    latent = torch.tensor(out[: b * d].reshape(b, d))
    # d log p_t(x_t) / dt = -div: log p_0(x) = log p_1(latent) + int div dt
    nll = -(SCHEDULE.prior_log_prob(latent) - torch.tensor(out[b * d :]))
    return nll, latent, 2 * calls


def k_diffusion_nll(mix, x: torch.Tensor, tol: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """k-diffusion's ``log_likelihood`` (dopri5 in sigma, one Rademacher probe per solve, its
    only divergence estimator), atol = rtol = tol, on the variance-exploding y = x / alpha.
    Its ODE solution is read from its ``odeint`` call to get the latent, and its integrated
    divergence delta is moved to this schedule's coordinates (p_VE,s(y) = alpha^d p_t(alpha y),
    so log p_tmin(x) = log p_tmax(alpha_max y_max) + delta + d log(alpha_max / alpha_min)) and
    closed with the same prior as the other rows. Returns -log p, the latent, and NFE (one
    model call with one backward pass per right-hand side)."""
    k, d = peers.k_sampling(), x.shape[1]
    s_min, s_max = peers.k_sigma_range(SCHEDULE)
    a_min, a_max = float(SCHEDULE.alpha(SCHEDULE.t_min)), float(SCHEDULE.alpha(SCHEDULE.t_max))
    model = peers.k_model(mix.denoiser(SCHEDULE), SCHEDULE)
    solutions, odeint = [], k.odeint

    def recording_odeint(*args, **kwargs):
        solutions.append(odeint(*args, **kwargs))
        return solutions[-1]

    k.odeint = recording_odeint
    try:
        torch.manual_seed(0)  # its probe
        ll, info = k.log_likelihood(model, x / a_min, s_min, s_max, atol=tol, rtol=tol)
    finally:
        k.odeint = odeint
    latent_ve = solutions[-1][0][-1]
    delta = ll - torch.distributions.Normal(0.0, s_max).log_prob(latent_ve).sum(1)
    latent = a_max * latent_ve
    nll = -(SCHEDULE.prior_log_prob(latent) + delta + d * math.log(a_max / a_min))
    return nll, latent, info["fevals"]


def errors(mix, x, nll, latent) -> tuple[float, float, float, float]:
    """(mean solver error, |mean signed solver error|, max solver error, mean total error) in
    nats/dim."""
    d = x.shape[1]
    end = mix.noised_log_prob(latent, SCHEDULE.t_max, SCHEDULE)
    prior = SCHEDULE.prior_log_prob(latent)
    solver = (nll + prior - end + mix.noised_log_prob(x, SCHEDULE.t_min, SCHEDULE)) / d
    total = (nll + mix.log_prob(x)).abs() / d
    return (
        float(solver.abs().mean()),
        float(solver.mean().abs()),
        float(solver.abs().max()),
        float(total.mean()),
    )


def mixture_rows() -> list[str]:
    rows = []
    for name, mix in mixtures().items():
        x = mix.sample(64, generator=torch.Generator().manual_seed(1)).double()
        den = mix.denoiser(SCHEDULE)
        runs = [(f"rediff Multistep({s})", Multistep(s)) for s in MULTISTEP]
        runs += [(f"rediff dopri5, tol {tol:g}", Solver(tol, tol)) for tol in TOLERANCES]
        peer_runs = [
            (f"k-diffusion dopri5, 1 probe, tol {tol:g}", k_diffusion_nll, tol)
            for tol in K_TOLERANCES
        ]
        peer_runs += [
            (f"score_sde RK45 (reference variant), tol {tol:g}", score_sde_nll, tol)
            for tol in SCORE_SDE_TOLERANCES
        ]
        for label, solver in runs:
            start = time.perf_counter()
            out = log_likelihood(den, x, solver=solver)
            rows.append(row(name, label, mix, x, out.nll, out.latent, out.nfe, start))
        for label, function, tol in peer_runs:
            start = time.perf_counter()
            nll, latent, nfe = function(mix, x, tol)
            rows.append(row(name, label, mix, x, nll, latent, nfe, start))
        print(name, flush=True)
    return rows


def row(name, label, mix, x, nll, latent, nfe, start) -> str:
    seconds = time.perf_counter() - start
    mean, bias, worst, total = errors(mix, x, nll, latent)
    return (
        f"| {name} | {label} | {nfe} | {mean:.1e} | {bias:.1e} | {worst:.1e} | {total:.1e} | "
        f"{seconds:.1f} |"
    )


def hutchinson_rows() -> list[str]:
    mix = random_8d()
    x = mix.sample(512, generator=torch.Generator().manual_seed(3)).double()
    den, d = mix.denoiser(SCHEDULE), x.shape[1]
    exact = float(log_likelihood(den, x).nll.mean()) / d
    rows = []
    for probes in (1, 4, 16):
        gaps, start = [], time.perf_counter()
        for draw in range(5):
            out = log_likelihood(
                den,
                x,
                trace="hutchinson",
                probes=probes,
                generator=torch.Generator().manual_seed(10 + draw),
            )
            gaps.append(float(out.nll.mean()) / d - exact)
        seconds = (time.perf_counter() - start) / 5
        rms = math.sqrt(sum(g * g for g in gaps) / len(gaps))
        rows.append(
            f"| {probes} | {rms:.4f} | {max(abs(g) for g in gaps):.4f} | {out.nfe} | "
            f"{seconds:.1f} |"
        )
    return rows


def digits_rows(steps: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "digits"
        config = load_config(
            Path(__file__).parent.parent / "configs" / "digits_ddpm.toml",
            [f"train.steps={steps}", "train.sample_every=0"],
        )
        train(config, run)
        rows = []
        methods = (
            ("ode, Multistep (default)", "ode", {"probes": 1}),
            ("ode, dopri5 tol 1e-5", "ode", {"probes": 1, "rtol": 1e-5}),
            ("vlb", "vlb", {"vlb_steps": 0}),
        )
        for label, method, options in methods:
            start = time.perf_counter()
            row = run_nll(run, method, n=360, **options).row
            seconds = time.perf_counter() - start
            rows.append(f"| {label} | {row.mean:.3f} | {row.se:.3f} | {row.nfe} | {seconds:.0f} |")
    return rows


def main() -> None:
    torch.set_num_threads(2)
    steps = 1500
    lines = [
        "# Likelihoods: probability-flow ODE and the discrete VLB",
        "",
        f"Measured {date.today()} on {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, by "
        "`python benchmarks/likelihood.py`. Method: see the script's docstring.",
        "",
        "## Mixtures with exact denoisers (VP SDE), nats per dimension over 64 points",
        "",
        "| data | solver | NFE per point | solver error, mean | error of the mean | solver "
        "error, max | total error, mean | seconds |",
        "|---|---|---|---|---|---|---|---|",
        *mixture_rows(),
        "",
        "The solver error is what the integration gets wrong; the total error adds the two "
        "modelling errors, which no solver removes: the prior N(0, I) is not exactly q(x_1) "
        "(alpha(1) = 0.0066 leaves the data mean visible) and x is treated as x at t_min = "
        "1e-5.",
        "",
        "## Hutchinson's estimator: the 512-point mean (8-D mixture, default solver)",
        "",
        "| probes per point | RMS error of the mean (nats/dim, 5 draws) | worst of 5 | NFE | "
        "seconds per solve |",
        "|---|---|---|---|---|",
        *hutchinson_rows(),
        "",
        f"## Digits (rediff's digits_ddpm config, {steps} training steps), 360 held-out digits",
        "",
        "| method | bits/dim (17 levels) | standard error | NFE | seconds |",
        "|---|---|---|---|---|",
        *digits_rows(steps),
        "",
        "The VLB is an upper bound on the discrete negative log-likelihood; the ODE value on "
        "uniformly dequantised digits is another (Jensen over the dequantisation noise), "
        "usually the tighter one. The standard error is over the digits (one dequantisation "
        "and one probe each).",
    ]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
