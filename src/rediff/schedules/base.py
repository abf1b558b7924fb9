"""The forward process shared by every schedule.

Every schedule defines the Gaussian marginal (Kingma et al. 2021, "Variational Diffusion
Models", eq. 1; Song et al. 2021, "Score-Based Generative Modeling through SDEs", eq. 5)

    q(x_t | x0) = N(alpha(t) x0, sigma(t)^2 I),    x_t = alpha(t) x0 + sigma(t) eps,

and, equivalently, the linear Ito SDE  dx = f(t) x dt + g(t) dw  with (Kingma et al. 2021,
appendix A.1; Song et al. 2021, eq. 5-6)

    f(t)   = d log alpha / dt,
    g(t)^2 = d sigma^2 / dt - 2 f(t) sigma^2 = 2 sigma^2 (d log sigma / dt - d log alpha / dt).

A subclass supplies only ``log alpha``, ``log sigma``, their time derivatives, the inverse of
``log_snr`` and the prior's standard deviation; everything else is derived here once, in
float64. Times are validated against ``[t_min, t_max]``; the single value ``t = 0`` is also
accepted and means clean data (alpha = 1, sigma = 0, log_snr = +inf) for every schedule, so a
time grid can end with an explicit jump to sigma = 0. For VE this is a jump: sigma(t_min) is
about sigma_min, sigma(0) is 0.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from rediff import noise
from rediff._tensor import Tensor, batch_time, expand_to, randn, sum_except_batch

_LOG_2PI = math.log(2.0 * math.pi)


def _as_float64(value: Tensor | float) -> Tensor:
    """``value`` as a float64 tensor on its own device (CPU for Python numbers)."""
    if isinstance(value, Tensor):
        return value.to(torch.float64)
    return torch.as_tensor(value, dtype=torch.float64)


def _tolerance(value: Tensor | float, ulps: float = 8.0) -> float:
    """Relative slack for range checks: ``ulps`` ulps of the caller's dtype.

    A time grid built in float64 and rounded to float32 (1e-5 -> 9.99999975e-06) must still
    pass a check against ``t_min``; anything further out is a genuine error.
    """
    dtype = value.dtype if isinstance(value, Tensor) and value.is_floating_point() else None
    return ulps * torch.finfo(dtype or torch.float64).eps


#: slack of a log-SNR range check, in ulps: a log-SNR is a chain of logs and divisions that
#: peers compute differently (a DPM-Solver's lambda at t_min came 64 ulps past ours), while a
#: genuine error lies orders of magnitude further out
LOG_SNR_ULPS = 1024.0


def _checked_range(
    name: str,
    value: Tensor | float,
    low: float,
    high: float,
    fix: str,
    allow_zero: bool = False,
    ulps: float = 8.0,
) -> Tensor:
    """Return ``value`` in float64, clamped to [low, high] after rejecting what lies outside
    (with ``allow_zero``, an exact 0 is also accepted and kept).

    Raises:
        ValueError: naming the offending range and how to fix it when any element lies
            outside [low, high] by more than rounding, or is NaN.
    """
    v = _as_float64(value)
    slack = _tolerance(value, ulps) * max(abs(low), abs(high), 1e-300)
    bad = torch.isnan(v) | (v < low - slack) | (v > high + slack)
    if allow_zero:
        bad = bad & (v != 0)
    if bool(bad.any()):
        worst = v[bad].flatten()[0].item()
        raise ValueError(f"{name} = {worst!r} lies outside [{low!r}, {high!r}]; {fix}")
    clamped = v.clamp(low, high)
    return torch.where(v == 0, v, clamped) if allow_zero else clamped


#: the largest noise level s = sigma / alpha a schedule may reach: s^4 (the x0-space weight
#: of a score-target loss, the largest power any loss or sampler forms) stays inside
#: float32's range (3.4e38) with room for the error it multiplies. Common schedules end far
#: below it (EDM 80, DDPM's linear betas 158, VE for 1024^2 images 1348, the cosine betas
#: 2e4); for a DiscreteVP it means alpha_bar_T >= 1e-16
MAX_NOISE_LEVEL = 1e8


class Schedule(ABC):
    """A forward process x_t = alpha(t) x0 + sigma(t) eps on t in [t_min, t_max].

    Subclasses are frozen dataclasses: a schedule never changes after construction.

    Shapes: ``t`` is a Python number or a tensor of any shape for the coefficient methods
    (``alpha``, ``sigma``, ...), which act element-wise and return float64; data-valued
    methods take ``x: [B, *D]`` with ``t`` a scalar or ``[B]``.
    """

    t_min: float
    t_max: float

    # ---- what a subclass defines (t already validated, float64) -------------------------
    @abstractmethod
    def _log_alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _log_sigma(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _d_log_alpha(self, t: Tensor) -> Tensor:
        """d log alpha / dt."""

    @abstractmethod
    def _d_log_sigma(self, t: Tensor) -> Tensor:
        """d log sigma / dt."""

    @abstractmethod
    def _t_from_log_snr(self, log_snr: Tensor) -> Tensor: ...

    @property
    @abstractmethod
    def prior_std(self) -> float:
        """Standard deviation s of the prior N(0, s^2 I) that sampling starts from."""

    @property
    def reaches_pure_noise(self) -> bool:
        """Whether alpha(t_max) = 0 exactly (flow matching with t_max = 1): x_{t_max} is the
        prior N(0, I) itself, an infinite noise level that only DDIM, DDPM and Euler can step
        from."""
        return False

    @property
    def finite_t_max(self) -> float:
        """The noisiest time with a finite noise level: t_max, or just below it on a schedule
        that reaches pure noise (where log-SNR grids and the likelihood's ODE start)."""
        return self.t_max

    # ---- validation ----------------------------------------------------------------------
    def _validate_range(self) -> None:
        """Check ``0 < t_min < t_max`` (t = 0 is reserved for clean data) and the noise level
        at t_max against MAX_NOISE_LEVEL (called by subclasses' ``__post_init__``)."""
        if not (math.isfinite(self.t_min) and math.isfinite(self.t_max)):
            raise ValueError(f"t_min and t_max must be finite, got {self.t_min}, {self.t_max}")
        if not 0.0 < self.t_min < self.t_max:
            raise ValueError(
                f"need 0 < t_min < t_max (t = 0 means clean data), got t_min={self.t_min}, "
                f"t_max={self.t_max}"
            )
        if self.reaches_pure_noise:
            return  # alpha(t_max) = 0 exactly: samplers that can start there check for it
        top = float(self.noise_level(torch.tensor(self.t_max, dtype=torch.float64)))
        if not top <= MAX_NOISE_LEVEL:
            raise ValueError(
                f"the noise level sigma/alpha at t_max is {top:.3g}, above {MAX_NOISE_LEVEL:.0e} "
                "(float32 losses and samplers would overflow); use a smaller sigma_max, "
                "smaller betas or a smaller T"
            )

    def check_t(self, t: Tensor | float, allow_zero: bool = True) -> Tensor:
        """``t`` as float64 after checking it is in [t_min, t_max] (rounding allowed) or, with
        ``allow_zero``, exactly 0 (clean data)."""
        return _checked_range(
            f"t for {type(self).__name__}",
            t,
            self.t_min,
            self.t_max,
            "pass times within the schedule's [t_min, t_max]"
            + (", or 0 for clean data" if allow_zero else ""),
            allow_zero=allow_zero,
        )

    # ---- coefficients (float64, element-wise in t) ---------------------------------------
    def log_alpha(self, t: Tensor | float) -> Tensor:
        """log alpha(t); 0 at t = 0."""
        t = self.check_t(t)
        return torch.where(t == 0, 0.0, self._log_alpha(t))

    def log_sigma(self, t: Tensor | float) -> Tensor:
        """log sigma(t); -inf at t = 0."""
        t = self.check_t(t)
        return torch.where(t == 0, -math.inf, self._log_sigma(t))

    def log_coefficients(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """(log alpha(t), log sigma(t)) from one range check: what a grid's coordinates need
        (``transitions.points``); the same values as ``log_alpha`` and ``log_sigma``."""
        t = self.check_t(t)
        zero = t == 0
        return (
            torch.where(zero, 0.0, self._log_alpha(t)),
            torch.where(zero, -math.inf, self._log_sigma(t)),
        )

    def alpha(self, t: Tensor | float) -> Tensor:
        """Signal scale alpha(t) of q(x_t | x0)."""
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensor | float) -> Tensor:
        """Noise standard deviation sigma(t) of q(x_t | x0)."""
        return torch.exp(self.log_sigma(t))

    def log_snr(self, t: Tensor | float) -> Tensor:
        """log-SNR lambda(t) = log(alpha^2 / sigma^2) = 2 (log alpha - log sigma); decreasing,
        +inf at t = 0."""
        return 2.0 * (self.log_alpha(t) - self.log_sigma(t))

    def noise_level(self, t: Tensor | float) -> Tensor:
        """sigma(t) / alpha(t): EDM's and k-diffusion's "sigma" (Karras et al. 2022, eq. 4)."""
        return torch.exp(self.log_sigma(t) - self.log_alpha(t))

    def t_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        """Inverse of ``log_snr``: the t in [t_min, t_max] with lambda(t) = log_snr (and t = 0
        for log_snr = +inf)."""
        low = float(self.log_snr(self.t_max))
        high = float(self.log_snr(self.t_min))
        value = _as_float64(log_snr)
        data = value == math.inf
        checked = _checked_range(
            f"log_snr for {type(self).__name__}",
            torch.where(data, high, value),
            low,
            high,
            "pass log-SNR values between log_snr(t_max) and log_snr(t_min), or +inf for data",
            ulps=LOG_SNR_ULPS,
        )
        t = self._t_from_log_snr(checked).clamp(self.t_min, self.t_max)
        return torch.where(data, 0.0, t)

    def t_from_noise_level(self, noise_level: Tensor | float) -> Tensor:
        """Inverse of ``noise_level`` (0 maps to t = 0): t with sigma(t)/alpha(t) = noise_level."""
        return self.t_from_log_snr(-2.0 * torch.log(_as_float64(noise_level)))

    # ---- the SDE --------------------------------------------------------------------------
    def drift_coef(self, t: Tensor | float) -> Tensor:
        """f(t) = d log alpha / dt, so that the SDE drift is f(t) x (t in [t_min, t_max])."""
        return self._d_log_alpha(self.check_t(t, allow_zero=False))

    def diffusion_squared(self, t: Tensor | float) -> Tensor:
        """g(t)^2 = 2 sigma^2 (d log sigma/dt - d log alpha/dt) = -sigma^2 d lambda/dt
        (t in [t_min, t_max])."""
        t = self.check_t(t, allow_zero=False)
        sigma2 = torch.exp(2.0 * self._log_sigma(t))
        return 2.0 * sigma2 * (self._d_log_sigma(t) - self._d_log_alpha(t))

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        """SDE drift f(t) x for x: [B, *D], t scalar or [B]."""
        return expand_to(self.drift_coef(batch_time(t, x)), x) * x

    # ---- data-valued ----------------------------------------------------------------------
    def marginal(
        self,
        x0: Tensor,
        t: Tensor | float,
        noise: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample x_t = alpha(t) x0 + sigma(t) noise from q(x_t | x0).

        Args:
            x0: clean data [B, *D].
            t: a scalar or [B].
            noise: eps [B, *D]; drawn from N(0, I) with ``generator`` when omitted.
        """
        if noise is None:
            noise = randn(x0.shape, generator, x0.dtype, x0.device)
        elif noise.shape != x0.shape:
            raise ValueError(
                f"noise has shape {tuple(noise.shape)} but x0 has shape {tuple(x0.shape)}; "
                "they must match"
            )
        t = batch_time(t, x0)
        return expand_to(self.alpha(t), x0) * x0 + expand_to(self.sigma(t), x0) * noise

    def prior_sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        *,
        generator: noise.Randomness = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw x_T ~ N(0, prior_std^2 I) of the given shape (a NoiseSource is asked for the
        noise of step -1, at t_max)."""
        t = self.t_max
        z = noise.draw(generator, tuple(shape), dtype, device, step=-1, t=t, t_next=t)
        return self.prior_std * z

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """log N(x; 0, prior_std^2 I) summed over all but the batch dimension: [B, *D] -> [B]."""
        s = self.prior_std
        x64 = x.to(torch.float64) / s
        per_dim = -0.5 * x64.square() - math.log(s) - 0.5 * _LOG_2PI
        return sum_except_batch(per_dim)

    def prior_kl(self, x0: Tensor) -> Tensor:
        """KL(q(x_{t_max} | x0) || prior) in nats per sample: DDPM's L_T term.

        For q = N(alpha x0, sigma^2 I) and prior N(0, s^2 I), per dimension
        (Ho et al. 2020, eq. 5, L_T):

            KL = log(s / sigma) + (sigma^2 - s^2 + alpha^2 x0^2) / (2 s^2).
        """
        log_alpha = self.log_alpha(self.t_max)
        log_sigma = self.log_sigma(self.t_max)
        s = self.prior_std
        alpha2 = torch.exp(2.0 * log_alpha)
        sigma2 = torch.exp(2.0 * log_sigma)
        x64 = x0.to(torch.float64)
        per_dim = (math.log(s) - log_sigma) + (sigma2 - s * s + alpha2 * x64.square()) / (2 * s * s)
        return sum_except_batch(per_dim)
