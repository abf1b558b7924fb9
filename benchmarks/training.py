"""Training on digits: rediff's digits config against a diffusers baseline, same CPU budget.

    .venv/bin/pip install -e ".[bench]"                      # diffusers (bench-only)
    .venv/bin/python benchmarks/training.py --budget 300     # writes results/training.md

Both train an eps-predicting UNet on the same 1437 training digits (rediff.data.digits_split)
with DDPM's linear schedule (T = 1000), batch 128, AdamW (lr 1e-3, 200 warm-up steps, then
constant), gradient clipping at 1, for the same wall-clock budget on this machine. They train
in turns of ``--slice`` seconds (rediff resumes its run directory exactly; diffusers keeps its
state in memory), so that drifts in the machine's speed hit every library alike (run one
after the other, the same loop measured 83 and 106 ms/step on two occasions):

- rediff: ``rediff.training.train`` on ``configs/digits_ddpm.toml`` (the same recipe as the
  baseline: eps target, linear betas; UNet.digits, EMA with a half-life of 20,000 samples)
  and on ``configs/digits_edm.toml`` (EDM's preconditioning, noise levels and weighting,
  same network, optimizer and batch);
- diffusers: ``UNet2DModel`` + ``DDPMScheduler`` with the loop of diffusers' documented
  unconditional training example (examples/unconditional_image_generation): add_noise at
  random integer timesteps, MSE on the noise, EMAModel with its warm-up (power 3/4, max decay
  0.9999), a UNet of about the same size (block widths 32 and 64, attention at 4x4).

Quality: the Frechet distance in the digits classifier's features (rediff.runs.kinds.digits) of 360
EMA samples against the training digits, beside its floor (the 360 held-out digits). To
compare the trained models and not the samplers, both models are sampled by the same rediff
samplers (the diffusers UNet wrapped as a rediff DiffusionModel with step time input), with
ten seeds; the table gives the mean and its standard error over seeds.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

import rediff
from rediff import data
from rediff.runs.kinds import digits
from rediff.training import load_config, train

RESULTS = Path(__file__).parent / "results" / "training.md"
CONFIGS = Path(__file__).parent.parent / "configs"
REDIFF_CONFIGS = ("digits_ddpm.toml", "digits_edm.toml")
SAMPLERS = (("ddim", 50), ("dpm++2m", 20))
SEEDS = tuple(range(10))


class RediffRun:
    """A rediff digits config, trained in slices: each ``run(seconds)`` continues the run
    directory (``--resume``, bit-exact) for that many seconds of its loop."""

    def __init__(self, name: str, run: Path) -> None:
        overrides = [
            "train.steps=1000000",
            "train.checkpoint_every=1000000",
            "train.sample_every=0",
        ]
        self.config, self.run_dir, self.model = load_config(CONFIGS / name, overrides), run, None

    def run(self, seconds: float) -> None:
        resume = self.model is not None
        self.model = train(self.config, self.run_dir, resume=resume, time_limit=seconds)

    @property
    def steps(self) -> int:
        return int((self.run_dir / "metrics.csv").read_text().splitlines()[-1].split(",")[0])

    def result(self) -> tuple[rediff.DiffusionModel, int]:
        return self.model, self.steps


class DiffusersNet(torch.nn.Module):
    """diffusers' UNet2DModel called as a rediff net: net(x, time) -> eps."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, time, labels=None):
        return self.unet(x, time).sample


class DiffusersRun:
    """The diffusers baseline, trained in slices of ``run(seconds)`` (state kept in memory)."""

    def __init__(self) -> None:
        from diffusers import DDPMScheduler, UNet2DModel
        from diffusers.optimization import get_constant_schedule_with_warmup
        from diffusers.training_utils import EMAModel

        torch.manual_seed(0)
        self.x, _ = data.digits_split("train")
        self.unet = UNet2DModel(
            sample_size=8,
            in_channels=1,
            out_channels=1,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
        )
        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=1e-3, weight_decay=0.0)
        self.lr_schedule = get_constant_schedule_with_warmup(self.optimizer, num_warmup_steps=200)
        self.ema = EMAModel(self.unet.parameters(), decay=0.9999, use_ema_warmup=True, power=3 / 4)
        self.gen = torch.Generator().manual_seed(0)
        self.steps = 0

    def run(self, seconds: float) -> None:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            clean = self.x[torch.randint(self.x.shape[0], (128,), generator=self.gen)]
            noise = torch.randn(clean.shape, generator=self.gen)
            timesteps = torch.randint(0, 1000, (128,), generator=self.gen)
            noisy = self.scheduler.add_noise(clean, noise, timesteps)
            loss = torch.nn.functional.mse_loss(self.unet(noisy, timesteps).sample, noise)
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
            self.optimizer.step()
            self.lr_schedule.step()
            self.ema.step(self.unet.parameters())
            self.steps += 1

    def result(self) -> tuple[rediff.DiffusionModel, int]:
        """The EMA weights as a rediff Denoiser (step time input), and the steps done."""
        ema_unet = copy.deepcopy(self.unet)
        self.ema.copy_to(ema_unet.parameters())
        schedule = rediff.schedules.DiscreteVP.linear(1000)
        model = rediff.DiffusionModel(DiffusersNet(ema_unet.eval()), schedule, "eps", "step")
        return model, self.steps


