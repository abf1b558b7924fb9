"""Gaussian mixtures with every diffusion quantity in closed form.

For p0 = sum_k w_k N(mu_k, Sigma_k) and q(x_t | x0) = N(alpha x0, sigma^2 I), the noised
marginal is again a mixture (Bishop 2006, eq. 2.115):

    p_t(x_t) = sum_k w_k N(x_t; alpha mu_k, C_k),   C_k = alpha^2 Sigma_k + sigma^2 I,

with posterior component probabilities r_k(x_t) = w_k N_k(x_t) / p_t(x_t) (log-sum-exp),
exact score  grad log p_t = -sum_k r_k C_k^{-1} (x_t - alpha mu_k), and exact denoiser
(Bishop 2006, eq. 2.116)

    E[x0 | x_t] = sum_k r_k (mu_k + alpha Sigma_k C_k^{-1} (x_t - alpha mu_k)).

Stability: each Sigma_k = U_k diag(s_k) U_k^T is eigendecomposed once in float64; then
C_k = U_k diag(alpha^2 s_k + sigma^2) U_k^T is diagonal in the same basis for every t, so no
matrix is ever inverted and per-sample times cost nothing extra.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rediff._tensor import Tensor, batch_time, check_finite
from rediff.model import NULL_LABEL, Denoiser
from rediff.schedules import Schedule

_LOG_2PI = math.log(2.0 * math.pi)


class GaussianMixture:
    """p0 = sum_k w_k N(mu_k, Sigma_k) in dimension D, with full covariances.

    Args:
        means: [K, D].
        covariances: [K, D, D], symmetric positive definite.
        weights: [K], non-negative and summing to one; uniform when omitted.

    Data passed to the methods may be [B, D] or [B, *S] with prod(S) = D (images).
    """

    def __init__(self, means: Any, covariances: Any, weights: Any | None = None) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        covariances = torch.as_tensor(covariances, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape [K, D], got {tuple(means.shape)}")
        K, D = means.shape
        if covariances.shape != (K, D, D):
            raise ValueError(
                f"covariances must have shape [K, D, D] = [{K}, {D}, {D}] to match means, "
                f"got {tuple(covariances.shape)}"
            )
        weights = (
            torch.full((K,), 1.0 / K, dtype=torch.float64)
            if weights is None
            else (torch.as_tensor(weights, dtype=torch.float64))
        )
        _check_weights(weights, K)
        check_finite("means", means)
        check_finite("covariances", covariances)
        self._means = means
        self._weights = weights
        self._eigvals, self._eigvecs = _eigendecompose(covariances)

    # ---- parameters (copies: the mixture is immutable) -----------------------------------
    @property
    def means(self) -> Tensor:
        return self._means.clone()

    @property
    def weights(self) -> Tensor:
        return self._weights.clone()

    @property
    def covariances(self) -> Tensor:
        U, s = self._eigvecs, self._eigvals
        return (U * s.unsqueeze(-2)) @ U.transpose(-1, -2)

    @property
    def dim(self) -> int:
        return self._means.shape[1]

    @property
    def num_components(self) -> int:
        return self._means.shape[0]

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.num_components}, D={self.dim})"

    # ---- sampling --------------------------------------------------------------------------
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Draw n samples [n, D] (and, if asked, their component labels [n])."""
        labels = torch.multinomial(self._weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        # x = mu_k + U_k diag(sqrt(s_k)) z
        scaled = torch.sqrt(self._eigvals[labels]) * z
        x = self._means[labels] + torch.einsum("nij,nj->ni", self._eigvecs[labels], scaled)
        x = x.to(dtype)
        return (x, labels) if return_labels else x

    # ---- closed forms at (alpha, sigma) ----------------------------------------------------
    def _flatten(self, x: Tensor) -> Tensor:
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(
                f"x has shape {tuple(x.shape)} but the mixture lives in dimension {self.dim}: "
                f"pass [B, {self.dim}] or [B, *S] with prod(S) = {self.dim}"
            )
        return x.reshape(x.shape[0], self.dim).to(torch.float64)

    def _components(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, ...]:
        """Per-component quantities for x: [B, D] (float64) and alpha, sigma: [B].

        Returns y = U_k^T (x - alpha mu_k) [B, K, D], d = alpha^2 s_k + sigma^2 [B, K, D]
        (the eigenvalues of C_k) and log(w_k N(x; alpha mu_k, C_k)) [B, K].
        """
        a = alpha.to(x.device)[:, None, None]
        centred = x[:, None, :] - a * self._means.to(x.device)  # [B, K, D]
        y = torch.einsum("kji,bkj->bki", self._eigvecs.to(x.device), centred)
        d = a.square() * self._eigvals.to(x.device) + sigma.to(x.device)[:, None, None].square()
        log_normal = -0.5 * ((y.square() / d) + torch.log(d) + _LOG_2PI).sum(-1)
        return y, d, log_normal + torch.log(self._weights.to(x.device))

    def _at(self, x: Tensor, t: Tensor | float, schedule: Schedule) -> tuple[Tensor, ...]:
        """``_components`` at the schedule's (alpha(t), sigma(t)), followed by alpha [B]."""
        x64 = self._flatten(x)
        t = schedule.check_t(batch_time(t, x))
        alpha = schedule.alpha(t)
        return (*self._components(x64, alpha, schedule.sigma(t)), alpha)

    def _clean_log_joint(self, x: Tensor) -> Tensor:
        """log(w_k N(x; mu_k, Sigma_k)) [B, K] for clean data (alpha = 1, sigma = 0)."""
        x64 = self._flatten(x)
        ones = torch.ones(x64.shape[0], dtype=torch.float64, device=x64.device)
        return self._components(x64, ones, torch.zeros_like(ones))[2]

    def log_prob(self, x: Tensor) -> Tensor:
        """log p0(x) [B] (float64) for x: [B, D]."""
        return torch.logsumexp(self._clean_log_joint(x), dim=1)

    def component_probs(self, x: Tensor) -> Tensor:
        """p(k | x0) [B, K] (float64) for clean data x0: [B, D]."""
        return torch.softmax(self._clean_log_joint(x), dim=1)

    def noised_log_prob(self, x_t: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        """log p_t(x_t) [B] (float64): the marginal of x_t under ``schedule`` at time t."""
        _, _, log_joint, _ = self._at(x_t, t, schedule)
        return torch.logsumexp(log_joint, dim=1)

    def posterior_probs(self, x_t: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        """p(k | x_t) [B, K] (float64): the exact noisy-data classifier over components."""
        _, _, log_joint, _ = self._at(x_t, t, schedule)
        return torch.softmax(log_joint, dim=1)

    def noised_score(self, x_t: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
        """grad_x log p_t(x_t), shaped and typed like x_t."""
        y, d, log_joint, _ = self._at(x_t, t, schedule)
        r = torch.softmax(log_joint, dim=1)[..., None]
        # C_k^{-1} (x - alpha mu_k) = U_k diag(1/d) y
        whitened = torch.einsum("kij,bkj->bki", self._eigvecs.to(y.device), y / d)
        return (-(r * whitened).sum(1)).reshape(x_t.shape).to(x_t.dtype)

    def posterior_mean(
        self, x_t: Tensor, t: Tensor | float, schedule: Schedule, labels: Tensor | None = None
    ) -> Tensor:
        """E[x0 | x_t] under ``schedule`` at time t, shaped and typed like x_t; with ``labels``
        [B] (a component index, or ``NULL_LABEL`` for the whole mixture) E[x0 | x_t, k]: the
        component is the class, so this is the exact class-conditional denoiser."""
        y, d, log_joint, alpha = self._at(x_t, t, schedule)
        r = self._responsibilities(log_joint, labels)[..., None]
        alpha = alpha.to(y.device)
        # mu_k + alpha Sigma_k C_k^{-1} (x - alpha mu_k) = mu_k + U_k diag(alpha s_k / d) y
        gain = alpha[:, None, None] * self._eigvals.to(y.device) / d
        shift = torch.einsum("kij,bkj->bki", self._eigvecs.to(y.device), gain * y)
        x0 = (r * (self._means.to(y.device) + shift)).sum(1)
        return x0.reshape(x_t.shape).to(x_t.dtype)

    def _responsibilities(self, log_joint: Tensor, labels: Tensor | None) -> Tensor:
        """p(k | x_t) [B, K], replaced by one-hot rows where ``labels`` name a component."""
        r = torch.softmax(log_joint, dim=1)
        if labels is None:
            return r
        labels = self._check_labels(labels, r.shape[0]).to(r.device)
        chosen = torch.nn.functional.one_hot(labels.clamp_min(0), self.num_components).to(r)
        return torch.where((labels == NULL_LABEL)[:, None], r, chosen)

    def _check_labels(self, labels: Tensor, batch: int) -> Tensor:
        labels = torch.as_tensor(labels).long()
        if labels.shape != (batch,):
            raise ValueError(f"labels must have shape [B] = [{batch}], got {tuple(labels.shape)}")
        valid = ((labels >= 0) & (labels < self.num_components)) | (labels == NULL_LABEL)
        if not bool(valid.all()):
            raise ValueError(
                f"labels must be components in [0, {self.num_components - 1}] or NULL_LABEL "
                f"({NULL_LABEL}), got values {sorted(set(labels.tolist()))[:10]}"
            )
        return labels

    def log_classifier(
        self, x_t: Tensor, t: Tensor | float, schedule: Schedule, labels: Tensor
    ) -> Tensor:
        """log p(k = labels | x_t) [B] (float64, differentiable in x_t): the exact classifier
        of noised data, for classifier guidance."""
        _, _, log_joint, _ = self._at(x_t, t, schedule)
        labels = self._check_labels(labels, x_t.shape[0]).to(log_joint.device)
        if bool((labels == NULL_LABEL).any()):
            raise ValueError("the classifier needs a component for every sample, not NULL_LABEL")
        return torch.log_softmax(log_joint, dim=1).gather(1, labels[:, None])[:, 0]

    def denoiser(self, schedule: Schedule) -> MixtureDenoiser:
        """The exact denoiser x0_hat = E[x0 | x_t] for data from this mixture under ``schedule``."""
        return MixtureDenoiser(self, schedule)


class MixtureDenoiser(Denoiser):
    """The exact Denoiser of a GaussianMixture under a schedule (no network, no error).

    Besides ``__call__`` it gives the exact ``log_prob`` and ``score`` of the noised marginal,
    the truth that samplers and likelihood code are tested against.
    """

    def __init__(self, mixture: GaussianMixture, schedule: Schedule) -> None:
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a rediff Schedule, got {type(schedule).__name__}")
        self.mixture = mixture
        self.schedule = schedule

    def __call__(
        self, x_t: Tensor, t: Tensor | float, labels: Tensor | None = None, **cond: Any
    ) -> Tensor:
        """E[x0 | x_t], or with ``labels`` [B] E[x0 | x_t, component] (``NULL_LABEL``: the
        whole mixture), the exact class-conditional denoiser."""
        if cond:
            raise TypeError(f"the exact mixture denoiser takes only labels, got {sorted(cond)}")
        return self.mixture.posterior_mean(x_t, t, self.schedule, labels)

    def log_classifier(self, x_t: Tensor, t: Tensor | float, labels: Tensor) -> Tensor:
        """log p(component = labels | x_t) [B]: the exact noisy-data classifier."""
        return self.mixture.log_classifier(x_t, t, self.schedule, labels)

    def log_prob(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        """log p_t(x_t) [B], float64."""
        return self.mixture.noised_log_prob(x_t, t, self.schedule)

    def score(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        """grad log p_t(x_t), shaped like x_t."""
        return self.mixture.noised_score(x_t, t, self.schedule)

    def __repr__(self) -> str:
        return f"MixtureDenoiser({self.mixture!r}, {self.schedule!r})"


def _check_weights(weights: Tensor, K: int) -> None:
    if weights.shape != (K,):
        raise ValueError(f"weights must have shape [K] = [{K}], got {tuple(weights.shape)}")
    check_finite("weights", weights)
    if bool((weights < 0).any()):
        raise ValueError(f"weights must be non-negative, got {weights.tolist()}")
    total = float(weights.sum())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(
            f"weights must sum to 1, they sum to {total:.8g}; divide them by their sum"
        )


def _eigendecompose(covariances: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues [K, D] and eigenvectors [K, D, D] of symmetric positive definite matrices."""
    asym = (covariances - covariances.transpose(-1, -2)).abs().amax()
    scale = covariances.abs().amax().clamp_min(1e-300)
    if float(asym / scale) > 1e-8:
        raise ValueError("covariances must be symmetric (Sigma_k == Sigma_k^T)")
    eigvals, eigvecs = torch.linalg.eigh(covariances)
    if bool((eigvals <= 0).any()):
        k = int(torch.nonzero((eigvals <= 0).any(dim=1))[0])
        raise ValueError(
            f"covariance {k} is not positive definite (smallest eigenvalue "
            f"{float(eigvals[k].min()):.3g}); every covariance must have positive eigenvalues"
        )
    return eigvals, eigvecs
