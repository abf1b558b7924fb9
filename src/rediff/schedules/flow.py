"""Flow matching / rectified flow (Lipman et al. 2023, "Flow Matching for Generative
Modeling", eq. 23 with sigma_min = 0; Liu et al. 2023, "Flow Straight and Fast"; Esser et al.
2024, SD3, eq. 3): the straight path between data and noise,

    x_t = (1 - t) x0 + t eps,    alpha(t) = 1 - t,  sigma(t) = t,

whose conditional velocity d x_t / dt = eps - x0 is the ``velocity`` target. Its SDE
coefficients follow from the base class: f = -1 / (1 - t), g^2 = 2 t / (1 - t).

t = 1 (pure noise, alpha = 0) has an infinite noise level sigma / alpha, which the samplers'
log-SNR steps and the likelihood's ODE cannot take, so by default t_max = 1 - 1e-3 (noise
level 999, beyond EDM's 80; the prior N(0, I) then differs from q(x_{t_max}) by 1e-3 x0, far
below sampling error; diffusers' flow DPM-Solver and UniPC start at 1 - 1/T, the same for
T = 1000). ``t_max = 1`` is allowed: diffusers' FlowMatchEulerDiscreteScheduler starts there,
and DDIM, DDPM and Euler (whose step from pure noise is x_q = alpha_q x0_hat + sigma_q x_p)
can step from it; log-SNR and Karras grids and the likelihood then start at ``finite_t_max``
(1 - 1e-3), and the other samplers refuse a grid that starts at t = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rediff._tensor import Tensor
from rediff.schedules.base import Schedule

#: the default t_max, and where log-SNR grids and the likelihood start when t_max = 1
FINITE_T_MAX = 1.0 - 1e-3


@dataclass(frozen=True)
class FlowMatching(Schedule):
    """The rectified-flow path alpha(t) = 1 - t, sigma(t) = t on [t_min, t_max]."""

    t_min: float = 1e-5
    t_max: float = FINITE_T_MAX

    def __post_init__(self) -> None:
        if not self.t_max <= 1.0:
            raise ValueError(f"flow matching needs t_max <= 1 (alpha = 1 - t), got {self.t_max}")
        self._validate_range()

    @property
    def reaches_pure_noise(self) -> bool:
        return self.t_max == 1.0

    @property
    def finite_t_max(self) -> float:
        return FINITE_T_MAX if self.reaches_pure_noise else self.t_max

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
