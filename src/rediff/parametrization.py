"""What a network predicts, and the one exact conversion between all such targets.

With x_t = alpha x0 + sigma eps, every target is affine in (x_t, x0):

    target = a(alpha, sigma) * x_t + b(alpha, sigma) * x0.

| target  | definition                          | a                       | b                     |
|---------|-------------------------------------|-------------------------|-----------------------|
| `x0`    | x0                                  | 0                       | 1                     |
| `eps`   | (x_t - alpha x0) / sigma            | 1 / sigma               | -alpha / sigma        |
| `score` | grad log q(x_t) = -eps / sigma      | -1 / sigma^2            | alpha / sigma^2       |
| `v`     | alpha eps - sigma x0                | alpha / sigma           | -(a^2 + s^2) / sigma  |
| `edm`   | F, x0 = c_skip x_t/alpha + c_out F  | -c_skip / (alpha c_out) | 1 / c_out             |
| `velocity` | eps - x0                         | 1 / sigma               | -(a + s) / sigma      |

(v: Salimans & Ho 2022, with a = alpha, s = sigma; score: Tweedie's formula; velocity: the
conditional velocity d x_t / dt of flow matching's path alpha = 1 - t, sigma = t, Lipman et
al. 2023.)

EDM's preconditioning (Karras et al. 2022, eq. 7 and table 1) is written in the noise level
s = sigma / alpha and the scaled input x_t / alpha: c_skip = sd^2 / (s^2 + sd^2),
c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2) with sd = sigma_data.

Because the table holds for any (alpha, sigma), VP or not, ``convert`` is exact for all of
them: from target p to target q, x0 = (p - a_p x_t) / b_p, so
q = (a_q - b_q a_p / b_p) x_t + (b_q / b_p) p. Coefficients are computed in float64.
Samplers and losses never branch on the target: they call this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rediff._choices import Choice
from rediff._tensor import Tensor, expand_to, scaled_sum


class Target(Choice, noun="prediction target"):
    """What a network predicts; ``Target.parse`` accepts the names below."""

    X0 = "x0"
    EPS = "eps"
    SCORE = "score"
    V = "v"
    EDM = "edm"
    # eps - x0: the conditional velocity of flow matching's straight path (Lipman et al.
    # 2023); for any (alpha, sigma) a target like the others
    VELOCITY = "velocity"


Number = Tensor | float


def _edm_scalings(alpha: Number, sigma: Number, sigma_data: float) -> tuple[Number, Number]:
    """EDM's (c_skip, c_out) at noise level s = sigma / alpha (Karras et al. 2022, table 1)."""
    s2 = (sigma / alpha) ** 2
    sd2 = sigma_data * sigma_data
    c_skip = sd2 / (s2 + sd2)
    c_out = s2**0.5 * sigma_data / (s2 + sd2) ** 0.5
    return c_skip, c_out


def _edm_coefficients(alpha: Number, sigma: Number, sigma_data: float) -> tuple[Number, Number]:
    c_skip, c_out = _edm_scalings(alpha, sigma, sigma_data)
    return -c_skip / (alpha * c_out), 1.0 / c_out


def _x0_coefficients(alpha: Number, sigma: Number, sigma_data: float) -> tuple[Number, Number]:
    zero = 0.0 * alpha
    return zero, zero + 1.0


_Coefficients = Callable[[Number, Number, float], tuple[Number, Number]]

# written with operators only, so that the same table serves float64 tensors [B] (losses,
# per-sample times) and Python floats (samplers' one time per batch)
_TABLE: dict[Target, _Coefficients] = {
    Target.X0: _x0_coefficients,
    Target.EPS: lambda alpha, sigma, _: (1.0 / sigma, -alpha / sigma),
    Target.SCORE: lambda alpha, sigma, _: (-1.0 / sigma**2, alpha / sigma**2),
    Target.V: lambda alpha, sigma, _: (alpha / sigma, -(alpha**2 + sigma**2) / sigma),
    Target.EDM: _edm_coefficients,
    Target.VELOCITY: lambda alpha, sigma, _: (1.0 / sigma, -(alpha + sigma) / sigma),
}


