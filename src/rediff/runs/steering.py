"""Drawing samples from a trained run, as training's sample grids, ``rediff sample``,
``rediff eval`` and the demo all do: class labels, guidance, shared noise and x0 limits
applied in one place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from rediff import discrete, guidance, samplers
from rediff._tensor import Tensor
from rediff.discrete import AutoregressiveModel, DiscreteModel, InsDelModel
from rediff.discrete.insdel_model import Overflow
from rediff.model import Conditioned, Denoiser, NoisyClassifier
from rediff.noise import SharedNoise
from rediff.runs.run import Run
from rediff.sampling import sample


@dataclass(frozen=True)
class Guide:
    """How a run is steered towards class labels: the guidance ``scale`` (1: the conditional
    model itself) and, for classifier guidance, a trained NoisyClassifier with its number of
    classes."""

    scale: float = 1.0
    classifier: NoisyClassifier | None = None
    classifier_classes: int = 0

    def classes(self, run: Run) -> int:
        """The number of classes ``run`` can be steered to (0: none)."""
        return self.classifier_classes if self.classifier is not None else run.classes


def steered(run: Run, labels: Tensor | None, guide: Guide = Guide()) -> Denoiser:
    """The Denoiser that samples class ``labels`` [n] from a run's model: the conditional
    model (scale 1), classifier-free guidance (a model trained with label dropout), or
    classifier guidance of the (conditional or not) model; ``labels=None``: the model."""
    scale, model = guidance.check_scale(guide.scale), run.model
    if labels is None:
        if guide.classifier is not None or scale != 1.0:
            raise ValueError("guidance needs class labels to steer to (--class)")
        return model
    classes = guide.classes(run)
    if not classes:
        raise ValueError(
            "class labels need a class-conditional model (model.num_classes > 0) or a "
            "noise-conditional classifier (--classifier RUN)"
        )
    if bool(((labels < 0) | (labels >= classes)).any()):
        raise ValueError(
            f"class labels must lie in [0, {classes - 1}], got {sorted(set(labels.tolist()))[:10]}"
        )
    base = Conditioned(model, labels=labels) if run.classes else model
    if guide.classifier is not None:
        return guidance.classifier(base, guide.classifier, labels, scale)
    if scale == 1.0:
        return base
    if not run.config.train.label_dropout:
        raise ValueError(
            "classifier-free guidance (a scale other than 1) needs a model trained with label "
            "dropout (train.label_dropout > 0), or a classifier (--classifier RUN)"
        )
    return guidance.classifier_free(model, labels, scale)


def sampler_options(run: Run, sampler: str | None) -> dict:
    """What a run implies for a sampler: a model that learns its reverse variance samples
    with it where the sampler can use it (DDPM)."""
    if sampler is None:  # the budget's default, which never uses a learned variance
        return {}
    learned = run.config.model.learned_variance and samplers.get(sampler).learned_variance
    return {"variance": "learned"} if learned else {}


class Drawn(NamedTuple):
    """Samples [n, *D], their class labels [n] (None for an unconditional draw) and the
    number of network evaluations."""

    x: Tensor
    labels: Tensor | None
    nfe: int


def draw(
    run: Run,
    n: int,
    *,
    sampler: str | None,
    steps: int,
    generator: torch.Generator,
    guide: Guide = Guide(),
    label: int | None = None,
    shared: SharedNoise | None = None,
    limit: Callable[[Denoiser], Denoiser] | None = None,
    top_p: float = 1.0,
    known: Tensor | None = None,
    progress: bool = False,
    overflow: Overflow | str = Overflow.ERROR,
) -> Drawn:
    """n samples from ``run``'s model (on its device). A conditional (or classifier-guided)
    model draws class ``label`` for every sample, or without one the classes 0, 1, ... in
    turn (never the null label, which a model trained without label dropout never saw);
    ``guide`` steers, ``shared`` shares noise within groups, ``limit`` wraps the denoiser
    (``rediff.thresholding``). Models over categories: ``top_p`` (nucleus; 0 greedy) and
    ``known`` tokens to keep (-1 where free: infilling, or an autoregressive prefix).
    ``overflow``: what to do with a sample that outgrows the maximum length (only
    insertion/deletion models' samples can): error, or drop it (fewer than n come back)."""
    if n < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")
    device = next(run.model.parameters()).device
    classes = guide.classes(run)
    if label is not None:
        labels = torch.full((n,), int(label), device=device)
    else:
        labels = torch.arange(n, device=device) % classes if classes else None
    overflow = Overflow.parse(overflow)
    if isinstance(run.model, InsDelModel):
        _continuous_only(guide, shared, limit)
        options = {"top_p": top_p, "known": known, "progress": progress, "overflow": overflow}
        return _draw_insdel(run, n, generator, labels, guide, options)
    if isinstance(run.model, (DiscreteModel, AutoregressiveModel)):
        _continuous_only(guide, shared, limit)
        options = {"top_p": top_p, "known": known, "progress": progress}
        return _draw_discrete(run, n, sampler, steps, generator, labels, guide, options)
    if top_p != 1.0 or known is not None:
        raise ValueError("top_p and known tokens are for models of tokens (discrete runs)")
    denoiser = steered(run, labels, guide)
    out = sample(
        limit(denoiser) if limit is not None else denoiser,
        (n, *run.spec.shape),
        sampler=sampler,
        steps=steps,
        generator=generator,
        device=device,
        progress=progress,
        shared=shared,
        **sampler_options(run, sampler),
    )
    return Drawn(out.x, labels, out.nfe)


def _continuous_only(guide: Guide, shared, limit) -> None:
    """Refuse what only continuous models can do, for a discrete run."""
    unsupported = {
        "classifier guidance (--classifier)": guide.classifier is not None,
        "shared noise": shared is not None,
        "x0 clipping or thresholding": limit is not None,
    }
    for what, asked in unsupported.items():
        if asked:
            raise ValueError(f"{what} is for continuous models; this run is a discrete process")


def _draw_insdel(run, n, generator, labels, guide, options) -> Drawn:
    """``draw`` for an insertion/deletion model: ancestral sampling from the empty sequence,
    the samples as rows padded with -1 to the model's maximum length."""
    unsupported = {
        "classifier-free guidance": guidance.check_scale(guide.scale) != 1.0,
        "top_p": options["top_p"] != 1.0,
        "known tokens (--prefix / --suffix)": options["known"] is not None,
    }
    for what, asked in unsupported.items():
        if asked:
            raise ValueError(f"{what} is not built for insertion/deletion models")
    cond = {"labels": labels} if run.classes else {}
    out = run.model.sample(
        n, generator=generator, progress=options["progress"], overflow=options["overflow"], **cond
    )
    kept = None if labels is None else labels[torch.tensor(out.kept, device=labels.device)]
    return Drawn(out.padded(run.model.max_length), kept, out.nfe)


def _draw_discrete(run, n, sampler, steps, generator, labels, guide, options) -> Drawn:
    """``draw`` for a model over categories: its samplers (classifier-free guidance of a
    model trained with label dropout), the samples in the data's own form (levels as values
    in [-1, 1], tokens as integers)."""
    device = next(run.model.parameters()).device
    shape = (n, *run.spec.shape)
    guided = guidance.check_scale(guide.scale) != 1.0
    if guided and (labels is None or not run.config.train.label_dropout):
        raise ValueError(
            "classifier-free guidance (a scale other than 1) needs a class-conditional model "
            "trained with label dropout (train.label_dropout > 0)"
        )
    cond = {"labels": labels} if run.classes else {}
    if isinstance(run.model, AutoregressiveModel):
        if guided:
            raise ValueError("classifier-free guidance of an autoregressive model is not built")
        out = run.model.sample(shape, generator=generator, device=device, **options, **cond)
        return Drawn(out.x, labels, out.nfe)
    model = discrete.ClassifierFree(run.model, guide.scale) if guided else run.model
    out = discrete.sample(
        model,
        shape,
        sampler=sampler,
        steps=steps,
        generator=generator,
        device=device,
        **options,
        **cond,
    )
    return Drawn(run.spec.values(out.x), labels, out.nfe)
