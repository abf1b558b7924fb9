"""Samplers against diffusers, k-diffusion, the official DPM-Solver and score_sde on Gaussian
mixtures with exact denoisers.

    .venv/bin/pip install -e ".[bench]"                       # diffusers (bench-only)
    .venv/bin/pip install --no-deps k-diffusion torchsde      # k-diffusion (see peers.py)
    .venv/bin/python benchmarks/samplers.py  # writes benchmarks/results/samplers.md

Every library samples the same exact model (the mixture's posterior mean, given to diffusers
as its eps prediction at the noise level each scheduler uses and to k-diffusion as its
denoiser at its sigma), under DDPM's linear schedule (T = 1000), with the number of model
evaluations (NFE) counted the same way: calls of the model. The official DPM-Solver's
multistep DPM-Solver++ and score_sde's predictor-corrector sampler are not on the package
index; peers.py writes their rules from the papers as labelled reference variants. Metrics (rediff.metrics), against fresh exact samples: sliced Wasserstein-2 (SW2),
|mean log p gap| (nats) and the total variation of the mode weights (TV); the noise floor of
each is the mean + 2 sd of the metric between independent exact sample sets. Each sampler is
run on several grids, among them the grid ``rediff.tuning.optimize`` fits for it at that budget
(256 starting points of its own), and reported at its best grid per metric; the overhead of
each loop is timed with a free model.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch

import rediff
from rediff import data, grids, metrics, samplers, schedules, tuning
from rediff.samplers._common import SHORT_GRID
from rediff.samplers.dpm_solver import EXACT_D2_FROM
from rediff.sampling import CountingDenoiser

sys.path.insert(0, str(Path(__file__).parent))
import peers

T = 1000
SCHEDULE = schedules.DiscreteVP.linear(T, beta_start=1e-4, beta_end=0.02)
NFES = (5, 8, 10, 15, 20, 25, 50)
REDIFF_SAMPLERS = (
    "ddim",
    "pc",
    "dpm++2m-sde",
    "heun",
    "dpm_solver2",
    "dpm_solver3",
    "dpm++2m",
    "dpm++3m",
    "unipc",
    "unipc3",
)
REDIFF_SPACINGS = ("logsnr", "karras", "trailing", "uniform")
#: spacings also run without the final jump (ending at t_min = 1/T, as the official
#: DPM-Solver does by default)
NO_JUMP_SPACINGS = ("logsnr",)
#: samplers that lower the order of their last steps on short grids (lower_order_final, below
#: SHORT_GRID steps), also run with it off (``peer_configurations``)
FULL_ORDER = ("dpm++2m-sde", "dpm++2m", "dpm++3m", "unipc", "unipc3")
FULL = {"lower_order_final": False}
HALVED = {"exact_d2": False}
#: k-diffusion's dpmpp_3m (its 3M SDE sampler with eta = 0): the halved D2, the 'heun' weight
#: on its second-order warm-up step (diffusers and the official code use 'midpoint') and
#: never a lowered order; rediff's dpm++3m with these options gives its samples to 1e-12
K_DIFFUSION_3M = {"exact_d2": False, "solver_type": "heun", "lower_order_final": False}
#: pc with DDPM's ancestral predictor, an option that is not its default
#: (``option_configurations``)
PC_ANCESTRAL = {"predictor": "ancestral"}
RESULTS = Path(__file__).parent / "results" / "samplers.md"
#: every run's scores, one row each (the tables show only each sampler's best grid)
RUNS_CSV = RESULTS.with_name("samplers_runs.csv")


# ---- the two mixtures ------------------------------------------------------------------------


def narrow_2d() -> data.GaussianMixture:
    """Eight narrow (std 0.05) components on a circle of radius 2, weights 1:2:...:8."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    weights = torch.arange(1, 9, dtype=torch.float64)
    return data.GaussianMixture(
        means, 0.05**2 * torch.eye(2).expand(8, 2, 2), weights / weights.sum()
    )


def full_16d(seed: int = 0) -> data.GaussianMixture:
    """Six components in 16-D with full, unequal covariances (eigenvalues 0.003..1.5)."""
    gen = torch.Generator().manual_seed(seed)
    K, D = 6, 16
    means = 1.5 * torch.randn(K, D, generator=gen, dtype=torch.float64)
    covs = []
    for k in range(K):
        Q, _ = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=torch.float64))
        eig = torch.logspace(
            math.log10(0.003 * (k + 1)), math.log10(0.25 * (k + 1)), D, dtype=torch.float64
        )
        covs.append(Q @ torch.diag(eig) @ Q.T)
    weights = torch.rand(K, generator=gen, dtype=torch.float64) + 0.2
    return data.GaussianMixture(means, torch.stack(covs), weights / weights.sum())


