"""GPU throughput of the 32x32 preset: training images per second and sampling images per
second, rediff against diffusers (the same DDPM CIFAR-10 UNet) in one run.

    .venv/bin/pip install -e ".[bench]"          # diffusers (bench-only)
    .venv/bin/python benchmarks/gpu.py           # on a CUDA machine: writes results/gpu.md
    .venv/bin/python benchmarks/gpu.py --dry-run # anywhere: tiny sizes on CPU, prints only

Training: ``rediff.training.train`` on ``configs/cifar10.toml`` (DDPM's recipe, UNet.cifar10,
35.7M parameters) with random 32x32 images from a .npy file (the speed does not depend on
the pixels), in each of the GPU-path variants (fp32; bf16 autocast; + channels-last;
+ torch.compile). The rate is the loop's own (metrics.csv) over the second half of the run,
so start-up and compilation are excluded. Baseline: diffusers' UNet2DModel in the
configuration of DDPM's CIFAR-10 model with its documented training loop (DDPMScheduler
add_noise, MSE on the noise, AdamW, clipping), fp32 and bf16 autocast (what accelerate's
mixed precision does), optionally channels-last, timed after warm-up steps.

Sampling: 20 steps of DPM-Solver++(2M) on a batch of noise, rediff (``rediff.sample`` with
the net accelerated by ``rediff.nets.accelerate``) against diffusers' UNet2DModel +
DPMSolverMultistepScheduler, timed after a warm-up batch.

Without a CUDA device (and without --dry-run) the script writes results/gpu.md saying that
the numbers are unmeasured, with the command that measures them.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch

import rediff
from rediff.nets import accelerate
from rediff.training import build_model, load_config, train

RESULTS = Path(__file__).parent / "results" / "gpu.md"
CIFAR10 = Path(__file__).parent.parent / "configs" / "cifar10.toml"
COMMAND = "python benchmarks/gpu.py"


@dataclass(frozen=True)
class Variant:
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __str__(self) -> str:
        parts = [self.precision] + ["channels-last"] * self.channels_last
        return " + ".join(parts + ["compile"] * self.compile)


VARIANTS = (
    Variant(),
    Variant("bf16"),
    Variant("bf16", channels_last=True),
    Variant("bf16", channels_last=True, compile=True),
)


@dataclass(frozen=True)
class Sizes:
    train_batch: int = 128
    train_steps: int = 100  # timed steps (after as many untimed ones)
    sample_batch: int = 256
    sample_steps: int = 20
    images: int = 2048


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---- rediff --------------------------------------------------------------------------------


def rediff_training(variant: Variant, sizes: Sizes, device: str, data: Path) -> float:
    """Images per second of ``rediff.training.train`` on the CIFAR-10 config (second half)."""
    n = sizes.train_steps
    overrides = [
        "data.kind='array'",
        f"data.path='{data}'",
        f"train.steps={2 * n}",
        f"train.log_every={n}",
        f"train.checkpoint_every={2 * n}",
        "train.sample_every=0",
        f"train.batch_size={sizes.train_batch}",
        f"train.device='{device}'",
        f"train.precision='{variant.precision}'",
        f"train.channels_last={str(variant.channels_last).lower()}",
        f"train.compile={str(variant.compile).lower()}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        train(load_config(CIFAR10, overrides), Path(tmp) / "run", progress=False)
        last = (Path(tmp) / "run" / "metrics.csv").read_text().splitlines()[-1]
    return float(last.split(",")[3])


def rediff_sampling(variant: Variant, sizes: Sizes, device: str) -> float:
    """Images per second of ``rediff.sample`` with the CIFAR-10 config's model."""
    model = build_model(load_config(CIFAR10), (3, 32, 32)).to(device).eval()
    model = model.with_net(
        accelerate(
            model.net,
            precision=variant.precision,
            channels_last=variant.channels_last,
            compile=variant.compile,
        )
    )

    def run() -> None:
        rediff.sample(
            model,
            (sizes.sample_batch, 3, 32, 32),
            sampler="dpm++2m",
            steps=sizes.sample_steps,
            device=device,
            progress=False,
        )

    return sizes.sample_batch / _timed(run, device)


def _timed(run, device: str) -> float:
    """Seconds of one call of ``run`` after one warm-up call."""
    with torch.no_grad():
        run()
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
    return time.perf_counter() - start


# ---- diffusers -----------------------------------------------------------------------------


