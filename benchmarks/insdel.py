"""Insertion/deletion against in-place masked diffusion and the autoregressive baseline on
arithmetic progressions of varying length.

    .venv/bin/python benchmarks/insdel.py [--steps 3000]   # writes results/insdel.md

Data: ``data.kind = "arithmetic"`` (3-6 terms, first term 0-30, difference 1-15, at most
24 characters: "3,7,11,15"), 20000 training draws (seed 0) and 1000 held-out draws (seed
1). Models, each trained ``--steps`` steps of 64 sequences through the run layer (``rediff
train``: the same loop, optimiser, EMA and transformer of 4 blocks of width 128):

- insertion/deletion (configs/seq_insdel.toml, T = 32), and the same with no insertions
  (``schedule.insert = 0``: deletion only);
- masked diffusion (configs/text_mdlm.toml) and the autoregressive model
  (configs/text_ar.toml) on the same sequences written at a fixed length of 25 tokens: the
  progression, an END token, END padding (``data.kind = "categories"``), which is a
  one-to-one code of the sequence and its length.

Reported: held-out bits per token, with the end counted as one token for every model
(insertion/deletion: its bound; masked: its ELBO, rescaled from the 25 padded positions to
the tokens + 1; autoregressive: exact, rescaled the same way), and of 256 samples, the
fraction that are valid progressions, the fraction that are valid and absent from the
training set, and how many distinct lengths they have.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from datetime import date
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from rediff.data.sequences import is_progression
from rediff.discrete.insdel_model import sequences
from rediff.evaluation import run_nll
from rediff.runs import draw, load_run
from rediff.runs.directory import read_metrics
from rediff.runs.kinds import DataConfig
from rediff.runs.kinds.sequences import ARITHMETIC
from rediff.training import load_config, train

RESULTS = Path(__file__).parent / "results"
LENGTH, PADDED, SAMPLES = 24, 25, 256


def config_path(name: str) -> Path:
    return Path(str(resources.files("rediff") / "configs" / name))


def end_padded(x: torch.Tensor, end: int) -> torch.Tensor:
    """Rows padded with -1 [N, LENGTH] as fixed-length rows [N, PADDED]: END after each
    sequence and in every position after it."""
    out = torch.full((x.shape[0], PADDED), end, dtype=torch.long)
    out[:, :LENGTH] = torch.where(x >= 0, x, end)
    return out


def write_data(root: Path) -> tuple[dict[str, Path], object, torch.Tensor, torch.Tensor]:
    """The training and held-out progressions as END-padded .npy files (for the fixed-length
    models), the tokenizer, and both sets as -1-padded rows."""
    config = DataConfig(kind="arithmetic", n=20000, length=LENGTH)
    train_set, held = ARITHMETIC.load(config, 0), ARITHMETIC.held_out(config, 0)
    held_x = held.x[:1000]
    end = train_set.tokenizer.size
    root.mkdir(parents=True, exist_ok=True)
    paths = {name: root / f"{name}.npy" for name in ("train", "held_out", "held_out_insdel")}
    np.save(paths["train"], end_padded(train_set.x, end).numpy())
    np.save(paths["held_out"], end_padded(held_x, end).numpy())
    np.save(paths["held_out_insdel"], held_x.numpy())
    return paths, train_set.tokenizer, train_set.x, held_x


def models(paths: dict[str, Path], categories: int) -> dict[str, tuple[str, list[str]]]:
    """Each model's shipped config and overrides."""
    fixed = [
        'data.kind="categories"',
        f"data.path={paths['train']}",
        f"data.categories={categories}",
    ]
    return {
        "insertion/deletion": ("seq_insdel.toml", []),
        "insertion/deletion, deletion only": ("seq_insdel.toml", ["schedule.insert=0.0"]),
        "masked diffusion (MDLM)": ("text_mdlm.toml", fixed),
        "autoregressive": ("text_ar.toml", fixed),
    }


def train_all(root: Path, steps: int, specs) -> dict[str, tuple[Path, float]]:
    """Each model trained ``steps`` steps (a run already trained that far is reused), with its
    training seconds from its metrics.csv."""
    runs = {}
    for name, (config_file, overrides) in specs.items():
        path = root / name.replace(" ", "_").replace("/", "_").replace(",", "")
        rows = read_metrics(path / "metrics.csv")
        if not rows or rows[-1]["step"] != steps:
            settings = [f"train.steps={steps}", "train.sample_every=0", "train.threads=2"]
            config = load_config(config_path(config_file), [*overrides, *settings])
            train(config, path, progress=False, resume=path.exists())
            rows = read_metrics(path / "metrics.csv")
        runs[name] = (path, rows[-1]["seconds"])
        print(f"{name}: {steps} steps in {runs[name][1]:.0f} s", flush=True)
    return runs


def texts_of(run, x: torch.Tensor, tokenizer) -> list[str]:
    """Samples as text: -1-padded rows (insertion/deletion) or END-padded ones (cut at the
    first END)."""
    if run.spec.kind.variable_length:
        rows = sequences(x)
    else:
        end = tokenizer.size
        rows = [row[: int((row == end).nonzero()[0])] if (row == end).any() else row for row in x]
    return [tokenizer.decode(torch.as_tensor(row)) for row in rows]