def narrow_32d(seed: int = 1) -> data.GaussianMixture:
    """Ten narrow components in 32-D (standard deviations 0.03..0.3 along random axes), means
    at distance 3 from the origin, weights 1:2:...:10."""
    gen = torch.Generator().manual_seed(seed)
    K, D = 10, 32
    directions = torch.randn(K, D, generator=gen, dtype=torch.float64)
    means = 3.0 * directions / directions.norm(dim=1, keepdim=True)
    eig = torch.logspace(math.log10(0.03**2), math.log10(0.3**2), D, dtype=torch.float64)
    covs = []
    for _ in range(K):
        Q, _ = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=torch.float64))
        covs.append(Q @ torch.diag(eig) @ Q.T)
    weights = torch.arange(1, K + 1, dtype=torch.float64)
    return data.GaussianMixture(means, torch.stack(covs), weights / weights.sum())


# ---- metrics ---------------------------------------------------------------------------------


@dataclass
class Scores:
    sw2: float
    logp_gap: float
    tv: float


def score(mixture, x, reference, seed=0) -> Scores:
    x = x.double()
    gen = torch.Generator().manual_seed(seed)
    return Scores(
        metrics.sliced_wasserstein(x, reference, generator=gen),
        abs(metrics.log_density_gap(mixture, x, reference)),
        metrics.mode_weights_tv(mixture, x),
    )


def noise_floor(mixture, n, repeats=10) -> Scores:
    rows = []
    for r in range(repeats):
        gen = torch.Generator().manual_seed(1000 + r)
        rows.append(
            score(mixture, mixture.sample(n, generator=gen), mixture.sample(n, generator=gen), r)
        )

    def bound(values):
        t = torch.tensor(values)
        return float(t.mean() + 2 * t.std())

    return Scores(
        bound([s.sw2 for s in rows]), bound([s.logp_gap for s in rows]), bound([s.tv for s in rows])
    )


# ---- rediff ----------------------------------------------------------------------------------


