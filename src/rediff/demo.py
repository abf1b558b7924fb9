"""``rediff demo``: pictures a new user can open, each with a caption saying what it shows.

Writes into one folder:
- ``forward_2d.png``: two moons noised by three schedules at evenly spaced log-SNR;
- ``forward_digits.png``: scikit-learn digits along the DDPM (linear betas) chain;
- ``log_snr.png``: the log-SNR curve of every schedule (and EDM's against its noise level);
- ``samplers_2d.png``: samples of an eight-Gaussian mixture drawn with its exact denoiser by
  several samplers at about 5, 10 and 20 evaluations, beside exact samples, on shared axes;
- ``runs/toy_2d`` and ``runs/digits``: a 2-D model and a class-conditional digits model
  (label dropout, so it is its own unconditional model) trained on the CPU from the shipped
  configs (shortened), each drawn with three samplers beside the data into
  ``toy_2d_samples.png`` and ``digits_samples.png``, and scored (sliced Wasserstein and energy
  distance / Frechet distance and class accuracy, each beside its real-data floor) in
  ``summary.md``;
- ``guided_digits.png``: the digits model with classifier-free guidance at scales 0, 1, 2
  and 4 (one row per class), its accuracy and Frechet distance in ``summary.md``;
- ``inpainted_digits.png``: held-out digits with their lower half hidden, filled in by DDPM
  with and without RePaint resampling.

An interrupted demo continues where it stopped when it is run again: finished runs are
reused, a run stopped mid-way resumes from its last checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

import rediff
from rediff import data, grids, samplers, schedules
from rediff.plots import finish, image_grid, pyplot
from rediff.runs import draw, load_run
from rediff.runs.directory import read_metrics
from rediff.runs.kinds.digits import LEVELS
from rediff.schedules import Schedule

#: the schedules shown in the log-SNR figure, with their default parameters
SCHEDULES: dict[str, Schedule] = {
    "DDPM linear (DiscreteVP)": schedules.DiscreteVP.linear(1000),
    "DDPM cosine (DiscreteVP)": schedules.DiscreteVP.cosine(1000),
    "VP SDE (LinearVP)": schedules.LinearVP(),
    "sub-VP SDE (SubVP)": schedules.SubVP(),
    "VE SDE / NCSN (VE)": schedules.VE(),
    "EDM": schedules.EDM(),
}


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def plot_forward_2d(path: Path, generator: torch.Generator, n_points: int = 2000) -> Path:
    """Scatter grid: rows are schedules, columns are times at evenly spaced log-SNR."""
    plt = pyplot()
    rows = {k: SCHEDULES[k] for k in ("VP SDE (LinearVP)", "VE SDE / NCSN (VE)", "EDM")}
    x0 = data.two_moons(n_points, generator=generator).double()
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    n_cols = 6
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.4 * n_cols, 2.5 * len(rows) + 0.6))
    for r, (name, sched) in enumerate(rows.items()):
        for c, t in enumerate(grids.make(sched, n_cols - 1, "logsnr", final_step=False).flip(0)):
            ax = axes[r, c]
            x_t = sched.marginal(x0, float(t), noise)
            ax.scatter(x_t[:, 0].numpy(), x_t[:, 1].numpy(), s=1, alpha=0.5)
            ax.set_title(f"t={float(t):.3g}  logSNR={float(sched.log_snr(t)):.1f}", fontsize=7)
            _bare(ax)
            ax.set_aspect("equal", adjustable="datalim")
        axes[r, 0].set_ylabel(name, fontsize=8)
    caption = (
        "Each row noises the same 2000 points of two moons (with the same noise) by one "
        "forward process, x_t = alpha(t) x0 + sigma(t) eps, from nearly clean (left) to pure "
        "noise (right) at equal steps of log-SNR. VP keeps the scale near 1; VE and EDM add "
        "noise without shrinking the data, so their last panels are far wider (axes differ)."
    )
    return finish(fig, path, "Forward process q(x_t | x0) on two moons", caption)


def plot_forward_digits(path: Path, generator: torch.Generator) -> Path:
    """Image grid: one digit of each class per row, DDPM steps k across the columns."""
    plt = pyplot()
    images, labels = data.load_digits()
    first = torch.stack([torch.nonzero(labels == d)[0, 0] for d in range(10)])
    x0 = images[first].double()
    sched = schedules.DiscreteVP.linear(1000)
    steps = [1, 50, 100, 200, 300, 500, 700, 1000]
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    fig, axes = plt.subplots(10, len(steps) + 1, figsize=(1.1 * (len(steps) + 1), 11.8))
    for r in range(10):
        axes[r, 0].imshow(x0[r, 0].numpy(), cmap="gray", vmin=-1, vmax=1)
        for c, k in enumerate(steps, start=1):
            x_t = sched.marginal(x0[r : r + 1], k / sched.num_steps, noise[r : r + 1])
            axes[r, c].imshow(x_t[0, 0].clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
    axes[0, 0].set_title("x0", fontsize=8)
    for c, k in enumerate(steps, start=1):
        axes[0, c].set_title(f"k={k}", fontsize=8)
    for ax in axes.flat:
        _bare(ax)
    caption = (
        "One digit of each class (rows) along DDPM's forward chain: column k shows x_k, the "
        "digit after k of T = 1000 noising steps (pixels clipped to [-1, 1] for display). By "
        "k = 300 the digits are hard to read; a diffusion model learns to run this backwards."
    )
    return finish(fig, path, "DDPM forward chain on 8x8 digits (linear betas)", caption)


def plot_log_snr(path: Path) -> Path:
    """log-SNR against t for the schedules on [0, 1], and EDM's against its noise level."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    for name, sched in SCHEDULES.items():
        t = torch.linspace(sched.t_min, sched.t_max, 400, dtype=torch.float64)
        ax = right if isinstance(sched, schedules.EDM) else left
        ax.plot(t.numpy(), sched.log_snr(t).numpy(), label=name)
    left.set_xlabel("t")
    left.set_ylabel("log SNR = log(alpha^2 / sigma^2)")
    left.set_title("schedules on t in [t_min, 1]")
    right.set_xscale("log")
    right.set_xlabel("t = noise level sigma")
    right.set_title("EDM (sigma_min=0.002, sigma_max=80)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    caption = (
        "How fast each forward process destroys the signal: the log signal-to-noise ratio "
        "against the schedule's time. Samplers step through this curve; grids uniform in "
        "log-SNR spend their steps evenly along it."
    )
    return finish(fig, path, "", caption)


