"""Evaluating trained runs (``rediff eval``, ``rediff nll``), on top of ``rediff.runs``.

Sample quality is measured by the run's data kind (``DataKind.score``: Frechet distance in a
digits classifier's features for the digits, sliced Wasserstein and energy distance for
points), each value beside its floor, the same measure of real data; a noise-conditional
classifier run is scored by its accuracy on noised data. Likelihoods are reported per
dimension: bits for quantised data (``DataSpec.levels``), nats for continuous data.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from rediff import data, discrete, likelihood, samplers, variational
from rediff._choices import Choice
from rediff._io import atomic_write, in_run
from rediff._tensor import Tensor, bits_per_dim, check_finite
from rediff.data.files import PIXEL_MAX
from rediff.discrete import AutoregressiveModel, DiscreteModel, InsDelModel, MaskedProcess
from rediff.discrete.insdel_model import bits_per_token
from rediff.discrete.insdel_model import elbo as insdel_elbo
from rediff.metrics import Score
from rediff.model import NoisyClassifier
from rediff.runs import Dataset, Guide, Run, draw, load_run


class Method(Choice, noun="method"):
    """How ``rediff nll`` bounds the likelihood: the probability-flow ODE (exact up to the
    solver; dequantised for quantised data), the variational bound (DDPM's, a D3PM model's,
    or masked diffusion's ELBO), or an autoregressive model's exact likelihood."""

    ODE = "ode"
    VLB = "vlb"
    EXACT = "exact"


class Split(Choice, noun="split"):
    """Which data ``rediff nll`` scores: held out where the kind has such data, or the
    training data."""

    HELD_OUT = "held_out"
    TRAIN = "train"


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


def writable(run: Run, name: str) -> bool:
    """Whether ``name`` can be written into the run directory; if not, say so on stderr (the
    result is then only printed)."""
    if os.access(run.path, os.W_OK):
        return True
    print(
        f"warning: {run.path} is read-only; {name} is not written (the result is printed only)",
        file=sys.stderr,
    )
    return False


class Evaluation(NamedTuple):
    """The scores of ``rediff eval`` and their report (markdown)."""

    scores: list[Score]
    report: str


def evaluate_run(
    run_dir: str | Path,
    sampler: str | None = None,
    steps: int | None = None,
    n: int | None = None,
    seed: int = 0,
    guide: Guide | None = None,
) -> Evaluation:
    """Sample a trained run (steered by ``guide``) and score the samples by its data kind, or
    score a classifier run on noised held-out data. Returns the scores and the report, which
    is written to ``eval.md`` in the run when the directory is writable. ``sampler`` and
    ``steps`` default to the run's own (its config's ``[sample]``)."""
    if n is not None and n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    run, guide = load_run(run_dir), guide or Guide()
    sampler = run.config.sample.sampler if sampler is None else sampler
    steps = run.config.sample.steps if steps is None else steps
    if isinstance(run.model, NoisyClassifier):
        held_out = run.held_out()
        scores = classifier_scores(run.model, held_out.x, held_out.labels, seed)
        how = f"{held_out.x.shape[0]} labelled data points, noised."
    else:
        score = run.spec.kind.score
        if score is None:
            raise ValueError(
                f"rediff eval has no measure for data.kind = {run.spec.kind.name!r} (data "
                f"{list(run.spec.shape)}); look at samples with rediff sample instead"
            )
        reference = run.data()
        n = n or run.spec.kind.default_n(reference)
        drawn = draw(
            run,
            n,
            sampler=sampler,
            steps=steps,
            generator=torch.Generator().manual_seed(seed),
            guide=guide,
            overflow="drop",
        )
        scores = score(drawn.x, drawn.labels, reference, seed)
        used = samplers.describe(sampler, steps)
        how = f"{n} samples, sampler {used}, {steps} steps ({drawn.nfe} evaluations)"
        if drawn.x.shape[0] < n:
            how += (
                f"; {n - drawn.x.shape[0]} outgrew the maximum length and were left out (the "
                "scores are over the others)"
            )
        if drawn.labels is not None:
            how += f", class-balanced labels, guidance scale {guide.scale:g}"
            how += " with a classifier" if guide.classifier is not None else ""
        how += "."
    report = _report(run.path, scores, how)
    if writable(run, "eval.md"):
        atomic_write(in_run(run.path, "eval.md"), lambda tmp: Path(tmp).write_text(report))
    return Evaluation(scores, report)


def _report(run: Path, scores: list[Score], how: str) -> str:
    lines = [
        f"# Evaluation of {run.name}",
        "",
        how,
        "The floor is the same measure of real data against real data: a value at its floor "
        "cannot be told from real data by that measure; below it, the samples lie closer to "
        "the training data than unseen data do.",
        "",
        "| metric | value | floor (real data) |",
        "|---|---|---|",
    ]
    for s in scores:
        floor = "" if s.floor is None or math.isnan(s.floor) else f"{s.floor:.4g}"
        lines.append(f"| {s.name} | {s.value:.4g} | {floor} |")
    return "\n".join(lines) + "\n"


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


def _nll_data(run: Run, split: Split, data_path: str | Path | None) -> tuple[Tensor, str]:
    """The data ``rediff nll`` scores, in the model's form (categories for a discrete
    model): the user's (of the run's shape), else the held-out split (digits) or the
    training data."""
    if data_path is None:
        held_out = split is Split.HELD_OUT and run.spec.kind.held_out is not None
        dataset = run.held_out() if held_out else run.data()
        name = "held-out" if held_out else "training"
    else:
        path, c, spec = Path(data_path), run.config.data, run.spec
        if path.is_dir():
            x = data.load_image_folder(path, c.image_size, c.channels)[0]
        else:
            x = data.load_array(path, integers=spec.integer).x
        if tuple(x.shape[1:]) != spec.shape:
            raise ValueError(
                f"{data_path} holds data of shape {list(x.shape[1:])}, but the run's model "
                f"takes {list(spec.shape)}; resize the images or pick the matching run"
            )
        dataset, name = Dataset(x, levels=spec.levels, ordinal=spec.ordinal), str(data_path)
    over_tokens = isinstance(run.model, (DiscreteModel, AutoregressiveModel, InsDelModel))
    return (dataset.categories() if over_tokens else dataset.x), name


class NLL(NamedTuple):
    """The row of ``rediff nll`` and its report (markdown)."""

    row: NLLRow
    report: str


def _method(run: Run, method: Method | str | None) -> Method:
    """The method asked for, or the run's own: the exact likelihood of an autoregressive
    model (its only one), the bound for a discrete model (which has no probability-flow
    ODE), the ODE otherwise."""
    if isinstance(run.model, AutoregressiveModel):
        if method is not None and Method.parse(method) is not Method.EXACT:
            raise ValueError("an autoregressive model's likelihood is exact: use --method exact")
        return Method.EXACT
    discrete_model = isinstance(run.model, (DiscreteModel, InsDelModel))
    default = Method.VLB if discrete_model else Method.ODE
    method = default if method is None else Method.parse(method)
    if method is Method.EXACT:
        raise ValueError("--method exact is for autoregressive models; use vlb or ode")
    if discrete_model and method is Method.ODE:
        raise ValueError("a discrete model has no probability-flow ODE: use --method vlb")
    if method is Method.VLB and run.spec.levels is None:
        raise ValueError("--method vlb needs quantised data (digits, images); use ode")
    return method


def _bound_row(run: Run, x: Tensor, vlb_steps: int | None, gen) -> NLLRow:
    """The bound in bits/dim (bits/char for text): DDPM's over the data's levels or a D3PM
    model's (NFE: the diffusion terms evaluated plus the decoder's), or a masked model's
    ELBO (NFE: its draws per sample)."""
    num_steps, unit = vlb_steps or None, _unit(run)
    if isinstance(run.model, InsDelModel):
        nats = torch.cat([insdel_elbo(run.model, part, generator=gen) for part in x.split(128)])
        return _row("elbo", "bits/token", bits_per_token(nats, x), run.model.process.num_steps)
    if isinstance(run.model, DiscreteModel) and isinstance(run.model.process, MaskedProcess):
        if num_steps is None:
            raise ValueError("the masked ELBO is a Monte Carlo estimate: --vlb-steps must be >= 2")
        bound = discrete.elbo(run.model, x, samples=num_steps, generator=gen, progress=True)
        return _row("elbo", unit, bound.bits_per_dim, num_steps)
    if isinstance(run.model, DiscreteModel):
        bound = discrete.vlb(run.model, x, num_steps=num_steps, generator=gen, progress=True)
        total = run.model.process.num_steps
    else:
        levels = run.spec.levels
        bound = variational.vlb(
            run.model, x, levels=levels, num_steps=num_steps, generator=gen, progress=True
        )
        total = run.model.schedule.num_steps
    return _row("vlb", unit, bound.bits_per_dim, (num_steps or total - 1) + 1)


def _unit(run: Run) -> str:
    """Bits per character or byte of text, else per dimension."""
    tokenizer = run.spec.tokenizer
    return "bits/dim" if tokenizer is None else f"bits/{tokenizer.kind.value}"


def _exact_row(run: Run, x: Tensor) -> NLLRow:
    """An autoregressive model's exact -log2 p(x) per token (one evaluation per batch)."""
    with torch.no_grad():
        nats = torch.cat([-run.model.log_prob(part) for part in x.split(64)])
    return _row("exact", _unit(run), bits_per_dim(nats, x), 1)


