"""``rediff demo``: pictures of the forward processes a new user can open.

Writes into one folder:
- ``forward_2d.png``: two moons noised by three schedules at evenly spaced log-SNR;
- ``forward_digits.png``: scikit-learn digits along the DDPM (linear betas) chain;
- ``log_snr.png``: the log-SNR curve of every schedule (and EDM's against its noise level);
- ``samplers_2d.png``: samples of an eight-Gaussian mixture drawn with its exact denoiser by
  several samplers at 5, 10 and 20 evaluations, beside exact samples;
- ``runs/toy_2d`` and ``runs/digits``: a 2-D model and a class-conditional digits model
  (label dropout, so it is its own unconditional model) trained on the CPU from the shipped
  configs (shortened), each sampled with three samplers into ``toy_2d_samples.png`` and
  ``digits_samples.png``, scored (sliced Wasserstein and energy distance / Frechet distance
  and class accuracy, each beside its real-data floor) in ``summary.md``;
- ``guided_digits.png``: the digits model with classifier-free guidance at scales 0, 1, 2
  and 4 (one row per class), its accuracy and Frechet distance in ``summary.md``;
- ``inpainted_digits.png``: held-out digits with their lower half hidden, filled in by DDPM
  with and without RePaint resampling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

import rediff
from rediff import data, evaluation, grids, samplers, schedules
from rediff.plots import image_grid, pyplot
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


def plot_forward_2d(path: Path, generator: torch.Generator, n_points: int = 2000) -> Path:
    """Scatter grid: rows are schedules, columns are times at evenly spaced log-SNR."""
    plt = pyplot()
    rows = {k: SCHEDULES[k] for k in ("VP SDE (LinearVP)", "VE SDE / NCSN (VE)", "EDM")}
    x0 = data.two_moons(n_points, generator=generator).double()
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    n_cols = 6
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.4 * n_cols, 2.5 * len(rows)))
    for r, (name, sched) in enumerate(rows.items()):
        for c, t in enumerate(grids.make(sched, n_cols - 1, "logsnr", final_step=False).flip(0)):
            ax = axes[r, c]
            x_t = sched.marginal(x0, float(t), noise)
            ax.scatter(x_t[:, 0].numpy(), x_t[:, 1].numpy(), s=1, alpha=0.5)
            ax.set_title(f"t={float(t):.3g}  logSNR={float(sched.log_snr(t)):.1f}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal", adjustable="datalim")
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.suptitle("Forward process q(x_t | x0) on two moons (same noise in every panel)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_forward_digits(path: Path, generator: torch.Generator) -> Path:
    """Image grid: one digit of each class per row, DDPM steps k across the columns."""
    plt = pyplot()
    images, labels = data.load_digits()
    first = torch.stack([torch.nonzero(labels == d)[0, 0] for d in range(10)])
    x0 = images[first].double()
    sched = schedules.DiscreteVP.linear(1000)
    steps = [1, 50, 100, 200, 300, 500, 700, 1000]
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    fig, axes = plt.subplots(10, len(steps) + 1, figsize=(1.1 * (len(steps) + 1), 11))
    for r in range(10):
        axes[r, 0].imshow(x0[r, 0].numpy(), cmap="gray", vmin=-1, vmax=1)
        for c, k in enumerate(steps, start=1):
            x_t = sched.marginal(x0[r : r + 1], k / sched.num_steps, noise[r : r + 1])
            axes[r, c].imshow(x_t[0, 0].clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
    axes[0, 0].set_title("x0", fontsize=8)
    for c, k in enumerate(steps, start=1):
        axes[0, c].set_title(f"k={k}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("DDPM forward chain on 8x8 digits (linear betas, T=1000)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_log_snr(path: Path) -> Path:
    """log-SNR against t for the schedules on [0, 1], and EDM's against its noise level."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: samplers compared in samplers_2d.png, and the evaluation budgets
DEMO_SAMPLERS = ("ddim", "heun", "dpm++2m", "dpm++3m", "unipc", "unipc3")
DEMO_NFES = (5, 10, 20)


