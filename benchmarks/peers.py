"""Peers the benchmarks run beside rediff that cannot simply be imported.

- k-diffusion (Crowson): ``pip install --no-deps k-diffusion torchsde``. Its package
  ``__init__`` imports the whole training and evaluation stack (clip, clean-fid, torchvision
  and with it a CUDA build of torch); the benchmarks need only ``k_diffusion/sampling.py``,
  which ``k_sampling`` loads without running ``__init__``.
- The official DPM-Solver (Lu et al. 2022a/b) and score_sde (Song et al. 2021) are not on the
  package index: their rules are written here from their papers and code releases as
  labelled reference variants, driving the same exact model as everyone else.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import math
import sys
import types
from collections.abc import Callable

import torch

from rediff import schedules

# ---- k-diffusion ------------------------------------------------------------------------------


def k_sampling() -> types.ModuleType:
    """k-diffusion's ``sampling`` module. The package is registered without executing its
    ``__init__``; ``utils`` (whose ``append_dims`` sampling uses) imports torchvision's
    functional transforms for image loading only, so they are stubbed when torchvision is
    absent (installing it would replace the CPU torch)."""
    if "k_diffusion" not in sys.modules:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None:
            raise SystemExit("k-diffusion is missing: pip install --no-deps k-diffusion torchsde")
        sys.modules["k_diffusion"] = importlib.util.module_from_spec(spec)
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
            sys.modules.setdefault(name, types.ModuleType(name))
    return importlib.import_module("k_diffusion.sampling")


def k_version() -> str:
    return importlib.metadata.version("k-diffusion")


def k_model(den, schedule) -> Callable:
    """k-diffusion's model convention, D(x, sigma) on x = x0 + sigma eps (variance exploding),
    from a denoiser on x_t = alpha x0 + sigma_t eps: sigma = sigma_t / alpha and x_t = alpha x.
    k-diffusion's grids are float32, so sigma is clipped to the schedule's range."""
    low, high = k_sigma_range(schedule)

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        level = min(max(float(sigma.reshape(-1)[0]), low), high)
        t = float(schedule.t_from_noise_level(level))
        return den(x * float(schedule.alpha(t)), t)

    return model


def k_sigma_range(schedule) -> tuple[float, float]:
    """(sigma_min, sigma_max) of the schedule in k-diffusion's variance-exploding units."""
    return float(schedule.noise_level(schedule.t_min)), float(schedule.noise_level(1.0))


# ---- the official DPM-Solver's multistep DPM-Solver++ ------------------------------------------


def official_grid(schedule, steps: int, skip: str) -> torch.Tensor:
    """The official code's time grid from t = 1 to t_end = 1/N (discrete models): uniform in t
    ('time_uniform', its default) or in log-SNR ('logSNR')."""
    t_end = schedule.t_min
    if skip == "time_uniform":
        return torch.linspace(1.0, t_end, steps + 1, dtype=torch.float64)
    lam = torch.linspace(
        float(schedule.log_snr(1.0)) / 2, float(schedule.log_snr(t_end)) / 2, steps + 1
    ).double()
    return schedule.t_from_log_snr(2 * lam)


