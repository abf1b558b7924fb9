"""Guidance on class-conditional digits, and inpainting against the Gaussian conditional.

    .venv/bin/python benchmarks/guidance.py               # writes results/guidance.md and
                                                          # results/guidance_tradeoff.png
    .venv/bin/python benchmarks/guidance.py --steps 500   # a quick check
    .venv/bin/python benchmarks/guidance.py --part inpainting   # part 2 only, in place

Part 1 trains, on this machine's CPU, the class-conditional digits model of
configs/digits_cfg.toml (10 % label dropout) and the noise-conditional classifier of
configs/digits_classifier.toml (same schedule). For guidance scales {0, 1, 2, 4} and three
samplers it draws 360 class-balanced samples per seed (three seeds) and reports the digits
classifier's accuracy on them (rediff.runs.kinds.digits, trained independently on the digits
training split) and the Frechet distance to the training digits in that classifier's features
(floor: the 360 held-out digits), mean +- standard error over seeds:

- classifier-free guidance of the conditional model (scale 0: unconditional, 1: conditional);
- classifier guidance of the same network's unconditional model (the null label) with the
  trained noisy classifier (scale 0: unconditional).

Part 2 imputes a correlated 4-D Gaussian (two coordinates known) with its exact denoiser under
the VP SDE and reports, per sampler, number of steps and RePaint passes, the largest error of
the imputed coordinates' mean and covariance against the closed-form conditional (10,000
samples, so sampling error is about 0.01); the known part's noise is fresh at every
evaluation, except for the adaptive ``ode`` solver (one fixed draw, see
``guidance.KnownNoise``).

No peer offers guidance that composes with every sampler (diffusers ties classifier-free
guidance to its pipelines and RePaint to one scheduler), so the references are exact
conditionals (tests/test_guidance.py) and the real-digit floors here.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
from datetime import date
from pathlib import Path

import torch

import rediff
from rediff import data, guidance, schedules
from rediff.demo import GUIDANCE_SCALES
from rediff.plots import pyplot
from rediff.runs.kinds import digits
from rediff.training import load_config, train

RESULTS = Path(__file__).parent / "results"
CONFIGS = Path(__file__).parent.parent / "configs"
SAMPLERS = (("ddpm", 100), ("ddim", 50), ("dpm++2m", 20))
SEEDS = (0, 1, 2)
INPAINT = (  # (sampler, steps, options)
    ("ddpm", 50, {}),
    ("ddpm", 200, {}),
    ("ddim", 50, {}),
    ("dpm++2m", 20, {}),
    ("heun", 20, {}),
    ("pc", 50, {}),
    ("pc", 50, {"predictor": "ancestral"}),  # design.md's advice for many RePaint passes
    ("ode", 10, {}),  # adaptive: the known part's noise is fixed (guidance.KnownNoise)
)
PASSES = (1, 5, 20)


def train_models(steps: int, tmp: Path):
    """The conditional digits model and the noisy classifier (EMA weights)."""
    short = [f"train.steps={steps}", "train.sample_every=0", f"train.checkpoint_every={steps}"]
    model_config = load_config(CONFIGS / "digits_cfg.toml", short)
    model = train(model_config, tmp / "cfg", progress=False).eval()
    classifier_steps = max(steps // 2, 1)
    classifier_config = load_config(
        CONFIGS / "digits_classifier.toml", [f"train.steps={classifier_steps}"]
    )
    classifier = train(classifier_config, tmp / "classifier", progress=False).eval()
    return model_config, model, classifier


def guided(kind: str, model, classifier, labels: torch.Tensor, scale: float):
    if kind == "classifier-free":
        return guidance.classifier_free(model, labels, scale)
    unconditional = rediff.Conditioned(model, labels=torch.full_like(labels, rediff.NULL_LABEL))
    return guidance.classifier(unconditional, classifier, labels, scale)


def measure(model, classifier) -> dict[tuple[str, str, float], tuple[list[float], list[float]]]:
    """(kind, sampler, scale) -> (accuracies, Frechet distances) over SEEDS."""
    n = data.digits.HELD_OUT
    labels = torch.arange(n) % 10
    out = {}
    for kind in ("classifier-free", "classifier"):
        for sampler, steps in SAMPLERS:
            for scale in GUIDANCE_SCALES:
                accuracy, fd = [], []
                for seed in SEEDS:
                    x = rediff.sample(
                        guided(kind, model, classifier, labels, scale),
                        (n, 1, 8, 8),
                        sampler=sampler,
                        steps=steps,
                        generator=torch.Generator().manual_seed(seed),
                        progress=False,
                    ).x
                    accuracy.append(digits.digits_accuracy(x, labels))
                    fd.append(digits.digits_frechet(x))
                out[kind, f"{sampler} ({steps} steps)", scale] = (accuracy, fd)
                print(kind, sampler, scale, statistics.mean(accuracy), statistics.mean(fd))
    return out


def _cell(values: list[float], digits: int) -> str:
    se = statistics.stdev(values) / len(values) ** 0.5
    return f"{statistics.mean(values):.{digits}f} +- {se:.{digits}f}"


def plot_tradeoff(results, floor: float, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, kind in zip(axes, ("classifier-free", "classifier"), strict=True):
        for sampler, steps in SAMPLERS:
            name = f"{sampler} ({steps} steps)"
            points = [results[kind, name, s] for s in GUIDANCE_SCALES]
            fd = [statistics.mean(p[1]) for p in points]
            acc = [statistics.mean(p[0]) for p in points]
            ax.plot(fd, acc, "o-", label=name)
            for s, x, y in zip(GUIDANCE_SCALES, fd, acc, strict=True):
                ax.annotate(f"{s:g}", (x, y), textcoords="offset points", xytext=(4, -10))
        ax.axvline(floor, color="grey", ls="--", label="FD floor (held-out digits)")
        ax.set_xscale("log")
        ax.set_xlabel("Frechet distance (digits features), lower is better")
        ax.set_title(f"{kind} guidance (labels: scale)", fontsize=10)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("accuracy of the digits classifier on the samples")
    fig.suptitle("The guidance trade-off on class-conditional digits", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gaussian_problem():
    """A correlated 4-D Gaussian, coordinates 0, 1 known: (denoiser, y, mask, mean, cov)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    cov = a @ a.T / 4 + 0.2 * torch.eye(4, dtype=torch.float64)
    mu = torch.tensor([0.5, -0.3, 0.2, 0.0], dtype=torch.float64)
    mix = data.GaussianMixture(mu[None], cov[None], torch.ones(1, dtype=torch.float64))
    mask = torch.tensor([True, True, False, False])
    y = torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=torch.float64)
    k, u = mask, ~mask
    gain = cov[u][:, k] @ torch.linalg.inv(cov[k][:, k])
    mean = mu[u] + gain @ (y[k] - mu[k])
    return mix.denoiser(schedules.LinearVP()), y, mask, mean, cov[u][:, u] - gain @ cov[k][:, u]


