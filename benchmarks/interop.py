"""rediff on other libraries' models: a diffusers folder, and flow matching against diffusers'
flow schedulers and Meta's flow_matching.

    .venv/bin/pip install -e ".[bench]"                      # diffusers, flow_matching
    .venv/bin/python benchmarks/interop.py --budget 240      # writes results/interop.md

Part 1, a diffusers model. A UNet2DModel trained on the 1437 training digits by diffusers'
own recipe (``benchmarks/training.py``'s DiffusersRun: DDPMScheduler, add_noise, MSE on the
noise, EMAModel) for ``--budget`` seconds, saved with ``save_pretrained`` (unet/ and
scheduler/) and read back by ``rediff.interop.load_diffusers``. The same network is sampled
by diffusers' schedulers (built from the folder's scheduler config, as a user would) and by
rediff's samplers (each on its default grid) from the same x_T, at NFE 10 and 20 (model
calls): the Frechet distance of 360 samples to the training digits in the digits
classifier's features, mean +- standard error over seeds. Then the model's dequantised
bits/dim on the 360 held-out digits (17 grey levels) by rediff's ODE likelihood, which
diffusers cannot compute.

Part 2, flow matching on exact mixtures (``benchmarks/samplers.py``'s 2-D narrow and 16-D
full-covariance mixtures, their exact velocity under alpha = 1 - t, sigma = t): rediff's
samplers on ``FlowMatching(t_max=1)`` (Euler, = DDIM, from pure noise, the others from
finite_t_max = 1 - 1e-3) on the log-SNR, Karras, uniform and linear grids, the last two also
with SD3's shift 3 (linear is diffusers' flow grid: uniform in sigma straight into 0),
against diffusers' FlowMatchEulerDiscreteScheduler (shift 1 and 3) and its flow-sigma
DPMSolverMultistep (2M, 3M) and UniPC, and against flow_matching's ODESolver (euler,
midpoint, rk4 on a uniform time grid; its time u = 1 - t). Same x_T for all; metrics and
noise floor as in benchmarks/samplers.py; each method at its best grid per metric.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import tempfile
from datetime import date
from pathlib import Path

import samplers as mixtures  # benchmarks/samplers.py
import torch
import training as digits_training  # benchmarks/training.py

import rediff
from rediff import data, grids, likelihood, samplers, schedules
from rediff.runs.kinds import digits
from rediff.sampling import CountingDenoiser

RESULTS = Path(__file__).parent / "results" / "interop.md"
DIGIT_NFES = (10, 20)
DIGIT_SEEDS = tuple(range(5))
DIGIT_LEVELS = int(data.digits.DIGITS_MAX) + 1
REDIFF_DIGIT_SAMPLERS = ("ddim", "euler", "heun", "dpm++2m", "dpm++3m", "unipc")
FLOW = schedules.FlowMatching(t_min=1e-5, t_max=1.0)
FLOW_NFES = (5, 10, 20, 50)
FLOW_SAMPLERS = ("euler", "heun", "dpm++2m", "dpm++3m", "unipc", "unipc3")  # ddim = euler
#: (label, spacing, shift) of the grids tried for every rediff flow sampler
FLOW_GRIDS = (("logsnr", "logsnr", 1.0), ("karras", "karras", 1.0), ("uniform", "uniform", 1.0))
FLOW_GRIDS += (("uniform, shift 3", "uniform", 3.0), ("linear", "linear", 1.0))
FLOW_GRIDS += (("linear, shift 3", "linear", 3.0),)


# ---- part 1: a diffusers-trained digits model ------------------------------------------------


def train_folder(budget: float, folder: Path) -> int:
    """Train diffusers' digits baseline for ``budget`` seconds and save its EMA UNet and its
    scheduler as a diffusers folder; returns the steps done."""
    run = digits_training.DiffusersRun()
    run.run(budget)
    unet = copy.deepcopy(run.unet)
    run.ema.copy_to(unet.parameters())
    unet.save_pretrained(folder / "unet")
    run.scheduler.save_pretrained(folder / "scheduler")
    return run.steps


def diffusers_digit_schedulers(folder: Path):
    """(label, factory) of diffusers' schedulers, from the folder's own scheduler config."""
    import diffusers as d

    config = d.DDPMScheduler.load_config(folder / "scheduler")

    def make(cls, **changes):
        return lambda: cls.from_config(config, **changes)

    return [
        ("DDIM trailing", make(d.DDIMScheduler, timestep_spacing="trailing")),
        ("DPMSolverMultistep 2M", make(d.DPMSolverMultistepScheduler)),
        (
            "DPMSolverMultistep 2M karras",
            make(d.DPMSolverMultistepScheduler, use_karras_sigmas=True),
        ),
        ("UniPC", make(d.UniPCMultistepScheduler)),
        ("Euler", make(d.EulerDiscreteScheduler)),
        ("Euler karras", make(d.EulerDiscreteScheduler, use_karras_sigmas=True)),
    ]


def diffusers_digits(unet, make, x_T: torch.Tensor, nfe: int) -> torch.Tensor:
    """diffusers' documented loop: scale_model_input, the UNet, step."""
    scheduler = make()
    scheduler.set_timesteps(nfe)
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x


