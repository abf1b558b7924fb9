"""The ``rediff`` command line.

rediff demo [--out DIR] [--seed S] [--no-train]
rediff train CONFIG.toml [--set section.key=value ...] [--run-dir DIR] [--resume]
rediff sample RUN_DIR [--sampler NAME] [--steps N] [--n N] [--out FILE.png] [--seed S]
                      [--class K] [--guidance-scale W] [--classifier RUN_DIR]
                      [--share-noise-until K] [--groups G]
                      [--device auto|cpu|cuda] [--precision fp32|bf16] [--channels-last] [--compile]
rediff eval RUN_DIR [--sampler NAME] [--steps N] [--n N] [--seed S] [--guidance-scale W]
                    [--classifier RUN_DIR]
rediff nll RUN_DIR [--method ode|vlb] [--split held_out|train] [--data PATH] [--n N] [--probes N]
                   [--vlb-steps N] [--rtol R] [--seed S]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rediff import demo

    print(f"rediff demo: writing pictures to {args.out} ...", flush=True)
    paths = demo.run(args.out, seed=args.seed, train_models=not args.no_train)
    for path in paths:
        print(f"  wrote {path}")
    summary = Path(args.out) / "summary.md"
    if summary.is_file():
        print(summary.read_text())
    print(f"done: open the PNG files in {args.out}/")
    return 0


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rediff.training import TrainingInterruptedError, load_config, train

    config = load_config(args.config, args.set)
    run = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    first = os.environ.get("RANK", "0") == "0"  # one line per run under torchrun
    if first:
        print(f"rediff train: {args.config} -> {run}", flush=True)
    try:
        train(config, run, resume=args.resume)
    except TrainingInterruptedError as stop:
        print(f"rediff train: {stop}", file=sys.stderr, flush=True)
        return stop.exit_code
    if first:
        print(f"done: weights, metrics.csv and loss.png are in {run}/")
    return 0


def _guide(args: argparse.Namespace, prepare=None):
    """The --guidance-scale / --classifier options as an evaluation.Guide (``prepare`` moves
    and accelerates the classifier like the model)."""
    from rediff.evaluation import Guide
    from rediff.model import NoisyClassifier
    from rediff.training import load_run

    if args.classifier is None:
        return Guide(args.guidance_scale)
    config, classifier = load_run(args.classifier)
    if not isinstance(classifier, NoisyClassifier):
        raise SystemExit(f"--classifier {args.classifier} is not a classifier run (loss.kind)")
    if prepare is not None:
        classifier = prepare(classifier)
    return Guide(args.guidance_scale, classifier, config.model.num_classes)


def _sampling_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("rediff sample: --device cuda but no CUDA device is available")
    return name


def _accelerated(model, args: argparse.Namespace):
    """The model with --precision / --channels-last / --compile (same parameters)."""
    from rediff.nets import accelerate

    net = accelerate(
        model.net, precision=args.precision, channels_last=args.channels_last, compile=args.compile
    )
    return model.with_net(net)


def _sample(args: argparse.Namespace) -> int:
    import torch

    import rediff
    from rediff.evaluation import steered
    from rediff.model import NoisyClassifier
    from rediff.plots import save_samples
    from rediff.training import load_data, load_run

    device = _sampling_device(args.device)
    config, model = load_run(args.run_dir)
    if isinstance(model, NoisyClassifier):
        raise SystemExit(f"{args.run_dir} is a classifier; pass it as --classifier to a model")

    def prepare(m):
        return _accelerated(m.to(device), args)

    model = prepare(model)
    x, _ = load_data(config)
    labels = (
        None if args.class_label is None else torch.full((args.n,), args.class_label, device=device)
    )
    shared = None
    try:
        den = steered(model, config, labels, _guide(args, prepare))
        if args.share_noise_until is not None:
            shared = rediff.SharedNoise(args.share_noise_until, args.groups)
        out = rediff.sample(
            den,
            (args.n, *x.shape[1:]),
            sampler=args.sampler,
            steps=args.steps,
            generator=torch.Generator().manual_seed(args.seed),
            shared=shared,
            device=device,
            **config.sampler_options(args.sampler),
        )
    except ValueError as error:  # bad options: a message, not a traceback
        raise SystemExit(f"rediff sample: {error}") from None
    title = f"{args.run_dir}: {args.sampler}, NFE {out.nfe}"
    if labels is not None:
        title += f", class {args.class_label}, scale {args.guidance_scale:g}"
    cols = args.n // args.groups if shared is not None else 10  # one row per group
    path = save_samples(out.x, args.out, title, cols=min(cols, 100))
    print(f"wrote {args.n} samples ({out.nfe} evaluations) to {path}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rediff.evaluation import evaluate_run

    try:
        guide = _guide(args)
    except ValueError as error:
        raise SystemExit(f"rediff eval: {error}") from None
    scores = evaluate_run(args.run_dir, args.sampler, args.steps, args.n, args.seed, guide)
    print(Path(args.run_dir, "eval.md").read_text())
    return 0 if scores else 1


def _nll(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rediff.evaluation import run_nll

    row = run_nll(
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
    print(Path(args.run_dir, f"nll_{row.method}.md").read_text())
    return 0


def _guidance_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=1.0,
        help="0: unconditional, 1: conditional (default), > 1: guided (classifier-free, or "
        "with --classifier, classifier guidance)",
    )
    parser.add_argument("--classifier", help="a classifier run (loss.kind = 'classifier')")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rediff", description="Diffusion and score-based generative models."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="train a 2-D and a digits model, sample them, write pictures and a summary"
    )
    demo.add_argument(
        "--out", default="demo_out", help="folder for the pictures (default: demo_out)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument(
        "--no-train", action="store_true", help="only the pictures that need no training"
    )
    demo.set_defaults(func=_demo)
    train = commands.add_parser("train", help="train a model from a TOML config")
    train.add_argument("config", help="TOML config (see configs/)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=3e-4 (repeatable)",
    )
    train.add_argument("--run-dir", help="run directory (default: runs/<config name>)")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.set_defaults(func=_train)
    sample = commands.add_parser("sample", help="draw samples from a trained run")
    sample.add_argument("run_dir", help="a run directory written by rediff train")
    sample.add_argument("--sampler", default="dpm++2m", help="any name in rediff.samplers.REGISTRY")
    sample.add_argument("--steps", type=int, default=20)
    sample.add_argument("--n", type=int, default=2000, help="number of samples")
    sample.add_argument("--out", default="samples.png", help="PNG file to write")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--class", dest="class_label", type=int, help="class label to sample")
    _guidance_options(sample)
    sample.add_argument(
        "--share-noise-until",
        type=int,
        help="groups of samples share x_T and the noise of the first K steps",
    )
    sample.add_argument(
        "--groups",
        type=int,
        default=1,
        help="with --share-noise-until: number of groups (one row of the picture each)",
    )
    sample.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    sample.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: the network under bf16 autocast (the sampler's arithmetic stays float32)",
    )
    sample.add_argument(
        "--channels-last", action="store_true", help="channels-last images (GPU tensor cores)"
    )
    sample.add_argument("--compile", action="store_true", help="torch.compile the network")
    sample.set_defaults(func=_sample)
    ev = commands.add_parser("eval", help="score a trained run against its data")
    ev.add_argument("run_dir", help="a run directory written by rediff train")
    ev.add_argument("--sampler", default="dpm++2m", help="any name in rediff.samplers.REGISTRY")
    ev.add_argument("--steps", type=int, default=20)
    ev.add_argument("--n", type=int, help="samples (default: 360 for digits, else 5000)")
    ev.add_argument("--seed", type=int, default=0)
    _guidance_options(ev)
    ev.set_defaults(func=_eval)
    nll = commands.add_parser("nll", help="negative log-likelihood (bits/dim) of a run's data")
    nll.add_argument("run_dir", help="a run directory written by rediff train")
    nll.add_argument("--method", choices=["ode", "vlb"], default="ode")
    nll.add_argument(
        "--split",
        choices=["held_out", "train"],
        default="held_out",
        help="digits: which split (other data: the training data)",
    )
    nll.add_argument("--data", help="other data: an image folder or a .npy/.npz file")
    nll.add_argument("--n", type=int, help="number of data points (default 512, or all)")
    nll.add_argument(
        "--probes", type=int, help="Hutchinson probes; 0 = exact divergence (default for d <= 16)"
    )
    nll.add_argument(
        "--vlb-steps", type=int, default=50, help="VLB steps sampled per point (0 = the full sum)"
    )
    nll.add_argument("--rtol", type=float, default=1e-5, help="ODE tolerance (rtol = atol)")
    nll.add_argument("--seed", type=int, default=0)
    nll.set_defaults(func=_nll)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