def diffusers_unet():
    """UNet2DModel in the configuration of DDPM's CIFAR-10 model (google/ddpm-cifar10-32)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=2,
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        dropout=0.1,
    )


def _autocast(variant: Variant, device: str):
    if variant.precision == "bf16":
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def diffusers_training(variant: Variant, sizes: Sizes, device: str, images: torch.Tensor) -> float:
    from diffusers import DDPMScheduler

    unet = diffusers_unet().to(device).train()
    if variant.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-4)
    images = images.to(device)

    def step() -> None:
        clean = images[torch.randint(images.shape[0], (sizes.train_batch,), device=device)]
        noise = torch.randn_like(clean)
        t = torch.randint(0, 1000, (sizes.train_batch,), device=device)
        noisy = scheduler.add_noise(clean, noise, t)
        if variant.channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        with _autocast(variant, device):
            loss = torch.nn.functional.mse_loss(unet(noisy, t).sample.float(), noise)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()

    for _ in range(sizes.train_steps):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(sizes.train_steps):
        step()
    _sync(device)
    return sizes.train_steps * sizes.train_batch / (time.perf_counter() - start)


def diffusers_sampling(variant: Variant, sizes: Sizes, device: str) -> float:
    from diffusers import DPMSolverMultistepScheduler

    unet = diffusers_unet().to(device).eval()
    if variant.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear")

    def run() -> None:
        scheduler.set_timesteps(sizes.sample_steps, device=device)
        x = torch.randn(sizes.sample_batch, 3, 32, 32, device=device)
        for t in scheduler.timesteps:
            with _autocast(variant, device):
                out = unet(x, t).sample.float()
            x = scheduler.step(out, t, x).prev_sample

    return sizes.sample_batch / _timed(run, device)


# ---- report --------------------------------------------------------------------------------


def measure(sizes: Sizes, device: str, variants) -> list[tuple[str, str, float, float]]:
    """(library, variant, training images/s, sampling images/s) per row."""
    rows = []
    images = torch.rand(sizes.images, 3, 32, 32) * 2 - 1
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "images.npy"
        np.save(data, images.numpy())
        libraries = {  # name -> (variants, training images/s, sampling images/s)
            "rediff": (
                variants,
                lambda v: rediff_training(v, sizes, device, data),
                lambda v: rediff_sampling(v, sizes, device),
            ),
            "diffusers": (
                [v for v in variants if not v.compile],
                lambda v: diffusers_training(v, sizes, device, images),
                lambda v: diffusers_sampling(v, sizes, device),
            ),
        }
        for name, (chosen, training, sampling) in libraries.items():
            for v in chosen:
                print(f"{name} {v} ...", flush=True)
                rows.append((name, str(v), training(v), sampling(v)))
    return rows


def sizes_line() -> str:
    """Parameter counts of the two networks."""
    ours = build_model(load_config(CIFAR10), (3, 32, 32))
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    return (
        f"Parameters: rediff UNet.cifar10 {count(ours):.2f}M, diffusers UNet2DModel "
        f"{count(diffusers_unet()):.2f}M."
    )


def table(rows, sizes: Sizes) -> list[str]:
    return [
        f"| library | variant | training images/s (batch {sizes.train_batch}) | sampling "
        f"images/s (dpm++2m, {sizes.sample_steps} steps, batch {sizes.sample_batch}) |",
        "|---|---|---|---|",
        *(f"| {lib} | {v} | {tr:.0f} | {sa:.1f} |" for lib, v, tr, sa in rows),
    ]


def unmeasured() -> list[str]:
    return [
        "# GPU throughput: unmeasured",
        "",
        f"**Unmeasured.** `benchmarks/gpu.py` ran on {date.today()} on a machine without a "
        "CUDA device, so there are no GPU numbers yet: no GPU machine has been lent to "
        "this project so far. On a CUDA machine, from the repository root:",
        "",
        "```bash",
        "make test    # creates .venv (on Linux, pip's torch wheel is a CUDA build)",
        '.venv/bin/pip install -e ".[bench]"',
        ".venv/bin/python benchmarks/gpu.py",
        "```",
        "",
        "measures training images per second of `configs/cifar10.toml` (35.7M parameters) and "
        "sampling images per second (DPM-Solver++(2M), 20 steps) in fp32, bf16 autocast, "
        "bf16 + channels-last and bf16 + channels-last + torch.compile, against diffusers' "
        "UNet2DModel of the same configuration, and rewrites this file. The same code path "
        "(bf16 autocast, channels-last; compile off) is exercised on CPU by the tests.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU, print only")
    args = parser.parse_args()
    if args.dry_run:
        sizes = Sizes(train_batch=4, train_steps=2, sample_batch=4, sample_steps=3, images=16)
        rows = measure(sizes, "cpu", [v for v in VARIANTS if not v.compile])
        print("\n".join([sizes_line(), "", *table(rows, sizes)]))
        return
    if not torch.cuda.is_available():
        RESULTS.write_text("\n".join(unmeasured()) + "\n")
        print(RESULTS.read_text())
        return
    sizes = Sizes()
    rows = measure(sizes, "cuda", VARIANTS)
    lines = [
        "# GPU throughput: DDPM's 32x32 UNet, rediff vs diffusers",
        "",
        f"Measured {date.today()} on {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"{platform.machine()}, by `{COMMAND}`. Method: see the script's docstring "
        f"(training rate over the last {sizes.train_steps} of {2 * sizes.train_steps} steps; "
        "sampling after a warm-up batch).",
        "",
        sizes_line(),
        "",
        *table(rows, sizes),
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