def rediff_digits(model, name: str, x_T: torch.Tensor, nfe: int) -> tuple[torch.Tensor, int]:
    """A rediff sampler on its default grid, within ``nfe`` model calls."""
    entry = samplers.get(name)
    counting = CountingDenoiser(model)
    ts = grids.make(model.schedule, entry.steps_within(nfe), entry.spacing)
    x = entry.function(counting, x_T, ts, **entry.options)
    return x, counting.calls


def digits_part(budget: float) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        steps = train_folder(budget, folder)
        model = rediff.interop.load_diffusers(folder)
        unet, floor = model.net.unet, digits.digits_frechet_floor()
        rows: dict[str, dict[int, list[float]]] = {}
        calls: dict[str, dict[int, int]] = {}
        with torch.no_grad():
            for nfe in DIGIT_NFES:
                for seed in DIGIT_SEEDS:
                    x_T = torch.randn(
                        data.digits.HELD_OUT, 1, 8, 8, generator=torch.Generator().manual_seed(seed)
                    )
                    for label, make in diffusers_digit_schedulers(folder):
                        x = diffusers_digits(unet, make, x_T, nfe)
                        rows.setdefault(f"diffusers {label}", {}).setdefault(nfe, []).append(
                            digits.digits_frechet(x)
                        )
                        calls.setdefault(f"diffusers {label}", {})[nfe] = nfe
                    for name in REDIFF_DIGIT_SAMPLERS:
                        x, k = rediff_digits(model, name, x_T, nfe)
                        rows.setdefault(f"rediff {name}", {}).setdefault(nfe, []).append(
                            digits.digits_frechet(x)
                        )
                        calls.setdefault(f"rediff {name}", {})[nfe] = k
                print(f"digits: NFE {nfe} done", flush=True)
        held_out = data.digits_split("held_out")[0]
        nll = likelihood.dequantized_nll(
            model,
            held_out,
            DIGIT_LEVELS,
            generator=torch.Generator().manual_seed(0),
            trace="hutchinson",
            probes=1,
            solver=likelihood.Solver(1e-4, 1e-4),
        )
    bpd = nll.bits_per_dim
    lines = [
        "## 1. A diffusers-trained digits model, sampled by both libraries",
        "",
        f"diffusers' recipe (benchmarks/training.py, DiffusersRun), {budget:.0f} s of training "
        f"({steps} steps), EMA UNet saved with save_pretrained and read by "
        "rediff.interop.load_diffusers. Frechet distance (lower is better) of 360 samples from "
        f"the same x_T, mean +- standard error over {len(DIGIT_SEEDS)} seeds; floor (360 "
        f"held-out real digits): **{floor:.1f}**. diffusers' schedulers are built from the "
        "folder's scheduler config (clip_sample = true, as DDPMScheduler saves it; rediff "
        "does not clip).",
        "",
        "| sampler | " + " | ".join(f"NFE {n}: FD | calls" for n in DIGIT_NFES) + " |",
        "|---|" + "---|---|" * len(DIGIT_NFES),
    ]
    order = sorted(rows, key=lambda r: statistics.mean(rows[r][DIGIT_NFES[0]]))
    for label in order:
        cells = " | ".join(f"{_cell(rows[label][n])} | {calls[label][n]}" for n in DIGIT_NFES)
        lines.append(f"| {label} | {cells} |")
    lines += [""]
    for nfe in DIGIT_NFES:
        ours = min((r for r in rows if r.startswith("rediff")), key=lambda r: _mean(rows[r][nfe]))
        theirs = min(
            (r for r in rows if r.startswith("diffusers")), key=lambda r: _mean(rows[r][nfe])
        )
        gap = _gap(rows[ours][nfe], rows[theirs][nfe])
        lines.append(
            f"- NFE {nfe}: best rediff {ours} {_cell(rows[ours][nfe])}, best diffusers {theirs} "
            f"{_cell(rows[theirs][nfe])}; difference {gap:+.1f} standard errors (negative: rediff "
            "better; within +-2 this run cannot tell them apart)."
        )
    lines += [
        "",
        f"Bits/dim of the 360 held-out digits under this diffusers model (rediff's ODE "
        f"likelihood, dequantised to {DIGIT_LEVELS} levels, one Hutchinson probe, rtol = atol = "
        f"1e-4): **{float(bpd.mean()):.3f} +- {float(bpd.std() / math.sqrt(bpd.numel())):.3f}** "
        f"({nll.nfe} right-hand-side evaluations). diffusers has no likelihood.",
        "",
    ]
    return lines


