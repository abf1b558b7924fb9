"""Insertion and deletion: a forward process on token sequences whose length changes
(Johnson et al. 2021, "Beyond In-Place Corruption", arXiv 2107.07675, with their sentinel
bookkeeping).

A sequence holds values 0..K-1 and two sentinels, INS = K and DEL = K + 1. One forward step
q(x_t | x_{t-1}), with the step's rates p_insert, p_delete, p_replace:

1. every DEL of x_{t-1} is removed (it was marked at the step before);
2. every INS of x_{t-1} becomes a fresh value drawn from the insertion distribution r
   (uniform over the K values);
3. every value v of x_{t-1} becomes DEL with probability p_delete, a fresh draw from r with
   probability p_replace (the in-place transition A = (1 - p_replace) I + p_replace 1 r^T
   of the kept tokens; identity when p_replace = 0), and stays v otherwise;
4. into each of the m + 1 gaps around the m surviving tokens go k INS sentinels,
   P(k) = (1 - p_insert) p_insert^k (geometric).

Because an inserted token is INS when it appears and a deleted one is DEL before it
disappears, the non-INS tokens of x_t are, in order, the images of the non-DEL tokens of
x_{t-1}: the alignment of two consecutive sequences is unique, so

    log q(x_t | x_{t-1}) = sum_gaps log[(1 - p_insert) p_insert^{k_g}]
                           + sum_{aligned (u -> w)} log A'(u -> w),

with A'(INS -> w) = r(w), A'(v -> DEL) = p_delete and A'(v -> w) = (1 - p_delete -
p_replace) [v = w] + p_replace r(w): closed-form, with no sum over alignments. The schedule
ends by deleting everything: no insertions in the last three steps, every value deleted at
step T - 1, so x_{T-1} holds only DEL sentinels and x_T is the empty sequence with
probability 1 (the prior is trivial).

Sequences are 1-D numpy int64 arrays; randomness comes from a numpy Generator per sequence
(seeded from the caller's torch generator), so a sequence's noise does not depend on its
batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rediff._choices import Choice

Sequence = np.ndarray  # int64 [n]: values 0..K-1, INS = K, DEL = K + 1


class Survival(Choice, noun="schedule.survival"):
    """How the probability that a data token is still in x_t falls from 1 (t = 0) to 0 at
    step T - 1: linearly in t, or as cos^2(pi t / (2 (T - 1)))."""

    LINEAR = "linear"
    COSINE = "cosine"


def _entropy(probs: np.ndarray) -> float:
    """-sum p log p over the positive entries (nats)."""
    p = probs[probs > 0]
    return float(-(p * np.log(p)).sum())


def geometric_entropy(p: float) -> float:
    """Entropy (nats) of P(k) = (1 - p) p^k, k >= 0: -log(1 - p) - p log(p) / (1 - p)."""
    return 0.0 if p == 0 else -math.log1p(-p) - p * math.log(p) / (1 - p)


@dataclass(frozen=True)
class InsDelProcess:
    """The insertion/deletion process over ``categories`` = K values with per-step rates
    (step t = 1..T reads index t - 1 of each tuple). Use ``make`` for a schedule from a
    survival curve; the constructor checks any given rates."""

    categories: int
    p_insert: tuple[float, ...]
    p_delete: tuple[float, ...]
    p_replace: tuple[float, ...]

    def __post_init__(self) -> None:
        rates = (self.p_insert, self.p_delete, self.p_replace)
        for name, values in zip(("p_insert", "p_delete", "p_replace"), rates, strict=True):
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if self.categories < 2:
            raise ValueError(
                f"an insertion/deletion process needs >= 2 values, got {self.categories}"
            )
        T = len(self.p_insert)
        if T < 3 or len(self.p_delete) != T or len(self.p_replace) != T:
            raise ValueError(
                "p_insert, p_delete and p_replace must give one rate per step, for T >= 3 "
                f"steps; got {len(self.p_insert)}, {len(self.p_delete)}, {len(self.p_replace)}"
            )
        for t, (pi, pd, pr) in enumerate(
            zip(self.p_insert, self.p_delete, self.p_replace, strict=True), 1
        ):
            if not (0 <= pi < 1 and 0 <= pd <= 1 and pr >= 0 and pd + pr <= 1):
                raise ValueError(
                    f"step {t}: p_insert = {pi} must lie in [0, 1) and p_delete = {pd}, "
                    f"p_replace = {pr} in [0, 1] with p_delete + p_replace <= 1 (they split "
                    "one token's fate)"
                )
        if any(self.p_insert[T - 3 :]) or self.p_delete[T - 2] != 1:
            raise ValueError(
                "the last steps must empty the sequence: p_insert = 0 at steps T-2..T and "
                "p_delete = 1 at step T-1 (use InsDelProcess.make)"
            )

    @classmethod
    def make(
        cls,
        categories: int,
        T: int = 32,
        survival: Survival | str = Survival.COSINE,
        insert: float = 1.0,
        replace: float = 0.0,
    ) -> InsDelProcess:
        """Rates from a survival curve s(t) (1 at t = 0, 0 at t = T - 1): p_delete(t) =
        1 - s(t) / s(t - 1); the expected insertions per gap at step t are ``insert`` (s(t-1)
        - s(t)) (so about ``insert`` noise tokens per data token arrive over the whole
        schedule, as the data tokens leave; none in the closing steps); ``replace`` is the
        probability that a kept token is redrawn from r."""
        if T < 4:
            raise ValueError(f"schedule.T must be >= 4 for an insertion/deletion process, got {T}")
        if not insert >= 0 or not 0 <= replace <= 1:
            raise ValueError(
                f"schedule.insert = {insert} must be >= 0 and schedule.replace = {replace} in "
                "[0, 1]"
            )
        k = np.arange(T, dtype=np.float64) / (T - 1)
        s = np.cos(0.5 * np.pi * k) ** 2 if Survival.parse(survival) is Survival.COSINE else 1 - k
        s[-1] = 0.0
        p_delete = np.ones(T)
        p_delete[: T - 1] = 1 - s[1:] / s[:-1]
        rate = insert * (s[:-1] - s[1:])
        rate = np.append(rate, 0.0)
        p_insert = np.where(np.arange(1, T + 1) <= T - 3, rate / (1 + rate), 0.0)
        p_replace = replace * (1 - p_delete)
        return cls(categories, tuple(p_insert), tuple(p_delete), tuple(p_replace))

    @property
    def num_steps(self) -> int:
        """T, the number of steps."""
        return len(self.p_insert)

    @property
    def ins_token(self) -> int:
        """INS = K, the sentinel of a token inserted at this step."""
        return self.categories

    @property
    def del_token(self) -> int:
        """DEL = K + 1, the sentinel of a token deleted at this step."""
        return self.categories + 1

    def rates(self, t: int) -> tuple[float, float, float]:
        """(p_insert, p_delete, p_replace) of step t in 1..T."""
        if not 1 <= t <= self.num_steps:
            raise ValueError(f"step t must lie in 1..{self.num_steps}, got {t}")
        return self.p_insert[t - 1], self.p_delete[t - 1], self.p_replace[t - 1]

    # ---- one forward step ------------------------------------------------------------------

    def step(self, y: Sequence, t: int, rng: np.random.Generator) -> Sequence:
        """x_t ~ q(x_t | x_{t-1} = y): steps 1-4 of the module's docstring."""
        p_insert, p_delete, p_replace = self.rates(t)
        z = self._survivors(y)
        u = rng.random(z.shape[0])
        fresh = rng.integers(self.categories, size=z.shape[0])
        inserted = z == self.ins_token
        images = np.where(inserted | ((u >= p_delete) & (u < p_delete + p_replace)), fresh, z)
        images = np.where(~inserted & (u < p_delete), self.del_token, images)
        gaps = rng.geometric(1 - p_insert, size=z.shape[0] + 1) - 1
        x = np.full(z.shape[0] + int(gaps.sum()), self.ins_token, dtype=np.int64)
        x[np.cumsum(gaps[:-1]) + np.arange(z.shape[0])] = images
        return x

    def trajectory(self, x0: Sequence, t: int, rng: np.random.Generator) -> list[Sequence]:
        """[x_0, x_1, ..., x_t] drawn step by step from x_0."""
        path = [_tokens(x0)]
        for s in range(1, t + 1):
            path.append(self.step(path[-1], s, rng))
        return path

    # ---- closed-form one-step quantities -----------------------------------------------------

    def step_log_prob(self, y: Sequence, x: Sequence, t: int) -> float:
        """log q(x_t = x | x_{t-1} = y) through the unique alignment (-inf where x cannot
        follow y)."""
        p_insert, p_delete, p_replace = self.rates(t)
        z, x = self._survivors(y), _tokens(x)
        anchors = np.flatnonzero(x != self.ins_token)
        if anchors.shape[0] != z.shape[0]:
            return -math.inf
        edges = np.concatenate([[-1], anchors, [x.shape[0]]])
        gaps = np.diff(edges) - 1
        log_p = _xlog(int(gaps.sum()), p_insert) + gaps.shape[0] * math.log1p(-p_insert)
        for u, w in zip(z.tolist(), x[anchors].tolist(), strict=True):
            log_p += _log(self._transition(u, w, p_delete, p_replace))
        return float(log_p)

    def _survivors(self, y: Sequence) -> Sequence:
        """The tokens of y that step t acts on: all but its DEL sentinels (removed now)."""
        y = _tokens(y)
        return y[y != self.del_token]

    def _transition(self, u: int, w: int, p_delete: float, p_replace: float) -> float:
        """A'(u -> w): the probability that the surviving token u shows as w at step t."""
        r = 1.0 / self.categories
        if u == self.ins_token:
            return 0.0 if w == self.del_token else r
        if w == self.del_token:
            return p_delete
        return (1 - p_delete - p_replace) * (u == w) + p_replace * r

    def step_entropy(self, y: Sequence, t: int) -> float:
        """H[q(x_t | x_{t-1} = y)] (nats): each surviving token's and each gap's entropy."""
        p_insert, p_delete, p_replace = self.rates(t)
        z = self._survivors(y)
        inserted = int((z == self.ins_token).sum())
        K = self.categories
        same = (1 - p_delete - p_replace) + p_replace / K
        kept = _entropy(np.array([p_delete, same] + [p_replace / K] * (K - 1)))
        gaps = (z.shape[0] + 1) * geometric_entropy(p_insert)
        return inserted * math.log(K) + (z.shape[0] - inserted) * kept + gaps

    def alignment(self, y: Sequence, x: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """What the reverse model predicts at x_t = x for x_{t-1} = y: ``previous`` [a], the
        token of y behind each non-INS token of x (a value, or INS for a revealed insertion),
        and ``deleted`` [a + 1], how many DEL sentinels of y lie before each non-INS token of
        x (after the previous one), the last entry those after the last (the end slot)."""
        y, x = _tokens(y), _tokens(x)
        kept = np.flatnonzero(y != self.del_token)
        if kept.shape[0] != int((x != self.ins_token).sum()):
            raise ValueError("x_t does not follow x_{t-1}: their aligned token counts differ")
        edges = np.concatenate([[-1], kept, [y.shape[0]]])
        return y[kept], np.diff(edges) - 1


def _tokens(y) -> Sequence:
    """A sequence as int64 (an empty list or tuple too)."""
    return np.asarray(y, dtype=np.int64)


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -math.inf


def _xlog(n: int, p: float) -> float:
    """n log p with 0 log 0 = 0 (no insertion at a step that inserts nothing)."""
    return 0.0 if n == 0 else n * _log(p)


__all__ = ["InsDelProcess", "Survival", "geometric_entropy"]
