"""Control: classifier-free guidance, classifier guidance and inpainting, as Denoiser wrappers.

Each function here returns a Denoiser, so every sampler (and the likelihood code) uses guided
and constrained models unchanged (DESIGN.md, section 2); samplers never know about guidance.
Resampling (RePaint's jump back) and shared noise live in ``rediff.sample`` (``resampling=``,
``shared=``), since they change the order of steps and draws, not the denoiser.

With the Tweedie relation x0_hat = (x_t + sigma^2 score) / alpha, every target is affine in
x0_hat with the same coefficient on x_t, so a combination of denoisers is the same in x0, eps,
score or v space: guidance is done on x0_hat once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch

from rediff import samplers
from rediff._choices import Choice
from rediff._tensor import Tensor, batch_time, check_finite, expand_to, randn
from rediff.model import NULL_LABEL, Denoiser
from rediff.sampling import Resampling, Samples, SharedNoise, sample
from rediff.transitions import Point

#: log p(labels | x_t) [B] for x_t: [B, *D], t: [B], labels: [B] (e.g. a NoisyClassifier or
#: ``MixtureDenoiser.log_classifier``), differentiable in x_t
LogProb = Callable[[Tensor, Tensor, Tensor], Tensor]

__all__ = [
    "NULL_LABEL",
    "ClassifierFree",
    "ClassifierGuided",
    "Inpainting",
    "KnownNoise",
    "LogProb",
    "Resampling",
    "SharedNoise",
    "classifier",
    "classifier_free",
    "inpaint",
]


def check_scale(scale: float) -> float:
    """A guidance scale as a float, or a ValueError if it is not a finite number."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"the guidance scale must be a finite number, got {scale!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"the guidance scale must be a finite number, got {scale!r}")
    return value


def _labels_for(labels: Tensor | int, x_t: Tensor) -> Tensor:
    """``labels`` as a long tensor [B] on x_t's device (an int is repeated for every sample)."""
    labels = torch.as_tensor(labels, device=x_t.device).long()
    if labels.ndim == 0:
        return labels.expand(x_t.shape[0])
    if labels.shape != (x_t.shape[0],):
        raise ValueError(
            f"labels must be one int or have shape [B] = [{x_t.shape[0]}], got "
            f"{tuple(labels.shape)}"
        )
    return labels