#: samplers compared in samplers_2d.png, and the evaluation budgets
DEMO_SAMPLERS = ("ddim", "heun", "dpm++2m", "dpm++3m", "unipc", "unipc3")
DEMO_NFES = (5, 10, 20)
#: the panels' shared axis limits (the mixture's modes lie on the circle of radius 2)
LIMIT = 3.0


def plot_sampler_comparison(path: Path, generator: torch.Generator, n: int = 4000) -> Path:
    """Rows: samplers; columns: evaluation budgets. Titles give the measured NFE, the gap
    between the mean exact log-density of exact samples and of the samples (0 is perfect) and
    how many samples fell outside the shared axes."""
    plt = pyplot()
    mixture = data.eight_gaussians_mixture(radius=2.0, std=0.1)
    denoiser = mixture.denoiser(schedules.DiscreteVP.linear(1000))
    exact = mixture.sample(n, generator=generator)
    reference = float(mixture.log_prob(exact).mean())
    cols = len(DEMO_NFES) + 1
    fig, axes = plt.subplots(
        len(DEMO_SAMPLERS), cols, figsize=(2.3 * cols, 2.3 * len(DEMO_SAMPLERS) + 1.0)
    )
    for r, name in enumerate(DEMO_SAMPLERS):
        axes[r, 0].scatter(exact[:, 0].numpy(), exact[:, 1].numpy(), s=0.5, alpha=0.4, c="k")
        axes[r, 0].set_ylabel(name, fontsize=9)
        for c, nfe in enumerate(DEMO_NFES, start=1):
            out = rediff.sample(
                denoiser,
                (n, 2),
                sampler=name,
                steps=samplers.get(name).steps_within(nfe),
                generator=generator,
                progress=False,
            )
            x = out.x[torch.isfinite(out.x).all(1)]
            gap = reference - float(mixture.log_prob(x).mean()) if len(x) else float("inf")
            outside = int((out.x.abs() > LIMIT).any(1).sum())
            axes[r, c].scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=0.5, alpha=0.4)
            note = f", {outside} outside" if outside else ""
            axes[r, c].set_title(f"NFE={out.nfe} gap={gap:.2f}{note}", fontsize=7)
    axes[0, 0].set_title("exact samples", fontsize=8)
    for ax in axes.flat:
        ax.set_xlim(-LIMIT, LIMIT)
        ax.set_ylim(-LIMIT, LIMIT)
        _bare(ax)
    caption = (
        f"Each panel: {n} samples of an eight-Gaussian mixture drawn by one sampler (rows) "
        "with the mixture's exact denoiser, so all error is the sampler's; columns are budgets "
        "of about 5, 10 and 20 network evaluations (NFE; Heun spends 2 per step), the first "
        "column exact samples. gap = mean log p(exact samples) - mean log p(samples), 0 is "
        f"perfect; all panels share axes [-{LIMIT:g}, {LIMIT:g}], and samples outside them "
        "are counted in the title. DDPM linear schedule; heun on EDM's Karras grid, the rest "
        "log-SNR. Heun's explicit trapezoidal steps are unstable when one step divides the "
        "noise level by much more than about 3, as 3 and 5 steps from sigma = 80 do: its "
        "samples fly off at 5 and 10 evaluations (empty panels), and it needs about 20."
    )
    return finish(fig, path, "Samplers at small budgets, exact denoiser", caption)