def _ode_row(
    model, levels: int | None, x: Tensor, probes: int | None, rtol: float | None, gen
) -> NLLRow:
    """The probability-flow ODE likelihood: bits/dim of dequantised levels, or nats/dim; by
    the 40-evaluation multistep solver, or the adaptive one at ``rtol`` = atol."""
    probes = probes if probes is not None else (0 if x[0].numel() <= 16 else 1)
    trace = {"trace": "exact"} if probes == 0 else {"trace": "hutchinson", "probes": probes}
    solver = likelihood.Multistep() if rtol is None else likelihood.Solver(rtol, rtol)
    with torch.no_grad():
        if levels is not None:
            options = {"generator": gen, "solver": solver, **trace}
            out = likelihood.dequantized_nll(model, x, levels, **options)
            return _row("ode", "bits/dim", out.bits_per_dim, out.nfe)
        out = likelihood.log_likelihood(model, x, solver=solver, generator=gen, **trace)
        return _row("ode", "nats/dim", out.nll / x[0].numel(), out.nfe)


def _nll_report(name: str, row: NLLRow, data_name: str) -> str:
    """``rediff nll``'s markdown report of one row."""
    lines = [
        f"# Negative log-likelihood of {name}",
        "",
        f"{row.n} samples ({data_name} data); mean and standard error over the samples.",
        "",
        "| method | unit | mean | standard error | NFE |",
        "|---|---|---|---|---|",
        f"| {row.method} | {row.unit} | {row.mean:.4f} | {row.se:.4f} | {row.nfe} |",
    ]
    return "\n".join(lines) + "\n"


