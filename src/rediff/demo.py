"""``rediff demo``: pictures of the forward processes a new user can open.

Writes into one folder:
- ``forward_2d.png``: two moons noised by three schedules at evenly spaced log-SNR;
- ``forward_digits.png``: scikit-learn digits along the DDPM (linear betas) chain;
- ``log_snr.png``: the log-SNR curve of every schedule (and EDM's against its noise level);
- ``samplers_2d.png``: samples of an eight-Gaussian mixture drawn with its exact denoiser by
  several samplers at 5, 10 and 20 evaluations, beside exact samples.
"""

from __future__ import annotations

from pathlib import Path

import torch

import rediff
from rediff import data, grids, samplers, schedules
from rediff.plots import pyplot
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


def run(out_dir: str | Path, seed: int = 0) -> list[Path]:
    """Write the demo pictures into ``out_dir`` (created if needed); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    return [
        plot_forward_2d(out / "forward_2d.png", generator),
        plot_forward_digits(out / "forward_digits.png", generator),
        plot_log_snr(out / "log_snr.png"),
        plot_sampler_comparison(out / "samplers_2d.png", generator),
    ]