def _mean(values: list[float]) -> float:
    return statistics.mean(values)


def _cell(values: list[float]) -> str:
    return f"{_mean(values):.2f} +- {statistics.stdev(values) / len(values) ** 0.5:.2f}"


def _gap(ours: list[float], theirs: list[float]) -> float:
    se = lambda v: statistics.stdev(v) / len(v) ** 0.5  # noqa: E731
    return (_mean(ours) - _mean(theirs)) / math.hypot(se(ours), se(theirs))


# ---- part 2: flow matching on exact mixtures -------------------------------------------------


def rediff_flow(mixture, x_T: torch.Tensor, nfe: int):
    """(label, grid, calls, x) of every rediff sampler and grid within ``nfe`` calls."""
    den = mixture.denoiser(FLOW)
    for name in FLOW_SAMPLERS:
        entry = samplers.get(name)
        steps = entry.steps_within(nfe)
        from_noise = name == "euler"
        for label, spacing, shift in FLOW_GRIDS:
            pure = spacing in ("uniform", "linear")  # these start at t_max = 1
            t_max = FLOW.finite_t_max if pure and not from_noise else None
            ts = grids.make(FLOW, steps, spacing, t_max=t_max, shift=shift)
            counting = CountingDenoiser(den)
            x = entry.function(counting, x_T, ts, **entry.options)
            if counting.calls <= nfe:
                yield f"rediff {name}", label, counting.calls, x


def exact_velocity(mixture):
    """v(x, sigma) = eps_hat - x0_hat of the exact mixture under the flow path, and a call
    counter."""
    den, calls = mixture.denoiser(FLOW), [0]

    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        calls[0] += 1
        t = torch.full((x.shape[0],), min(max(sigma, FLOW.t_min), 1.0), dtype=torch.float64)
        return den.predict(x.double(), t).as_target("velocity").to(x.dtype)

    return velocity, calls


def diffusers_flow_schedulers():
    """(method, grid, factory) of diffusers' flow schedulers at shift 1 and 3."""
    import diffusers as d

    flow = dict(use_flow_sigmas=True, prediction_type="flow_prediction")
    out = []
    for shift in (1.0, 3.0):
        grid = f"shift {shift:g}"
        out += [
            ("FlowMatchEuler", grid, lambda s=shift: d.FlowMatchEulerDiscreteScheduler(shift=s)),
            (
                "DPMSolverMultistep 2M flow",
                grid,
                lambda s=shift: d.DPMSolverMultistepScheduler(**flow, flow_shift=s),
            ),
            (
                "DPMSolverMultistep 3M flow",
                grid,
                lambda s=shift: d.DPMSolverMultistepScheduler(**flow, flow_shift=s, solver_order=3),
            ),
            (
                "UniPC flow",
                grid,
                lambda s=shift: d.UniPCMultistepScheduler(**flow, flow_shift=s),
            ),
        ]
    return out


def diffusers_flow(mixture, x_T: torch.Tensor, nfe: int):
    """(label, grid, calls, x) of diffusers' flow schedulers; the exact velocity at the sigma
    of each step (the flow DPM-Solver / UniPC would give a network that sigma rounded to an
    integer timestep, which costs them accuracy here, so it is not done)."""
    for method, grid, make in diffusers_flow_schedulers():
        scheduler = make()
        scheduler.set_timesteps(nfe)
        velocity, calls = exact_velocity(mixture)
        x = x_T.clone()
        for i, t in enumerate(scheduler.timesteps):  # at its sigma (its timesteps may be rounded)
            x = scheduler.step(velocity(x, float(scheduler.sigmas[i])), t, x).prev_sample.double()
        if torch.isfinite(x).all():
            yield f"diffusers {method}", grid, calls[0], x


def meta_flow(mixture, x_T: torch.Tensor, nfe: int):
    """(label, grid, calls, x) of flow_matching's ODESolver on a uniform grid (its u = 1 - t,
    its velocity minus ours)."""
    from flow_matching.solver import ODESolver
    from flow_matching.utils import ModelWrapper

    velocity, calls = exact_velocity(mixture)

    class Velocity(ModelWrapper):
        def forward(self, x, t, **extras):
            return -velocity(x, 1.0 - float(t))

    for method, evals in (("euler", 1), ("midpoint", 2), ("rk4", 4)):
        steps = nfe // evals
        if steps < 1:
            continue
        calls[0] = 0
        grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
        x = ODESolver(Velocity(None)).sample(x_T, None, method, time_grid=grid)
        yield f"flow_matching {method}", "uniform", calls[0], x