@dataclass(frozen=True)
class DemoRun:
    """A shipped config, shortened to ``steps``, the (sampler, steps) pairs it is drawn
    with, and whether it is the class-conditional digits model that the guidance and
    inpainting figures show."""

    config: str
    steps: int
    draws: tuple[tuple[str, int], ...]
    guided: bool = False


DEMO_RUNS = {
    "toy_2d": DemoRun("toy_2d.toml", 2000, (("ddpm", 100), ("ddim", 20), ("dpm++2m", 10))),
    "digits": DemoRun(
        "digits_cfg.toml", 1500, (("ddpm", 100), ("ddim", 50), ("dpm++2m", 20)), guided=True
    ),
}


def train_demo_run(name: str, out: Path, progress: bool = True) -> Path:
    """Train (or finish training) one demo run under out/runs; return its folder."""
    from rediff.training import load_config, train

    spec = DEMO_RUNS[name]
    path = resources.files("rediff") / "configs" / spec.config
    config = load_config(Path(str(path)), [f"train.steps={spec.steps}"])
    run = out / "runs" / name
    train(config, run, resume=(run / "config.toml").is_file(), progress=progress)
    return run


def _data_panel(ax, reference, n: int) -> None:
    """Real data beside the samples: n points, or ten images of each class (row k: class k;
    the first 100 images for unlabelled data)."""
    x, labels = reference.x, reference.labels
    if x.ndim == 2:
        ax.scatter(x[:n, 0].numpy(), x[:n, 1].numpy(), s=1, alpha=0.4, c="k")
        return
    if labels is not None:
        x = torch.cat([x[labels == k][:10] for k in range(int(labels.max()) + 1)])
    ax.imshow(image_grid(x[:100], 10), cmap="gray", vmin=-1, vmax=1)