class ClassifierFree(Denoiser):
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6, with w + 1 -> scale):

        x0_w = x0_u + scale (x0_c - x0_u),

    x0_c = D(x_t, t, labels), x0_u = D(x_t, t, NULL_LABEL), both from one batched call. Scale
    0 is the unconditional denoiser, 1 the conditional one (both exactly), > 1 guided. The
    reverse variance of a model that learns it is the conditional one (as in GLIDE / ADM).
    """

    def __init__(self, denoiser: Denoiser, labels: Tensor | int, scale: float) -> None:
        self.denoiser, self.schedule = denoiser, denoiser.schedule
        self.labels, self.scale = labels, check_scale(scale)

    def _doubled(self, x_t: Tensor, cond: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """The batch twice and its labels: the given ones, then NULL_LABEL."""
        if cond:
            raise TypeError(
                f"classifier_free binds the labels; got more conditioning {sorted(cond)}"
            )
        labels = _labels_for(self.labels, x_t)
        null = torch.full_like(labels, NULL_LABEL)
        return torch.cat([x_t, x_t]), torch.cat([labels, null])

    @staticmethod
    def _doubled_time(t: Tensor | float, x_t: Tensor) -> Tensor:
        """The times of the doubled batch: [2B]."""
        t = batch_time(t, x_t)
        return torch.cat([t, t])

    def _combine(self, x0: Tensor) -> Tensor:
        conditional, unconditional = x0.chunk(2)
        # lerp is exact at both ends: scale 0 -> x0_u, scale 1 -> x0_c
        return torch.lerp(unconditional, conditional, self.scale)

    def __call__(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        x, labels = self._doubled(x_t, cond)
        return self._combine(self.denoiser(x, self._doubled_time(t, x_t), labels=labels))

    def at(self, x_t: Tensor, point: Point, **cond: Any) -> Tensor:
        x, labels = self._doubled(x_t, cond)
        return self._combine(self.denoiser.at(x, point, labels=labels))

    def with_variance(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor]:
        x, labels = self._doubled(x_t, cond)
        x0, fraction = self.denoiser.with_variance(x, self._doubled_time(t, x_t), labels=labels)
        return self._combine(x0), fraction.chunk(2)[0]


def classifier_free(denoiser: Denoiser, labels: Tensor | int, scale: float) -> ClassifierFree:
    """The classifier-free guided Denoiser of a model trained with label dropout (see
    ``ClassifierFree``); ``labels``: one class for every sample, or [B]."""
    return ClassifierFree(denoiser, labels, scale)


class ClassifierGuided(Denoiser):
    """Classifier guidance (Dhariwal & Nichol 2021, algorithm 2 / eq. 14; Song et al. 2021,
    eq. 48): the score of p(x_t) p(y | x_t)^scale,

        score_w = score + scale grad_x log p(y | x_t),
        i.e. x0_w = x0_hat + scale sigma^2 / alpha grad_x log p(y | x_t).

    At scale 1 with the exact classifier this is the exact conditional denoiser E[x0 | x_t, y].
    """

    def __init__(
        self, denoiser: Denoiser, log_prob: LogProb, labels: Tensor | int, scale: float
    ) -> None:
        other = getattr(log_prob, "schedule", None)
        if other is not None and other != denoiser.schedule:
            raise ValueError(
                f"the classifier was trained on {other!r} but the denoiser on "
                f"{denoiser.schedule!r}; train the classifier on the denoiser's schedule"
            )
        self.denoiser, self.schedule, self.log_prob = denoiser, denoiser.schedule, log_prob
        self.labels, self.scale = labels, check_scale(scale)

    def gradient(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        """grad_x log p(labels | x_t), shaped and typed like x_t."""
        t = batch_time(t, x_t)
        labels = _labels_for(self.labels, x_t)
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_prob(x, t, labels).sum(), x)
        return grad.to(x_t.dtype)

    def _shift(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        t = batch_time(t, x_t)
        gain = self.scale * self.schedule.sigma(t).square() / self.schedule.alpha(t)
        return expand_to(gain, x_t) * self.gradient(x_t, t)

    def __call__(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        return self.denoiser(x_t, t, **cond) + self._shift(x_t, t)

    def with_variance(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor]:
        x0, fraction = self.denoiser.with_variance(x_t, t, **cond)
        return x0 + self._shift(x_t, t), fraction


def classifier(
    denoiser: Denoiser, log_prob: LogProb, labels: Tensor | int, scale: float = 1.0
) -> ClassifierGuided:
    """The classifier-guided Denoiser (see ``ClassifierGuided``); ``log_prob(x_t, t, labels)``
    is a noise-conditional classifier of the denoiser's schedule (``rediff.NoisyClassifier``
    or an exact one)."""
    return ClassifierGuided(denoiser, log_prob, labels, scale)


class KnownNoise(Choice, noun="known-part noise"):
    """The z of the known part's forward-noised copy: ``fresh`` at every evaluation (the
    score-SDE method; measured closer to the Gaussian conditional's covariance) or ``fixed``,
    one z for the whole run, so the denoiser stays smooth in t (what adaptive ODE solvers
    need: with fresh noise the ``ode`` sampler took 29,169 evaluations instead of 147)."""

    FRESH = "fresh"
    FIXED = "fixed"


class Inpainting(Denoiser):
    """Imputation by replacement (Song et al. 2021, appendix I.2; Song & Ermon 2019): before
    every evaluation the known part of x_t is replaced by a forward-noised copy of the known
    values,

        x_t <- m * (alpha(t) y + sigma(t) z) + (1 - m) * x_t,   z ~ N(0, I),

    so any sampler fills in the rest (the sampler's own state for the known part is never
    seen by the model). ``inpaint`` also puts y itself into the known part of the result.

    Args:
        values: y, the known values, broadcastable to the samples [B, *D].
        mask: 1 (or True) where known, 0 where to fill in, broadcastable to the samples.
        generator: draws z.
        noise: ``"fresh"`` z at every evaluation or one ``"fixed"`` z (see ``KnownNoise``),
            drawn here, when this run's Inpainting is made (values then must have the
            samples' shape [B, *D]).
    """

    def __init__(
        self,
        denoiser: Denoiser,
        values: Tensor,
        mask: Tensor,
        generator: torch.Generator | None = None,
        noise: KnownNoise | str = KnownNoise.FRESH,
    ) -> None:
        check_finite("inpainting values", values)
        mask = torch.as_tensor(mask)
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("the inpainting mask must hold only 0/False (unknown) and 1/True")
        try:
            torch.broadcast_shapes(mask.shape, values.shape)
        except RuntimeError:
            raise ValueError(
                f"the mask's shape {tuple(mask.shape)} does not broadcast against the values' "
                f"shape {tuple(values.shape)}; give a mask of shape [*D] or [B, *D]"
            ) from None
        self.denoiser, self.schedule = denoiser, denoiser.schedule
        self.values, self.mask, self.generator = values, mask, generator
        self.noise, self.fixed = KnownNoise.parse(noise), None
        if self.noise is KnownNoise.FIXED:
            self.fixed = randn(values.shape, generator, values.dtype, values.device)

    def known(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The mask and the known values, broadcast to x (or a ValueError)."""
        try:
            shape = torch.broadcast_shapes(self.mask.shape, self.values.shape, x.shape)
        except RuntimeError:
            shape = None
        if shape != x.shape:
            raise ValueError(
                f"the mask {tuple(self.mask.shape)} and values {tuple(self.values.shape)} do "
                f"not broadcast to the samples' shape {tuple(x.shape)}"
            )
        mask = self.mask.to(x.device, x.dtype).expand(x.shape)
        return mask, self.values.to(x.device, x.dtype).expand(x.shape)

    def _z(self, x_t: Tensor) -> Tensor:
        if self.fixed is None:
            return randn(x_t.shape, self.generator, x_t.dtype, x_t.device)
        if self.fixed.shape != x_t.shape:
            raise ValueError(
                f"fixed known-part noise was drawn for values of shape {tuple(self.fixed.shape)}"
                f", but the samples are {tuple(x_t.shape)}; give values of the samples' shape"
            )
        return self.fixed.to(x_t.device, x_t.dtype)

    def replace(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        """x_t with its known part replaced by alpha(t) y + sigma(t) z."""
        mask, y = self.known(x_t)
        t = batch_time(t, x_t)
        z = self._z(x_t)
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        noised = expand_to(alpha, x_t) * y + expand_to(sigma, x_t) * z
        return torch.lerp(x_t, noised, mask)

    def __call__(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        return self.denoiser(self.replace(x_t, t), t, **cond)

    def with_variance(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor]:
        return self.denoiser.with_variance(self.replace(x_t, t), t, **cond)


def inpaint(
    denoiser: Denoiser,
    values: Tensor,
    mask: Tensor,
    *,
    sampler: str | None = None,
    generator: torch.Generator | None = None,
    resampling: Resampling | None = None,
    noise: KnownNoise | str | None = None,
    **sample_options: Any,
) -> Samples:
    """Fill in the unknown part (mask 0) of ``values`` [B, *D] with any sampler: ``rediff.sample``
    on the ``Inpainting`` denoiser (``sampler=``, ``steps=`` and the rest go through), with an
    optional RePaint resampling schedule (``Resampling(times, jump)``); the result holds the
    known values exactly where mask is 1. ``noise`` defaults to ``"fixed"`` for adaptive
    samplers and ``"fresh"`` for the others."""
    if noise is None:
        adaptive = sampler is not None and samplers.get(sampler).adaptive
        noise = KnownNoise.FIXED if adaptive else KnownNoise.FRESH
    wrapped = Inpainting(denoiser, values, mask, generator, noise)
    out = sample(
        wrapped,
        tuple(values.shape),
        sampler=sampler,
        generator=generator,
        resampling=resampling,
        dtype=sample_options.pop("dtype", values.dtype),
        **sample_options,
    )
    mask, y = wrapped.known(out.x)
    return dataclasses.replace(out, x=torch.lerp(out.x, y, mask))