def sample_scores(run, tokenizer, known: set[str]):
    """Of SAMPLES samples: the valid fraction, the valid-and-new fraction, distinct lengths,
    how many outgrew the maximum length (insertion/deletion), seconds, the texts."""
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    sampler = run.config.sample.sampler
    drop = {"overflow": "drop"} if run.spec.kind.variable_length else {}
    out = draw(run, SAMPLES, sampler=sampler, steps=PADDED, generator=generator, **drop)
    seconds = time.perf_counter() - start
    texts = texts_of(run, out.x, tokenizer)  # samples that outgrew the maximum count as invalid
    valid = sum(is_progression(t) for t in texts) / SAMPLES
    new = sum(is_progression(t) and t not in known for t in texts) / SAMPLES
    return valid, new, len({len(t) for t in texts}), SAMPLES - len(texts), seconds, texts


def verdict(measured: dict[str, tuple[float, float, float]]) -> str:
    """Where insertion/deletion stands against each peer, in the measured numbers."""
    bits, se, valid = measured["insertion/deletion"]
    parts = []
    for peer in ("masked diffusion (MDLM)", "autoregressive"):
        b, s, v = measured[peer]
        gap, z = bits - b, (bits - b) / math.hypot(se, s)
        side = "beats" if gap < 0 and z < -2 else ("loses to" if gap > 0 and z > 2 else "ties")
        parts.append(
            f"it {side} {peer} on the bound ({gap:+.3f} bits/token, {z:+.1f} standard errors) "
            f"and has {valid:.3f} valid samples against {v:.3f}"
        )
    return "Insertion/deletion at this budget: " + "; ".join(parts) + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--root", default="runs/bench_insdel", help="where the runs are trained")
    parser.add_argument("--elbo-samples", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(2)
    root = Path(args.root)
    paths, tokenizer, train_x, held_x = write_data(root)
    known = {tokenizer.decode(torch.as_tensor(row)) for row in sequences(train_x)}
    tokens_plus_end = float(((held_x >= 0).sum(1) + 1).double().mean())
    runs = train_all(root, args.steps, models(paths, tokenizer.size + 1))
    rows, pages, measured = [], {}, {}
    for name, (path, seconds) in runs.items():
        run = load_run(path)
        params = sum(p.numel() for p in run.model.parameters())
        if run.spec.kind.variable_length:
            nll = run_nll(path, data_path=paths["held_out_insdel"], n=1000).row
            scale = 1.0  # already bits per token (+ end)
        else:
            options = {"n": 1000, "vlb_steps": args.elbo_samples}
            nll = run_nll(path, data_path=paths["held_out"], **options).row
            scale = PADDED / tokens_plus_end  # bits per padded position -> per token (+ end)
        valid, new, lengths, dropped, sample_seconds, texts = sample_scores(run, tokenizer, known)
        pages[name] = texts[:12]
        measured[name] = (nll.mean * scale, nll.se * scale, valid)
        rows.append(
            f"| {name} | {nll.method} | {nll.mean * scale:.3f} | {nll.se * scale:.3f} | "
            f"{valid:.3f} | {new:.3f} | {lengths} | {dropped} | {params / 1e6:.2f} M | {seconds:.0f} | "
            f"{sample_seconds:.1f} |"
        )
        print(rows[-1], flush=True)
    real = [tokenizer.decode(torch.as_tensor(row)) for row in sequences(held_x)]
    report = [
        "# Insertion/deletion against masked diffusion and autoregression: arithmetic progressions",
        "",
        f"Command: `.venv/bin/python benchmarks/insdel.py --steps {args.steps}`; machine: "
        f"{platform.machine()}, 2 CPU threads; date: {date.today()}.",
        "",
        f"Budget: each model trained {args.steps} steps of 64 sequences through `rediff train` "
        "(a transformer of 4 blocks, width 128; EMA weights scored). Data: 20000 progressions "
        "(3-6 terms, first term 0-30, difference 1-15, at most 24 characters, vocabulary "
        f"`{tokenizer.characters}`); held out: 1000 other draws, mean {tokens_plus_end - 1:.1f} "
        "characters. Masked diffusion and the autoregressive model read them at a fixed length "
        "of 25 (an END token, then END padding).",
        "",
        "Bits per token count the end as a token for every model (one more than the "
        "characters), so the three describe the same thing: -log2 p(sequence and its length). "
        f"Insertion/deletion: its bound from one forward trajectory per sequence (T "
        f"evaluations); masked: its ELBO from {args.elbo_samples} draws per sequence; "
        "autoregressive: exact. Mean and standard error over the held-out sequences. "
        f"Samples: {SAMPLES} from each (seed 0); 'valid' = at least 3 terms with one positive "
        "difference; 'new' = valid and not in the training set; 'too long': samples that "
        "outgrew the maximum length (48) on the way, left out and counted as invalid; real "
        "held-out data: "
        f"{np.mean([is_progression(t) for t in real]):.3f} valid, "
        f"{len({len(t) for t in real})} distinct lengths. Sample time: seconds for the "
        f"{SAMPLES} (insertion/deletion T = 32 evaluations, masked 25 steps, autoregressive "
        "25 tokens).",
        "",
        "| model | bound | held-out bits/token | standard error | valid | valid and new | "
        "distinct lengths | too long | parameters | training s | sample s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        verdict(measured),
        "",
        "## Samples (the first 12 of each)",
        "",
    ]
    for name, texts in pages.items():
        report += [f"**{name}**: " + " · ".join(f"`{t}`" if t else "(empty)" for t in texts), ""]
    (RESULTS / "insdel.md").write_text("\n".join(report), encoding="utf-8")
    print("\n".join(report))


if __name__ == "__main__":
    main()
