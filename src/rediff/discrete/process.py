"""Discrete-state forward processes (Austin et al. 2021, "Structured Denoising Diffusion
Models in Discrete State-Spaces", D3PM).

Each coordinate of x0 in {0, ..., K-1} is corrupted independently by a Markov chain over
S states with row-stochastic one-step matrices Q_t, t = 1..T:

    q(x_t | x_{t-1}) = Cat(x_t; e_{x_{t-1}} Q_t),   q(x_t | x0) = Cat(x_t; e_{x0} Qbar_t),
    Qbar_t = Q_1 Q_2 ... Q_t,   Q_{s->t} = Q_{s+1} ... Q_t  (s < t),

and the posterior (Austin eq. 3, for any s < t)

    q(x_s | x_t, x0) = Q_{s->t}[x_s, x_t] Qbar_s[x0, x_s] / Qbar_t[x0, x_t].

Kinds (``Kind``):
- ``uniform``: Q_t = (1 - beta_t) I + beta_t / K 1 1^T (stationary: uniform);
- ``absorbing``: an extra [MASK] state K; Q_t = (1 - beta_t) I + beta_t 1 e_K^T (stationary:
  all mass on [MASK]);
- ``gaussian``: ordinal levels; Q_t[i, j] proportional to exp(-(v_i - v_j)^2 / beta_t) off the
  diagonal, with v_i = 2 i / (K - 1) - 1 the level's value in [-1, 1], and the diagonal filling
  each row to 1: symmetric, doubly stochastic (stationary: uniform);
- ``banded``: ordinal; moves only to the ``bands`` nearest levels on either side, each with
  probability beta_t / K (the nearest-neighbour process for bands = 1; stationary: uniform).

Beta schedules (``BetaSchedule``): ``linear`` (beta_start to beta_end), ``cosine`` (Hoogeboom
et al. 2021: alpha_bar_t = cos((t/T + 0.008) / 1.008 pi / 2), beta_t = 1 - alpha_bar_t /
alpha_bar_{t-1}, at most 0.999) and ``mutual_info`` (Sohl-Dickstein et al. 2015: beta_t =
1 / (T - t + 1), which takes an absorbing chain to [MASK] exactly at t = T).

Matrices are float64, [S, S]: the T one-step matrices and the T + 1 products Qbar_t are kept
(memory O(T S^2)), products between other times are computed on demand and cached; no
[D, S, S] tensor per sample is ever made.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from rediff._choices import Choice
from rediff._tensor import Tensor


class Kind(Choice, noun="discrete process"):
    UNIFORM = "uniform"
    ABSORBING = "absorbing"
    GAUSSIAN = "gaussian"
    BANDED = "banded"


class BetaSchedule(Choice, noun="beta schedule"):
    LINEAR = "linear"
    COSINE = "cosine"
    MUTUAL_INFO = "mutual_info"


def make_betas(
    schedule: BetaSchedule | str, T: int, start: float = 0.02, end: float = 1.0
) -> tuple[float, ...]:
    """beta_1 .. beta_T of a ``BetaSchedule`` (``start`` / ``end``: the linear one's ends)."""
    schedule = BetaSchedule.parse(schedule)
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be an integer >= 1, got {T!r}")
    if schedule is BetaSchedule.LINEAR:
        if not 0.0 < start <= end <= 1.0:
            raise ValueError(
                f"linear betas need 0 < beta_start <= beta_end <= 1, got {start}, {end}"
            )
        betas = torch.linspace(start, end, T, dtype=torch.float64)
    elif schedule is BetaSchedule.COSINE:
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        alpha_bar = torch.cos((steps + 0.008) / 1.008 * math.pi / 2)
        betas = (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    else:
        betas = 1.0 / torch.arange(T, 0, -1, dtype=torch.float64)
    return tuple(betas.tolist())


def default_betas(kind: Kind | str) -> BetaSchedule:
    """Each kind's usual schedule (Austin et al. 2021): absorbing mutual_info, uniform cosine,
    gaussian and banded linear."""
    defaults = {Kind.ABSORBING: BetaSchedule.MUTUAL_INFO, Kind.UNIFORM: BetaSchedule.COSINE}
    return defaults.get(Kind.parse(kind), BetaSchedule.LINEAR)


class PerCoordinate:
    """What every per-coordinate process offers from its ``cumulative(t)`` (Qbar_t, [S, S] or
    [B, S, S]), ``prior()``, ``categories`` / ``num_states``, ``end`` (the last time) and
    ``_batch_times(t, x0)`` (t checked, as one time per sample): the data check, the
    marginal q(x_t | x0), draws from it and the prior's KL."""

    categories: int
    carries_over = False  # a model of it copies the unmasked tokens (MaskedProcess)

    def check_data(self, x0: Tensor, what: str = "x0") -> Tensor:
        """``x0`` if it holds integers in {0, ..., K-1}, else a ValueError saying so."""
        return check_categories(x0, self.categories, what)

    def marginal(self, x0: Tensor, t: int | Tensor) -> Tensor:
        """q(x_t | x0) for x0: [B, *D] integers, t: int or [B]: probabilities [B, *D, S]."""
        rows = self.cumulative(self._batch_times(t, x0)).to(x0.device)  # [B, S, S]
        flat = x0.reshape(x0.shape[0], -1)
        index = flat[..., None].expand(*flat.shape, self.num_states)
        return rows.gather(1, index).reshape(*x0.shape, self.num_states)

    def sample(
        self, x0: Tensor, t: int | Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """x_t ~ q(x_t | x0), integers shaped like x0."""
        return categorical(self.marginal(x0, t), generator)

    def prior_kl(self, x0: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x0) || prior), nats summed over dimensions: [B], float64."""
        q = self.marginal(x0, self.end)
        return kl(q, self.prior().to(q.device).expand_as(q)).reshape(x0.shape[0], -1).sum(1)


@dataclass(frozen=True)
class DiscreteProcess(PerCoordinate):
    """A per-coordinate D3PM forward process over ``categories`` = K data values with one-step
    rates ``betas`` (beta_1 .. beta_T) of a ``Kind`` (see the module docstring). Steps are
    integers t = 0 (data) .. T."""

    kind: Kind
    categories: int
    betas: tuple[float, ...]
    bands: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Kind.parse(self.kind))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if isinstance(self.categories, bool) or not isinstance(self.categories, int):
            raise ValueError(f"categories must be an integer, got {self.categories!r}")
        if self.categories < 2:
            raise ValueError(
                f"a discrete process needs at least 2 categories, got {self.categories}"
            )
        if not self.betas or not all(0.0 < b <= 1.0 and math.isfinite(b) for b in self.betas):
            raise ValueError("betas must be a non-empty sequence of numbers in (0, 1]")
        if self.kind is Kind.BANDED and not 1 <= self.bands < self.categories:
            raise ValueError(f"bands must lie in [1, {self.categories - 1}], got {self.bands}")

    @classmethod
    def make(
        cls,
        kind: Kind | str,
        categories: int,
        T: int = 1000,
        betas: BetaSchedule | str | None = None,
        *,
        beta_start: float = 0.02,
        beta_end: float = 1.0,
        bands: int = 1,
    ) -> DiscreteProcess:
        """A process with ``betas`` from a schedule (``beta_start`` / ``beta_end``: the linear
        one's ends); by default each kind's usual schedule (``default_betas``)."""
        kind = Kind.parse(kind)
        schedule = default_betas(kind) if betas is None else betas
        return cls(kind, categories, make_betas(schedule, T, beta_start, beta_end), bands)

    # ---- sizes -------------------------------------------------------------------------------

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    @property
    def num_states(self) -> int:
        """S: the K data values, plus [MASK] for the absorbing kind."""
        return self.categories + (self.kind is Kind.ABSORBING)

    @property
    def mask(self) -> int | None:
        """The [MASK] state (absorbing kind), else None."""
        return self.categories if self.kind is Kind.ABSORBING else None

    @property
    def ordinal(self) -> bool:
        """Whether the kind uses the order of the values (levels, not tokens)."""
        return self.kind in (Kind.GAUSSIAN, Kind.BANDED)

    def __repr__(self) -> str:
        return f"DiscreteProcess({self.kind.value}, K={self.categories}, T={self.num_steps})"

    # ---- matrices ----------------------------------------------------------------------------

    def step_matrix(self, t: int) -> Tensor:
        """Q_t, float64 [S, S] (t = 1..T): row i is q(x_t | x_{t-1} = i)."""
        if not 1 <= t <= self.num_steps:
            raise ValueError(f"step t must lie in 1..{self.num_steps}, got {t}")
        beta, K, S = self.betas[t - 1], self.categories, self.num_states
        if self.kind is Kind.UNIFORM:
            Q = torch.full((S, S), beta / K, dtype=torch.float64)
        elif self.kind is Kind.ABSORBING:
            Q = torch.zeros(S, S, dtype=torch.float64)
            Q[:, self.mask] = beta
        else:
            offset = torch.arange(K)[:, None] - torch.arange(K)[None, :]
            if self.kind is Kind.BANDED:
                Q = torch.where(offset.abs() <= self.bands, beta / K, 0.0).to(torch.float64)
            else:
                levels = torch.arange(-(K - 1), K, dtype=torch.float64) * 2.0 / (K - 1)
                weights = torch.softmax(-levels.square() / beta, dim=0)  # offsets -(K-1)..K-1
                Q = weights[offset + K - 1]
        Q.fill_diagonal_(0.0)
        return Q + torch.diag(1.0 - Q.sum(1))

    @functools.cached_property
    def _steps(self) -> Tensor:
        """[T + 1, S, S]: Q_t at index t (index 0: I)."""
        eye = torch.eye(self.num_states, dtype=torch.float64)
        return torch.stack([eye, *(self.step_matrix(t) for t in range(1, self.num_steps + 1))])

    @functools.cached_property
    def _cumulative(self) -> Tensor:
        """[T + 1, S, S]: Qbar_t at index t (Qbar_0 = I)."""
        out = [self._steps[0]]
        for t in range(1, self.num_steps + 1):
            out.append(out[-1] @ self._steps[t])
        return torch.stack(out)

    def cumulative(self, t: int | Tensor) -> Tensor:
        """Qbar_t, [S, S] (or [B, S, S] for t: [B]); row i is q(x_t | x0 = i)."""
        return self._cumulative[_steps_of(t, self.num_steps)]

    @functools.lru_cache(maxsize=256)  # noqa: B019 - processes are immutable and hashable
    def transition(self, s: int, t: int) -> Tensor:
        """Q_{s->t} = Q_{s+1} ... Q_t, float64 [S, S] (0 <= s < t <= T)."""
        if not 0 <= s < t <= self.num_steps:
            raise ValueError(
                f"a transition needs 0 <= s < t <= {self.num_steps}, got s = {s}, t = {t}"
            )
        if s == t - 1:
            return self._steps[t]
        if s == 0:
            return self._cumulative[t]
        out = self._steps[s + 1]
        for k in range(s + 2, t + 1):
            out = out @ self._steps[k]
        return out

    def prior(self) -> Tensor:
        """The stationary distribution q(x_T) tends to, float64 [S]: uniform over the K values,
        or all mass on [MASK]."""
        if self.mask is not None:
            return torch.nn.functional.one_hot(torch.tensor(self.mask), self.num_states).double()
        return torch.full((self.num_states,), 1.0 / self.categories, dtype=torch.float64)

    def _batch_times(self, t: int | Tensor, x0: Tensor) -> Tensor:
        return _per_sample(t, x0, self.num_steps)

    @property
    def end(self) -> int:
        """The last time, T."""
        return self.num_steps

    def time_input(self, t: Tensor) -> Tensor:
        """What a network is told of step t: t / T in float32."""
        return t.float() / self.num_steps

    def grid(self, steps: int | None = None) -> list[int]:
        """``steps`` + 1 integer times from T down to 0, evenly spaced (None: every step)."""
        T = self.num_steps
        steps = T if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
            raise ValueError(f"steps must be an integer in 1..T = {T}, got {steps!r}")
        return [round(T * (steps - i) / steps) for i in range(steps + 1)]


def _steps_of(t: int | Tensor, T: int) -> int | Tensor:
    """t as an index into the step tables, checked to lie in 0..T."""
    values = torch.as_tensor(t)
    if values.is_floating_point() or (values.numel() and (values.min() < 0 or values.max() > T)):
        raise ValueError(f"steps must be integers in 0..{T}, got {t!r}")
    return values.long().cpu() if values.ndim else int(values)


def _per_sample(t: int | Tensor, x0: Tensor, T: int) -> Tensor:
    """t as a long tensor [B] (an int is repeated for every sample)."""
    steps = torch.as_tensor(_steps_of(t, T))
    return steps.expand(x0.shape[0]) if steps.ndim == 0 else steps


def check_categories(x: Tensor, categories: int, what: str = "x0") -> Tensor:
    """``x`` as long if it holds integers in {0, ..., K-1}, else a ValueError saying so."""
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(
            f"{what} must hold integer categories in {{0, ..., {categories - 1}}}, got "
            f"{x.dtype} values: a discrete model takes categories, not continuous data"
        )
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= categories):
        raise ValueError(
            f"{what} holds categories in [{int(x.min())}, {int(x.max())}], outside "
            f"{{0, ..., {categories - 1}}}"
        )
    return x.long()


def absorbing_matrix(categories: int, keep: Tensor) -> Tensor:
    """The absorbing chain's matrix that keeps a token with probability ``keep`` (a float or
    [B]) and masks it otherwise: float64 [S, S] (or [B, S, S]), S = K + 1, [MASK] = K
    absorbing."""
    keep = torch.as_tensor(keep, dtype=torch.float64)
    K = categories
    out = torch.zeros(*keep.shape, K + 1, K + 1, dtype=torch.float64)
    eye = torch.eye(K, dtype=torch.float64)
    out[..., :K, :K] = keep[..., None, None] * eye
    out[..., :K, K] = (1.0 - keep)[..., None]
    out[..., K, K] = 1.0
    return out


def categorical(
    probs: Tensor, generator: torch.Generator | None = None, u: Tensor | None = None
) -> Tensor:
    """One draw from each categorical distribution along the last dimension of ``probs``, by
    the inverse CDF of uniforms ``u`` (shaped like probs[..., 0]; drawn from ``generator``
    when not given): integers shaped like probs[..., 0]."""
    cdf = probs.cumsum(-1)
    if u is None:
        u = torch.rand(probs.shape[:-1], generator=generator, dtype=cdf.dtype)
    u = u.to(device=probs.device, dtype=cdf.dtype)[..., None] * cdf[..., -1:]
    return (cdf <= u).sum(-1).clamp(max=probs.shape[-1] - 1)


def kl(p: Tensor, q: Tensor) -> Tensor:
    """KL(p || q) along the last dimension (0 log 0 = 0; q = 0 where p > 0 gives inf). The
    logarithms are taken only where p > 0, so no NaN reaches the gradient from the terms
    left out."""
    positive = p > 0
    one = torch.ones_like(p)
    log_ratio = torch.log(torch.where(positive, p, one)) - torch.log(torch.where(positive, q, one))
    return torch.where(positive, p * log_ratio, torch.zeros_like(p)).sum(-1)
