"""What each ``rediff`` command does (the parser and the one error path are in
``rediff.cli``). Heavy modules are imported inside the commands, so ``rediff --help`` is
quick."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


class StoppedError(Exception):
    """Training stopped on a signal with a checkpoint; the message says how to continue."""

    def __init__(self, stop, hint: str) -> None:
        super().__init__(f"{stop}; {hint}")
        self.exit_code = stop.exit_code


def demo(args: argparse.Namespace) -> int:
    from rediff import demo as demo_module
    from rediff.training import TrainingInterruptedError

    print(f"rediff demo: writing pictures to {args.out} ...", flush=True)
    again = f"run `rediff demo --out {args.out}` again to continue where it stopped"
    try:
        paths = demo_module.run(args.out, seed=args.seed, train_models=not args.no_train)
    except TrainingInterruptedError as stop:
        raise StoppedError(stop, again) from None
    except KeyboardInterrupt:
        raise KeyboardInterrupt(again) from None
    for path in paths:
        print(f"  wrote {path}")
    summary = Path(args.out) / "summary.md"
    if summary.is_file():
        print(summary.read_text())
    print(f"done: open the PNG files in {args.out}/")
    return 0


def train(args: argparse.Namespace) -> int:
    from rediff.training import TrainingInterruptedError, load_config
    from rediff.training import train as train_run

    config = load_config(args.config, args.set)
    run = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    first = os.environ.get("RANK", "0") == "0"  # one line per run under torchrun
    if first:
        print(f"rediff train: {args.config} -> {run}", flush=True)
    try:
        train_run(config, run, resume=args.resume)
    except TrainingInterruptedError as stop:
        raise StoppedError(
            stop, f"continue with: rediff train {args.config} --run-dir {run} --resume"
        ) from None
    if first:
        print(f"done: weights, metrics.csv and loss.png are in {run}/")
    return 0


def _guide(args: argparse.Namespace, device: str | None = None, prepare=None):
    """The --guidance-scale / --classifier options as a Guide (``prepare`` accelerates the
    classifier like the model)."""
    from rediff.model import NoisyClassifier
    from rediff.runs import Guide, load_run

    if args.classifier is None:
        return Guide(args.guidance_scale)
    run = load_run(args.classifier, device=device)
    if not isinstance(run.model, NoisyClassifier):
        raise ValueError(f"--classifier {args.classifier} is not a classifier run (loss.kind)")
    classifier = prepare(run.model) if prepare is not None else run.model
    return Guide(args.guidance_scale, classifier, run.config.model.num_classes)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available; use --device auto")
    return name


#: files ``rediff sample --out`` writes as arrays
ARRAY_SUFFIXES = (".npz", ".npy")


def _output(path: str | None, spec) -> Path:
    """The --out path, checked before sampling: arrays, text for text runs, else a picture
    of picturable samples (default: samples.png, or samples.txt for text); its folder is
    created."""
    from rediff.plots import check_picture

    out = Path(path if path is not None else f"samples{spec.kind.suffix}")
    suffix = out.suffix.lower()
    if spec.kind.suffix == ".txt" and suffix not in (".txt", *ARRAY_SUFFIXES):
        raise ValueError(f"--out {out}: text samples are written to .txt (or .npz / .npy)")
    if spec.kind.suffix != ".txt" and suffix not in ARRAY_SUFFIXES:
        check_picture(spec.shape, out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name such as {out / 'samples.png'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _limit(args: argparse.Namespace):
    """--clip-x0 / --dynamic-threshold as a Denoiser wrapper (None: neither)."""
    from rediff import thresholding

    if args.clip_x0 and args.dynamic_threshold is not None:
        raise ValueError("--clip-x0 and --dynamic-threshold exclude each other; pick one")
    if args.clip_x0:
        return thresholding.clip_x0
    if args.dynamic_threshold is not None:
        p = args.dynamic_threshold  # checked when draw wraps the model, before sampling
        return lambda denoiser: thresholding.dynamic_threshold(denoiser, p)
    return None


def sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from rediff import noise, samplers
    from rediff.model import NoisyClassifier
    from rediff.nets import accelerate
    from rediff.runs import draw, load_run
    from rediff.runs.config import sampler_registry

    if (args.run_dir is None) == (args.diffusers is None):
        raise ValueError("rediff sample takes a run directory or --diffusers PATH (one of them)")
    if args.diffusers is not None:
        return _sample_diffusers(args)
    device = _device(args.device)
    run = load_run(args.run_dir, device=device)
    if isinstance(run.model, NoisyClassifier):
        raise ValueError(f"{args.run_dir} is a classifier; pass it as --classifier to a model run")
    out = _output(args.out, run.spec)
    known = _known(args, run.spec)
    n = args.n if args.n is not None else _default_n(run.spec)
    args.sampler = run.config.sample.sampler if args.sampler is None else args.sampler
    args.steps = run.config.sample.steps if args.steps is None else args.steps
    if args.sampler is not None:
        sampler_registry(run.config).get(args.sampler)

    def prepare(m):
        net = accelerate(
            m.net, precision=args.precision, channels_last=args.channels_last, compile=args.compile
        )
        return m.with_net(net)

    run = type(run)(run.path, run.config, run.spec, prepare(run.model))
    shared = None
    if args.share_noise_until is not None:
        shared = noise.SharedNoise(args.share_noise_until, args.groups)
    drawn = draw(
        run,
        n,
        sampler=args.sampler,
        steps=args.steps,
        generator=torch.Generator().manual_seed(args.seed),
        guide=_guide(args, device, prepare),
        label=args.class_label,
        shared=shared,
        limit=_limit(args),
        top_p=args.top_p,
        known=known,
        progress=True,
        overflow=args.overflow,
    )
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    settings["sampler"] = samplers.describe(args.sampler, args.steps)
    if out.suffix.lower() == ".npz":
        arrays = {
            "samples": drawn.x.float().cpu().numpy(),
            "settings": np.array(json.dumps(settings)),
        }
        if drawn.labels is not None:
            arrays["labels"] = drawn.labels.cpu().numpy()
        np.savez(out, **arrays)
    elif out.suffix.lower() == ".npy":
        np.save(out, drawn.x.float().cpu().numpy())
    else:
        _picture(run, drawn, out, args, shared)
    if out.suffix.lower() == ".txt":
        print(out.read_text(encoding="utf-8"))
    dropped = n - drawn.x.shape[0]
    left_out = f"; {dropped} outgrew the maximum length and were left out" if dropped else ""
    print(f"wrote {drawn.x.shape[0]} samples ({drawn.nfe} evaluations) to {out}{left_out}")
    return 0


def _sample_diffusers(args: argparse.Namespace) -> int:
    """``rediff sample --diffusers PATH``: n images from a diffusers folder with a rediff
    sampler (default: 20 steps of the budget's default, ``rediff.samplers.default``; a
    flow-matching folder: its own scheduler's grid and shift with rediff's Euler), written as a
    picture, .npy or .npz."""
    import numpy as np
    import torch

    import rediff
    from rediff import interop, plots, samplers

    model = interop.load_diffusers(args.diffusers).to(_device(args.device))
    config = model.net.unet.config
    size = config.sample_size
    shape = (config.in_channels, *((size, size) if isinstance(size, int) else size))
    out = Path(args.out or "samples.png")
    if out.suffix.lower() not in ARRAY_SUFFIXES:
        plots.check_picture(shape, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    own = interop.sampling_options(interop.scheduler_config(args.diffusers), shape)
    if args.sampler is not None:  # the user's sampler on its own grid, with the folder's shift
        own = {key: value for key, value in own.items() if key == "shift"}
    sampler, steps, n = args.sampler or own.get("sampler"), args.steps or 20, args.n or 16
    limit = _limit(args)
    generator = torch.Generator().manual_seed(args.seed)
    options = {**own, "sampler": sampler, "steps": steps, "generator": generator, "progress": True}
    drawn = rediff.sample(limit(model) if limit else model, (n, *shape), **options)
    x = drawn.x.float().cpu()
    if out.suffix.lower() == ".npy":
        np.save(out, x.numpy())
    elif out.suffix.lower() == ".npz":
        np.savez(out, samples=x.numpy(), settings=np.array(str(args.diffusers)))
    else:
        caption = f"{n} samples of the diffusers model {args.diffusers} (seed {args.seed})."
        used = samplers.describe(sampler, steps)
        title = f"{Path(args.diffusers).name}: {used}, {steps} steps, NFE {drawn.nfe}"
        plots.save_samples(x.clamp(-1, 1), out, title, caption=caption)
    print(f"wrote {n} samples ({drawn.nfe} evaluations) to {out}")
    return 0


def _default_n(spec) -> int:
    """Samples drawn when --n is not given: 8 texts, 100 images or 2000 points."""
    if spec.tokenizer is not None:
        return 8
    return 100 if len(spec.shape) == 3 else 2000


def _known(args: argparse.Namespace, spec):
    """--prefix / --suffix as known tokens [L] (-1 where free), or None."""
    import torch

    if args.prefix is None and args.suffix is None:
        return None
    if spec.tokenizer is None:
        raise ValueError("--prefix and --suffix are for text runs (data.kind = 'text')")
    length = spec.shape[0]
    prefix = spec.tokenizer.encode(args.prefix or "")
    suffix = spec.tokenizer.encode(args.suffix or "")
    if prefix.numel() + suffix.numel() > length:
        raise ValueError(
            f"--prefix and --suffix take {prefix.numel() + suffix.numel()} tokens, more than "
            f"the run's sequences of {length}"
        )
    known = torch.full((length,), -1, dtype=torch.long)
    known[: prefix.numel()] = prefix
    if suffix.numel():
        known[length - suffix.numel() :] = suffix
    return known


def _picture(run, drawn, out: Path, args: argparse.Namespace, shared) -> None:
    from rediff import samplers

    used = samplers.describe(args.sampler, args.steps)
    title = f"{Path(args.run_dir).name}: {used}, {args.steps} steps, NFE {drawn.nfe}"
    caption = f"{drawn.x.shape[0]} samples drawn by rediff sample (seed {args.seed})"
    if drawn.labels is not None:
        which = (
            f"class {args.class_label}" if args.class_label is not None else "every class in turn"
        )
        caption += f", {which}, guidance scale {args.guidance_scale:g}"
        caption += " with a classifier" if args.classifier else ""
        caption += "; images sorted by class" if len(run.spec.shape) == 3 else "; colour: class"
    cols = None
    if shared is not None:
        cols = drawn.x.shape[0] // args.groups
        caption += (
            f"; each row shares x_T and the noise of the first {args.share_noise_until} steps"
        )
    if args.prefix or args.suffix:
        caption += f"; given prefix {args.prefix or ''!r} and suffix {args.suffix or ''!r}"
    if args.top_p < 1:
        caption += f"; nucleus top_p = {args.top_p:g}"
    run.spec.kind.picture(
        drawn.x,
        out,
        title=title,
        labels=None if shared else drawn.labels,
        caption=caption + ".",
        cols=cols,
        tokenizer=run.spec.tokenizer,
    )


def evaluate(args: argparse.Namespace) -> int:
    from rediff.evaluation import evaluate_run

    result = evaluate_run(args.run_dir, args.sampler, args.steps, args.n, args.seed, _guide(args))
    print(result.report)
    return 0


def nll(args: argparse.Namespace) -> int:
    from rediff.evaluation import diffusers_nll, run_nll

    if (args.run_dir is None) == (args.diffusers is None):
        raise ValueError("rediff nll takes a run directory or --diffusers PATH (one of them)")
    if args.diffusers is not None:
        if args.data is None:
            raise ValueError("rediff nll --diffusers needs --data (an image folder or .npy/.npz)")
        if args.method not in (None, "ode"):
            raise ValueError("a diffusers folder's likelihood is the ODE's: drop --method")
        options = {"n": args.n, "probes": args.probes, "rtol": args.rtol, "seed": args.seed}
        print(diffusers_nll(args.diffusers, args.data, **options).report)
        return 0
    result = run_nll(
        args.run_dir,
        args.method,
        split=args.split,
        data_path=args.data,
        n=args.n,
        probes=args.probes,
        vlb_steps=args.vlb_steps,
        rtol=args.rtol,
        seed=args.seed,
    )
    print(result.report)
    return 0


def export(args: argparse.Namespace) -> int:
    from rediff.interop import export_diffusers
    from rediff.runs import load_run

    out = export_diffusers(load_run(args.run_dir).model, args.diffusers)
    print(f"wrote {out} (diffusers.DDPMPipeline.from_pretrained({str(out)!r}) loads it)")
    return 0


def upgrade(args: argparse.Namespace) -> int:
    from rediff.runs import upgrade as upgrade_run

    spec = upgrade_run(args.run_dir)
    print(
        f"{args.run_dir}: run.json records data.kind = {spec.kind.name!r}, shape "
        f"{list(spec.shape)}, levels {spec.levels}, classes {spec.classes}"
    )
    return 0
