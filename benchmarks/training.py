"""Training on digits: rediff's digits config against a diffusers baseline, same CPU budget.

    .venv/bin/pip install -e ".[bench]"                      # diffusers (bench-only)
    .venv/bin/python benchmarks/training.py --budget 300     # writes results/training.md

Both train an eps-predicting UNet on the same 1437 training digits (rediff.data.digits_split)
with DDPM's linear schedule (T = 1000), batch 128, AdamW (lr 1e-3, 200 warm-up steps, then
constant), gradient clipping at 1, for the same wall-clock budget on this machine, one after
the other:

- rediff: ``rediff.training.train`` on ``configs/digits_ddpm.toml`` (the same recipe as the
  baseline: eps target, linear betas; UNet.digits, EMA with a half-life of 20,000 samples)
  and on ``configs/digits_edm.toml`` (EDM's preconditioning, noise levels and weighting,
  same network, optimizer and batch);
- diffusers: ``UNet2DModel`` + ``DDPMScheduler`` with the loop of diffusers' documented
  unconditional training example (examples/unconditional_image_generation): add_noise at
  random integer timesteps, MSE on the noise, EMAModel with its warm-up (power 3/4, max decay
  0.9999), a UNet of about the same size (block widths 32 and 64, attention at 4x4).

Quality: the Frechet distance in the digits classifier's features (rediff.evaluation) of 360
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
from rediff import data, evaluation
from rediff.training import load_config, train

RESULTS = Path(__file__).parent / "results" / "training.md"
CONFIGS = Path(__file__).parent.parent / "configs"
REDIFF_CONFIGS = ("digits_ddpm.toml", "digits_edm.toml")
SAMPLERS = (("ddim", 50), ("dpm++2m", 20))
SEEDS = tuple(range(10))


def train_rediff(
    name: str, budget: float, run: Path
) -> tuple[rediff.DiffusionModel, int, float, int]:
    """A rediff digits config for ``budget`` seconds of its loop: (EMA model, steps, s/step,
    params)."""
    overrides = ["train.steps=1000000", "train.checkpoint_every=1000000", "train.sample_every=0"]
    config = load_config(CONFIGS / name, overrides)
    model = train(config, run, time_limit=budget)
    last = (run / "metrics.csv").read_text().splitlines()[-1].split(",")
    steps, samples_per_s = int(last[0]), float(last[3])  # the loop's own rate
    per_step = config.train.batch_size / samples_per_s
    return model, steps, per_step, sum(p.numel() for p in model.parameters())


class DiffusersNet(torch.nn.Module):
    """diffusers' UNet2DModel called as a rediff net: net(x, time) -> eps."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, time, labels=None):
        return self.unet(x, time).sample


def train_diffusers(budget: float) -> tuple[rediff.DiffusionModel, int, float, int]:
    """The diffusers baseline for ``budget`` seconds: (EMA model as a rediff Denoiser, steps,
    s/step, params)."""
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_constant_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    x, _ = data.digits_split("train")
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=0.0)
    lr_schedule = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=200)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, power=3 / 4)
    gen = torch.Generator().manual_seed(0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget:
        clean = x[torch.randint(x.shape[0], (128,), generator=gen)]
        noise = torch.randn(clean.shape, generator=gen)
        timesteps = torch.randint(0, 1000, (128,), generator=gen)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        loss = torch.nn.functional.mse_loss(unet(noisy, timesteps).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.step(unet.parameters())
        steps += 1
    seconds = time.perf_counter() - start
    ema_unet = copy.deepcopy(unet)
    ema.copy_to(ema_unet.parameters())
    schedule = rediff.schedules.DiscreteVP.linear(1000)
    model = rediff.DiffusionModel(DiffusersNet(ema_unet.eval()), schedule, "eps", "step")
    return model, steps, seconds / steps, sum(p.numel() for p in unet.parameters())


def frechet(model: rediff.DiffusionModel) -> dict[str, list[float]]:
    """Frechet distances of 360 samples per sampler and seed."""
    out = {}
    for sampler, steps in SAMPLERS:
        out[f"{sampler} ({steps} steps)"] = [
            evaluation.digits_frechet(
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
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    trained = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in REDIFF_CONFIGS:
            trained[f"rediff, {name}"] = train_rediff(name, args.budget, Path(tmp) / name)
    trained["diffusers"] = train_diffusers(args.budget)
    floor = evaluation.digits_frechet_floor()
    rows = {}
    for name, (model, steps, per_step, params) in trained.items():
        with torch.no_grad():
            rows[name] = (steps, per_step, params, frechet(model.eval()))
    lines = [
        "# Training on digits: rediff vs diffusers at the same CPU budget",
        "",
        f"Measured {date.today()} on {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, by "
        f"`python benchmarks/training.py --budget {args.budget:.0f}` ({args.budget:.0f} s of "
        "training each, one after the other). Method: see the script's docstring.",
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
