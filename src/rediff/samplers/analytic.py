"""Analytic-DPM's Gamma_t (Bao et al. 2022): the data term of the optimal reverse variance.

    Gamma_t = E_{x0 ~ data, eps} ||eps_hat(x_t, t)||^2 / d,   x_t = alpha_t x0 + sigma_t eps,

estimated by one Monte Carlo pass over the data per time (Bao et al. 2022, eq. 9 and
algorithm 1), then cached beside the model as a safetensors table and interpolated linearly
in t between its times.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rediff._io import atomic_save_tensors, load_tensors
from rediff._tensor import Tensor, check_finite
from rediff.model import Denoiser


@dataclass(frozen=True, eq=False)
class GammaTable:
    """Gamma_t at increasing times ``t`` (float64 [n]); call it with a time to interpolate."""

    t: Tensor
    gamma: Tensor

    def __post_init__(self) -> None:
        t = torch.as_tensor(self.t, dtype=torch.float64).flatten()
        gamma = torch.as_tensor(self.gamma, dtype=torch.float64).flatten()
        if t.shape != gamma.shape or t.numel() < 1:
            raise ValueError("a GammaTable needs matching, non-empty t and gamma")
        if not bool((t[1:] > t[:-1]).all()):
            raise ValueError("GammaTable times must be strictly increasing")
        check_finite("gamma", gamma)
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "gamma", gamma)

    def __call__(self, t: float) -> float:
        lo, hi = float(self.t[0]), float(self.t[-1])
        slack = 1e-9 * max(abs(hi), 1.0)
        if not lo - slack <= t <= hi + slack:
            raise ValueError(
                f"Gamma_t is tabulated on [{lo}, {hi}] but t = {t} was asked for; estimate it "
                "on the grid you sample with"
            )
        if len(self.t) == 1:
            return float(self.gamma[0])
        k = int(torch.searchsorted(self.t, torch.tensor(t, dtype=torch.float64)))
        k = min(max(k, 1), len(self.t) - 1)
        t0, t1 = float(self.t[k - 1]), float(self.t[k])
        g0, g1 = float(self.gamma[k - 1]), float(self.gamma[k])
        frac = min(max((t - t0) / (t1 - t0), 0.0), 1.0)
        return g0 + frac * (g1 - g0)

    def save(self, path: str | Path) -> Path:
        """Write the table atomically as safetensors (e.g. ``RUN_DIR/gamma.safetensors``)."""
        return atomic_save_tensors({"t": self.t, "gamma": self.gamma}, path, {"kind": "gamma"})

    @classmethod
    def load(cls, path: str | Path) -> GammaTable:
        tensors = load_tensors(path)
        if set(tensors) != {"t", "gamma"}:
            raise ValueError(f"{path} is not a Gamma table (tensors {sorted(tensors)})")
        return cls(tensors["t"], tensors["gamma"])


@torch.no_grad()
def estimate_gamma(
    denoiser: Denoiser,
    x0: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 1024,
    progress: bool = False,
) -> GammaTable:
    """Estimate Gamma_t at every positive time in ``ts`` from data ``x0``: [N, *D]."""
    check_finite("x0", x0)
    times = sorted({float(t) for t in torch.as_tensor(ts, dtype=torch.float64).tolist() if t > 0})
    if not times:
        raise ValueError("ts holds no positive time to estimate Gamma_t at")
    d = x0[0].numel()
    values = []
    for t in tqdm(times, desc="Gamma_t", disable=not progress):
        total = 0.0
        for batch in x0.split(batch_size):
            x_t = denoiser.schedule.marginal(batch, t, generator=generator)
            total += float(denoiser.predict(x_t, t).eps.double().square().sum())
        values.append(total / (x0.shape[0] * d))
    return GammaTable(torch.tensor(times, dtype=torch.float64), torch.tensor(values))
