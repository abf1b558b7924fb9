"""Samplers: every one is ``sampler(denoiser, x, ts, *, generator=None, callback=None,
**options) -> x`` (DESIGN.md), a short loop over the grid ``ts`` (see ``rediff.grids``).

| name (registry)          | function                          | evaluations per step |
|--------------------------|-----------------------------------|----------------------|
| `ddpm`                   | `ddpm` (variance beta / beta_tilde / analytic) | 1       |
| `ddim`                   | `ddim` (eta)                      | 1                    |
| `euler`                  | `euler` (probability-flow ODE)    | 1                    |
| `heun`                   | `heun` (EDM, churn)               | 2 (1 into t = 0)     |
| `euler_maruyama`         | `euler_maruyama` (reverse SDE)    | 1                    |
| `pc`                     | `predictor_corrector`             | 1 + corrector_steps  |
| `annealed_langevin`      | `annealed_langevin` (NCSN)        | steps_per_level      |
| `ode`                    | `ode` (adaptive, torchdiffeq)     | adaptive             |
| `dpm_solver1/2/3`        | `dpm_solver` (single-step)        | order                |
| `dpm++2m`, `dpm++3m`     | `dpm_solver_pp` (multistep)       | 1                    |
| `dpm++2m-sde`            | `dpm_solver_pp(sde=True)` (midpoint, heun) | 1           |
| `unipc`, `unipc3`        | `unipc` (order 2, 3)              | 1                    |

Without a sampler name ``rediff.sample`` uses ``default(steps)``: the sampler, spacing and
final step chosen for that budget (``SHORT_BUDGET`` below ``FULL_BUDGET_FROM`` steps,
``FULL_BUDGET`` from there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rediff.grids import Spacing
from rediff.samplers._common import Step
from rediff.samplers.analytic import GammaTable, estimate_gamma
from rediff.samplers.ancestral import Variance, ddim, ddpm
from rediff.samplers.dpm_solver import SolverType, dpm_solver, dpm_solver_pp
from rediff.samplers.ode import euler, heun, ode
from rediff.samplers.sde import Predictor, annealed_langevin, euler_maruyama, predictor_corrector
from rediff.samplers.unipc import unipc


@dataclass(frozen=True)
class Entry:
    """A registered sampler: its function, fixed options, evaluations per grid step (and on
    the final jump to t = 0, where a single-step solver only reads x0_hat: ``jump_evals``,
    default ``evals_per_step``; ``per_level``: that many at each noise level of the grid
    instead, as annealed Langevin), the grid spacing it is used with by default (EDM's Heun:
    Karras; the rest: log-SNR), whether it chooses its own steps (an adaptive solver needs a
    denoiser smooth in t), whether it can use a model's learned reverse variance
    (``variance="learned"``), and whether it injects fresh noise (with its default
    options)."""

    function: Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)
    evals_per_step: int = 1
    jump_evals: int | None = None
    per_level: bool = False
    spacing: str = "logsnr"
    adaptive: bool = False
    learned_variance: bool = False
    stochastic: bool = False

    def steps_within(self, nfe: int, final_step: bool = True) -> int:
        """The most steps (``grids.make``'s ``steps``) whose model evaluations fit in ``nfe``
        (0 where none do). A step sampler with the final jump takes steps - 1 grid steps of
        ``evals_per_step`` and the jump of ``jump_evals``, without it steps grid steps;
        ``per_level`` samplers spend ``evals_per_step`` at each of the grid's noise levels
        (steps of them, steps + 1 without the jump) and one on the jump."""
        if self.adaptive:
            raise ValueError("an adaptive sampler chooses its own steps: no budget applies")
        if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 0:
            raise ValueError(f"nfe must be an integer >= 0, got {nfe!r}")
        each = self.evals_per_step
        if self.per_level:
            return max(0, (nfe - 1) // each if final_step else nfe // each - 1)
        jump = each if self.jump_evals is None else self.jump_evals
        if not final_step:
            return nfe // each
        return 0 if nfe < jump else (nfe - jump) // each + 1


@dataclass(frozen=True)
class Default:
    """What ``rediff.sample`` draws with when no sampler is named: a registered sampler, the
    grid's spacing, whether the grid ends with the jump to t = 0 and its first interval's
    length in units of the others (``grids.make``)."""

    sampler: str
    spacing: Spacing
    final_step: bool
    first_interval: float = 1.0

    @property
    def grid_label(self) -> str:
        """The grid in words, e.g. ``logsnr, first interval x2, no jump``."""
        first = "" if self.first_interval == 1.0 else f", first interval x{self.first_interval:g}"
        return f"{self.spacing.value}{first}{'' if self.final_step else ', no jump'}"

    @property
    def label(self) -> str:
        """The choice in words, e.g. ``unipc (logsnr, first interval x2, no jump)``."""
        return f"{self.sampler} ({self.grid_label})"


#: the default below FULL_BUDGET_FROM steps: UniPC (order 2) on the log-SNR grid, stopping at
#: t_min, its first interval twice the others; from then on DPM-Solver++(2M) on the log-SNR
#: grid with the final jump. Chosen in benchmarks/defaults.py (docs/design.md): on the exact
#: mixtures at 5-14 steps the first misses fewer of the noise floors that some fixed pair
#: reaches and has the lower mode-weight TV in 41 of 42 cells; from 15 steps (SHORT_GRID,
#: where lower_order_final stops lowering 2M's last step before the jump) its log-density
#: gap is the worse. The longer first step lowers the gap most at 5-6 steps (2-D: 6.6 -> 2.5
#: nats at 5) and matters little from 12 on (docs/design.md, grids).
SHORT_BUDGET = Default("unipc", Spacing.LOGSNR, final_step=False, first_interval=2.0)
FULL_BUDGET = Default("dpm++2m", Spacing.LOGSNR, final_step=True)
FULL_BUDGET_FROM = 15

#: what a run samples with unless told: None, the budget's ``default(steps)``
DEFAULT = None


def default(steps: int) -> Default:
    """The sampler, spacing and final step ``rediff.sample`` uses for ``steps`` steps when no
    sampler is named."""
    return SHORT_BUDGET if steps < FULL_BUDGET_FROM else FULL_BUDGET


def describe(name: str | None, steps: int) -> str:
    """The sampler ``name``, or without one the budget's default in words (for logs)."""
    return name if name is not None else default(steps).label


REGISTRY: dict[str, Entry] = {
    "ddpm": Entry(ddpm, learned_variance=True, stochastic=True),
    "ddim": Entry(ddim),
    "euler": Entry(euler),
    "heun": Entry(heun, evals_per_step=2, jump_evals=1, spacing="karras"),
    "euler_maruyama": Entry(euler_maruyama, stochastic=True),
    "pc": Entry(predictor_corrector, evals_per_step=2, stochastic=True),
    "annealed_langevin": Entry(
        annealed_langevin, evals_per_step=5, per_level=True, stochastic=True
    ),
    "ode": Entry(ode, adaptive=True),
    "dpm_solver1": Entry(dpm_solver, {"order": 1}),
    "dpm_solver2": Entry(dpm_solver, {"order": 2}, evals_per_step=2, jump_evals=1),
    "dpm_solver3": Entry(dpm_solver, {"order": 3}, evals_per_step=3, jump_evals=1),
    "dpm++2m": Entry(dpm_solver_pp, {"order": 2}),
    "dpm++3m": Entry(dpm_solver_pp, {"order": 3}),
    "dpm++2m-sde": Entry(dpm_solver_pp, {"order": 2, "sde": True}, stochastic=True),
    "unipc": Entry(unipc, {"order": 2}),
    "unipc3": Entry(unipc, {"order": 3}),
}


def get(name: str) -> Entry:
    """The registry entry called ``name``, or a ValueError listing every valid name."""
    if name not in REGISTRY:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(REGISTRY)}")
    return REGISTRY[name]


__all__ = [
    "FULL_BUDGET",
    "FULL_BUDGET_FROM",
    "REGISTRY",
    "SHORT_BUDGET",
    "Default",
    "Entry",
    "GammaTable",
    "Predictor",
    "SolverType",
    "Step",
    "Variance",
    "annealed_langevin",
    "ddim",
    "ddpm",
    "default",
    "describe",
    "dpm_solver",
    "dpm_solver_pp",
    "estimate_gamma",
    "euler",
    "euler_maruyama",
    "get",
    "heun",
    "ode",
    "predictor_corrector",
    "unipc",
]