def sample_demo_run(name: str, run_dir: Path, out: Path, seed: int) -> tuple[Path, list[str]]:
    """Draw with the run's three samplers, plot them beside the data on shared axes and score
    each; return the figure and the summary table's rows."""
    run = load_run(run_dir)
    reference = run.data()
    n = run.spec.kind.default_n(reference)
    plt = pyplot()
    draws = DEMO_RUNS[name].draws
    fig, axes = plt.subplots(
        1, len(draws) + 1, figsize=(3.4 * (len(draws) + 1), 4.4), squeeze=False
    )
    _data_panel(axes[0, 0], reference, n)
    axes[0, 0].set_title(f"training data ({min(n, reference.x.shape[0])})", fontsize=9)
    rows = []
    for ax, (sampler, steps) in zip(axes[0, 1:], draws, strict=True):
        drawn = draw(
            run, n, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(seed)
        )
        for s in run.spec.kind.score(drawn.x, drawn.labels, reference, seed):
            rows.append(
                f"| {name} | {sampler} | {drawn.nfe} | {s.name} | {s.value:.4g} | {s.floor:.4g} |"
            )
        if drawn.x.ndim == 2:
            ax.scatter(drawn.x[:, 0].numpy(), drawn.x[:, 1].numpy(), s=1, alpha=0.4)
        else:
            order = (
                torch.argsort(drawn.labels[:100], stable=True)
                if drawn.labels is not None
                else slice(None)
            )
            ax.imshow(image_grid(drawn.x[:100][order], 10), cmap="gray", vmin=-1, vmax=1)
        ax.set_title(f"{sampler}, NFE {drawn.nfe}", fontsize=9)
    points = run.spec.shape == (2,)
    for ax in axes[0]:
        if points:
            ax.set_xlim(axes[0, 0].get_xlim())
            ax.set_ylim(axes[0, 0].get_ylim())
            ax.set_aspect("equal", adjustable="box")
        _bare(ax)
    what = "points" if points else "digits (row k: class k, every class in turn)"
    caption = (
        f"Left: the data the model ({run_dir}) was trained on; then {n} {what} drawn from the "
        "trained model by three samplers, on the same axes as the data. The summary table "
        "scores each against real data."
    )
    path = finish(fig, out / f"{name}_samples.png", f"{name}: trained by rediff demo", caption)
    return path, rows


#: classifier-free guidance scales shown by the demo (and benchmarks/guidance.py), and the
#: samples (as many as the held-out digits) and dpm++2m steps per scale
GUIDANCE_SCALES = (0.0, 1.0, 2.0, 4.0)
GUIDED_N, GUIDED_STEPS = data.digits.HELD_OUT, 20
#: DDPM steps of the inpainting figure, and RePaint's resampling (passes, jump)
INPAINT_STEPS, RESAMPLING = 100, rediff.Resampling(5, 10)


def plot_guided_digits(run_dir: Path, out: Path, seed: int) -> tuple[Path, list[str]]:
    """Classifier-free guidance of the digits run at ``GUIDANCE_SCALES``: one panel per scale
    (row k: class k), accuracy and Frechet distance of 360 samples per scale."""
    from rediff.runs import Guide

    run = load_run(run_dir)
    reference = run.data()
    plt = pyplot()
    fig, axes = plt.subplots(1, len(GUIDANCE_SCALES), figsize=(3.4 * len(GUIDANCE_SCALES), 4.6))
    rows = []
    for ax, scale in zip(axes, GUIDANCE_SCALES, strict=True):
        gen = torch.Generator().manual_seed(seed)
        drawn = draw(
            run,
            GUIDED_N,
            sampler="dpm++2m",
            steps=GUIDED_STEPS,
            generator=gen,
            guide=Guide(scale),
        )
        fd, accuracy = run.spec.kind.score(drawn.x, drawn.labels, reference, seed)
        for s in (fd, accuracy):
            rows.append(
                f"| digits, CFG scale {scale:g} | dpm++2m | {drawn.nfe} | {s.name} | "
                f"{s.value:.4g} | {s.floor:.4g} |"
            )
        order = torch.argsort(drawn.labels[:100], stable=True)  # row k: class k
        ax.imshow(image_grid(drawn.x[:100][order], 10), cmap="gray", vmin=-1, vmax=1)
        ax.set_title(f"scale {scale:g}: accuracy {accuracy.value:.2f}", fontsize=9)
        ax.axis("off")
    caption = (
        "The class-conditional digits model asked for class k in row k, at four "
        "classifier-free guidance scales: 0 ignores the class (the model's unconditional half, "
        "trained by dropping 10 % of the labels), 1 is the plain conditional model, 2 and 4 "
        "push further towards the class. Accuracy: how often a digits classifier agrees with "
        f"the requested class ({GUIDED_N} samples); larger scales trade variety for it (see the "
        "Frechet distances in summary.md)."
    )
    return finish(fig, out / "guided_digits.png", "classifier-free guidance", caption), rows


