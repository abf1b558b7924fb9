"""rediff.sample's budget defaults (``rediff.samplers.default(steps)``) against every fixed
(sampler, grid) pair rediff registers, on exact Gaussian mixtures.

    .venv/bin/python benchmarks/defaults.py   # writes benchmarks/results/defaults.md

Two sets of mixtures: the three of samplers.py with its seeds (x_T seed = NFE, reference
seed 7), and a second set the defaults were not chosen on: the same 2-D mixture with other
x_T and reference draws, full_16d(seed=5) and narrow_32d(seed=6). Every rediff sampler of
samplers.py runs on each fixed grid (logsnr, karras, trailing, uniform with the final jump,
logsnr without it, and the short-budget default's logsnr without it whose first interval is
twice the others; no tuned grids: a default cannot fit one) at NFE 5-50 and at the budgets
around the switch of the default (6, 7, 12, 14). Scores and noise floors are samplers.py's (SW2,
|log-density gap|, mode-weight TV; floor = mean + 2 sd between exact sample sets).

Per (set, NFE) a (mixture, metric) cell is reachable where some pair lands within the floor.
The default misses a reachable cell where it is above the floor, and misses it clearly where
it is above the best pair's value plus the floor (a difference larger than the floor
itself). The former default, dpm++2m on the log-SNR grid with the final jump at every budget,
is scored the same way (with today's counting of the jump: samplers._common.countdown).
Beside them, the fewest floors any one pair misses at each NFE, chosen after seeing the
scores, per set and over both sets: the bound for a default that picks by budget alone.

Every pair converges, as its steps grow (the denoiser is exact), to the solver limit: the
exact marginal at t_min followed by the final jump, or the marginal itself without it. Where
neither limit is within a cell's floor, a pair that lands there does so because its
discretisation error cancels the limit's own (the posterior mean's shrinkage at t_min); the
joint table also counts misses on the cells the limit reaches.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch

import rediff

sys.path.insert(0, str(Path(__file__).parent))
import samplers as bench  # benchmarks/samplers.py, beside this file

RESULTS = Path(__file__).parent / "results" / "defaults.md"
NFES = (5, 6, 7, 8, 10, 12, 14, 15, 20, 25, 50)
FORMER = "dpm++2m (logsnr)"
METRICS = ("sw2", "logp_gap", "tv")


@dataclass(frozen=True)
class MixtureSet:
    """Mixtures by name, and the seeds of their x_T (offset + NFE) and reference draws."""

    name: str
    mixtures: dict
    x_t_offset: int
    reference_seed: int


def mixture_sets() -> list[MixtureSet]:
    second = {
        "2-D, 8 narrow components": bench.narrow_2d(),
        "16-D, 6 full covariances (seed 5)": bench.full_16d(5),
        "32-D, 10 narrow components (seed 6)": bench.narrow_32d(6),
    }
    return [
        MixtureSet("samplers.py's mixtures and seeds", bench.mixtures(), 0, 7),
        MixtureSet("second set (other seeds)", second, 100, 8),
    ]


def solver_limit(mixture, n: int, reference, draws: int = 4) -> bench.Scores:
    """What every sampler converges to with the exact denoiser: x_tmin = alpha(t_min) x0 +
    sigma(t_min) eps (x0 from the mixture), then the final jump E[x0 | x_tmin] (Tweedie's
    formula, Efron 2011; DDIM's and DPM-Solver's last step) or not. Per metric the lower of the
    two limits' mean scores over ``draws`` draws (seeds 500 + draw)."""
    t = torch.tensor(bench.SCHEDULE.t_min, dtype=torch.float64)
    alpha, sigma = bench.SCHEDULE.alpha(t), bench.SCHEDULE.sigma(t)
    denoiser = mixture.denoiser(bench.SCHEDULE)
    jumped, stopped = [], []
    for draw in range(draws):
        gen = torch.Generator().manual_seed(500 + draw)
        x0 = mixture.sample(n, generator=gen)
        x_t = alpha * x0 + sigma * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        jumped.append(bench.score(mixture, denoiser(x_t, t), reference, draw))
        stopped.append(bench.score(mixture, x_t, reference, draw))

    def mean(scores, m):
        return sum(getattr(s, m) for s in scores) / draws

    return bench.Scores(*(min(mean(jumped, m), mean(stopped, m)) for m in METRICS))


