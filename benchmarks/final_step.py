"""Should a grid end with the jump to sigma = 0? Measured on the benchmark mixtures.

    .venv/bin/python benchmarks/final_step.py   # writes benchmarks/results/final_step.md

For each sampler and NFE, the same number of evaluations is spent on (a) a grid ending with
the jump to clean data (``final_step=True``: the last evaluation's x0_hat is returned) and
(b) a grid stopping at t_min = 1/T (``final_step=False``: x at sigma(t_min) = 0.01 is
returned, as DPM-Solver's release does by default). Metrics as in benchmarks/samplers.py.
"""

from __future__ import annotations

import platform
from datetime import date
from pathlib import Path

import torch
from samplers import SCHEDULE, full_16d, narrow_2d, noise_floor, score

import rediff

RESULTS = Path(__file__).parent / "results" / "final_step.md"


def main(n: int = 20000) -> None:
    lines = [
        "# The final jump to sigma = 0",
        "",
        "Command: `python benchmarks/final_step.py`  ",
        f"Date: {date.today()}  Machine: {platform.machine()}, torch {torch.__version__}  ",
        f"DDPM linear schedule (T = 1000), log-SNR grids, {n} samples per run; `*` = within the "
        "noise floor (mean + 2 sd between exact sample sets).",
        "",
    ]
    for mix_name, mixture in (
        ("2-D, 8 narrow components", narrow_2d()),
        ("16-D, 6 full covariances", full_16d()),
    ):
        floor = noise_floor(mixture, n)
        reference = mixture.sample(n, generator=torch.Generator().manual_seed(7))
        den = mixture.denoiser(SCHEDULE)
        lines += [
            f"## {mix_name}",
            "",
            "| sampler | NFE | final jump | SW2 | abs gap | TV |",
            "|---|---|---|---|---|---|",
        ]
        for name in ("dpm++2m", "unipc", "ddim"):
            for nfe in (10, 20, 50):
                for final in (True, False):
                    steps = nfe
                    out = rediff.sample(
                        den,
                        (n, mixture.dim),
                        sampler=name,
                        steps=steps,
                        final_step=final,
                        generator=torch.Generator().manual_seed(nfe),
                        progress=False,
                    )
                    sc = score(mixture, out.x, reference)
                    cells = [
                        f"{v:.4f}{'*' if v <= f else ''}"
                        for v, f in (
                            (sc.sw2, floor.sw2),
                            (sc.logp_gap, floor.logp_gap),
                            (sc.tv, floor.tv),
                        )
                    ]
                    lines.append(
                        f"| {name} | {out.nfe} | {'yes' if final else 'no'} | "
                        + " | ".join(cells)
                        + " |"
                    )
        lines.append("")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
