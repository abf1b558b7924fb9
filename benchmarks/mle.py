"""Maximum-likelihood training of the probability-flow ODE: first-order losses against Lu et
al. 2022's second- and third-order fine-tuning, by the exact KL to the data.

    .venv/bin/python benchmarks/mle.py   # results/mle.md (toys), results/mle_digits.md
    .venv/bin/python benchmarks/mle.py --part digits   # the digits part alone

Data: Gaussian mixtures with infinite training data (fresh draws each step): Lu et al.'s
kind of 1-D toy (three components of unequal widths), a 2-D and an 8-D mixture. Model: an MLP
(width 64, depth 3) predicting eps under the linear VP SDE (t_min = 1e-3). Each seed trains
``--base`` steps from scratch (Adam, lr 2e-3, batch 512) with the simple loss, or with the
likelihood weighting and its importance sampler (Song et al. 2021), then ``--extra`` more
steps (lr 2e-4) with the same first-order loss, or with ``dsm2`` / ``dsm3`` (that first-order
loss plus the higher orders). Score: KL(data || model) =
the exact ODE NLL of 2000 held-out draws (exact divergence, adaptive, rtol = atol = 1e-6) minus the
mixture's entropy (the mean -log q of the same draws), in nats; mean +- standard error over
the held-out draws, for each seed, and the paired difference to first-order fine-tuning.

Digits: rediff's digits config (configs/digits_ddpm.toml: the small UNet, DDPM's discrete
schedule) trained ``--digits-base`` steps with the simple loss, or with the likelihood
weighting and its importance sampler, then fine-tuned ``--digits-extra`` steps from its EMA
weights (``train.init``, lr 2e-4) with each loss kind; dequantised bits/dim of the 360
held-out digits by the default ODE likelihood (40 evaluations, one Hutchinson probe), in
units of the 17 grey levels, +- the standard error over the digits.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import tempfile
from datetime import date
from pathlib import Path

import torch

from rediff import data, likelihood, losses, schedules
from rediff.evaluation import run_nll
from rediff.model import DiffusionModel
from rediff.nets import MLP
from rediff.training import load_config, train

RESULTS = Path(__file__).parent / "results" / "mle.md"
DIGITS_RESULTS = RESULTS.with_name("mle_digits.md")
F64 = torch.float64
SCHEDULE = schedules.LinearVP(t_min=1e-3)


def toy_1d() -> data.GaussianMixture:
    return data.GaussianMixture(
        torch.tensor([[-1.0], [0.5], [1.5]], dtype=F64),
        torch.tensor([[[0.01]], [[0.04]], [[0.0025]]], dtype=F64),
        torch.tensor([0.4, 0.35, 0.25], dtype=F64),
    )


def toy_2d() -> data.GaussianMixture:
    return data.GaussianMixture(
        torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.2]], dtype=F64),
        torch.tensor(
            [[[0.02, 0.0], [0.0, 0.1]], [[0.05, 0.02], [0.02, 0.02]], [[0.01, 0.0], [0.0, 0.01]]],
            dtype=F64,
        ),
        torch.tensor([0.4, 0.35, 0.25], dtype=F64),
    )


def toy_8d() -> data.GaussianMixture:
    """Three components in 8-D with diagonal covariances of unequal widths (0.05 to 0.4)."""
    gen = torch.Generator().manual_seed(8)
    means = torch.randn(3, 8, generator=gen, dtype=F64)
    scales = 0.05 + 0.35 * torch.rand(3, 8, generator=gen, dtype=F64)
    return data.GaussianMixture(
        means, torch.diag_embed(scales**2), torch.tensor([0.4, 0.35, 0.25], dtype=F64)
    )


def fit(model, objective, mixture, steps: int, lr: float, seed: int) -> None:
    """``steps`` Adam steps of ``objective`` on fresh draws of ``mixture``."""
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        x0 = mixture.sample(512, generator=gen).float()
        loss = objective(model, x0, objective.draw(model.schedule, x0, gen))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def kl(model, mixture, held: torch.Tensor) -> torch.Tensor:
    """Per-point NLL under the model's ODE minus -log q: its mean is KL(q || model)."""
    exact = copy.deepcopy(model).double()
    nll = likelihood.log_likelihood(
        exact, held, trace="exact", solver=likelihood.Solver(1e-6, 1e-6)
    ).nll
    return nll + mixture.log_prob(held)


def _cell(x: torch.Tensor) -> str:
    return f"{float(x.mean()):.4f} +- {float(x.std() / math.sqrt(x.numel())):.4f}"


