"""Flow matching / rectified flow (Lipman et al. 2023, "Flow Matching for Generative
Modeling", eq. 23 with sigma_min = 0; Liu et al. 2023, "Flow Straight and Fast"; Esser et al.
2024, SD3, eq. 3): the straight path between data and noise,

    x_t = (1 - t) x0 + t eps,    alpha(t) = 1 - t,  sigma(t) = t,

whose conditional velocity d x_t / dt = eps - x0 is the ``velocity`` target. Its SDE
coefficients follow from the base class: f = -1 / (1 - t), g^2 = 2 t / (1 - t).

t = 1 (pure noise, alpha = 0) has an infinite noise level sigma / alpha, which the samplers'
log-SNR steps cannot take, so t_max < 1 (default 1 - 1e-3: noise level 999, beyond EDM's
80; the prior N(0, I) then differs from q(x_{t_max}) by 1e-3 x0, far below sampling error).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rediff._tensor import Tensor
from rediff.schedules.base import Schedule


@dataclass(frozen=True)
class FlowMatching(Schedule):
    """The rectified-flow path alpha(t) = 1 - t, sigma(t) = t on [t_min, t_max]."""

    t_min: float = 1e-5
    t_max: float = 1.0 - 1e-3

    def __post_init__(self) -> None:
        if not self.t_max < 1.0:
            raise ValueError(
                f"flow matching needs t_max < 1 (alpha(1) = 0: an infinite noise level), got "
                f"{self.t_max}"
            )
        self._validate_range()

    @property
    def prior_std(self) -> float:
        return 1.0

    def _log_alpha(self, t: Tensor) -> Tensor:
        return torch.log1p(-t)

    def _d_log_alpha(self, t: Tensor) -> Tensor:
        return -1.0 / (1.0 - t)

    def _log_sigma(self, t: Tensor) -> Tensor:
        return torch.log(t)

    def _d_log_sigma(self, t: Tensor) -> Tensor:
        return 1.0 / t

    def _t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        # log_snr = 2 log((1 - t) / t)  =>  t = 1 / (1 + exp(log_snr / 2))
        return torch.sigmoid(-0.5 * log_snr)


__all__ = ["FlowMatching"]