def scored_runs(mixtures: MixtureSet, n: int, csv: list[str]) -> dict:
    """{(mixture, NFE): ({pair label: Scores}, floor, solver limit)} for every fixed pair."""
    cells = {}
    for name, mixture in mixtures.mixtures.items():
        floor = bench.noise_floor(mixture, n)
        reference = mixture.sample(
            n, generator=torch.Generator().manual_seed(mixtures.reference_seed)
        )
        limit = solver_limit(mixture, n, reference)
        for nfe in NFES:
            runs = {}
            seed = mixtures.x_t_offset + nfe
            for sampler, grid, k, x in bench.rediff_runs(
                mixture, n, nfe, seed, tuned=False, configurations=False
            ):
                sc = runs[f"{sampler} ({grid})"] = bench.score(mixture, x, reference)
                csv.append(
                    f'"{mixtures.name}","{name}",{nfe},"{sampler} ({grid})",{k},{sc.sw2:.6g},'
                    f"{sc.logp_gap:.6g},{sc.tv:.6g}"
                )
            cells[(name, nfe)] = (runs, floor, limit)
            print(f"{mixtures.name} / {name} / NFE {nfe} done", flush=True)
    return cells


def misses(
    cells: dict, nfe: int, label: str, within_limit: bool = False
) -> tuple[int, list[str], list[str]]:
    """(reachable cells, cells the pair ``label`` misses, cells it misses clearly) at ``nfe``
    (``within_limit``: only cells whose floor the solver limit reaches)."""
    reachable, strict, clear = 0, [], []
    for (name, k), (runs, floor, solver) in cells.items():
        if k != nfe:
            continue
        for m in METRICS:
            best, limit = min(getattr(s, m) for s in runs.values()), getattr(floor, m)
            if best > limit or (within_limit and getattr(solver, m) > limit):
                continue
            reachable += 1
            value, cell = getattr(runs[label], m), f"{name.split(',')[0]} {m}"
            if value > limit:
                strict.append(cell)
            if value > best + limit:
                clear.append(cell)
    return reachable, strict, clear


def fewest_misses(
    cell_sets: list[dict], nfe: int, within_limit: bool = False
) -> tuple[int, list[str]]:
    """The fewest reachable floors one fixed pair misses at ``nfe`` over these sets' cells
    together, and the pairs that miss so few: chosen after seeing the scores, a bound no
    default that picks its pair from the budget alone can beat on these cells."""
    labels = set.intersection(
        *(set(runs) for cells in cell_sets for (_, k), (runs, *_) in cells.items() if k == nfe)
    )
    counts = {
        label: sum(len(misses(cells, nfe, label, within_limit)[1]) for cells in cell_sets)
        for label in labels
    }
    fewest = min(counts.values())
    return fewest, sorted(label for label, count in counts.items() if count == fewest)


def set_table(cells: dict) -> list[str]:
    """Per NFE: the default, the reachable cells, both defaults' misses and the fewest any
    one pair misses."""
    lines = [
        "| NFE | default | reachable | default misses (clear) | former default misses "
        "(clear) | fewest misses of one pair | cells the default misses |",
        "|---|---|---|---|---|---|---|",
    ]
    total = [0, 0, 0, 0, 0, 0]
    for nfe in NFES:
        chosen = rediff.samplers.default(nfe).label
        reach, strict, clear = misses(cells, nfe, chosen)
        _, f_strict, f_clear = misses(cells, nfe, FORMER)
        fewest, pairs = fewest_misses([cells], nfe)
        counts = (reach, len(strict), len(clear), len(f_strict), len(f_clear), fewest)
        for i, v in enumerate(counts):
            total[i] += v
        lines.append(
            f"| {nfe} | {chosen} | {reach} | {len(strict)} ({len(clear)}) | {len(f_strict)} "
            f"({len(f_clear)}) | {fewest} ({named(pairs)}) | {', '.join(strict) or '-'} |"
        )
    r, s, c, fs, fc, b = total
    lines.append(f"| all | | {r} | {s} ({c}) | {fs} ({fc}) | {b} | |")
    return [*lines, ""]


def named(pairs: list[str], most: int = 3) -> str:
    """The first ``most`` pairs, and how many more."""
    more = f" and {len(pairs) - most} more" if len(pairs) > most else ""
    return ", ".join(pairs[:most]) + more


def joint_table(cell_sets: list[dict], within_limit: bool) -> list[str]:
    """Both sets together: per NFE the default's misses against the fewest of one pair
    (``within_limit``: on the cells whose floor the solver limit reaches)."""
    lines = [
        "| NFE | reachable | default misses | fewest misses of one pair | pairs |",
        "|---|---|---|---|---|",
    ]
    total = [0, 0, 0]
    for nfe in NFES:
        chosen = rediff.samplers.default(nfe).label
        found = [misses(cells, nfe, chosen, within_limit) for cells in cell_sets]
        reach, strict = sum(f[0] for f in found), sum(len(f[1]) for f in found)
        fewest, pairs = fewest_misses(cell_sets, nfe, within_limit)
        for i, v in enumerate((reach, strict, fewest)):
            total[i] += v
        lines.append(f"| {nfe} | {reach} | {strict} | {fewest} | {named(pairs)} |")
    lines.append(f"| all | {total[0]} | {total[1]} | {total[2]} | |")
    return [*lines, ""]


