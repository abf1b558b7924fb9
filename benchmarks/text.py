"""Masked diffusion against the autoregressive baseline on Python's own documentation text.

    .venv/bin/python benchmarks/text.py [--steps 2000]   # writes results/text.md

rediff trains, from its shipped configs with the same steps, batch, seed, data (sequences of
128 characters of ``pydoc_data.topics``, the last 10% held out) and transformer (causal for
the baseline, the same parameter count):

- masked diffusion in continuous time (text_mdlm.toml: linear masking, MDLM's ELBO,
  no time input);
- the autoregressive model (text_ar.toml: next-character cross-entropy).

It reports held-out bits per character (the masked model's ELBO from stratified times, an
upper bound; the autoregressive model's exact likelihood), and sample quality as the
autoregressive model's bits per character of the samples (its "generative perplexity";
lower means text the baseline finds more likely, with real held-out text and the baseline's
own samples as references) for the masked model at 16, 64 and 256 steps, ancestral and
cached, with network evaluations and wall time as ratios. A page of samples of each is
written to results/text_samples.md.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from datetime import date
from importlib import resources
from pathlib import Path

import torch

from rediff import discrete
from rediff.evaluation import run_nll
from rediff.runs import load_run
from rediff.runs.directory import read_metrics
from rediff.training import load_config, train

RESULTS = Path(__file__).parent / "results"
MODELS = {"masked diffusion (MDLM ELBO)": "text_mdlm.toml", "autoregressive": "text_ar.toml"}
SAMPLES = 64


def train_all(root: Path, steps: int) -> dict[str, tuple[Path, float]]:
    """Each model trained ``steps`` steps in ``root`` (a run already trained that far there is
    reused), with its training seconds from its metrics.csv."""
    runs = {}
    for name, config_file in MODELS.items():
        path = root / config_file.removesuffix(".toml")
        rows = read_metrics(path / "metrics.csv")
        if not rows or rows[-1]["step"] != steps:
            config = load_config(
                Path(str(resources.files("rediff") / "configs" / config_file)),
                [f"train.steps={steps}", "train.sample_every=0", "train.threads=2"],
            )
            train(config, path, progress=False, resume=path.exists())
            rows = read_metrics(path / "metrics.csv")
        runs[name] = (path, rows[-1]["seconds"])
        print(f"{name}: {steps} steps in {runs[name][1]:.0f} s", flush=True)
    return runs


def bits_per_char(ar, x: torch.Tensor) -> tuple[float, float]:
    """The autoregressive model's mean bits per character of sequences x [n, L] and its
    standard error over the sequences."""
    with torch.no_grad():
        bits = -ar.model.log_prob(x) / (x.shape[1] * math.log(2))
    return float(bits.mean()), float(bits.std() / math.sqrt(len(bits)))


def timed_draw(run, sampler: str, steps: int):
    """SAMPLES sequences from a run (the same seed for every setting) and the seconds taken;
    ``per_sample`` of the result is the network evaluations per sequence."""
    generator, shape = torch.Generator().manual_seed(0), (SAMPLES, *run.spec.shape)
    start = time.perf_counter()
    if sampler == "autoregressive":
        out = run.model.sample(shape, generator=generator, progress=False)
    else:
        out = discrete.sample(
            run.model, shape, sampler=sampler, steps=steps, generator=generator, progress=False
        )
    return out, time.perf_counter() - start


def sample_rows(mdlm, ar) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Generative bits/char of each sampler setting, with NFE and wall time relative to the
    autoregressive sampler's, and the samples themselves."""
    ar_out, ar_seconds = timed_draw(ar, "autoregressive", 0)
    held = ar.held_out().x
    held = held[torch.randperm(len(held), generator=torch.Generator().manual_seed(0))[:SAMPLES]]
    rows, pages = [], {"held-out text": held, "autoregressive": ar_out.x}
    mean, se = bits_per_char(ar, held)
    rows.append(f"| held-out text (reference) | - | - | - | {mean:.3f} | {se:.3f} |")
    mean, se = bits_per_char(ar, ar_out.x)
    rows.append(
        f"| autoregressive, its own samples | - | {ar_out.nfe} | 1.00 | {mean:.3f} | {se:.3f} |"
    )
    for steps in (16, 64, 256):
        for sampler in ("ancestral", "cached"):
            out, seconds = timed_draw(mdlm, sampler, steps)
            mean, se = bits_per_char(ar, out.x)
            rows.append(
                f"| masked diffusion, {sampler} | {steps} | {out.per_sample:.1f} | "
                f"{seconds / ar_seconds:.2f} | {mean:.3f} | {se:.3f} |"
            )
            pages[f"masked diffusion, {sampler}, {steps} steps"] = out.x
            print(rows[-1], flush=True)
    return rows, pages