def plot_sampler_comparison(path: Path, generator: torch.Generator, n: int = 4000) -> Path:
    """Rows: samplers; columns: evaluation budgets. Titles give the measured NFE and the gap
    between the mean exact log-density of the samples and of exact samples (0 is perfect)."""
    plt = pyplot()
    mixture = data.eight_gaussians_mixture(radius=2.0, std=0.1)
    denoiser = mixture.denoiser(schedules.DiscreteVP.linear(1000))
    exact = mixture.sample(n, generator=generator)
    reference = float(mixture.log_prob(exact).mean())
    cols = len(DEMO_NFES) + 1
    fig, axes = plt.subplots(
        len(DEMO_SAMPLERS), cols, figsize=(2.3 * cols, 2.3 * len(DEMO_SAMPLERS))
    )
    for r, name in enumerate(DEMO_SAMPLERS):
        axes[r, 0].scatter(exact[:, 0].numpy(), exact[:, 1].numpy(), s=0.5, alpha=0.4, c="k")
        axes[r, 0].set_ylabel(name, fontsize=9)
        for c, nfe in enumerate(DEMO_NFES, start=1):
            steps = max(1, nfe // samplers.get(name).evals_per_step)
            out = rediff.sample(
                denoiser, (n, 2), sampler=name, steps=steps, generator=generator, progress=False
            )
            gap = reference - float(mixture.log_prob(out.x).mean())
            axes[r, c].scatter(out.x[:, 0].numpy(), out.x[:, 1].numpy(), s=0.5, alpha=0.4)
            axes[r, c].set_title(f"NFE={out.nfe}  gap={gap:.2f}", fontsize=8)
    axes[0, 0].set_title("exact samples", fontsize=8)
    for ax in axes.flat:
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "Samplers on an 8-Gaussian mixture with its exact denoiser (DDPM linear; heun on "
        "EDM's Karras grid, the rest log-SNR)\ngap = mean log p(exact samples) - mean log "
        "p(samples): 0 is perfect",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class DemoRun:
    """A shipped config, shortened to ``steps``, and the (sampler, steps) pairs it is drawn
    with."""

    config: str
    steps: int
    draws: tuple[tuple[str, int], ...]


DEMO_RUNS = {
    "toy_2d": DemoRun("toy_2d.toml", 2000, (("ddpm", 100), ("ddim", 20), ("dpm++2m", 10))),
    "digits": DemoRun("digits_cfg.toml", 1500, (("ddpm", 100), ("ddim", 50), ("dpm++2m", 20))),
}


def train_demo_run(name: str, out: Path, progress: bool = True) -> tuple[Path, float]:
    """Train (or finish training) one demo run under out/runs; return its folder and the
    seconds spent training now."""
    from rediff.training import load_config, train

    spec = DEMO_RUNS[name]
    path = resources.files("rediff") / "configs" / spec.config
    config = load_config(Path(str(path)), [f"train.steps={spec.steps}"])
    run = out / "runs" / name
    start = time.perf_counter()
    train(config, run, resume=(run / "checkpoints").is_dir(), progress=progress)
    return run, time.perf_counter() - start


def sample_demo_run(name: str, run: Path, out: Path, seed: int) -> tuple[Path, list[str]]:
    """Draw with the run's three samplers, plot them side by side and score each; return the
    figure and the summary table's rows."""
    from rediff.training import load_data, load_run

    config, model = load_run(run)
    x, _ = load_data(config)
    n = evaluation.default_n(config, x)
    plt = pyplot()
    draws = DEMO_RUNS[name].draws
    fig, axes = plt.subplots(1, len(draws), figsize=(3.6 * len(draws), 3.8), squeeze=False)
    rows = []
    for ax, (sampler, steps) in zip(axes[0], draws, strict=True):
        gen = torch.Generator().manual_seed(seed)
        samples, labels, nfe = evaluation.draw(model, config, x.shape[1:], n, sampler, steps, gen)
        for s in evaluation.score(config, x, samples, labels, seed):
            rows.append(
                f"| {name} | {sampler} | {nfe} | {s.name} | {s.value:.4g} | {s.floor:.4g} |"
            )
        if samples.ndim == 2:
            ax.scatter(samples[:, 0].numpy(), samples[:, 1].numpy(), s=1, alpha=0.4)
            ax.set_aspect("equal", adjustable="datalim")
        else:
            ax.imshow(image_grid(samples[:100], 10), cmap="gray", vmin=-1, vmax=1)
            ax.axis("off")
        ax.set_title(f"{sampler}, NFE {nfe}", fontsize=9)
    fig.suptitle(f"{name}: model trained by rediff demo ({run})", fontsize=9)
    fig.tight_layout()
    path = out / f"{name}_samples.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, rows


#: classifier-free guidance scales shown by the demo (and benchmarks/guidance.py)
GUIDANCE_SCALES = (0.0, 1.0, 2.0, 4.0)


def plot_guided_digits(run: Path, out: Path, seed: int) -> tuple[Path, list[str]]:
    """Classifier-free guidance of the digits run at ``GUIDANCE_SCALES``: one panel per scale
    (row k: class k), accuracy and Frechet distance of 360 samples per scale."""
    from rediff.training import load_run

    config, model = load_run(run)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(GUIDANCE_SCALES), figsize=(3.4 * len(GUIDANCE_SCALES), 3.8))
    rows = []
    for ax, scale in zip(axes, GUIDANCE_SCALES, strict=True):
        gen = torch.Generator().manual_seed(seed)
        guide = evaluation.Guide(scale)
        x, labels, nfe = evaluation.draw(
            model, config, (1, 8, 8), data.digits.HELD_OUT, "dpm++2m", 20, gen, guide
        )
        fd, accuracy = evaluation.score(config, None, x, labels, seed)
        rows.append(
            f"| digits, CFG scale {scale:g} | dpm++2m | {nfe} | {fd.name} | "
            f"{fd.value:.4g} | {fd.floor:.4g} |"
        )
        rows.append(
            f"| digits, CFG scale {scale:g} | dpm++2m | {nfe} | {accuracy.name} | "
            f"{accuracy.value:.4g} | {accuracy.floor:.4g} |"
        )
        order = torch.argsort(labels[:100], stable=True)  # row k: class k
        ax.imshow(image_grid(x[:100][order], 10), cmap="gray", vmin=-1, vmax=1)
        ax.set_title(f"scale {scale:g}: accuracy {accuracy.value:.2f}", fontsize=9)
        ax.axis("off")
    fig.suptitle(
        "classifier-free guidance (0: unconditional, 1: conditional), row k: class k", fontsize=9
    )
    fig.tight_layout()
    path = out / "guided_digits.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, rows


