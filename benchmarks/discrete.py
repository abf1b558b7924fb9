"""Discrete against continuous diffusion on the same data: bits/dim of the held-out digits.

    .venv/bin/python benchmarks/discrete.py [--steps 2000]   # writes results/discrete.md

scikit-learn's 8x8 digits have 17 grey levels. rediff trains, from its shipped configs with
the same number of steps, batch, seed and digits UNet body:

- D3PM with the discretised-Gaussian transition and the hybrid loss (digits_d3pm.toml);
- D3PM with an absorbing [MASK] state, hybrid loss (digits_d3pm_absorbing.toml);
- continuous DDPM (digits_ddpm.toml: eps target, linear betas, T = 1000).

and scores the 360 held-out digits with each model's own likelihood in bits per dimension
of the 17 levels: the D3PM bound (all T terms; no dequantisation is needed, the model is a
distribution over the levels), and for DDPM its discrete bound (all T terms, the decoder on
the 17 levels) and the probability-flow ODE on uniformly dequantised digits (a bound on the
discrete likelihood through Theis et al.'s dequantisation; one Hutchinson probe). Sample
grids of the three are drawn side by side (results/discrete_samples.png). No peer computes
both families' likelihoods on the same data, so the table compares rediff's models with
each other.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import date
from importlib import resources
from pathlib import Path

import torch

from rediff.evaluation import run_nll
from rediff.plots import finish, image_grid, pyplot
from rediff.runs import draw, load_run
from rediff.runs.kinds import digits
from rediff.training import load_config, train

RESULTS = Path(__file__).parent / "results"
MODELS = {
    "D3PM, discretised Gaussian, hybrid": "digits_d3pm.toml",
    "D3PM, absorbing, hybrid": "digits_d3pm_absorbing.toml",
    "DDPM (continuous), eps": "digits_ddpm.toml",
}


def train_all(root: Path, steps: int) -> dict[str, tuple[Path, float]]:
    runs = {}
    for name, config_file in MODELS.items():
        config = load_config(
            Path(str(resources.files("rediff") / "configs" / config_file)),
            [f"train.steps={steps}", "train.sample_every=0"],
        )
        start = time.perf_counter()
        train(config, root / config_file.removesuffix(".toml"), progress=False)
        runs[name] = (root / config_file.removesuffix(".toml"), time.perf_counter() - start)
        print(f"trained {name} in {runs[name][1]:.0f} s", flush=True)
    return runs


def score(runs: dict[str, tuple[Path, float]]) -> list[str]:
    """One table row per model and method: bits/dim of the held-out digits."""
    rows = []
    for name, (run, seconds) in runs.items():
        discrete_model = "D3PM" in name
        methods = [("vlb", {"vlb_steps": 0})]
        if not discrete_model:
            methods.append(("ode", {"probes": 1, "rtol": 1e-4}))
        for method, options in methods:
            start = time.perf_counter()
            row = run_nll(run, method, n=360, **options).row
            what = "bound (all T terms)" if method == "vlb" else "ODE, dequantised (1 probe)"
            rows.append(
                f"| {name} | {what} | {row.mean:.3f} | {row.se:.3f} | {row.nfe} | "
                f"{seconds:.0f} | {time.perf_counter() - start:.0f} |"
            )
            print(rows[-1], flush=True)
    return rows


def grids(runs: dict[str, tuple[Path, float]], path: Path) -> list[str]:
    """100 samples of each model (row k: class-free, in drawing order) and their Frechet
    distances, side by side."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(3.6 * len(runs), 4.4))
    fd_rows = []
    for ax, (name, (run_dir, _)) in zip(axes, runs.items(), strict=True):
        run = load_run(run_dir)
        gen = torch.Generator().manual_seed(0)
        drawn = draw(run, 360, sampler=run.config.sample.sampler, steps=100, generator=gen)
        fd = digits.digits_frechet(drawn.x)
        fd_rows.append(
            f"| {name} | {run.config.sample.sampler}, 100 steps | {drawn.nfe} | {fd:.2f} |"
        )
        ax.imshow(image_grid(drawn.x[:100], 10), cmap="gray", vmin=-1, vmax=1)
        ax.set_title(f"{name}\nFD {fd:.1f}, NFE {drawn.nfe}", fontsize=8)
        ax.axis("off")
    caption = (
        "100 samples of each model trained by benchmarks/discrete.py on the digits (same "
        "steps, batch and UNet body): two D3PM models that diffuse the 17 grey levels as "
        "categories, and a continuous DDPM. FD: Frechet distance in the digits classifier's "
        f"features of 360 samples to the training digits (360 unseen real digits: "
        f"{digits.digits_frechet_floor():.1f}; lower means closer to the training digits)."
    )
    finish(fig, path, "discrete and continuous diffusion on the digits", caption)
    return fd_rows


def verdict(rows: list[str]) -> list[str]:
    """Which model's likelihood is lowest, and by how much against each other row (in
    standard errors of the difference, the digits' errors taken as independent)."""
    parsed = []
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        parsed.append((f"{cells[0]} ({cells[1]})", float(cells[2]), float(cells[3])))
    parsed.sort(key=lambda r: r[1])
    best, lines = parsed[0], [f"Lowest bits/dim: {parsed[0][0]}, {parsed[0][1]:.3f}."]
    for name, mean, se in parsed[1:]:
        gap, se_gap = mean - best[1], (se**2 + best[2] ** 2) ** 0.5
        lines.append(
            f"- {name}: {mean:.3f}, higher by {gap:.3f} ({gap / se_gap:.0f} standard errors)"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps of each model")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        runs = train_all(Path(tmp), args.steps)
        rows = score(runs)
        fd_rows = grids(runs, RESULTS / "discrete_samples.png")
    lines = [
        "# Discrete against continuous diffusion on 17-level digits",
        "",
        f"Command: `.venv/bin/python benchmarks/discrete.py --steps {args.steps}`; machine: "
        f"{platform.processor() or platform.machine()}, 2 CPU threads; date: {date.today()}.",
        "",
        f"Each model trained {args.steps} steps (batch 128) from its shipped config. Bits per "
        "dimension of the 360 held-out digits in units of the 17 levels (lower is better); "
        "mean and standard error over the digits; NFE: network evaluations per digit.",
        "",
        "| model | likelihood | bits/dim | standard error | NFE | training s | scoring s |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        *verdict(rows),
        "",
        "Samples (`discrete_samples.png`): Frechet distance of 360 samples to the training "
        "digits in the digits classifier's features; 360 held-out real digits score "
        f"{digits.digits_frechet_floor():.2f}. The classifier was trained on the training "
        "digits, so samples that resemble them can score below unseen real digits: below that "
        "value means closer to the training set, not better than real data.",
        "",
        "| model | sampler | NFE | Frechet distance |",
        "|---|---|---|---|",
        *fd_rows,
    ]
    (RESULTS / "discrete.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