def plot_inpainted_digits(run_dir: Path, out: Path, seed: int) -> Path:
    """Ten held-out digits with the lower half hidden, filled in by DDPM (100 steps) by
    replacement, without and with RePaint resampling (5 passes, jumps of 10 steps)."""
    from rediff.guidance import inpaint

    model = load_run(run_dir).model
    x, _ = data.digits_split("held_out")
    x = x[:10]
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[..., :4, :] = True  # the upper half is known
    shown = {"original": x, "known part": torch.where(mask, x, torch.full_like(x, -1.0))}
    for label, resampling in (("replacement", None), ("+ resampling", RESAMPLING)):
        gen = torch.Generator().manual_seed(seed)
        filled = inpaint(
            model,
            x,
            mask,
            sampler="ddpm",
            steps=INPAINT_STEPS,
            generator=gen,
            resampling=resampling,
            progress=False,
        )
        shown[f"{label} ({filled.nfe} NFE)"] = filled.x
    plt = pyplot()
    fig, axes = plt.subplots(len(shown), 1, figsize=(6, 1.0 * len(shown) + 1.4))
    for ax, (label, images) in zip(axes, shown.items(), strict=True):
        ax.imshow(image_grid(images, 10), cmap="gray", vmin=-1, vmax=1)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        _bare(ax)
    caption = (
        "Ten digits the model never saw (top row). Only their upper half is given (second "
        "row); the model fills in the lower half, by replacing the known half at every DDPM "
        "step (third row) and with RePaint's resampling, which re-noises and repeats stretches "
        "of the chain so the two halves agree (bottom row)."
    )
    return finish(fig, out / "inpainted_digits.png", "inpainting held-out digits", caption)


def training_time(run_dir: Path) -> tuple[int, float]:
    """The steps a run has trained and the seconds it took (over every session), from its
    metrics.csv."""
    rows = read_metrics(run_dir / "metrics.csv")
    return (int(rows[-1]["step"]), rows[-1]["seconds"]) if rows else (0, 0.0)


def write_summary(out: Path, rows: list[str], runs: dict[str, Path]) -> Path:
    """summary.md: what the demo measured, one row per run, sampler and metric."""
    trained = []
    for name, run_dir in runs.items():
        steps, seconds = training_time(run_dir)
        trained.append(f"{name}: {steps} steps in {seconds:.0f} s")
    lines = [
        "# rediff demo: what was measured",
        "",
        "Each model was trained on this machine's CPU by `rediff demo` ("
        + "; ".join(trained)
        + ", over every session if the demo was resumed).",
        "",
        "The floor is the same distance between real data and real data (for digits: the 360 "
        "held-out digits against the 1437 training digits, as many samples as scored), so a "
        "value at its floor cannot be told from real data by that measure. A value below the "
        "floor does not mean better than real data: the samples lie closer to the training "
        "examples than unseen examples do (with 1437 training digits the model partly "
        f"memorises them). Digits have {LEVELS} grey levels.",
        "",
        "| run | sampler | NFE | metric | value | floor (real data) |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(out_dir: str | Path, seed: int = 0, train_models: bool = True) -> list[Path]:
    """Write the demo pictures into ``out_dir`` (created if needed); return their paths.
    With ``train_models`` also train, sample and score the two demo runs."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the pictures")
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    paths = [
        plot_forward_2d(out / "forward_2d.png", generator),
        plot_forward_digits(out / "forward_digits.png", generator),
        plot_log_snr(out / "log_snr.png"),
        plot_sampler_comparison(out / "samplers_2d.png", generator),
    ]
    if not train_models:
        return paths
    rows, runs = [], {}
    for name in DEMO_RUNS:
        print(f"training the {name} demo model (shipped config, shortened) ...", flush=True)
        runs[name] = train_demo_run(name, out)
        figure, run_rows = sample_demo_run(name, runs[name], out, seed)
        paths += [figure, runs[name] / "loss.png"]
        rows += run_rows
        if DEMO_RUNS[name].guided:
            figure, guided_rows = plot_guided_digits(runs[name], out, seed)
            paths += [figure, plot_inpainted_digits(runs[name], out, seed)]
            rows += guided_rows
    paths.append(write_summary(out, rows, runs))
    return paths
