"""Per-call overhead of sampling through a model: rediff's DiffusionModel against diffusers'
schedulers, with a network that costs nothing.

    .venv/bin/pip install -e ".[bench]"                 # diffusers (bench-only)
    .venv/bin/python benchmarks/overhead.py             # writes results/overhead.md

Both sides sample DDPM's linear schedule (T = 1000) for 20 steps with a zero eps-network
(an nn.Module returning zeros), so the time per model call is the library's own work: for
rediff the sampler loop and DiffusionModel (time input, range checks, target conversion),
for diffusers ``scale_model_input`` and ``step``. Batches of 256 and 20,000 points of 16
dimensions (float32). The pairs run interleaved (rediff, diffusers, rediff, ...) ``--repeats``
times and each side keeps its fastest run, so a change in the machine's speed hits both;
the table gives microseconds per call and the ratio rediff / diffusers (issue 18's target:
at most 0.5).

rediff computes a grid's coordinates once and caches them per (schedule, grid), so every
batch after the first on the same grid skips that work ("warm"); "cold" clears the cache
before the run, so it pays for the coordinates as a first batch does. diffusers'
``set_timesteps`` runs inside every one of its runs, as in its pipelines. The target is
judged on the cold ratio.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date
from pathlib import Path

import torch

import rediff
from rediff import grids, samplers, schedules, transitions

RESULTS = Path(__file__).parent / "results" / "overhead.md"
T, STEPS, DIM = 1000, 20, 16
SCHEDULE = schedules.DiscreteVP.linear(T)
#: (rediff sampler, its grid, diffusers scheduler class, its options)
PAIRS = (
    ("ddim", "trailing", "DDIMScheduler", {"timestep_spacing": "trailing"}),
    ("dpm++2m", "trailing", "DPMSolverMultistepScheduler", {"timestep_spacing": "trailing"}),
    ("unipc", "trailing", "UniPCMultistepScheduler", {"timestep_spacing": "trailing"}),
)


class Zero(torch.nn.Module):
    """A network that predicts 0 whatever it is given."""

    def forward(self, x, time, labels=None):
        return torch.zeros_like(x)


def rediff_seconds(name: str, spacing: str, x: torch.Tensor, cold: bool) -> tuple[float, int]:
    model = rediff.DiffusionModel(Zero(), SCHEDULE, "eps", "step")
    entry = samplers.get(name)
    ts = grids.make(SCHEDULE, STEPS, spacing)
    if cold:
        transitions.clear_cache()
    start = time.perf_counter()
    with torch.no_grad():
        entry.function(model, x, ts, **entry.options)
    return time.perf_counter() - start, STEPS


def diffusers_seconds(cls: str, options: dict, x: torch.Tensor) -> tuple[float, int]:
    import diffusers

    scheduler = getattr(diffusers, cls)(num_train_timesteps=T, beta_schedule="linear", **options)
    net = Zero()
    start = time.perf_counter()
    scheduler.set_timesteps(STEPS)
    sample = x
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = net(scheduler.scale_model_input(sample, t), t)
            sample = scheduler.step(eps, t, sample).prev_sample
    return time.perf_counter() - start, len(scheduler.timesteps)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import diffusers

    rows = []
    for batch in (256, 20000):
        x = torch.randn(batch, DIM, generator=torch.Generator().manual_seed(0))
        for name, spacing, cls, options in PAIRS:
            warm, cold, theirs = float("inf"), float("inf"), float("inf")
            for _ in range(args.repeats):
                seconds, calls = rediff_seconds(name, spacing, x, cold=True)
                cold = min(cold, seconds / calls)
                seconds, calls = rediff_seconds(name, spacing, x, cold=False)
                warm = min(warm, seconds / calls)
                seconds, calls = diffusers_seconds(cls, options, x)
                theirs = min(theirs, seconds / calls)
            rows.append((batch, name, cls, cold, warm, theirs))
            print(batch, name, f"{cold / theirs:.2f}", f"{warm / theirs:.2f}", flush=True)
    lines = [
        "# Per-call overhead through the model: rediff against diffusers",
        "",
        f"Command: `python benchmarks/overhead.py --repeats {args.repeats} --threads "
        f"{args.threads}`  ",
        f"Date: {date.today()}  Machine: {platform.machine()}, {args.threads} threads, torch "
        f"{torch.__version__}, diffusers {diffusers.__version__}. Method: see the script's "
        "docstring (zero network, 20 steps, fastest of the interleaved repeats).",
        "",
        "| batch | rediff sampler (DiffusionModel) | diffusers scheduler | rediff us / call, "
        "cold | warm | diffusers us / call | ratio cold | ratio warm |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for batch, name, cls, cold, warm, theirs in rows:
        lines.append(
            f"| {batch} | {name} | {cls} | {1e6 * cold:.0f} | {1e6 * warm:.0f} | "
            f"{1e6 * theirs:.0f} | {cold / theirs:.2f} | {warm / theirs:.2f} |"
        )
    worst = max(cold / theirs for *_, cold, _, theirs in rows)
    lines += [
        "",
        f"Target (issue 18): cold ratio at most 0.5 everywhere; worst cold ratio in this run "
        f"{worst:.2f} ({'met' if worst <= 0.5 else 'not met'}).",
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