def plot_inpainted_digits(run: Path, out: Path, seed: int) -> Path:
    """Ten held-out digits with the lower half hidden, filled in by DDPM (100 steps) by
    replacement, without and with RePaint resampling (5 passes, jumps of 10 steps)."""
    from rediff.guidance import inpaint
    from rediff.training import load_run

    _, model = load_run(run)
    x, _ = data.digits_split("held_out")
    x = x[:10]
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[..., :4, :] = True  # the upper half is known
    shown = {"original": x, "known part": torch.where(mask, x, torch.full_like(x, -1.0))}
    for label, resampling in (("replacement", None), ("+ resampling", rediff.Resampling(5, 10))):
        gen = torch.Generator().manual_seed(seed)
        filled = inpaint(
            model,
            x,
            mask,
            sampler="ddpm",
            steps=100,
            generator=gen,
            resampling=resampling,
            progress=False,
        )
        shown[f"{label} ({filled.nfe} NFE)"] = filled.x
    plt = pyplot()
    fig, axes = plt.subplots(len(shown), 1, figsize=(6, 1.0 * len(shown) + 0.6))
    for ax, (label, images) in zip(axes, shown.items(), strict=True):
        ax.imshow(image_grid(images, 10), cmap="gray", vmin=-1, vmax=1)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("inpainting: the lower half of held-out digits filled in", fontsize=9)
    fig.tight_layout()
    path = out / "inpainted_digits.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_summary(out: Path, rows: list[str], seconds: dict[str, float]) -> Path:
    """summary.md: what the demo measured, one row per run, sampler and metric."""
    lines = [
        "# rediff demo: what was measured",
        "",
        "Each model was trained on this machine's CPU by `rediff demo` "
        + ", ".join(f"({name}: {s:.0f} s of training)" for name, s in seconds.items())
        + ". The floor is the same distance between real data and real data (for digits: the "
        "360 held-out digits against the 1437 training digits, as many samples as scored), "
        "so a value at its floor cannot be told from real data by that measure.",
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
    rows, seconds = [], {}
    for name in DEMO_RUNS:
        print(f"training the {name} demo model (shipped config, shortened) ...", flush=True)
        run_dir, seconds[name] = train_demo_run(name, out)
        figure, run_rows = sample_demo_run(name, run_dir, out, seed)
        paths += [figure, run_dir / "loss.png"]
        rows += run_rows
        if name == "digits":
            figure, guided_rows = plot_guided_digits(run_dir, out, seed)
            paths += [figure, plot_inpainted_digits(run_dir, out, seed)]
            rows += guided_rows
    paths.append(write_summary(out, rows, seconds))
    return paths