def _subset(x: Tensor, n: int | None, seed: int) -> Tensor:
    """``n`` (default 512) of the data points, drawn without replacement by ``seed``."""
    if n is not None and n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    return x[order[: n or 512]]


#: grey levels of 8-bit pictures (what diffusers' image models are trained on)
PIXEL_LEVELS = int(PIXEL_MAX) + 1


def diffusers_nll(
    folder: str | Path,
    data_path: str | Path,
    *,
    n: int | None = None,
    probes: int | None = None,
    rtol: float | None = None,
    seed: int = 0,
) -> NLL:
    """``rediff nll --diffusers PATH --data DATA``: the probability-flow ODE likelihood of a
    diffusers folder's model on the user's data (an image folder, or a .npy/.npz of its
    shape): bits/dim of 256 dequantised levels for images and integer pixels, else
    nats/dim. diffusers itself has no likelihood."""
    from rediff.interop import load_diffusers

    model = load_diffusers(folder)
    config = model.net.unet.config
    size = config.sample_size
    shape = (config.in_channels, *((size, size) if isinstance(size, int) else size))
    path = Path(data_path)
    if path.is_dir():
        x, levels = data.load_image_folder(path, shape[-1], shape[0])[0], PIXEL_LEVELS
    else:
        array = data.load_array(path)
        x, levels = array.x, (PIXEL_LEVELS if array.pixels else None)
    if tuple(x.shape[1:]) != shape:
        raise ValueError(
            f"{data_path} holds data of shape {list(x.shape[1:])}, but the diffusers model "
            f"takes {list(shape)}; resize the images or pick the matching folder"
        )
    x = _subset(x, n, seed)
    row = _ode_row(model, levels, x, probes, rtol, torch.Generator().manual_seed(seed))
    return NLL(row, _nll_report(Path(folder).name, row, str(data_path)))


def run_nll(
    run_dir: str | Path,
    method: Method | str | None = None,
    *,
    split: Split | str = Split.HELD_OUT,
    data_path: str | Path | None = None,
    n: int | None = None,
    probes: int | None = None,
    vlb_steps: int | None = 50,
    rtol: float | None = None,
    seed: int = 0,
) -> NLL:
    """Negative log-likelihood of a run's data (``rediff nll``): for quantised data (digits,
    images, integer arrays) bits per dimension of its levels (ODE with uniform
    dequantisation, or the discrete VLB; a discrete model: its bound), for continuous data
    nats per dimension (ODE). ``probes`` = 0 takes the exact divergence (default for d <= 16;
    otherwise one Hutchinson probe); ``rtol`` switches from the 40-evaluation multistep
    solver to the adaptive one at that tolerance. ``data_path`` scores other data (an image
    folder or a .npy/.npz) of the run's shape. Returns the row and the report, written to
    ``nll_<method>.md`` when possible."""
    split = Split.parse(split)
    run = load_run(run_dir)
    method = _method(run, method)
    x, data_name = _nll_data(run, split, data_path)
    x = _subset(x, n, seed)
    gen = torch.Generator().manual_seed(seed)
    if method is Method.EXACT:
        row = _exact_row(run, x)
    elif method is Method.VLB:
        row = _bound_row(run, x, vlb_steps, gen)
    else:
        row = _ode_row(run.model, run.spec.levels, x, probes, rtol, gen)
    report = _nll_report(run.path.name, row, data_name)
    name = f"nll_{row.method}.md"
    if writable(run, name):
        atomic_write(in_run(run.path, name), lambda tmp: Path(tmp).write_text(report))
    return NLL(row, report)