def start_noise(mixture, n, seed):
    """x_T, shared by every run of both libraries at one NFE (so their differences are the
    samplers', not the draws')."""
    return torch.randn(
        n, mixture.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def tuned_grid(den, dim: int, steps: int, sampler: str) -> torch.Tensor:
    """rediff.tuning.optimize's grid for this sampler and budget, fit on 256 starting points
    of their own (seed 0, never the scored ones)."""
    gen = torch.Generator().manual_seed(0)
    return tuning.optimize(den, (256, dim), steps, sampler=sampler, generator=gen)


def rediff_runs(mixture, n, nfe, seed, tuned=True, configurations=True):
    """(sampler, grid label, NFE, samples) for every rediff sampler and grid within ``nfe``
    (``tuned=False``, ``configurations=False``: the fixed grids and the budget defaults'
    grids with default options only)."""
    den = mixture.denoiser(SCHEDULE)
    x_T = start_noise(mixture, n, seed)
    for name in REDIFF_SAMPLERS:
        entry = samplers.get(name)
        for label, ts, options in rediff_grids(
            den, mixture.dim, nfe, name, tuned and not entry.stochastic, configurations
        ):
            counting = CountingDenoiser(den)
            x = entry.function(
                counting,
                x_T,
                ts,
                generator=torch.Generator().manual_seed(seed),
                **{**entry.options, **options},
            )
            if counting.calls <= nfe:
                yield name, label, counting.calls, x


def rediff_grids(den, dim: int, nfe: int, name: str, tuned: bool, configurations: bool):
    """(label, grid, options) within ``nfe`` evaluations (``Entry.steps_within``): each
    spacing with the final jump, some without, the budget defaults' grids
    (``named_grids``), (``tuned``: for deterministic samplers) the tuned grid and
    (``configurations``) ``peer_configurations`` and ``option_configurations``."""
    entry = samplers.get(name)
    steps, steps_no_jump = entry.steps_within(nfe), entry.steps_within(nfe, final_step=False)
    for label, ts in named_grids(steps, steps_no_jump):
        yield label, ts, {}
    if tuned and steps >= 1:
        yield "tuned", tuned_grid(den, dim, steps, name), {}
    if configurations and steps >= 1:
        yield from peer_configurations(name, steps, steps_no_jump)
        yield from option_configurations(name, steps, steps_no_jump)


def named_grids(steps: int, steps_no_jump: int):
    """(label, grid): each of REDIFF_SPACINGS with the final jump, NO_JUMP_SPACINGS without,
    then the budget defaults' grids (``samplers.SHORT_BUDGET``, ``FULL_BUDGET``) that those
    do not already give."""
    if steps >= 1:
        for spacing in REDIFF_SPACINGS:
            yield spacing, grids.make(SCHEDULE, steps, spacing)
    if steps_no_jump >= 1:
        for spacing in NO_JUMP_SPACINGS:
            yield (
                f"{spacing}, no jump",
                grids.make(SCHEDULE, steps_no_jump, spacing, final_step=False),
            )
    for choice in (samplers.SHORT_BUDGET, samplers.FULL_BUDGET):
        given = REDIFF_SPACINGS if choice.final_step else NO_JUMP_SPACINGS
        k = steps if choice.final_step else steps_no_jump
        if k >= 1 and (choice.first_interval != 1.0 or choice.spacing.value not in given):
            ts = grids.make(
                SCHEDULE,
                k,
                choice.spacing,
                final_step=choice.final_step,
                first_interval=choice.first_interval,
            )
            yield choice.grid_label, ts


def peer_configurations(name: str, steps: int, steps_no_jump: int):
    """(label, grid, options): rediff's own grids and options set as the peers run theirs.
    The official DPM-Solver's time-uniform grid ending at t_min (uniform without the jump);
    below SHORT_GRID steps the FULL_ORDER samplers with ``lower_order_final=False`` on both
    log-SNR grids ('full order': k-diffusion never lowers the order, the official DPM-Solver
    only below 10 steps); from EXACT_D2_FROM steps dpm++3m with ``exact_d2=False`` on every
    spacing ('halved D2': diffusers', k-diffusion's and the official 3M); and dpm++3m set as
    k-diffusion's dpmpp_3m (``K_DIFFUSION_3M``) on its two grids."""
    if steps_no_jump >= 1:
        ts = grids.make(SCHEDULE, steps_no_jump, "uniform", final_step=False)
        yield "uniform, no jump", ts, {}
    if name in FULL_ORDER and steps < SHORT_GRID:
        yield "logsnr, full order", grids.make(SCHEDULE, steps, "logsnr"), FULL
        ts = grids.make(SCHEDULE, steps_no_jump, "logsnr", final_step=False)
        yield "logsnr, no jump, full order", ts, FULL
    if name == "dpm++3m" and steps >= EXACT_D2_FROM:
        for spacing in REDIFF_SPACINGS:
            yield f"{spacing}, halved D2", grids.make(SCHEDULE, steps, spacing), HALVED
    if name == "dpm++3m":
        for spacing in ("logsnr", "karras"):
            ts = grids.make(SCHEDULE, steps, spacing)
            yield f"{spacing}, as k-diffusion's 3M", ts, K_DIFFUSION_3M


def option_configurations(name: str, steps: int, steps_no_jump: int):
    """(label, grid, options): rediff options other than the sampler's default, on the named
    grids: pc with DDPM's ancestral predictor (``PC_ANCESTRAL``)."""
    if name != "pc":
        return
    for label, ts in named_grids(steps, steps_no_jump):
        yield f"{label}, predictor {PC_ANCESTRAL['predictor']}", ts, PC_ANCESTRAL


# ---- diffusers -------------------------------------------------------------------------------


def diffusers_schedulers():
    """(label, constructor) for each diffusers scheduler and configuration tried."""
    import diffusers as d

    base = dict(
        num_train_timesteps=T,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
    )
    trailing = dict(base, timestep_spacing="trailing")
    return [
        # clip_sample defaults to True (x0 clipped to [-1, 1], for images): off for these data
        (
            "DDIM trailing",
            lambda: d.DDIMScheduler(**trailing, set_alpha_to_one=True, clip_sample=False),
        ),
        (
            "DPMSolverMultistep 2M trailing",
            lambda: d.DPMSolverMultistepScheduler(**trailing, solver_order=2),
        ),
        (
            "DPMSolverMultistep 2M karras",
            lambda: d.DPMSolverMultistepScheduler(**base, solver_order=2, use_karras_sigmas=True),
        ),
        (
            "DPMSolverMultistep 3M trailing",
            lambda: d.DPMSolverMultistepScheduler(**trailing, solver_order=3),
        ),
        (
            "DPMSolverMultistep 3M karras",
            lambda: d.DPMSolverMultistepScheduler(**base, solver_order=3, use_karras_sigmas=True),
        ),
        ("UniPC trailing", lambda: d.UniPCMultistepScheduler(**trailing)),
        ("UniPC karras", lambda: d.UniPCMultistepScheduler(**base, use_karras_sigmas=True)),
        ("Euler trailing", lambda: d.EulerDiscreteScheduler(**trailing)),
        ("Euler karras", lambda: d.EulerDiscreteScheduler(**base, use_karras_sigmas=True)),
        ("Heun trailing", lambda: d.HeunDiscreteScheduler(**trailing)),
        ("Heun karras", lambda: d.HeunDiscreteScheduler(**base, use_karras_sigmas=True)),
        ("DEIS trailing", lambda: d.DEISMultistepScheduler(**trailing)),
        ("DEIS karras", lambda: d.DEISMultistepScheduler(**base, use_karras_sigmas=True)),
    ]


def exact_eps_model(mixture, scheduler):
    """The mixture's exact eps prediction at the noise level the scheduler uses: from its
    sigmas (Euler, Heun: the input is x / sqrt(1 + s^2)) or its alphas_cumprod (the rest)."""
    sigma_based = (
        hasattr(scheduler, "sigmas")
        and hasattr(scheduler, "step_index")
        and type(scheduler).__name__ in ("EulerDiscreteScheduler", "HeunDiscreteScheduler")
    )
    den = mixture.denoiser(SCHEDULE)
    calls = [0]

    def model(x, timestep):
        calls[0] += 1
        if sigma_based:
            level = float(scheduler.sigmas[scheduler.step_index])
        else:
            abar = float(scheduler.alphas_cumprod[int(timestep)])
            level = math.sqrt((1 - abar) / abar)
        t = float(SCHEDULE.t_from_noise_level(level))
        alpha, sigma = float(SCHEDULE.alpha(t)), float(SCHEDULE.sigma(t))  # sigma/alpha = level
        x0 = den(x.double(), t)
        return ((x.double() - alpha * x0) / sigma).to(x.dtype)

    return model, calls


def diffusers_sample(make, mixture, n, steps, seed, model_factory=exact_eps_model):
    scheduler = make()
    scheduler.set_timesteps(steps)
    model, calls = model_factory(mixture, scheduler)
    gen = torch.Generator().manual_seed(seed)
    x = start_noise(mixture, n, seed) * scheduler.init_noise_sigma
    import inspect

    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    extra = {"generator": gen} if takes_generator else {}
    for t in scheduler.timesteps:
        eps = model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(eps, t, x, **extra).prev_sample
    return x, calls[0]


def diffusers_runs(mixture, n, nfe, seed):
    for label, make in diffusers_schedulers():
        steps = (nfe + 1) // 2 if label.startswith("Heun") else nfe
        x, calls = diffusers_sample(make, mixture, n, steps, seed)
        if calls <= nfe and torch.isfinite(x).all():
            yield label, calls, x


# ---- k-diffusion and the reference variants ----------------------------------------------------

#: k-diffusion sampler -> (function name, fixed options, evaluations per step)
K_SAMPLERS = {
    "euler": ("sample_euler", {}, 1),
    "heun": ("sample_heun", {}, 2),
    "dpm_2": ("sample_dpm_2", {}, 2),
    "lms": ("sample_lms", {}, 1),
    "dpmpp_2m": ("sample_dpmpp_2m", {}, 1),
    "dpmpp_3m": ("sample_dpmpp_3m_sde", {"eta": 0.0}, 1),
    "dpmpp_2m_sde": ("sample_dpmpp_2m_sde", {}, 1),
    "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", {}, 1),
}


