"""The autoregressive baseline: a causal network over token sequences, trained with
next-token cross-entropy, for comparing diffusion with the standard language model on equal
terms (the same transformer, ``causal=True``).

    p(x) = prod_{i=1}^{L} p(x_i | x_<i),   -log p(x) = sum_i -log p(x_i | x_<i)  (exact),

with the net reading [BOS, x_1, ..., x_{L-1}] (BOS = state K, the slot a masked model uses
for [MASK]) and its output at position i giving the logits of x_i.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rediff._tensor import Tensor, bits_per_dim
from rediff.discrete.masked import token_nll
from rediff.discrete.process import categorical, check_categories
from rediff.discrete.sampling import DiscreteSamples, OneSampler, check_top_p, nucleus


class AutoregressiveModel(nn.Module):
    """``net(tokens [B, L], time [B], **cond) -> logits [B, L, K]``, causal, over
    ``categories`` = K tokens (its embedding has K + 1 states: BOS = K)."""

    process = None  # no forward process: the model is its own likelihood

    def __init__(self, net: nn.Module, categories: int) -> None:
        super().__init__()
        self.net, self.categories = net, int(categories)

    def with_net(self, net: nn.Module) -> AutoregressiveModel:
        """The same model around another module holding these parameters (compiled, DDP)."""
        return AutoregressiveModel(net, self.categories)

    def check_data(self, x: Tensor) -> Tensor:
        """``x`` as long if it holds token sequences [B, L] in 0..K-1, else a ValueError."""
        if x.ndim != 2:
            raise ValueError(f"an autoregressive model takes sequences [B, L], got {list(x.shape)}")
        return check_categories(x, self.categories, "tokens")

    def forward(self, x: Tensor, **cond: Any) -> Tensor:
        """Logits [B, L, K] of each x_i given x_<i (the net reads BOS, x_1 .. x_{L-1})."""
        bos = torch.full_like(x[:, :1], self.categories)
        inputs = torch.cat([bos, x[:, :-1]], dim=1).long()
        return self.net(inputs, torch.zeros(x.shape[0], device=x.device), **cond)

    def log_prob(self, x: Tensor, **cond: Any) -> Tensor:
        """log p(x) for token sequences x [B, L]: nats [B], float64 (exact)."""
        x = self.check_data(x)
        return -token_nll(x, self(x, **cond))

    @torch.no_grad()
    def sample(
        self,
        shape: tuple[int, int],
        *,
        top_p: float = 1.0,
        known: Tensor | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        progress: bool = True,
        **cond: Any,
    ) -> DiscreteSamples:
        """n sequences of length L, token by token (L network evaluations), from the nucleus
        ``top_p`` of each p(x_i | x_<i); ``known`` ([L] or [n, L], -1 where free) may fix a
        prefix, which the model continues (an autoregressive model cannot condition on later
        tokens: other known tokens are refused)."""
        n, L = shape
        top_p = check_top_p(top_p)
        x = torch.zeros(n, L, dtype=torch.long, device=device)
        fixed = self._prefix(known, n, L, x.device)
        for i in tqdm(range(L), desc="autoregressive", disable=not progress):
            probs = torch.softmax(self(x[:, : i + 1], **cond)[:, i].double(), dim=-1)
            drawn = categorical(nucleus(probs, top_p), generator)
            x[:, i] = torch.where(fixed[:, i] >= 0, fixed[:, i], drawn.to(x.device))
        return DiscreteSamples(x, L, list(range(L)))

    def _prefix(self, known: Tensor | None, n: int, L: int, device) -> Tensor:
        """``known`` as [n, L] (-1 where free), refused unless it is a prefix of each row."""
        if known is None:
            return torch.full((n, L), -1, dtype=torch.long, device=device)
        known = torch.as_tensor(known, device=device).long().expand(n, L)
        if bool((known >= self.categories).any()) or bool((known < -1).any()):
            raise ValueError(f"known tokens must lie in 0..{self.categories - 1}, or be -1")
        given = known >= 0
        if bool((given[:, 1:] & ~given[:, :-1]).any()):
            raise ValueError(
                "an autoregressive model can only continue a prefix: known tokens must be the "
                "first ones (use a masked diffusion model for a suffix or other known tokens)"
            )
        return known


#: the one way an autoregressive model samples (token by token), as a sampler registry
SAMPLERS = OneSampler(
    "autoregressive", AutoregressiveModel.sample, "an autoregressive model samples token by token"
)


@dataclass(frozen=True)
class AutoregressiveObjective:
    """Next-token cross-entropy in bits per token (``loss.kind = "autoregressive"``): no
    randomness beyond the batch, so ``draw`` makes nothing."""

    def check_model(self, model) -> None:
        if not isinstance(model, AutoregressiveModel):
            raise ValueError(
                f"loss 'autoregressive' trains an autoregressive model, got {type(model).__name__}"
            )

    def check_data(self, x: Tensor) -> None:
        if x.is_floating_point() or x.ndim != 2:
            raise ValueError(
                f"an autoregressive model trains on integer token sequences [N, L], got "
                f"{x.dtype} {list(x.shape)}"
            )

    def draw(self, process, x0: Tensor, generator: torch.Generator | None = None) -> dict:
        return {}

    def __call__(self, model: AutoregressiveModel, x0: Tensor, draws: dict, **cond) -> Tensor:
        return bits_per_dim(-model.log_prob(x0, **cond), x0).mean().float()


__all__ = ["AutoregressiveModel", "AutoregressiveObjective"]