def train_all(budget: float, slice_s: float, tmp: Path) -> dict[str, tuple]:
    """Every trainer for ``budget`` seconds, in turns of ``slice_s`` seconds (so a change in
    the machine's speed during the benchmark hits all of them alike): name -> (EMA model,
    steps, seconds per step, parameters)."""
    trainers = {f"rediff, {name}": RediffRun(name, tmp / name) for name in REDIFF_CONFIGS}
    trainers["diffusers"] = DiffusersRun()
    rounds = max(1, round(budget / slice_s))
    for k in range(rounds):
        for name, trainer in trainers.items():
            print(f"round {k + 1}/{rounds}: {name}", flush=True)
            trainer.run(budget / rounds)
    out = {}
    for name, trainer in trainers.items():
        model, steps = trainer.result()
        out[name] = (model, steps, budget / steps, sum(p.numel() for p in model.parameters()))
    return out


def frechet(model: rediff.DiffusionModel) -> dict[str, list[float]]:
    """Frechet distances of 360 samples per sampler and seed."""
    out = {}
    for sampler, steps in SAMPLERS:
        out[f"{sampler} ({steps} steps)"] = [
            digits.digits_frechet(
                rediff.sample(
                    model,
                    (data.digits.HELD_OUT, 1, 8, 8),
                    sampler=sampler,
                    steps=steps,
                    generator=torch.Generator().manual_seed(seed),
                    progress=False,
                ).x
            )
            for seed in SEEDS
        ]
    return out


def _se(values: list[float]) -> float:
    return statistics.stdev(values) / len(values) ** 0.5


def _cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} +- {_se(values):.1f}"


def _gap(ours: list[float], theirs: list[float]) -> float:
    """(mean ours - mean theirs) / the standard error of that difference."""
    diff = statistics.mean(ours) - statistics.mean(theirs)
    return diff / (_se(ours) ** 2 + _se(theirs) ** 2) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300.0, help="seconds of training each")
    parser.add_argument("--slice", type=float, default=30.0, help="seconds per turn")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    floor = digits.digits_frechet_floor()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        trained = train_all(args.budget, args.slice, Path(tmp))
        for name, (model, steps, per_step, params) in trained.items():
            with torch.no_grad():
                rows[name] = (steps, per_step, params, frechet(model.eval()))
    lines = [
        "# Training on digits: rediff vs diffusers at the same CPU budget",
        "",
        f"Measured {date.today()} on {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, by "
        f"`python benchmarks/training.py --budget {args.budget:.0f} --slice {args.slice:.0f}` "
        f"({args.budget:.0f} s of training each, in turns of {args.slice:.0f} s; ms / step is "
        "the budget over the steps done). Method: see the script's docstring.",
        "",
        f"Frechet distance of 360 EMA samples to the training digits in the digits "
        f"classifier's features, mean +- standard error over {len(SEEDS)} sampling seeds "
        f"(lower is better); floor "
        f"(360 held-out real digits): **{floor:.1f}**.",
        "",
        "| library | parameters | steps in budget | ms / step | "
        + " | ".join(f"FD, {sampler} ({steps} steps)" for sampler, steps in SAMPLERS)
        + " |",
        "|---|---|---|---|" + "---|" * len(SAMPLERS),
    ]
    for name, (steps, per_step, params, fds) in rows.items():
        cells = " | ".join(_cell(v) for v in fds.values())
        lines.append(
            f"| {name} | {params / 1e6:.2f}M | {steps} | {1000 * per_step:.0f} | {cells} |"
        )
    theirs = rows["diffusers"][3]
    lines += [
        "",
        "Target: rediff's model at least as good (mean FD at most diffusers') for every sampler.",
    ]
    for name in [n for n in rows if n.startswith("rediff")]:
        ours = rows[name][3]
        met = all(statistics.mean(ours[k]) <= statistics.mean(theirs[k]) for k in ours)
        gaps = ", ".join(f"{k}: {_gap(ours[k], theirs[k]):+.1f}" for k in ours)
        lines.append(
            f"- {name}: **{'met' if met else 'not met'}**; difference from diffusers in units of "
            f"its standard error: {gaps} (negative: rediff better; within +-2 this run cannot "
            "tell the two apart)."
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