def shared_noise(shape, seed: int):
    """A k-diffusion noise_sampler that draws what rediff's stochastic samplers draw from
    torch.Generator().manual_seed(seed): one N(0, I) per step, in step order. With it the
    SDE samplers of both libraries share x_T and every step's noise, so their differences are
    the samplers' (k-diffusion's default, a Brownian tree, draws other noise of the same law)."""
    gen = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(shape, generator=gen, dtype=torch.float64)


def k_diffusion_runs(mixture, n, nfe, seed):
    """k-diffusion's samplers on its Karras and exponential (log-SNR uniform) sigma grids, each
    ending with the step to sigma = 0 (the last step of heun and dpm_2 is one Euler
    evaluation), the SDE samplers with rediff's noise (``shared_noise``); dpm_fast takes the
    NFE itself and ends at sigma_min."""
    k = peers.k_sampling()
    s_min, s_max = peers.k_sigma_range(SCHEDULE)
    den = mixture.denoiser(SCHEDULE)
    x_T = start_noise(mixture, n, seed) * math.sqrt(1 + s_max**2)
    for name, (function, options, evals) in K_SAMPLERS.items():
        steps = (nfe + 1) // 2 if evals == 2 else nfe
        for grid in ("karras", "exponential"):
            sigmas = getattr(k, f"get_sigmas_{grid}")(steps, s_min, s_max)
            counting = CountingDenoiser(den)
            noise = {"noise_sampler": shared_noise(x_T.shape, seed)} if "sde" in function else {}
            x = getattr(k, function)(
                peers.k_model(counting, SCHEDULE), x_T, sigmas, disable=True, **options, **noise
            )
            if counting.calls <= nfe:
                yield f"k-diffusion {name} ({grid})", counting.calls, x
    counting = CountingDenoiser(den)
    x = k.sample_dpm_fast(peers.k_model(counting, SCHEDULE), x_T, s_min, s_max, nfe, disable=True)
    yield "k-diffusion dpm_fast (its own)", counting.calls, x