def write_pages(pages: dict[str, torch.Tensor], tokenizer, path: Path) -> None:
    lines = [
        "# Text samples (benchmarks/text.py)",
        "",
        "Four samples of each model and setting (128 characters each), and four held-out "
        "sequences of the corpus for comparison; the same seed for every setting.",
        "",
    ]
    for name, x in pages.items():
        lines += [f"## {name}", ""]
        for row in x[:4]:
            lines += ["```", tokenizer.decode(row), "```", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def gap_sentence(masked: tuple[float, float], autoregressive: tuple[float, float]) -> str:
    """Where the masked model lands against the baseline, beside the published gaps."""
    (m, m_se), (a, a_se) = masked, autoregressive
    gap, se = m - a, math.hypot(m_se, a_se)
    return (
        f"Masked diffusion's bound is {gap:+.3f} bits/char ({gap / se:+.1f} standard errors, "
        f"{100 * gap / a:+.0f}%) from the autoregressive likelihood. Published figures, at "
        "budgets thousands of times larger (as quoted in the issue): MDLM's bound on "
        "OpenWebText, perplexity 23.0 against 17.5 for the autoregressive model (+9.5% in "
        "nats per token), within about 10-15% at equal compute; masked diffusion on text8, "
        "1.37-1.45 bits/char."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--root", default="runs/bench_text", help="where the runs are trained")
    parser.add_argument("--elbo-samples", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(2)
    root = Path(args.root)
    runs = train_all(root, args.steps)
    mdlm, ar = (load_run(path) for path, _ in runs.values())
    params = {
        name: sum(p.numel() for p in load_run(p).model.parameters())
        for name, (p, _) in runs.items()
    }
    likelihood, means = [], []
    for name, (path, seconds) in runs.items():
        start = time.perf_counter()
        row = run_nll(path, n=256, vlb_steps=args.elbo_samples).row
        means.append((row.mean, row.se))
        likelihood.append(
            f"| {name} | {row.method} | {row.mean:.3f} | {row.se:.3f} | {row.nfe} | "
            f"{params[name] / 1e6:.2f} M | {seconds:.0f} | {time.perf_counter() - start:.0f} |"
        )
        print(likelihood[-1], flush=True)
    rows, pages = sample_rows(mdlm, ar)
    write_pages(pages, ar.spec.tokenizer, RESULTS / "text_samples.md")
    report = [
        "# Masked diffusion against an autoregressive model on Python's documentation",
        "",
        f"Command: `.venv/bin/python benchmarks/text.py --steps {args.steps}`; machine: "
        f"{platform.machine()}, 2 CPU threads; date: {date.today()}.",
        "",
        f"Budget: each model trained {args.steps} steps of 64 sequences of 128 characters "
        "(the shipped configs text_mdlm.toml and text_ar.toml: a transformer of 4 blocks, "
        "width 128), on the first 90% of `pydoc_data.topics` (character vocabulary of "
        f"{ar.spec.tokenizer.size}). Held-out: 256 sequences of the last 10%; mean and "
        "standard error over the sequences.",
        "",
        "| model | likelihood | bits/char | standard error | NFE per sequence | parameters "
        "| training s | scoring s |",
        "|---|---|---|---|---|---|---|---|",
        *likelihood,
        "",
        "The masked model's number is its ELBO (an upper bound on its -log2 likelihood, from "
        f"{args.elbo_samples} draws per sequence, stratified over the number masked); the "
        "autoregressive one is exact.",
        "",
        gap_sentence(*means),
        "",
        f"Sample quality: the autoregressive model's bits/char of {SAMPLES} samples (lower: "
        "more likely under the baseline; real held-out text is the reference). Time: wall "
        "time of drawing the samples relative to the autoregressive sampler's, measured in "
        "the same run. Samples: results/text_samples.md.",
        "",
        "| samples | steps | NFE per sequence | time (x autoregressive) | AR bits/char | "
        "standard error |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    (RESULTS / "text.md").write_text("\n".join(report), encoding="utf-8")
    print("\n".join(report))


if __name__ == "__main__":
    main()