def flow_part(n: int) -> list[str]:
    lines = [
        "## 2. Flow matching on exact mixtures",
        "",
        "rediff on FlowMatching(t_max = 1); diffusers' FlowMatchEulerDiscreteScheduler and its "
        "flow-sigma DPMSolverMultistep / UniPC (use_flow_sigmas, flow_prediction, flow_shift); "
        "Meta's flow_matching ODESolver. Same exact velocity field and x_T for all; "
        f"{n} samples per run. Each method at its best grid per metric (grid in brackets); "
        "`*` = within the noise floor.",
        "",
    ]
    verdicts = []
    for mix_name, mixture in (
        ("2-D, 8 narrow components", mixtures.narrow_2d()),
        ("16-D, 6 full covariances", mixtures.full_16d()),
    ):
        floor = mixtures.noise_floor(mixture, n)
        reference = mixture.sample(n, generator=torch.Generator().manual_seed(7))
        lines += [
            f"### {mix_name}",
            "",
            f"Noise floor: SW2 {floor.sw2:.4f}, |gap| {floor.logp_gap:.4f}, TV {floor.tv:.4f}",
            "",
        ]
        for nfe in FLOW_NFES:
            x_T = mixtures.start_noise(mixture, n, nfe)
            runs = [
                (lib, grid, k, mixtures.score(mixture, x, reference))
                for source in (rediff_flow, diffusers_flow, meta_flow)
                for lib, grid, k, x in source(mixture, x_T, nfe)
            ]
            lines += _flow_table(nfe, runs, floor)
            verdicts += _flow_verdicts(mix_name, nfe, runs, floor)
            print(f"flow {mix_name}: NFE {nfe} done", flush=True)
    lines += [
        "### Targets",
        "",
        "Best rediff run against the best of diffusers and flow_matching, per metric; pass = "
        "rediff strictly lower, or both within the noise floor.",
        "",
        "| data | NFE | metric | rediff best | peers' best | floor | pass | rediff run | peer run |",
        "|---|---|---|---|---|---|---|---|---|",
        *verdicts,
        "",
    ]
    return lines


def _flow_table(nfe: int, runs, floor) -> list[str]:
    """One row per method: its best grid for each metric."""
    lines = [
        f"#### NFE <= {nfe}",
        "",
        "| method | SW2 [grid] | abs gap [grid] | TV [grid] |",
        "|---|---|---|---|",
    ]
    methods = dict.fromkeys(r[0] for r in runs)
    for method in methods:
        mine = [r for r in runs if r[0] == method]
        cells = []
        for metric in ("sw2", "logp_gap", "tv"):
            best = min(mine, key=lambda r: getattr(r[3], metric))
            value = getattr(best[3], metric)
            star = "*" if value <= getattr(floor, metric) else ""
            cells.append(f"{value:.4f}{star} [{best[1]}, {best[2]}]")
        lines.append(f"| {method} | {' | '.join(cells)} |")
    return [*lines, ""]


def _flow_verdicts(mix_name: str, nfe: int, runs, floor) -> list[str]:
    out = []
    for metric in ("sw2", "logp_gap", "tv"):
        ours = min(
            (r for r in runs if r[0].startswith("rediff")), key=lambda r: getattr(r[3], metric)
        )
        peers = min(
            (r for r in runs if not r[0].startswith("rediff")), key=lambda r: getattr(r[3], metric)
        )
        rv, pv, f = getattr(ours[3], metric), getattr(peers[3], metric), getattr(floor, metric)
        ok = rv < pv or (rv <= f and pv <= f)
        out.append(
            f"| {mix_name} | {nfe} | {metric} | {rv:.4f} | {pv:.4f} | {f:.4f} | "
            f"{'yes' if ok else 'NO'} | {ours[0]} [{ours[1]}] | {peers[0]} [{peers[1]}] |"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=float, default=240.0, help="diffusers training seconds")
    parser.add_argument("--n", type=int, default=10000, help="samples per flow run")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import diffusers
    import flow_matching

    lines = [
        "# rediff on other libraries' models: diffusers folders and flow matching",
        "",
        f"Command: `python benchmarks/interop.py --budget {args.budget:g} --n {args.n}`  ",
        f"Date: {date.today()}  Machine: {platform.machine()}, {args.threads} threads, torch "
        f"{torch.__version__}, diffusers {diffusers.__version__}, flow_matching "
        f"{getattr(flow_matching, '__version__', '?')}. Method: see the script's docstring.",
        "",
    ]
    lines += digits_part(args.budget)
    lines += flow_part(args.n)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