def reference_runs(mixture, n, nfe, seed):
    """The official DPM-Solver's multistep DPM-Solver++ (orders 2 and 3, halved D2) on its two
    grids, ending at t = 1/N or denoising there with one more evaluation; score_sde's PC where
    its table is defined (more than 20 steps)."""
    den = mixture.denoiser(SCHEDULE)
    x_T = start_noise(mixture, n, seed)
    for order in (2, 3):
        for skip in ("time_uniform", "logSNR"):
            for to_zero in (False, True):
                steps = nfe - 1 if to_zero else nfe
                counting = CountingDenoiser(den)
                x = peers.official_dpm_solver_pp(
                    counting, SCHEDULE, x_T, steps, skip, to_zero, order
                )
                end = "denoise_to_zero" if to_zero else "t_end = 1/N"
                yield f"DPM-Solver ref. ++{order}M ({skip}, {end})", counting.calls, x
    if nfe // 2 > peers.BETA_MAX:  # below, its largest table beta b1/N >= 1: sqrt(1 - b) fails
        counting = CountingDenoiser(den)
        gen = torch.Generator().manual_seed(seed)
        x = peers.score_sde_pc(counting, SCHEDULE, x_T, nfe // 2, gen)
        yield "score_sde ref. PC (table betas)", counting.calls, x


def peer_runs(mixture, n, nfe, seed):
    """(label, NFE, samples) of every peer: diffusers, k-diffusion, the reference variants."""
    for label, k, x in diffusers_runs(mixture, n, nfe, seed):
        yield f"diffusers {label}", k, x
    yield from k_diffusion_runs(mixture, n, nfe, seed)
    yield from reference_runs(mixture, n, nfe, seed)


# ---- overhead per model call -----------------------------------------------------------------


class FreeDenoiser(rediff.Denoiser):
    """x0_hat = 0: costs nothing, so a loop's time is its own overhead."""

    schedule = SCHEDULE

    def __call__(self, x_t, t, **cond):
        return torch.zeros_like(x_t)


def overhead(n=20000, d=16, steps=20, repeats=5):
    """Seconds per model call of each loop with a free model (best of ``repeats``)."""
    rows = {}
    free = FreeDenoiser()
    for name in ("ddim", "dpm++2m", "dpm++3m", "unipc"):
        best = math.inf
        for _ in range(repeats):
            x = torch.randn(n, d)
            ts = grids.make(SCHEDULE, steps, "logsnr")
            start = time.perf_counter()
            samplers.get(name).function(free, x, ts, **samplers.get(name).options)
            best = min(best, (time.perf_counter() - start) / steps)
        rows[f"rediff {name}"] = best

    def free_model(mixture, scheduler):
        calls = [0]

        def model(x, t):
            calls[0] += 1
            return torch.zeros_like(x)

        return model, calls

    fake = data.GaussianMixture(torch.zeros(1, d), torch.eye(d)[None])
    for label, make in diffusers_schedulers():
        if "karras" in label:
            continue
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            _, calls = diffusers_sample(make, fake, n, steps, 0, model_factory=free_model)
            best = min(best, (time.perf_counter() - start) / calls)
        rows[f"diffusers {label}"] = best
    return rows


# ---- report ----------------------------------------------------------------------------------


#: rediff sampler -> the label prefixes of its namesakes among the peers
NAMESAKES = {
    "ddim": ("diffusers DDIM", "k-diffusion euler"),
    "heun": ("diffusers Heun", "k-diffusion heun"),
    "dpm_solver2": ("k-diffusion dpm_2",),
    "dpm++2m": (
        "diffusers DPMSolverMultistep 2M",
        "k-diffusion dpmpp_2m",
        "DPM-Solver ref. ++2M",
    ),
    "dpm++3m": (
        "diffusers DPMSolverMultistep 3M",
        "k-diffusion dpmpp_3m",
        "DPM-Solver ref. ++3M",
    ),
    "dpm++2m-sde": ("k-diffusion dpmpp_2m_sde",),
    "unipc": ("diffusers UniPC",),
    "pc": ("score_sde ref. PC",),
}


def at_least_as_good(ours: float, theirs: float, floor: float) -> bool:
    """ours <= theirs to the four decimals reported (the same algorithm on the same grid
    differs only in float rounding), or both within the noise floor."""
    return round(ours, 4) <= round(theirs, 4) or (ours <= floor and theirs <= floor)


def namesake_verdicts(mix_name, nfe, r_runs, p_runs, floor) -> list[tuple]:
    """Each rediff sampler (at its best grid per metric) against each namesake (at its best
    configuration): (data, NFE, sampler, peer, metric, rediff, peer's, floor, pass)."""
    rows = []
    for name, prefixes in NAMESAKES.items():
        ours = [r for r in r_runs if r[0].split(" (")[0] == f"rediff {name}"]
        for prefix in prefixes:
            theirs = [r for r in p_runs if r[0].startswith(prefix + " ")]
            if not ours or not theirs:
                continue
            mine, peer = best_per_metric(ours), best_per_metric(theirs)
            for m in ("sw2", "logp_gap", "tv"):
                rv, pv, f = getattr(mine[m][2], m), getattr(peer[m][2], m), getattr(floor, m)
                rows.append(
                    (mix_name, nfe, name, prefix, m, rv, pv, f, at_least_as_good(rv, pv, f))
                )
    return rows


def best_per_metric(runs):
    """For each metric, the run (label, nfe, scores) that minimises it."""
    return {m: min(runs, key=lambda r: getattr(r[2], m)) for m in ("sw2", "logp_gap", "tv")}


def nfe_table(r_runs, p_runs, floor) -> list[str]:
    """Each sampler at its best grid (by SW2), sorted by SW2; `*` marks the noise floor."""
    lines = ["| sampler (grid) | NFE | SW2 | abs gap | TV |", "|---|---|---|---|---|"]
    by_name = {}
    for label, k, sc in r_runs + p_runs:
        key = label.split(" (")[0]
        best = by_name.get(key)
        if best is None or sc.sw2 < best[2].sw2:
            by_name[key] = (label, k, sc)

    def mark(v, f):
        return f"{v:.4f}{'*' if v <= f else ''}"

    for label, k, sc in sorted(by_name.values(), key=lambda r: r[2].sw2):
        lines.append(
            f"| {label} | {k} | {mark(sc.sw2, floor.sw2)} | {mark(sc.logp_gap, floor.logp_gap)} "
            f"| {mark(sc.tv, floor.tv)} |"
        )
    return [*lines, ""]


def ddpm_rows(mixture, n, reference) -> list[str]:
    """DDPM ancestral sampling at 1000 steps, rediff against diffusers."""
    import diffusers as d

    den = mixture.denoiser(SCHEDULE)
    x = samplers.ddpm(
        den,
        start_noise(mixture, n, 5),
        grids.make(SCHEDULE, 1000, "trailing"),
        generator=torch.Generator().manual_seed(4),
    )
    xd, calls = diffusers_sample(
        lambda: d.DDPMScheduler(
            num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, clip_sample=False
        ),
        mixture,
        n,
        1000,
        5,
    )
    sr, sd = score(mixture, x, reference), score(mixture, xd, reference)
    return [
        "### DDPM ancestral, 1000 steps",
        "",
        "| sampler | NFE | SW2 | abs gap | TV |",
        "|---|---|---|---|---|",
        f"| rediff ddpm (beta) | 1000 | {sr.sw2:.4f} | {sr.logp_gap:.4f} | {sr.tv:.4f} |",
        f"| diffusers DDPMScheduler | {calls} | {sd.sw2:.4f} | {sd.logp_gap:.4f} | {sd.tv:.4f} |",
        "",
    ]


def mixtures() -> dict[str, data.GaussianMixture]:
    return {
        "2-D, 8 narrow components": narrow_2d(),
        "16-D, 6 full covariances": full_16d(),
        "32-D, 10 narrow components": narrow_32d(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10000, help="samples per run (default 10000)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import diffusers

    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    lines = [
        "# Samplers: rediff against diffusers, k-diffusion and reference variants on exact "
        "Gaussian mixtures",
        "",
        f"Command: `python benchmarks/samplers.py --n {args.n}`  ",
        f"Date: {date.today()}  Machine: {platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, k-diffusion "
        f"{peers.k_version()}  ",
        f"Schedule: DDPM linear betas, T = {T}; {args.n} samples per run; NFE counted as model calls. "
        "Every run at one NFE starts from the same x_T; rediff's and k-diffusion's SDE samplers "
        "also share each step's noise.",
        "",
        "Metrics against fresh exact samples: SW2 (sliced Wasserstein-2), |gap| = |mean log p(exact)"
        " - mean log p(samples)| in nats, TV of the mode weights. Noise floor: mean + 2 sd of the "
        "metric between two independent exact sample sets. Each sampler is shown at its best grid "
        f"by SW2 (rediff grids: {', '.join(REDIFF_SPACINGS)} and, for deterministic samplers, "
        "`tuned` (rediff.tuning.optimize, fit on 256 other starting points), ending with the "
        f"jump to sigma = 0, {', '.join(NO_JUMP_SPACINGS)} without it ('no jump': the "
        "result is x at t_min = 1/T), and the budget defaults' grids where the others lack "
        f"them ('{samplers.SHORT_BUDGET.grid_label}', `rediff.sample`'s below "
        f"{samplers.FULL_BUDGET_FROM} steps); set as the peers run theirs: uniform without the "
        f"jump (the official DPM-Solver's time-uniform grid), below {SHORT_GRID} steps "
        f"{', '.join(FULL_ORDER)} with `lower_order_final=False` on both log-SNR grids "
        "('full order', as k-diffusion, and the official DPM-Solver from 10 steps), from "
        f"{EXACT_D2_FROM} steps dpm++3m with `exact_d2=False` ('halved D2', as all three "
        "peers' 3M), and dpm++3m on logsnr and karras as k-diffusion's dpmpp_3m (halved D2, "
        "`solver_type='heun'` on its second-order warm-up step, full order); and an option that "
        "is not the default: pc with `predictor='ancestral'` on the spacings and budget "
        "defaults' grids; "
        "diffusers: trailing "
        "timesteps and Karras sigmas; k-diffusion: Karras "
        "and exponential sigmas). 'ref.' rows are the official DPM-Solver's and score_sde's rules "
        "written from their papers (benchmarks/peers.py). `*` = within the noise floor.",
        "",
    ]
    verdicts, namesakes = [], []
    csv = ["data,nfe_budget,run,nfe,sw2,abs_gap,tv,floor_sw2,floor_gap,floor_tv"]
    for mix_name, mixture in mixtures().items():
        floor = noise_floor(mixture, args.n)
        reference = mixture.sample(args.n, generator=torch.Generator().manual_seed(7))
        lines += [
            f"## {mix_name}",
            "",
            f"Noise floor: SW2 {floor.sw2:.4f}, |gap| {floor.logp_gap:.4f}, TV {floor.tv:.4f}",
            "",
        ]
        for nfe in NFES:
            r_runs = [
                (f"rediff {s} ({sp})", k, score(mixture, x, reference))
                for s, sp, k, x in rediff_runs(mixture, args.n, nfe, seed=nfe)
            ]
            p_runs = [
                (label, k, score(mixture, x, reference))
                for label, k, x in peer_runs(mixture, args.n, nfe, seed=nfe)
                if torch.isfinite(x).all()
            ]
            lines += [f"### NFE <= {nfe}", "", *nfe_table(r_runs, p_runs, floor)]
            csv += [
                f'"{mix_name}",{nfe},"{label}",{k},{sc.sw2:.6g},{sc.logp_gap:.6g},{sc.tv:.6g},'
                f"{floor.sw2:.6g},{floor.logp_gap:.6g},{floor.tv:.6g}"
                for label, k, sc in r_runs + p_runs
            ]
            namesakes += namesake_verdicts(mix_name, nfe, r_runs, p_runs, floor)
            ours, theirs = best_per_metric(r_runs), best_per_metric(p_runs)
            for m in ("sw2", "logp_gap", "tv"):
                rv, pv = getattr(ours[m][2], m), getattr(theirs[m][2], m)
                ok = at_least_as_good(rv, pv, getattr(floor, m))
                verdicts.append(
                    (mix_name, nfe, m, rv, pv, getattr(floor, m), ok, ours[m][0], theirs[m][0])
                )
            print(mix_name, nfe, f"done at {time.perf_counter() - started:.0f} s", flush=True)
        lines += ddpm_rows(mixture, args.n, reference)
    lines += target_rows(verdicts, namesakes)
    times = overhead()
    ref = times["diffusers DPMSolverMultistep 2M trailing"]
    lines += [
        "",
        "## Overhead per model call (free model, batch 20000 x 16, float32, 20 steps)",
        "",
        "| loop | microseconds per call | ratio to diffusers DPMSolverMultistep 2M |",
        "|---|---|---|",
    ]
    for label, sec in sorted(times.items(), key=lambda kv: kv[1]):
        lines.append(f"| {label} | {sec * 1e6:.0f} | {sec / ref:.2f} |")
    lines.append(f"\nTotal run time: {time.perf_counter() - started:.0f} s.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_name(RUNS_CSV.name).write_text("\n".join(csv) + "\n")
    print(f"wrote {args.out}")


def target_rows(verdicts, namesakes) -> list[str]:
    """The issue's two targets: rediff's best against the best peer per metric, and each rediff
    sampler against each namesake; then where NFE 20 misses the noise floor."""
    lost = [v for v in verdicts if not v[6]]
    lines = [
        "## Targets",
        "",
        "Best rediff (any sampler and grid) against the best peer run (diffusers, k-diffusion, "
        "reference variants), per metric; pass = rediff's value is at most the peer's to the "
        "four decimals shown, or both are within the noise floor. "
        f"{len(verdicts) - len(lost)} of {len(verdicts)} pass.",
        "",
        "| data | NFE | metric | rediff best | peer best | floor | pass | rediff run | peer run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mix_name, nfe, m, rv, pv, f, ok, rl, pl in verdicts:
        lines.append(
            f"| {mix_name} | {nfe} | {m} | {rv:.4f} | {pv:.4f} | {f:.4f} | "
            f"{'yes' if ok else 'NO'} | {rl} | {pl} |"
        )
    lost = [v for v in namesakes if not v[8]]
    lines += [
        "",
        "## Each rediff sampler against its namesakes",
        "",
        "Both at their best grid / configuration per metric, with the same pass rule. "
        f"{len(namesakes) - len(lost)} of {len(namesakes)} comparisons pass; the others:",
        "",
        "| data | NFE | sampler | peer | metric | rediff | peer's | floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mix_name, nfe, name, prefix, m, rv, pv, f, _ in lost:
        lines.append(
            f"| {mix_name} | {nfe} | {name} | {prefix} | {m} | {rv:.4f} | {pv:.4f} | {f:.4f} |"
        )
    lines += ["", "## Where NFE 20 is not within the noise floor", ""]
    misses = [v for v in verdicts if v[1] == 20 and v[3] > v[5]]
    for mix_name, _, m, rv, pv, f, _, rl, pl in misses:
        lines.append(
            f"- {mix_name}, {m}: rediff best {rv:.4f} ({rl}), peer best {pv:.4f} ({pl}), "
            f"floor {f:.4f}."
        )
    if not misses:
        lines.append("- none: at NFE 20 rediff's best is within the noise floor on every metric.")
    return [
        *lines,
        "",
        "Why: with the exact denoiser the only errors are the solver's discretisation and the "
        "final jump from t_min = 1/T (sigma = 0.01) to sigma = 0. The mean log-density is the "
        "most sensitive metric: it is dominated by each component's narrowest directions "
        "(standard deviation 0.05 in 2-D, 0.03 in 32-D; eigenvalues down to 0.003 in 16-D), "
        "where a small displacement costs many nats, while SW2 and TV average over directions "
        "and modes. benchmarks/results/final_step.md measures the final jump.",
    ]


if __name__ == "__main__":
    main()
