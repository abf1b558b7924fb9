"""Variance-exploding forward processes: NCSN / SMLD (the VE SDE) and EDM.

Both keep alpha(t) = 1 and grow sigma(t): x_t = x0 + sigma(t) eps. The SDE has no drift and
g(t)^2 = d sigma^2 / dt (Song et al. 2021, eq. 9; Karras et al. 2022, eq. 6 with s(t) = 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rediff._tensor import Tensor
from rediff.schedules.base import Schedule


@dataclass(frozen=True)
class _VarianceExploding(Schedule):
    """alpha(t) = 1 between sigma_min and sigma_max; the prior is N(0, sigma_max^2 I)."""

    sigma_min: float
    sigma_max: float

    def _validate_sigmas(self) -> None:
        if not (math.isfinite(self.sigma_min) and math.isfinite(self.sigma_max)):
            raise ValueError("sigma_min and sigma_max must be finite")
        if not 0.0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, "
                f"sigma_max={self.sigma_max}"
            )

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def _log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _d_log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)


@dataclass(frozen=True)
class VE(_VarianceExploding):
    """NCSN / SMLD noise: sigma(t) = sigma_min (sigma_max / sigma_min)^t, t in [t_min, t_max]
    (Song & Ermon 2019, geometric noise levels; Song et al. 2021, eq. 9 and appendix C)."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 1e-5
    t_max: float = 1.0

    def __post_init__(self) -> None:
        self._validate_sigmas()
        self._validate_range()

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def _log_sigma(self, t: Tensor) -> Tensor:
        return math.log(self.sigma_min) + t * self._log_ratio

    def _d_log_sigma(self, t: Tensor) -> Tensor:
        return torch.full_like(t, self._log_ratio)

    def _t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        return (-0.5 * log_snr - math.log(self.sigma_min)) / self._log_ratio


@dataclass(frozen=True)
class EDM(_VarianceExploding):
    """EDM's process (Karras et al. 2022, table 1): sigma(t) = t, so t *is* the noise level,
    t in [sigma_min, sigma_max]; g(t)^2 = 2 t."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def __post_init__(self) -> None:
        self._validate_sigmas()
        self._validate_range()

    @property
    def t_min(self) -> float:  # type: ignore[override]
        return self.sigma_min

    @property
    def t_max(self) -> float:  # type: ignore[override]
        return self.sigma_max

    def _log_sigma(self, t: Tensor) -> Tensor:
        return torch.log(t)

    def _d_log_sigma(self, t: Tensor) -> Tensor:
        return 1.0 / t

    def _t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        return torch.exp(-0.5 * log_snr)
