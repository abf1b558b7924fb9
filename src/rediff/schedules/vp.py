"""Variance-preserving forward processes: DDPM (discrete), the VP SDE, and the sub-VP SDE.

For the VP family alpha^2 + sigma^2 = 1, so sigma follows from alpha:
    log sigma = 0.5 log(1 - alpha^2) = 0.5 log(-expm1(2 log alpha)),
    d log sigma/dt = -(alpha^2 / sigma^2) d log alpha/dt = -(d log alpha/dt) / expm1(-2 log alpha).
The sub-VP SDE shares alpha with the VP SDE but has sigma = 1 - alpha^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from rediff._tensor import Tensor
from rediff.schedules.base import Schedule


class _VariancePreserving(Schedule):
    """Schedules with alpha^2 + sigma^2 = 1; subclasses give log alpha and its inverse."""

    @property
    def prior_std(self) -> float:
        return 1.0

    def _log_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * torch.log(-torch.expm1(2.0 * self._log_alpha(t)))

    def _d_log_sigma(self, t: Tensor) -> Tensor:
        return -self._d_log_alpha(t) / torch.expm1(-2.0 * self._log_alpha(t))


@dataclass(frozen=True, eq=False, repr=False)
class DiscreteVP(_VariancePreserving):
    """DDPM's discrete forward process (Ho et al. 2020, eq. 2 and 4).

    Given betas beta_1..beta_T, alpha_bar_k = prod_{i<=k} (1 - beta_i) and
    q(x_k | x0) = N(sqrt(alpha_bar_k) x0, (1 - alpha_bar_k) I). Integer step k maps to
    t = k / T; between the steps log alpha is linear in t (as in Lu et al. 2022,
    DPM-Solver, section 3.4), so every continuous-time sampler runs on a DDPM model.
    t ranges over [1/T, 1].

    Build with ``DiscreteVP.linear(T, beta_start, beta_end)``, ``DiscreteVP.cosine(T, s)``
    or ``DiscreteVP(betas)`` from any betas in (0, 1).
    """

    betas: tuple[float, ...]
    _knots: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(
                f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}"
            )
        if not bool(torch.isfinite(betas).all()) or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must be finite and lie in the open interval (0, 1)")
        object.__setattr__(self, "betas", tuple(float(b) for b in betas))
        # knots[k] = log alpha at t = k/T: 0 at k = 0, then 0.5 * sum_{i<=k} log(1 - beta_i).
        log_alpha = 0.5 * torch.cumsum(torch.log1p(-betas), dim=0)
        object.__setattr__(self, "_knots", torch.cat([betas.new_zeros(1), log_alpha]))
        self._validate_range()

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteVP:
        """Linearly spaced betas (Ho et al. 2020, section 4: T=1000, 1e-4 to 0.02)."""
        _check_steps(T)
        return cls(tuple(torch.linspace(beta_start, beta_end, T, dtype=torch.float64).tolist()))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> DiscreteVP:
        """Cosine schedule (Nichol & Dhariwal 2021, eq. 17):

        alpha_bar(k) = f(k) / f(0),  f(k) = cos^2(((k/T + s) / (1 + s)) * pi/2),
        beta_k = min(1 - alpha_bar(k) / alpha_bar(k-1), max_beta).
        """
        _check_steps(T)
        k = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((k / T + s) / (1 + s) * math.pi / 2).square()
        betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls(tuple(betas.tolist()))

    @property
    def num_steps(self) -> int:
        """T, the number of discrete steps."""
        return len(self.betas)

    @property
    def t_min(self) -> float:  # type: ignore[override]
        return 1.0 / self.num_steps

    @property
    def t_max(self) -> float:  # type: ignore[override]
        return 1.0

    def alphas_cumprod(self) -> Tensor:
        """alpha_bar_k for k = 1..T, float64 [T] (a fresh tensor; the schedule is immutable)."""
        return torch.exp(2.0 * self._knots[1:])

    def __repr__(self) -> str:
        b = self.betas
        return f"DiscreteVP(T={len(b)}, beta_1={b[0]:.6g}, beta_T={b[-1]:.6g})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DiscreteVP) and self.betas == other.betas

    def __hash__(self) -> int:
        return hash(self.betas)

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Segment index k (t in [k/T, (k+1)/T]), the fraction within it, and the knots."""
        knots = self._knots.to(t.device)
        u = t * self.num_steps
        k = torch.floor(u).clamp(0, self.num_steps - 1)
        return k.long(), u - k, knots

    def _log_alpha(self, t: Tensor) -> Tensor:
        k, frac, knots = self._segment(t)
        return knots[k] + frac * (knots[k + 1] - knots[k])

    def _d_log_alpha(self, t: Tensor) -> Tensor:
        k, _, knots = self._segment(t)
        return self.num_steps * (knots[k + 1] - knots[k])

    def _t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        # VP: 2 log alpha = log sigmoid(lambda); find the segment holding it, then interpolate.
        target = 0.5 * F.logsigmoid(log_snr)
        knots = self._knots.to(log_snr.device)
        idx = torch.searchsorted(-knots, -target.contiguous())
        k = (idx - 1).clamp(0, self.num_steps - 1)
        frac = (target - knots[k]) / (knots[k + 1] - knots[k])
        return (k + frac) / self.num_steps


