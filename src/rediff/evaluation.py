"""Evaluating trained runs: distances to the data, and for digits a Frechet distance in the
features of a small classifier that rediff trains itself (no downloaded Inception weights).

The digits classifier is a two-layer CNN trained deterministically (fixed seed, fixed order)
on the training split that rediff's digits runs use (``data.digits_split``); its 64 penultimate
features play the role of Inception features in FID. The distance's floor is that of the 360
held-out real digits against the training digits: a model cannot be told from real data by
this measure when its samples (as many as the held-out set) reach the floor.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rediff import data, guidance, metrics
from rediff._io import atomic_write, in_run
from rediff._tensor import Tensor, check_finite
from rediff.model import Conditioned, Denoiser, NoisyClassifier
from rediff.sampling import sample

NUM_DIGITS = 10


class DigitsClassifier(nn.Module):
    """8x8 digits -> 10 logits; ``features`` are the 64 penultimate activations."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 64),
            nn.ReLU(),
        )
        self.head = nn.Linear(64, NUM_DIGITS)

    def features(self, x: Tensor) -> Tensor:
        if x.shape[1:] != (1, 8, 8):
            raise ValueError(f"the digits classifier takes [N, 1, 8, 8], got {tuple(x.shape)}")
        check_finite("digits", x)
        return self.body(x.float().clamp(-1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@functools.cache
def digits_classifier(epochs: int = 20) -> DigitsClassifier:
    """The classifier, trained once per process on the digits training split (seed 0)."""
    x, y = data.digits_split("train")
    with torch.random.fork_rng(), torch.enable_grad():  # callers may hold no_grad
        torch.manual_seed(0)
        net = DigitsClassifier()
        optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
        order = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            for idx in torch.randperm(x.shape[0], generator=order).split(64):
                loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return net.eval().requires_grad_(False)


def _features(x: Tensor) -> Tensor:
    with torch.no_grad():
        return digits_classifier().features(x.cpu())


def digits_accuracy(x: Tensor, labels: Tensor) -> float:
    """The fraction of digits x [N, 1, 8, 8] the classifier labels as ``labels``."""
    with torch.no_grad():
        predicted = digits_classifier()(x.cpu()).argmax(1)
    return float((predicted == labels.cpu()).double().mean())


def digits_frechet(x: Tensor) -> float:
    """Frechet distance between digits x [N, 1, 8, 8] and the training split, in the
    classifier's features."""
    return metrics.frechet_distance(_features(x), _features(data.digits_split("train")[0]))


def digits_frechet_floor() -> float:
    """``digits_frechet`` of the 360 held-out real digits: the floor a perfect model reaches
    with as many samples."""
    return digits_frechet(data.digits_split("held_out")[0])


@dataclass(frozen=True)
class Score:
    """One measured quantity, with the floor that real data reach where there is one."""

    name: str
    value: float
    floor: float | None = None


def default_n(config, x: Tensor) -> int:
    """Samples scored by default: as many as the held-out digits, else up to 5000 points."""
    return data.digits.HELD_OUT if config.data.kind == "digits" else min(x.shape[0] // 2, 5000)


@dataclass(frozen=True)
class Guide:
    """How a run is steered towards class labels: the guidance ``scale`` (1: the conditional
    model itself) and, for classifier guidance, a trained NoisyClassifier with its number of
    classes."""

    scale: float = 1.0
    classifier: NoisyClassifier | None = None
    classifier_classes: int = 0


def classes_of(config, guide: Guide = Guide()) -> int:
    """The number of classes a run can be steered to (0: none)."""
    return guide.classifier_classes if guide.classifier is not None else config.model.num_classes


def steered(model, config, labels: Tensor | None, guide: Guide = Guide()) -> Denoiser:
    """The Denoiser that samples class ``labels`` [n] from a run's model: the conditional
    model (scale 1), classifier-free guidance (a model trained with label dropout), or
    classifier guidance of the (conditional or not) model; ``labels=None``: the model."""
    scale = guidance.check_scale(guide.scale)
    if labels is None:
        if guide.classifier is not None or scale != 1.0:
            raise ValueError("guidance needs class labels to steer to (--class)")
        return model
    classes = classes_of(config, guide)
    if not classes:
        raise ValueError(
            "class labels need a class-conditional model (model.num_classes > 0) or a "
            "noise-conditional classifier (--classifier RUN)"
        )
    if bool(((labels < 0) | (labels >= classes)).any()):
        raise ValueError(
            f"class labels must lie in [0, {classes - 1}], got {sorted(set(labels.tolist()))[:10]}"
        )
    base = Conditioned(model, labels=labels) if config.model.num_classes else model
    if guide.classifier is not None:
        return guidance.classifier(base, guide.classifier, labels, scale)
    if scale == 1.0:
        return base
    if not config.train.label_dropout:
        raise ValueError(
            "classifier-free guidance (a scale other than 1) needs a model trained with label "
            "dropout (train.label_dropout > 0), or a classifier (--classifier RUN)"
        )
    return guidance.classifier_free(model, labels, scale)


def draw(
    model,
    config,
    shape: tuple[int, ...],
    n: int,
    sampler: str,
    steps: int,
    generator,
    guide: Guide = Guide(),
) -> tuple[Tensor, Tensor | None, int]:
    """n samples of shape [*shape] from a trained run's model (on its device), with
    class-balanced labels 0, 1, ... for a conditional (or classifier-guided) model, steered
    by ``guide``: (samples, labels or None, number of evaluations)."""
    device = next(model.parameters()).device
    classes = classes_of(config, guide)
    labels = torch.arange(n, device=device) % classes if classes else None
    out = sample(
        steered(model, config, labels, guide),
        (n, *shape),
        sampler=sampler,
        steps=steps,
        generator=generator,
        device=device,
        progress=False,
        **config.sampler_options(sampler),
    )
    return out.x, labels, out.nfe


def check_scorable(config, x: Tensor) -> None:
    """Refuse data ``score`` has no measure for (before anything is sampled)."""
    if config.data.kind != "digits" and x.ndim != 2:
        raise ValueError(
            f"rediff eval scores digits and low-dimensional data; this run's data are "
            f"{list(x.shape[1:])} ({config.data.kind}). Use rediff sample to look at samples"
        )


def score(config, x: Tensor, samples: Tensor, labels: Tensor | None, seed: int = 0) -> list[Score]:
    """Scores of ``samples`` against the run's data x: Frechet distance (and accuracy of
    class-conditional samples) for digits; sliced Wasserstein and energy distance, with the
    same distances between two disjoint halves of the data as floors, for [N, d] data (the
    halves and the projections fixed by ``seed``, so every sampler meets the same floor)."""
    if config.data.kind == "digits":
        scores = [
            Score(
                "Frechet distance (digits features)",
                digits_frechet(samples),
                digits_frechet_floor(),
            )
        ]
        if labels is not None:
            held_out = digits_accuracy(*data.digits_split("held_out"))
            scores.append(
                Score(
                    "classifier accuracy (class-conditional)",
                    digits_accuracy(samples, labels),
                    held_out,
                )
            )
        return scores
    check_scorable(config, x)
    n = samples.shape[0]
    if 2 * n > x.shape[0]:
        raise ValueError(
            f"scoring {n} samples needs at least {2 * n} data points, have {x.shape[0]}"
        )
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    ref, other = x[perm[:n]], x[perm[n : 2 * n]]

    def sw(a: Tensor) -> float:  # the same projections for samples and floor
        return metrics.sliced_wasserstein(a, ref, generator=torch.Generator().manual_seed(seed))

    return [
        Score("sliced Wasserstein", sw(samples), sw(other)),
        Score(
            "energy distance",
            metrics.energy_distance(samples, ref),
            metrics.energy_distance(other, ref),
        ),
    ]


#: where on the schedule's time range a classifier run is scored
CLASSIFIER_TIMES = (0.0, 0.1, 0.3, 0.5, 0.7)


@torch.no_grad()
def classifier_scores(classifier: NoisyClassifier, x: Tensor, labels: Tensor, seed=0):
    """A noisy classifier's accuracy on x_t ~ q(x_t | x) at a few times (fractions of the
    time range, ``CLASSIFIER_TIMES``), chance level as the floor."""
    s, gen = classifier.schedule, torch.Generator().manual_seed(seed)
    scores = []
    for fraction in CLASSIFIER_TIMES:
        t = torch.full((x.shape[0],), s.t_min + fraction * (s.t_max - s.t_min), dtype=torch.float64)
        x_t = s.marginal(x, t, torch.randn(x.shape, generator=gen, dtype=x.dtype))
        logits = classifier.logits(x_t, t)
        right = logits.argmax(1).cpu() == labels.cpu()
        level = float(s.noise_level(t[0]))
        accuracy = float(right.double().mean())
        scores.append(
            Score(f"accuracy at noise level {level:.3g}", accuracy, 1.0 / logits.shape[1])
        )
    return scores


def evaluate_run(
    run_dir: str | Path,
    sampler: str = "dpm++2m",
    steps: int = 20,
    n: int | None = None,
    seed=0,
    guide: Guide = Guide(),
) -> list[Score]:
    """Sample a trained run (steered by ``guide``) and ``score`` the samples, or score a
    classifier run on noised held-out data; writes ``eval.md`` into the run."""
    from rediff.training import load_data, load_run

    config, model = load_run(run_dir)
    if isinstance(model, NoisyClassifier):
        x, labels = (
            data.digits_split("held_out") if config.data.kind == "digits" else load_data(config)
        )
        scores = classifier_scores(model, x, labels, seed)
        _write_report(Path(run_dir), scores, f"{x.shape[0]} labelled data points, noised.")
        return scores
    x, _ = load_data(config)
    check_scorable(config, x)
    n = n or default_n(config, x)
    gen = torch.Generator().manual_seed(seed)
    samples, labels, nfe = draw(model, config, tuple(x.shape[1:]), n, sampler, steps, gen, guide)
    scores = score(config, x, samples, labels, seed)
    how = f"{n} samples, sampler {sampler}, {steps} steps ({nfe} evaluations)"
    if labels is not None:
        how += f", guidance scale {guide.scale:g}"
        how += " with a classifier" if guide.classifier is not None else ""
    _write_report(Path(run_dir), scores, how + ".")
    return scores


def _write_report(run: Path, scores: list[Score], how: str) -> None:
    lines = [
        f"# Evaluation of {run.name}",
        "",
        how,
        "",
        "| metric | value | floor (real data) |",
        "|---|---|---|",
    ]
    for s in scores:
        floor = "" if s.floor is None or math.isnan(s.floor) else f"{s.floor:.4g}"
        lines.append(f"| {s.name} | {s.value:.4g} | {floor} |")
    text = "\n".join(lines) + "\n"
    atomic_write(in_run(run, "eval.md"), lambda tmp: Path(tmp).write_text(text))


@dataclass(frozen=True)
class NLLRow:
    """One line of ``rediff nll``'s table: mean and standard error over the data, per dim."""

    method: str
    unit: str
    n: int
    mean: float
    se: float
    nfe: int


def _row(method: str, unit: str, per_sample: Tensor, nfe: int) -> NLLRow:
    check_finite(f"{method} result", per_sample)
    se = float(per_sample.std() / math.sqrt(per_sample.numel())) if per_sample.numel() > 1 else 0.0
    return NLLRow(method, unit, per_sample.numel(), float(per_sample.mean()), se, nfe)


def run_nll(
    run_dir: str | Path,
    method: str = "ode",
    *,
    split: str = "held_out",
    data_path: str | Path | None = None,
    n: int | None = None,
    probes: int | None = None,
    vlb_steps: int | None = 50,
    rtol: float = 1e-5,
    seed: int = 0,
) -> NLLRow:
    """Negative log-likelihood of a run's data (``rediff nll``): for digits and images bits
    per dimension of the 8-bit-style levels (ODE with uniform dequantisation, or the discrete
    VLB), for continuous data nats per dimension (ODE). ``probes`` = 0 takes the exact
    divergence (default for d <= 16; otherwise one Hutchinson probe). ``data_path`` scores
    other data (an image folder or a .npy/.npz) of the run's shape. Writes
    ``nll_<method>.md``."""
    from rediff import likelihood, variational
    from rediff.training import load_data, load_run
    from rediff.training.loop import LEVELS

    config, model = load_run(run_dir)
    if data_path is not None:
        x, data_name = _user_data(Path(data_path), config), str(data_path)
        expected = tuple(load_data(config)[0].shape[1:])
        if tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{data_path} holds data of shape {list(x.shape[1:])}, but the run's model "
                f"takes {list(expected)}; resize the images or pick the matching run"
            )
    elif config.data.kind == "digits":
        x, data_name = data.digits_split(split)[0], f"{split} digits"
    else:
        x, data_name = load_data(config)[0], "training"
    x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[: n or 512]]
    discrete = config.data.kind in ("digits", "images")
    levels, gen = LEVELS.get(config.data.kind, 256), torch.Generator().manual_seed(seed)
    d = x[0].numel()
    if method == "vlb":
        if not discrete:
            raise ValueError("--method vlb needs discrete data (digits or images); use ode")
        bound = variational.vlb(model, x, levels=levels, num_steps=vlb_steps or None, generator=gen)
        evaluations = (vlb_steps or model.schedule.num_steps - 1) + 1  # + the decoder's
        row = _row("vlb", "bits/dim", bound.bits_per_dim, evaluations)
    elif method == "ode":
        probes = probes if probes is not None else (0 if d <= 16 else 1)
        trace = {"trace": "exact"} if probes == 0 else {"trace": "hutchinson", "probes": probes}
        solver = likelihood.Solver(rtol, rtol)
        with torch.no_grad():
            if discrete:
                out = likelihood.dequantized_nll(
                    model, x, levels, generator=gen, solver=solver, **trace
                )
                row = _row("ode", "bits/dim", out.bits_per_dim, out.nfe)
            else:
                out = likelihood.log_likelihood(model, x, solver=solver, generator=gen, **trace)
                row = _row("ode", "nats/dim", out.nll / d, out.nfe)
    else:
        raise ValueError(f"unknown method {method!r}; valid: 'ode', 'vlb'")
    _write_nll_report(Path(run_dir), row, data_name)
    return row


def _user_data(path: Path, config) -> Tensor:
    """Data the user points ``rediff nll --data`` at: an image folder (resized like the run's
    data) or a .npy/.npz array."""
    if path.is_dir():
        return data.load_image_folder(path, config.data.image_size, config.data.channels)[0]
    return data.load_array(path)[0]


def _write_nll_report(run: Path, row: NLLRow, data_name: str) -> None:
    text = "\n".join(
        [
            f"# Negative log-likelihood of {run.name}",
            "",
            f"{row.n} samples ({data_name}); mean and standard error over the samples.",
            "",
            "| method | unit | mean | standard error | NFE |",
            "|---|---|---|---|---|",
            f"| {row.method} | {row.unit} | {row.mean:.4f} | {row.se:.4f} | {row.nfe} |",
        ]
    )
    path = in_run(run, f"nll_{row.method}.md")
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))
