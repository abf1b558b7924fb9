"""The reverse model of the insertion/deletion process (``rediff.discrete.insdel``), its
variational bound, training objective and ancestral sampler.

The net reads x_t followed by an end token EOS (the anchor of the last gap), padded with PAD,
and gives at each position two heads (Johnson et al. 2021, section 3):

- ``previous``: over the K values and INS, the token of x_{t-1} behind this non-INS token
  (INS: the token was inserted at step t-1 and revealed now; at a DEL sentinel, the value
  that was deleted);
- ``deleted``: how many DEL sentinels of x_{t-1} lay just before this non-INS token (after
  the previous non-INS one), over 0..C-1 and a tail ">= C" with P(C + j) = P(tail) 2^-(j+1),
  C = max_length + 1, so every count has positive probability.

INS tokens of x_t are new at step t and need no prediction. Given x_t the choices build
x_{t-1} one way, and the alignment is unique, so

    log p(x_{t-1} | x_t) = sum_{non-INS j} log p(previous_j)
                           + sum_{non-INS j, and EOS} log p(deleted_j).

What the schedule rules out is ruled out exactly: no DEL in x_{t-1} unless step t - 1
deletes, no INS unless it inserts, a kept value unchanged unless step t replaces.

The bound (x_T is empty with probability 1, so log p(x_T) = 0), with the alignments implied
by the sentinels:

    -log p(x_0) <= E_q sum_{t=1}^T [log q(x_t | x_{t-1}) - log p(x_{t-1} | x_t)]
                 = E_q sum_t [-H(q(. | x_{t-1})) - log p(x_{t-1} | x_t)],

the forward entropy in closed form (``InsDelProcess.step_entropy``). Training draws one t
per sequence (T times that step's term: unbiased for the bound), with x_{t-1} and x_t drawn
from the forward process; ``elbo`` sums all T terms of one trajectory. Both are in nats per
sequence; bits per token divide by ln 2 and the sequence's length + 1 (the end is a token:
the bound includes the length).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from rediff._choices import Choice
from rediff._tensor import Tensor
from rediff.discrete.insdel import InsDelProcess, Sequence
from rediff.discrete.process import categorical
from rediff.discrete.sampling import OneSampler
from rediff.nets.categorical import Transformer

PADDING = -1  # how a data tensor [N, L] pads sequences shorter than L


def sequences(x: Tensor) -> list[Sequence]:
    """Rows of a padded token tensor [N, L] (-1 after each sequence's end) as arrays."""
    rows = x.detach().cpu().long().numpy()
    return [row[row != PADDING] for row in rows]


def padded(rows: list[Sequence], length: int) -> Tensor:
    """Sequences as one [N, length] long tensor padded with -1."""
    out = torch.full((len(rows), length), PADDING, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def rngs(generator: torch.Generator | None, n: int) -> list[np.random.Generator]:
    """n numpy generators seeded from the torch generator (one per sequence)."""
    seeds = torch.randint(2**62, (n,), generator=generator)
    return [np.random.default_rng(int(s)) for s in seeds]


class LengthError(ValueError):
    """A sample grew beyond the model's maximum length."""


class Overflow(Choice, noun="overflow"):
    """What sampling does with a sequence that outgrows the maximum length: raise a
    LengthError, or leave that sample out (and count it)."""

    ERROR = "error"
    DROP = "drop"


def _outputs(categories: int, max_length: int) -> int:
    """The net's outputs per position: K + 1 ``previous`` and max_length + 2 ``deleted``."""
    return categories + 1 + max_length + 2


def initial_bias(categories: int, max_length: int, slope: float = 2.0) -> Tensor:
    """A starting bias for the net's output layer: 0 for ``previous``, -slope c for a count
    of c deleted tokens (a geometric prior: one step deletes few tokens per gap). With a
    flat start, the mass an untrained softmax leaves on large counts makes samples overflow
    ``max_length`` long after the bound has come down; the net raises the large counts where
    the data need them (the length of x_{T-1} at the empty sequence)."""
    counts = torch.arange(max_length + 2, dtype=torch.float32)
    return torch.cat([torch.zeros(categories + 1), -slope * counts])


def insdel_net(process: InsDelProcess, max_length: int, **options: Any) -> Transformer:
    """The bidirectional ``Transformer`` of an InsDelModel: K + 4 states in (values, INS,
    DEL, EOS, PAD), the ``previous`` and ``deleted`` heads out, the output bias at
    ``initial_bias``; ``options`` go to the Transformer (width, depth, heads, dropout,
    time_scale, num_classes). Rotary positions take any length: a forward sequence may
    outgrow ``max_length`` in training."""
    K = process.categories
    net = Transformer(_outputs(K, max_length), K + 4, 16 * max_length, **options)
    with torch.no_grad():
        net.out.bias.copy_(initial_bias(K, max_length))
    return net


class InsDelModel(nn.Module):
    """``net(tokens [B, L], time [B], keys=[B, L]) -> [B, L, K + 1 + C + 1]`` (``insdel_net``:
    a bidirectional Transformer over K + 4 states: values, INS, DEL, EOS, PAD) as the reverse
    model of ``process``, for sequences of at most ``max_length`` tokens."""

    def __init__(self, net: nn.Module, process: InsDelProcess, max_length: int) -> None:
        super().__init__()
        self.net, self.process, self.max_length = net, process, int(max_length)

    def with_net(self, net: nn.Module) -> InsDelModel:
        """The same model around another module holding these parameters (compiled, DDP)."""
        return InsDelModel(net, self.process, self.max_length)

    def check_data(self, x: Tensor) -> list[Sequence]:
        """The sequences of a padded token tensor [N, L], or a ValueError naming the problem
        (not integers, values outside 0..K-1, padding inside a sequence, too long)."""
        K = self.process.categories
        if x.is_floating_point() or x.ndim != 2:
            raise ValueError(
                f"an insertion/deletion model takes integer token sequences [N, L] padded with "
                f"-1, got {x.dtype} {list(x.shape)}"
            )
        if x.numel() and (int(x.min()) < PADDING or int(x.max()) >= K):
            raise ValueError(
                f"tokens must lie in 0..{K - 1} (-1 pads), got values in "
                f"[{int(x.min())}, {int(x.max())}]"
            )
        pad = x == PADDING
        if bool((pad[:, :-1] & ~pad[:, 1:]).any()):
            raise ValueError("-1 pads the end of a sequence only; a row has tokens after it")
        longest = int((~pad).sum(1).max()) if x.numel() else 0
        if longest > self.max_length:
            raise ValueError(
                f"a sequence has {longest} tokens, more than the model's maximum length "
                f"{self.max_length} (data.length): raise it"
            )
        return sequences(x)

    # ---- the net's two heads ---------------------------------------------------------------

    def heads(self, xs: list[Sequence], t: Tensor, **cond: Any) -> tuple[Tensor, Tensor, Tensor]:
        """log-probabilities of ``previous`` [B, L+1, K+1] and ``deleted`` [B, L+1, C+1] at
        each position of x_t + EOS (padded to the longest, L), with the schedule's exclusions
        applied, and the tokens [B, L+1] (PAD beyond each end)."""
        K = self.process.categories
        EOS, PAD = K + 2, K + 3
        device = next(self.parameters()).device
        L = max(len(x) for x in xs) + 1
        tokens = torch.full((len(xs), L), PAD, dtype=torch.long)
        for i, x in enumerate(xs):
            tokens[i, : len(x)] = torch.as_tensor(x)
            tokens[i, len(x)] = EOS
        tokens = tokens.to(device)
        t = torch.as_tensor(t, device=device).long().expand(len(xs))
        out = self.net(tokens, t.float() / self.process.num_steps, keys=tokens != PAD, **cond)
        previous, deleted = out[..., : K + 1].double(), out[..., K + 1 :].double()
        allowed_prev, allowed_count = self._support(tokens, t)
        previous = torch.log_softmax(previous.masked_fill(~allowed_prev, -math.inf), -1)
        deleted = torch.log_softmax(deleted.masked_fill(~allowed_count, -math.inf), -1)
        return previous, deleted, tokens

    def _support(self, tokens: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Which ``previous`` [B, L, K+1] and ``deleted`` [B, L, C+1] classes the schedule
        allows: x_{t-1} holds DEL only if step t-1 deletes, INS only if it inserts; a kept
        value changes only if step t replaces; a DEL came from a value."""
        K, p = self.process.categories, self.process
        before = (t - 2).clamp(min=0).cpu()
        first = (t == 1).cpu()
        has_del = (torch.tensor(p.p_delete, dtype=torch.float64)[before] > 0) & ~first
        has_ins = (torch.tensor(p.p_insert, dtype=torch.float64)[before] > 0) & ~first
        replaces = torch.tensor(p.p_replace, dtype=torch.float64)[(t - 1).cpu()] > 0
        device = tokens.device
        values = torch.arange(K, device=device)
        same = values == tokens[..., None]  # [B, L, K]
        is_del = tokens == K + 1
        prev_values = same | replaces.to(device)[:, None, None] | is_del[..., None]
        prev_ins = has_ins.to(device)[:, None, None] & ~is_del[..., None]
        allowed_prev = torch.cat([prev_values, prev_ins], dim=-1)
        allowed_prev |= ((tokens == K) | (tokens >= K + 2))[..., None]  # INS, EOS, PAD: unread
        counts = torch.zeros((*tokens.shape, self.max_length + 2), dtype=torch.bool, device=device)
        counts[..., 0] = True
        counts |= has_del.to(device)[:, None, None]
        return allowed_prev, counts

    # ---- log p(x_{t-1} | x_t) ----------------------------------------------------------------

    def step_log_prob(
        self, ys: list[Sequence], xs: list[Sequence], t: Tensor, **cond: Any
    ) -> Tensor:
        """log p(x_{t-1} = y | x_t = x) [B] (float64, differentiable) for pairs drawn from
        the forward process (step t per pair)."""
        C = self.max_length + 1
        previous, deleted, tokens = self.heads(xs, t, **cond)
        prev_target = torch.full(tokens.shape, -1, dtype=torch.long)
        count_target = torch.full(tokens.shape, -1, dtype=torch.long)
        for i, (y, x) in enumerate(zip(ys, xs, strict=True)):
            behind, gaps = self.process.alignment(y, x)
            anchors = np.flatnonzero(x != self.process.ins_token)
            prev_target[i, anchors] = torch.as_tensor(behind)
            count_target[i, np.append(anchors, len(x))] = torch.as_tensor(gaps)
        prev_target, count_target = prev_target.to(tokens.device), count_target.to(tokens.device)
        has_prev = prev_target >= 0
        log_p = previous.gather(-1, prev_target.clamp(min=0)[..., None])[..., 0]
        total = torch.where(has_prev, log_p, 0.0).sum(-1)
        has_count = count_target >= 0
        tail = (count_target - C + 1).clamp(min=0)
        log_c = deleted.gather(-1, count_target.clamp(min=0, max=C)[..., None])[..., 0]
        log_c = log_c - tail * math.log(2.0)
        return total + torch.where(has_count, log_c, 0.0).sum(-1)

    # ---- the reverse step ------------------------------------------------------------------

    @torch.no_grad()
    def reverse_step(
        self, xs: list[Sequence], t: int, generator: torch.Generator | None = None, **cond: Any
    ) -> list[Sequence]:
        """x_{t-1} ~ p(x_{t-1} | x_t) for each x_t in ``xs`` (one net evaluation)."""
        C = self.max_length + 1
        previous, deleted, _tokens = self.heads(xs, torch.tensor(t), **cond)
        prev = categorical(previous.exp().cpu(), generator)
        counts = categorical(deleted.exp().cpu(), generator)
        tail = counts == C
        if bool(tail.any()):  # a count of C + j with probability 2^-(j+1)
            u = torch.rand(counts.shape, generator=generator, dtype=torch.float64)
            extra = torch.floor(-torch.log2(u)).long()
            counts = torch.where(tail, C + extra, counts)
        out = []
        for i, x in enumerate(xs):
            y = []
            for j in range(len(x) + 1):
                if j < len(x) and x[j] == self.process.ins_token:
                    continue
                y.extend([self.process.del_token] * int(counts[i, j]))
                if j < len(x):
                    y.append(int(prev[i, j]))
            out.append(np.asarray(y, dtype=np.int64))
        return out

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        progress: bool = True,
        overflow: Overflow | str = Overflow.ERROR,
        **cond: Any,
    ) -> InsDelSamples:
        """n sequences by ancestral sampling from the empty x_T (T net evaluations). A
        sequence longer than ``max_length`` at any step raises a LengthError (``overflow =
        "error"``) or is left out of the result (``"drop"``: ``InsDelSamples.dropped``
        counts them); per-sample conditioning tensors in ``cond`` follow the samples kept."""
        overflow = Overflow.parse(overflow)
        xs, kept = [np.zeros(0, dtype=np.int64) for _ in range(n)], list(range(n))
        for t in tqdm(range(self.process.num_steps, 0, -1), desc="insdel", disable=not progress):
            if not xs:  # every sample dropped
                break
            xs = self.reverse_step(xs, t, generator, **cond)
            within = [len(x) <= self.max_length for x in xs]
            if all(within):
                continue
            if overflow is Overflow.ERROR:
                longest = max(len(x) for x in xs)
                raise LengthError(
                    f"a sample grew to {longest} tokens at step {t - 1}, beyond the model's "
                    f"maximum length {self.max_length} (2 x data.length in a run): train the "
                    "model longer, or leave such samples out (overflow = 'drop', rediff "
                    "sample --overflow drop)"
                )
            keep = torch.tensor(within)
            xs = [x for x, ok in zip(xs, within, strict=True) if ok]
            kept = [i for i, ok in zip(kept, within, strict=True) if ok]
            cond = {k: v[keep.to(v.device)] for k, v in cond.items()}
        return InsDelSamples(xs, self.process.num_steps, tuple(kept), n - len(xs))


#: the one way an insertion/deletion model samples (ancestral, all T steps from the empty
#: sequence), as a sampler registry
SAMPLERS = OneSampler(
    "ancestral",
    InsDelModel.sample,
    "an insertion/deletion model samples ancestrally from the empty sequence",
)


@dataclass(frozen=True)
class InsDelSamples:
    """Generated sequences (each its own length), the net evaluations per sample, which of
    the samples asked for they are (``kept``), and how many were left out for outgrowing
    the maximum length (``overflow = "drop"``)."""

    sequences: list[Sequence]
    nfe: int
    kept: tuple[int, ...]
    dropped: int = 0

    def padded(self, length: int) -> Tensor:
        return padded(self.sequences, length)


def step_terms(
    model: InsDelModel, ys: list[Sequence], xs: list[Sequence], t: Tensor, **cond: Any
) -> Tensor:
    """The bound's term of step t per pair (nats) [B]: -H(q(. | x_{t-1})) - log p(x_{t-1} |
    x_t), the forward entropy in closed form (``t``: a step per pair, or one for all)."""
    steps = torch.as_tensor(t).long().expand(len(ys)).tolist()
    entropy = torch.tensor(
        [model.process.step_entropy(y, s) for y, s in zip(ys, steps, strict=True)],
        dtype=torch.float64,
    )
    log_p = model.step_log_prob(ys, xs, t, **cond)
    return -entropy.to(log_p.device) - log_p


def elbo(
    model: InsDelModel,
    x0: Tensor,
    *,
    generator: torch.Generator | None = None,
    **cond: Any,
) -> Tensor:
    """The bound on -log p(x_0) (nats) [B] of padded sequences x0 [B, L], from one forward
    trajectory each: sum_t [-H(q(. | x_{t-1})) - log p(x_{t-1} | x_t)], T net evaluations."""
    process = model.process
    rows = model.check_data(x0)
    paths = [
        process.trajectory(x, process.num_steps, rng)
        for x, rng in zip(rows, rngs(generator, len(rows)), strict=True)
    ]
    total = torch.zeros(len(rows), dtype=torch.float64)
    for t in range(1, process.num_steps + 1):
        ys, xs = [p[t - 1] for p in paths], [p[t] for p in paths]
        with torch.no_grad():
            total += step_terms(model, ys, xs, torch.tensor(t), **cond).cpu()
    return total


def lengths(x0: Tensor) -> Tensor:
    """Tokens per padded sequence, plus one for the end: the bound's unit [B]."""
    return (x0 != PADDING).sum(-1) + 1


def bits_per_token(nats: Tensor, x0: Tensor) -> Tensor:
    """Per-sequence nats [B] as bits per token over the whole set: each divided by ln 2 and
    the mean length + 1, so their mean is the total bits over the total tokens (ends
    included), and their spread gives its standard error."""
    return nats / (math.log(2.0) * lengths(x0).double().mean().to(nats.device))


@dataclass(frozen=True)
class InsDelObjective:
    """The bound in bits per token (``loss.kind = "insdel"``): one step t per sequence,
    weighted by T; ``draw`` makes t and a seed for each sequence's forward trajectory."""

    def check_model(self, model) -> None:
        if not isinstance(model, InsDelModel):
            raise ValueError(
                f"loss 'insdel' trains an insertion/deletion model, got {type(model).__name__}"
            )

    def check_data(self, x: Tensor) -> None:
        if x.is_floating_point() or x.ndim != 2:
            raise ValueError(
                f"an insertion/deletion model trains on integer sequences [N, L], got "
                f"{x.dtype} {list(x.shape)}"
            )

    def draw(self, process: InsDelProcess, x0: Tensor, generator=None) -> dict:
        B = x0.shape[0]
        t = torch.randint(1, process.num_steps + 1, (B,), generator=generator)
        return {"t": t, "seed": torch.randint(2**62, (B,), generator=generator)}

    def __call__(self, model: InsDelModel, x0: Tensor, draws: dict, **cond) -> Tensor:
        process = model.process
        ys, xs = [], []
        for x, t, seed in zip(
            model.check_data(x0), draws["t"].tolist(), draws["seed"].tolist(), strict=True
        ):
            path = process.trajectory(x, t, np.random.default_rng(seed))
            ys.append(path[-2])
            xs.append(path[-1])
        nats = process.num_steps * step_terms(model, ys, xs, draws["t"], **cond)
        return (nats / (math.log(2.0) * lengths(x0).to(nats.device))).mean().float()


__all__ = [
    "InsDelModel",
    "InsDelObjective",
    "InsDelSamples",
    "LengthError",
    "Overflow",
    "bits_per_token",
    "elbo",
    "initial_bias",
    "insdel_net",
    "lengths",
    "padded",
    "sequences",
    "step_terms",
]