def _check_steps(T: int) -> None:
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T (the number of steps) must be a positive integer, got {T!r}")


@dataclass(frozen=True)
class _LinearBeta:
    """beta(t) = beta_min + t (beta_max - beta_min) and its integral B(t) (Song et al. 2021,
    appendix B): B(t) = beta_min t + (beta_max - beta_min) t^2 / 2."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-5
    t_max: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta_min) and math.isfinite(self.beta_max)):
            raise ValueError("beta_min and beta_max must be finite")
        if not 0.0 < self.beta_min <= self.beta_max:
            raise ValueError(
                f"need 0 < beta_min <= beta_max, got beta_min={self.beta_min}, "
                f"beta_max={self.beta_max}"
            )
        self._validate_range()  # type: ignore[attr-defined]

    def _beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _integral(self, t: Tensor) -> Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t.square()

    def _t_from_integral(self, B: Tensor) -> Tensor:
        """Positive root of B(t) = B without cancellation: 2B / (b0 + sqrt(b0^2 + 2 d B)),
        with b0 = beta_min and d = beta_max - beta_min."""
        d = self.beta_max - self.beta_min
        return 2.0 * B / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * d * B))


@dataclass(frozen=True)
class LinearVP(_LinearBeta, _VariancePreserving):
    """The VP SDE dx = -beta(t)/2 x dt + sqrt(beta(t)) dw (Song et al. 2021, eq. 11), the
    continuous limit of DDPM: alpha(t) = exp(-B(t)/2), sigma^2 = 1 - exp(-B(t))."""

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self._integral(t)

    def _d_log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self._beta(t)

    def _t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        # alpha^2 = sigmoid(lambda) = exp(-B)  =>  B = softplus(-lambda).
        return self._t_from_integral(F.softplus(-log_snr))


@dataclass(frozen=True)
class SubVP(_LinearBeta, Schedule):
    """The sub-VP SDE dx = -beta/2 x dt + sqrt(beta (1 - exp(-2 B(t)))) dw (Song et al. 2021,
    eq. 12): alpha(t) = exp(-B/2) as for VP, sigma(t) = 1 - exp(-B)."""

    @property
    def prior_std(self) -> float:
        return 1.0

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self._integral(t)

    def _d_log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self._beta(t)

    def _log_sigma(self, t: Tensor) -> Tensor:
        return torch.log(-torch.expm1(-self._integral(t)))

    def _d_log_sigma(self, t: Tensor) -> Tensor:
        return self._beta(t) / torch.expm1(self._integral(t))

    def _t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        # exp(lambda/2) = w / (1 - w^2) with w = exp(-B/2), whose root in (0, 1) gives
        # B = 2 asinh(exp(-lambda/2) / 2).
        return self._t_from_integral(2.0 * torch.asinh(0.5 * torch.exp(-0.5 * log_snr)))