def inpainting_rows() -> list[str]:
    den, y, mask, mean, cov = gaussian_problem()
    rows = []
    for sampler, steps, options in INPAINT:
        cells = []
        for passes in PASSES:
            out = guidance.inpaint(
                den,
                y.expand(10000, 4),
                mask,
                sampler=sampler,
                steps=steps,
                generator=torch.Generator().manual_seed(1),
                progress=False,
                resampling=rediff.Resampling(passes),
                **options,
            )
            x = out.x[:, ~mask]
            mean_error = float((x.mean(0) - mean).abs().max())
            cov_error = float((torch.cov(x.T) - cov).abs().max())
            cells.append(f"{mean_error:.3f} / {cov_error:.3f} ({out.nfe})")
        label = ", ".join([sampler, *(f"{k} {v}" for k, v in options.items())])
        rows.append(f"| {label} | {steps} | " + " | ".join(cells) + " |")
        print(rows[-1])
    return rows


HEAD = ["# Guidance and inpainting", ""]
INPAINTING_TITLE = "## Inpainting a 4-D Gaussian (exact denoiser, VP SDE)"


def measured(command: str) -> str:
    """The line that says when, where and by which command a part was measured."""
    return (
        f"Measured {date.today()} on {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, by `{command}`. "
        "Method: see the script's docstring."
    )