def run(name: str, mixture, first: tuple[str, str], args, seed: int) -> list[str]:
    """One seed: the base model, then each fine-tuning; table rows."""
    weighting, sampler = first
    torch.manual_seed(seed)
    base = DiffusionModel(MLP(mixture.dim, 64, 3), SCHEDULE, "eps")
    fit(base, losses.Objective("denoising", weighting, sampler), mixture, args.base, 2e-3, seed)
    held = mixture.sample(2000, generator=torch.Generator().manual_seed(100 + seed)).double()
    scores = {"base": kl(base, mixture, held)}
    for kind in ("denoising", "dsm2", "dsm3"):
        tuned = copy.deepcopy(base)
        objective = losses.Objective(kind, weighting, sampler)
        fit(tuned, objective, mixture, args.extra, 2e-4, 1000 + seed)
        scores[kind] = kl(tuned, mixture, held)
        print(name, first, seed, kind, float(scores[kind].mean()), flush=True)
    label = f"{weighting}" + (", importance" if sampler == "importance" else "")
    rows = []
    for kind in ("base", "denoising", "dsm2", "dsm3"):
        gap = "" if kind in ("base", "denoising") else _cell(scores[kind] - scores["denoising"])
        rows.append(f"| {name} | {label} | {seed} | {kind} | {_cell(scores[kind])} | {gap} |")
    return rows


DIGITS_CONFIG = Path(__file__).parent.parent / "configs" / "digits_ddpm.toml"
KINDS = ("denoising", "dsm2", "dsm3")


def digits_rows(base_steps: int, extra_steps: int) -> list[str]:
    """Digits bits/dim after each first-order base and each fine-tuning kind (table rows)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for weighting, sampler in (("simple", "steps"), ("likelihood", "importance")):
            loss = [f"loss.weighting={weighting}", f"loss.time_sampler={sampler}"]
            base = Path(tmp) / f"{weighting}-base"
            overrides = [*loss, f"train.steps={base_steps}", "train.sample_every=0"]
            train(load_config(DIGITS_CONFIG, overrides), base)
            runs = {"base": base}
            for kind in KINDS:
                runs[kind] = Path(tmp) / f"{weighting}-{kind}"
                overrides = [
                    *loss,
                    f"loss.kind={kind}",
                    f"train.init={base}",
                    f"train.steps={extra_steps}",
                    "train.lr=2e-4",
                    "train.warmup=0",
                    "train.sample_every=0",
                ]
                train(load_config(DIGITS_CONFIG, overrides), runs[kind])
            for after, run in runs.items():
                nll = run_nll(run, "ode", n=360, probes=1).row
                rows.append(
                    f"| {weighting}, {sampler} | {after} | {nll.mean:.3f} +- {nll.se:.3f} |"
                )
                print("digits", weighting, after, nll.mean, flush=True)
    return rows


def header(title: str, command: str, threads: int) -> list[str]:
    return [
        f"# {title}",
        "",
        f"Command: `python benchmarks/mle.py {command}`  ",
        f"Date: {date.today()}  Machine: {platform.machine()}, {threads} threads, torch "
        f"{torch.__version__}. Method: see the script's docstring.",
        "",
    ]


def toy_report(args) -> list[str]:
    lines = [
        *header(
            "Maximum-likelihood training of the ODE: first order against dsm2 / dsm3",
            f"--part toys --base {args.base} --extra {args.extra} --seeds {args.seeds}",
            args.threads,
        ),
        "KL(data || model) in nats (held-out ODE NLL minus the data's entropy; lower is "
        "better). `base`: after the first-order steps; the others after as many extra steps "
        "of first-order, dsm2 or dsm3 fine-tuning. Last column: the paired difference to "
        "first-order fine-tuning (negative: the higher order helped).",
        "",
        "| data | first-order loss | seed | after | KL | minus first-order fine-tuning |",
        "|---|---|---|---|---|---|",
    ]
    mixtures = (
        ("1-D, 3 components", toy_1d()),
        ("2-D, 3 components", toy_2d()),
        ("8-D, 3 components", toy_8d()),
    )
    for name, mixture in mixtures:
        for first in (("simple", "uniform"), ("likelihood", "importance")):
            for seed in range(args.seeds):
                lines += run(name, mixture, first, args, seed)
    return lines


def digits_report(args) -> list[str]:
    return [
        *header(
            "Maximum-likelihood training of the ODE on digits: bits/dim after each loss",
            f"--part digits --digits-base {args.digits_base} --digits-extra {args.digits_extra}",
            args.threads,
        ),
        f"{args.digits_base} first-order steps, then {args.digits_extra} steps of each "
        "fine-tuning from the base's EMA weights (lower is better; the standard error is over "
        "the 360 held-out digits, one dequantisation and one probe each).",
        "",
        "| first-order loss | after | bits/dim (17 levels) |",
        "|---|---|---|",
        *digits_rows(args.digits_base, args.digits_extra),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--part",
        choices=("all", "toys", "digits"),
        default="all",
        help="toys write results/mle.md, digits results/mle_digits.md",
    )
    parser.add_argument("--base", type=int, default=3000, help="first-order steps")
    parser.add_argument("--extra", type=int, default=1000, help="fine-tuning steps")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--digits-base", type=int, default=1000, help="digits base steps")
    parser.add_argument("--digits-extra", type=int, default=200, help="digits fine-tuning")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = {"toys": (toy_report, RESULTS), "digits": (digits_report, DIGITS_RESULTS)}
    for part, (report, path) in parts.items():
        if args.part in ("all", part):
            path.write_text("\n".join(report(args)) + "\n")
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