def official_dpm_solver_pp(
    den, schedule, x: torch.Tensor, steps: int, skip: str, denoise_to_zero: bool, order: int = 3
) -> torch.Tensor:
    """Multistep DPM-Solver++ as the official code release applies it (Lu et al. 2022b,
    algorithm 2): lam = log(alpha/sigma); phi_1 = expm1(-h), phi_2 = phi_1/h + 1,
    phi_3 = phi_2/h - 1/2; order 2 is the midpoint form x' = (s'/s) x - a' phi_1 (D0 + D1_0/2);
    order 3 adds a' phi_2 D1 - a' phi_3 D2 with D2 = (D1_0 - D1_1)/(r0 + r1), without the
    factor 2 of the second derivative ('halved D2'); lower orders while the history fills and,
    below 10 steps, for the last steps ('lower_order_final'); the solution is x at t = 1/N, or
    one more evaluation's denoised estimate there ('denoise_to_zero'). Evaluations: steps
    (+1)."""
    ts = official_grid(schedule, steps, skip)
    alpha = [float(schedule.alpha(t)) for t in ts]
    sigma = [float(schedule.sigma(t)) for t in ts]
    lam = [math.log(a / s) for a, s in zip(alpha, sigma, strict=True)]
    history: list[torch.Tensor] = []
    for i in range(1, steps + 1):
        history = [den(x, float(ts[i - 1])), *history][:order]
        step_order = min(order, i, steps + 1 - i) if steps < 10 else min(order, i)
        h = lam[i] - lam[i - 1]
        phi_1 = math.expm1(-h)
        x_next = (sigma[i] / sigma[i - 1]) * x - alpha[i] * phi_1 * history[0]
        if step_order >= 2:
            r0 = (lam[i - 1] - lam[i - 2]) / h
            d1_0 = (history[0] - history[1]) / r0
        if step_order == 2:
            x_next = x_next - 0.5 * alpha[i] * phi_1 * d1_0
        elif step_order == 3:
            r1 = (lam[i - 2] - lam[i - 3]) / h
            d1_1 = (history[1] - history[2]) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_2 = phi_1 / h + 1.0
            phi_3 = phi_2 / h - 0.5
            x_next = x_next + alpha[i] * phi_2 * d1 - alpha[i] * phi_3 * d2
        x = x_next
    return den(x, float(ts[-1])) if denoise_to_zero else x


# ---- score_sde's predictor-corrector sampler ---------------------------------------------------

#: score_sde's VPSDE (beta 0.1 to 20): rediff's LinearVP, whose N = 1000 table is DDPM's betas
VPSDE = schedules.LinearVP()
BETA_MIN, BETA_MAX = VPSDE.beta_min, VPSDE.beta_max


def vpsde_score(den, schedule) -> Callable:
    """The exact score at score_sde's VPSDE time t, from a denoiser on ``schedule``: the same
    noise level sigma/alpha on ``schedule`` gives x0_hat, score = -(x - alpha x0_hat)/sigma^2."""
    top = float(schedule.noise_level(1.0))

    def score(x: torch.Tensor, t: float) -> torch.Tensor:
        a, s = float(VPSDE.alpha(t)), float(VPSDE.sigma(t))
        t_r = float(schedule.t_from_noise_level(min(s / a, top)))
        x0 = den(x * (float(schedule.alpha(t_r)) / a), t_r)
        return -(x - a * x0) / s**2

    return score


def score_sde_pc(
    den, schedule, x: torch.Tensor, steps: int, generator: torch.Generator, snr: float = 0.16
) -> torch.Tensor:
    """score_sde's PC sampler for VP models (Song et al. 2021, algorithms 1 and 5, as its code
    release discretises them): N = ``steps`` table betas b_i = linspace(b0/N, b1/N, N); times
    linspace(1, 1e-3, N); at each time one Langevin corrector step with
    eps = 2 (1 - b_i) (snr mean||z|| / mean||score||)^2, the norms averaged over the batch,
    then the reverse-diffusion predictor x' = (2 - sqrt(1 - b_i)) x + b_i score + sqrt(b_i) z;
    the result is the last predictor's mean (noise removal). 2 evaluations a step."""
    betas = torch.linspace(BETA_MIN / steps, BETA_MAX / steps, steps, dtype=torch.float64)
    score = vpsde_score(den, schedule)
    mean = x
    for t in torch.linspace(1.0, 1e-3, steps, dtype=torch.float64).tolist():
        b = float(betas[int(t * (steps - 1))])
        grad = score(x, t)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        ratio = z.flatten(1).norm(dim=1).mean() / grad.flatten(1).norm(dim=1).mean()
        step = 2 * (1 - b) * float(snr * ratio) ** 2
        x = x + step * grad + math.sqrt(2 * step) * z
        mean = (2 - math.sqrt(1 - b)) * x + b * score(x, t)
        x = mean + math.sqrt(b) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return mean
