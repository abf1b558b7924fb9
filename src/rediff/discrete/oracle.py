"""The exact oracle of discrete diffusion: a mixture of product-categorical distributions,
the discrete counterpart of ``rediff.data.GaussianMixture``.

    p(x0) = sum_k w_k prod_i Cat(x0_i; pi_ki),   x0 in {0, ..., K-1}^D.

Under a per-coordinate forward process each component stays a product, so everything is in
closed form (Qbar_t from the process):

    q_t(x_t)          = sum_k w_k prod_i (pi_ki Qbar_t)[x_t,i]                (noised marginal)
    r_k(x_t)          = w_k prod_i (pi_ki Qbar_t)[x_t,i] / q_t(x_t)           (responsibilities)
    p(x0_i | x_t, k)  = pi_ki[x0_i] Qbar_t[x0_i, x_t,i] / (pi_ki Qbar_t)[x_t,i]
    p(x0_i | x_t)     = sum_k r_k(x_t) p(x0_i | x_t, k)                        (the denoiser)

``MixtureDenoiser`` returns the log of the last line: the exact per-coordinate posterior
that every discrete test checks models and samplers against. For an absorbing process
(D3PM's or masked diffusion) Qbar_t[a, x] is alpha_t at x = a and 1 - alpha_t at [MASK], and
alpha_t cancels: the posterior is the mixture conditioned on the unmasked tokens, whatever
t. It is computed at alpha = 1/2, so that it is also defined where q_t gives x_t no mass
(known tokens at t = T, for infilling).
"""

from __future__ import annotations

import itertools

import torch

from rediff._tensor import Tensor
from rediff.discrete.denoiser import DiscreteDenoiser
from rediff.discrete.process import PerCoordinate, absorbing_matrix, categorical


class CategoricalMixture:
    """``weights`` [M] (positive, normalised here) and ``probs`` [M, D, K] (each row a
    distribution over K values; normalised here)."""

    def __init__(self, weights, probs) -> None:
        weights = torch.as_tensor(weights, dtype=torch.float64)
        probs = torch.as_tensor(probs, dtype=torch.float64)
        if probs.ndim != 3 or weights.shape != probs.shape[:1]:
            raise ValueError(
                f"need weights [M] and probs [M, D, K], got {list(weights.shape)} and "
                f"{list(probs.shape)}"
            )
        if bool((weights <= 0).any()) or bool((probs < 0).any()):
            raise ValueError("weights must be positive and probabilities non-negative")
        self.weights = weights / weights.sum()
        self.probs = probs / probs.sum(-1, keepdim=True)

    @property
    def dims(self) -> int:
        return self.probs.shape[1]

    @property
    def categories(self) -> int:
        return self.probs.shape[2]

    def __repr__(self) -> str:
        m, d, k = self.probs.shape
        return f"CategoricalMixture(M={m}, D={d}, K={k})"

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws, integers [n, D]."""
        component = categorical(self.weights.expand(n, -1), generator)
        return categorical(self.probs[component], generator)

    def log_prob(self, x0: Tensor) -> Tensor:
        """log p(x0) for x0: [B, D] integers: [B], float64."""
        return self.noised_log_prob(x0, None)

    def _component_log_likelihoods(self, x: Tensor, rows: Tensor | None) -> Tensor:
        """log prod_i (pi_ki Qbar)[x_i] for x: [B, D] and every component k: [B, M]
        (rows = Qbar_t [S, S], or None for the data itself)."""
        probs = self.probs if rows is None else self.probs @ rows[: self.categories]
        M, B = probs.shape[0], x.shape[0]
        index = x.long().cpu()[None, :, :, None].expand(M, B, self.dims, 1)
        picked = probs[:, None].expand(M, B, *probs.shape[1:]).gather(3, index)[..., 0]
        return torch.log(picked).sum(-1).T

    def noised_log_prob(self, x_t: Tensor, rows: Tensor | None) -> Tensor:
        """log q_t(x_t) for x_t: [B, D] states under the process whose Qbar_t is ``rows``
        ([S, S]; None: the data itself)."""
        logs = self._component_log_likelihoods(x_t, rows) + torch.log(self.weights)
        return torch.logsumexp(logs, dim=1)

    def denoiser(self, process: PerCoordinate) -> MixtureDenoiser:
        """The exact denoiser of this mixture under ``process``."""
        if process.categories != self.categories:
            raise ValueError(
                f"the process has {process.categories} categories, the mixture {self.categories}"
            )
        return MixtureDenoiser(self, process)

    def support(self) -> Tensor:
        """Every point of {0..K-1}^D, [K^D, D] (for exact sums over small spaces)."""
        values = itertools.product(range(self.categories), repeat=self.dims)
        return torch.tensor(list(values), dtype=torch.long)


class MixtureDenoiser(DiscreteDenoiser):
    """The exact p(x0_i | x_t) of a ``CategoricalMixture`` under a process, as logits
    [B, *D, K] (data of any shape [B, *D] with prod(D) = the mixture's D)."""

    def __init__(self, mixture: CategoricalMixture, process: PerCoordinate) -> None:
        self.mixture, self.process = mixture, process

    def __repr__(self) -> str:
        return f"MixtureDenoiser({self.mixture!r}, {self.process!r})"

    def __call__(self, x_t: Tensor, t: float | Tensor, **cond) -> Tensor:
        B, K = x_t.shape[0], self.process.categories
        flat = x_t.reshape(B, -1).long().cpu()
        if self.process.mask is not None:  # alpha_t cancels (see the module docstring)
            rows = absorbing_matrix(K, torch.tensor(0.5))
            return torch.log(self._posterior(flat, rows)).reshape(*x_t.shape, K).to(x_t.device)
        steps = torch.as_tensor(t).cpu()
        steps = steps.expand(B) if steps.ndim == 0 else steps
        out = torch.empty(B, flat.shape[1], K, dtype=torch.float64)
        for step in torch.unique(steps).tolist():  # one Qbar_t per distinct step
            chosen = steps == step
            out[chosen] = self._posterior(flat[chosen], self.process.cumulative(step))
        return torch.log(out).reshape(*x_t.shape, K).to(x_t.device)

    def _posterior(self, x_t: Tensor, rows: Tensor) -> Tensor:
        """p(x0_i | x_t) for x_t: [B, D] at one step with Qbar_t = rows: [B, D, K]."""
        mix, K = self.mixture, self.process.categories
        logs = mix._component_log_likelihoods(x_t, rows) + torch.log(mix.weights)
        responsibilities = torch.softmax(logs, dim=1)  # [B, M]
        # p(x0_i = a | x_t, k) ∝ pi_ki[a] Qbar_t[a, x_t,i]
        reach = rows[:K, :][:, x_t].permute(1, 2, 0)  # [B, D, K]: Qbar_t[a, x_t,i]
        joint = mix.probs[:, None] * reach[None]  # [M, B, D, K]
        given_k = joint / joint.sum(-1, keepdim=True).clamp_min(1e-300)  # r_k = 0 where 0
        return torch.einsum("bm,mbdk->bdk", responsibilities, given_k)