def limit_table(cell_sets: list[dict]) -> list[str]:
    """Each mixture's floor beside its solver limit, `*` where the limit is within it."""
    lines = [
        "| set | data | floor: SW2 / gap / TV | solver limit: SW2 / gap / TV |",
        "|---|---|---|---|",
    ]
    for number, cells in enumerate(cell_sets, 1):
        seen = {name: (floor, solver) for (name, _), (_, floor, solver) in cells.items()}
        for name, (floor, solver) in seen.items():
            values = [getattr(floor, m) for m in METRICS]
            lines.append(
                f"| {number} | {name} | {' / '.join(f'{v:.4f}' for v in values)} | "
                f"{scores_line([getattr(solver, m) for m in METRICS], floor)} |"
            )
    return [*lines, ""]


def scores_line(values: list[float], floor) -> str:
    """SW2 / gap / TV, `*` where within the floor."""
    marks = [
        f"{v:.4f}{'*' if v <= getattr(floor, m) else ''}"
        for v, m in zip(values, METRICS, strict=True)
    ]
    return " / ".join(marks)


def scores_table(cells: dict) -> list[str]:
    """The default's scores beside the former default's and the best pair's, per cell."""
    lines = [
        "| data | NFE | default: SW2 / gap / TV | former: SW2 / gap / TV | best pair: SW2 / gap "
        "/ TV |",
        "|---|---|---|---|---|",
    ]
    for (name, nfe), (runs, floor, _) in cells.items():
        chosen = runs[rediff.samplers.default(nfe).label]
        best = [min(getattr(s, m) for s in runs.values()) for m in METRICS]
        lines.append(
            f"| {name.split(',')[0]} | {nfe} | "
            f"{scores_line([getattr(chosen, m) for m in METRICS], floor)} | "
            f"{scores_line([getattr(runs[FORMER], m) for m in METRICS], floor)} | "
            f"{scores_line(best, floor)} |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10000, help="samples per run (default 10000)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    switch = rediff.samplers.FULL_BUDGET_FROM
    lines = [
        "# rediff.sample's budget defaults against every fixed sampler / grid pair",
        "",
        f"Command: `python benchmarks/defaults.py --n {args.n}`  ",
        f"Date: {date.today()}  Machine: {platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}  ",
        f"Schedule: DDPM linear betas, T = {bench.T}; {args.n} samples per run.",
        "",
        f"The default (`rediff.samplers.default(steps)`): below {switch} steps "
        f"{rediff.samplers.SHORT_BUDGET.label}, from {switch} on "
        f"{rediff.samplers.FULL_BUDGET.label} ('no jump': the grid stops at t_min = 1/T; "
        "'first interval x2': its first log-SNR interval is twice each of the others). "
        f"The former default: {FORMER} at every budget. A cell (mixture, metric) is reachable "
        "where some fixed rediff pair (10 samplers x logsnr, karras, trailing, uniform, "
        "logsnr without the final jump and the short-budget default's grid) lands within "
        "the noise floor; a miss is a reachable "
        "cell the default is above the floor in, a clear miss one where it is above the best "
        "pair's value plus the floor; 'fewest misses of one pair': the fewest any single "
        "pair misses at that NFE, chosen after seeing the scores. Second table per set: the "
        "scores, `*` = within the floor.",
        "",
    ]
    csv = ["set,data,nfe_budget,run,nfe,sw2,abs_gap,tv"]
    cell_sets = []
    for mixtures in mixture_sets():
        cells = scored_runs(mixtures, args.n, csv)
        cell_sets.append(cells)
        lines += [f"## {mixtures.name}", "", *set_table(cells), *scores_table(cells)]
    lines += [
        "## One pair per budget, chosen on both sets after seeing the scores",
        "",
        "The fewest reachable floors any one fixed pair misses at each NFE over both sets: a "
        "bound no default that picks its pair from the budget alone can beat here, so a "
        "default that lands at every floor some pair reaches does not exist where it is "
        "above 0 (each floor is reached by a different pair).",
        "",
        *joint_table(cell_sets, within_limit=False),
        "## Floors the solver limit reaches",
        "",
        "With the exact denoiser every pair converges to the solver limit (the exact marginal "
        "at t_min = 1/T with the final jump, or without it; the lower mean score of the two "
        "over 4 draws). Where the limit is above a floor, the pairs within it get there "
        "because their discretisation error cancels the limit's own:",
        "",
        *limit_table(cell_sets),
        "The same count on the cells whose floor the limit reaches:",
        "",
        *joint_table(cell_sets, within_limit=True),
    ]
    lines.append(f"Total time: {time.perf_counter() - started:.0f} s.")
    runs_csv = args.out.with_name(args.out.stem + "_runs.csv")
    args.out.write_text("\n".join(lines) + "\n")
    runs_csv.write_text("\n".join(csv) + "\n")
    print(f"wrote {args.out} and {runs_csv}")


if __name__ == "__main__":
    main()