def _float64(value: Tensor | float) -> Number:
    """Python numbers stay floats (computed in double precision by Python); tensors become
    float64 tensors."""
    if isinstance(value, Tensor):
        return value.to(torch.float64)
    return float(value)


def coefficients(
    target: Target | str, alpha: Tensor | float, sigma: Tensor | float, sigma_data: float = 0.5
) -> tuple[Number, Number]:
    """(a, b) in float64 with target = a x_t + b x0 at (alpha, sigma) (see the module table).

    ``alpha`` and ``sigma`` are Python floats (the result is floats) or tensors, 0-dim or
    per-sample [B] (the result is float64 tensors).
    """
    alpha, sigma = _float64(alpha), _float64(sigma)
    return _TABLE[Target.parse(target)](alpha, sigma, sigma_data)


def convert(
    value: Tensor,
    x_t: Tensor,
    alpha: Tensor | float,
    sigma: Tensor | float,
    source: Target | str,
    dest: Target | str,
    *,
    sigma_data: float = 0.5,
) -> Tensor:
    """Convert a prediction of target ``source`` into target ``dest``, exactly.

    Args:
        value: the prediction, [B, *D].
        x_t: the noisy input it was made from, [B, *D].
        alpha, sigma: floats, or tensors 0-dim or [B] (any positive values: VP, VE or
            neither).
        sigma_data: EDM's data standard deviation, used only by the ``edm`` target.

    Returns:
        q = (a_q - b_q a_p / b_p) x_t + (b_q / b_p) value, in ``value``'s dtype.
    """
    source, dest = Target.parse(source), Target.parse(dest)
    if value.shape != x_t.shape:
        raise ValueError(
            f"prediction has shape {tuple(value.shape)} but x_t has shape {tuple(x_t.shape)}; "
            "a network must return a tensor shaped like its input"
        )
    if source is dest:
        return value
    a_p, b_p = coefficients(source, alpha, sigma, sigma_data)
    a_q, b_q = coefficients(dest, alpha, sigma, sigma_data)
    ratio = b_q / b_p
    if isinstance(ratio, float):  # one time for the batch: two kernels, no coefficient tensors
        return scaled_sum(ratio, value, a_q - ratio * a_p, x_t)
    return expand_to(a_q - ratio * a_p, x_t) * x_t + expand_to(ratio, value) * value


def input_scale(
    target: Target | str, alpha: Tensor | float, sigma: Tensor | float, sigma_data: float = 0.5
) -> Number:
    """Scale applied to x_t before the network: EDM's c_in / alpha = 1 / sqrt(sigma^2 +
    alpha^2 sd^2) (Karras et al. 2022, table 1, in x_t coordinates); 1 for other targets.
    Floats for float arguments, float64 tensors otherwise."""
    alpha, sigma = _float64(alpha), _float64(sigma)
    if Target.parse(target) is Target.EDM:
        return 1.0 / (sigma**2 + (alpha * sigma_data) ** 2) ** 0.5
    return 0.0 * alpha * sigma + 1.0


@dataclass(frozen=True)
class Prediction:
    """A denoiser's output at (x_t, t), viewed as any target.

    ``x0`` is stored; ``eps``, ``score`` and ``v`` are derived from it by ``convert``, so
    they are consistent by construction. ``alpha`` and ``sigma`` are float64 [B].
    """

    x_t: Tensor
    x0: Tensor
    alpha: Tensor
    sigma: Tensor

    def as_target(self, target: Target | str, *, sigma_data: float = 0.5) -> Tensor:
        """The prediction expressed as ``target``."""
        return convert(
            self.x0, self.x_t, self.alpha, self.sigma, Target.X0, target, sigma_data=sigma_data
        )

    @property
    def eps(self) -> Tensor:
        """eps_hat = (x_t - alpha x0_hat) / sigma."""
        return self.as_target(Target.EPS)

    @property
    def score(self) -> Tensor:
        """score_hat = -eps_hat / sigma = (alpha x0_hat - x_t) / sigma^2."""
        return self.as_target(Target.SCORE)

    @property
    def v(self) -> Tensor:
        """v_hat = alpha eps_hat - sigma x0_hat."""
        return self.as_target(Target.V)
