"""Shared fixtures: every schedule, with its default parameters and a few variants."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rediff import discrete, schedules
from rediff.discrete import CategoricalMixture, DiscreteProcess
from rediff.parametrization import Target

SCHEDULES = {
    "ddpm-linear": lambda: schedules.DiscreteVP.linear(1000, beta_start=1e-4, beta_end=0.02),
    "ddpm-cosine": lambda: schedules.DiscreteVP.cosine(1000, s=0.008),
    "ddpm-short": lambda: schedules.DiscreteVP.linear(10, beta_start=0.05, beta_end=0.5),
    "vp": lambda: schedules.LinearVP(beta_min=0.1, beta_max=20.0),
    "subvp": lambda: schedules.SubVP(beta_min=0.1, beta_max=20.0),
    "ve": lambda: schedules.VE(sigma_min=0.01, sigma_max=50.0),
    "edm": lambda: schedules.EDM(sigma_min=0.002, sigma_max=80.0),
    "flow": lambda: schedules.FlowMatching(),
}


#: a toy run that trains in well under a second (config overrides)
SMALL_RUN = [
    "data.name='moons'",
    "data.n=2000",
    "model.width=32",
    "model.depth=2",
    "train.batch_size=64",
    "train.warmup=5",
    "train.log_every=5",
    "train.ema_half_life=500",
]


@pytest.fixture(params=list(SCHEDULES), ids=list(SCHEDULES))
def schedule(request):
    return SCHEDULES[request.param]()


def interior_times(schedule, n: int = 64, margin: float = 0.01) -> torch.Tensor:
    """n float64 times strictly inside [t_min, t_max], geometric for EDM's wide range."""
    lo, hi = schedule.t_min, schedule.t_max
    if isinstance(schedule, schedules.EDM):
        return torch.logspace(
            math.log10(lo) + margin, math.log10(hi) - margin, n, dtype=torch.float64
        )
    span = hi - lo
    return torch.linspace(lo + margin * span, hi - margin * span, n, dtype=torch.float64)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def target_definitions(x0, eps, x_t, alpha, sigma, sigma_data):
    """Every target from its definition in the papers, independent of rediff's table.

    ``alpha`` and ``sigma`` are [B]; data are [B, *D].
    """
    shape = (-1,) + (1,) * (x0.ndim - 1)
    a, s = alpha.reshape(shape), sigma.reshape(shape)
    level = s / a
    c_skip = sigma_data**2 / (level**2 + sigma_data**2)
    c_out = level * sigma_data / torch.sqrt(level**2 + sigma_data**2)
    return {
        Target.X0: x0,
        Target.EPS: eps,
        Target.SCORE: -eps / s,  # grad_x log N(x; a x0, s^2 I) = -(x - a x0) / s^2
        Target.V: a * eps - s * x0,  # Salimans & Ho (2022)
        Target.EDM: (x0 - c_skip * x_t / a) / c_out,  # Karras et al. (2022), eq. 7
        Target.VELOCITY: eps - x0,  # flow matching's conditional velocity (Lipman et al. 2023)
    }


# ---- Gaussian data: the probability-flow ODE in closed form ------------------------------------

GAUSS_MEAN = torch.tensor([0.5, -0.3], dtype=torch.float64)
GAUSS_COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)


def gaussian_data():
    """N(GAUSS_MEAN, GAUSS_COV) as a one-component mixture (it has the exact denoiser)."""
    from rediff.data import GaussianMixture

    return GaussianMixture(GAUSS_MEAN[None], GAUSS_COV[None])


def gaussian_flow(x, schedule, t0: float, t1: float, mean=GAUSS_MEAN, cov=GAUSS_COV):
    """The probability-flow ODE's exact map from t0 to t1 for Gaussian data N(mean, cov).

    In y = x / alpha and noise level s, dy/ds = (y - D)/s with D = mean + cov (cov + s^2)^-1
    (y - mean); along each eigenvector (eigenvalue l) y - mean scales as sqrt(l + s^2)
    (Karras et al. 2022, eq. 4 with a Gaussian denoiser).
    """
    eigvals, U = torch.linalg.eigh(cov)
    s0, s1 = float(schedule.noise_level(t0)), float(schedule.noise_level(t1))
    y = (x / float(schedule.alpha(t0)) - mean) @ U
    y = y * torch.sqrt((eigvals + s1**2) / (eigvals + s0**2))
    return float(schedule.alpha(t1)) * (y @ U.T + mean)


# ---- categorical mixtures (discrete diffusion's exact oracle) ----------------------------------


def mixture(dims: int, categories: int, components: int = 3, seed: int = 0) -> CategoricalMixture:
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(components, generator=g, dtype=torch.float64) + 0.2
    probs = torch.rand(components, dims, categories, generator=g, dtype=torch.float64) ** 3 + 0.02
    return CategoricalMixture(weights, probs)


def total_variation(samples: torch.Tensor, mix: CategoricalMixture) -> tuple[float, float]:
    """TV between the empirical and the exact distribution over {0..K-1}^D, and 4 standard
    errors' worth of TV for n samples (sum over cells of 4 sd(p_hat) / 2)."""
    support, n = mix.support(), samples.shape[0]
    p = mix.log_prob(support).exp()
    codes = (samples * (mix.categories ** torch.arange(mix.dims - 1, -1, -1))).sum(1)
    counts = torch.bincount(codes, minlength=len(support)).double() / n
    order = (support * (mix.categories ** torch.arange(mix.dims - 1, -1, -1))).sum(1)
    tv = 0.5 * float((counts[order] - p).abs().sum())
    return tv, 0.5 * float((4 * torch.sqrt(p * (1 - p) / n)).sum())


def states(process: DiscreteProcess, dims: int) -> torch.Tensor:
    """Every x in the process's states^dims: [S^dims, dims]."""
    return torch.tensor(list(itertools.product(range(process.num_states), repeat=dims)))


def exact_bound(den, x0: torch.Tensor, dims: int) -> float:
    """The bound of one x0, with every expectation over x_t done by enumeration."""
    process = den.process
    total = float(process.prior_kl(x0[None]))
    everything = states(process, dims)
    for t in range(1, process.num_steps + 1):
        q = process.marginal(x0[None], t)[0]  # [dims, S]
        weight = torch.stack([q[i, everything[:, i]] for i in range(dims)]).prod(0)
        ok = weight > 0
        terms = discrete.step_terms(den, x0.expand(int(ok.sum()), dims), t, everything[ok])
        total += float((weight[ok] * terms).sum())
    return total