def inpainting_section() -> list[str]:
    """Part 2: the table of inpainting errors, headed by its own measured line."""
    return [
        INPAINTING_TITLE,
        "",
        measured("python benchmarks/guidance.py --part inpainting"),
        "",
        "Largest error of the imputed coordinates' mean / covariance against the closed-form "
        "conditional, and the NFE, by RePaint passes per segment (jump 1). Sampling error is "
        "about 0.01.",
        "",
        "| sampler | steps | "
        + " | ".join(f"{p} pass{'es' if p > 1 else ''}" for p in PASSES)
        + " |",
        "|---|---|" + "---|" * len(PASSES),
        *inpainting_rows(),
    ]


def guidance_section(steps: int) -> list[str]:
    """Part 1: train, sample with guidance, plot; the table headed by its measured line (and
    a blank line after it)."""
    with tempfile.TemporaryDirectory() as tmp:
        _, model, classifier = train_models(steps, Path(tmp))
    with torch.no_grad():
        results = measure(model, classifier)
    floor = digits.digits_frechet_floor()
    held_out = digits.digits_accuracy(*data.digits_split("held_out"))
    plot_tradeoff(results, floor, RESULTS / "guidance_tradeoff.png")
    lines = [
        f"## Class-conditional digits ({steps} training steps; classifier "
        f"{max(steps // 2, 1)} steps)",
        "",
        measured(f"python benchmarks/guidance.py --steps {steps} --part guidance"),
        "",
        f"Accuracy of the digits classifier on 360 guided samples and their Frechet distance, "
        f"mean +- standard error over {len(SEEDS)} seeds. Real held-out digits: accuracy "
        f"**{held_out:.3f}**, Frechet distance **{floor:.1f}** (the floor). Plot: "
        "[guidance_tradeoff.png](guidance_tradeoff.png). At scale 0 the samples ignore their "
        "labels, so the accuracy is chance (0.1) by construction.",
        "",
        "| guidance | sampler | scale | accuracy | Frechet distance |",
        "|---|---|---|---|---|",
    ]
    for (kind, sampler, scale), (accuracy, fd) in results.items():
        lines.append(f"| {kind} | {sampler} | {scale:g} | {_cell(accuracy, 3)} | {_cell(fd, 1)} |")
    return [*lines, ""]


def split_sections(path: Path) -> tuple[list[str], list[str]]:
    """(part 1's lines, part 2's lines) of an existing guidance.md, below its HEAD."""
    lines = path.read_text().splitlines() if path.exists() else []
    if lines[: len(HEAD)] != HEAD or INPAINTING_TITLE not in lines:
        raise SystemExit(f"{path} is not this script's two-part output: run with --part all")
    cut = lines.index(INPAINTING_TITLE)
    return lines[len(HEAD) : cut], lines[cut:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000, help="training steps of the model")
    parser.add_argument(
        "--part",
        choices=("all", "guidance", "inpainting"),
        default="all",
        help="measure both parts, or one and keep the other's section of guidance.md",
    )
    args = parser.parse_args()
    path = RESULTS / "guidance.md"
    if args.part == "all":
        first, second = guidance_section(args.steps), inpainting_section()
    else:
        first, second = split_sections(path)
        if args.part == "guidance":
            first = guidance_section(args.steps)
        else:
            second = inpainting_section()
    RESULTS.mkdir(exist_ok=True)
    lines = HEAD + first + second
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
