"""The ``rediff`` command line.

rediff [--debug] demo [--out DIR] [--seed S] [--no-train]
rediff [--debug] train CONFIG.toml [--set section.key=value ...] [--run-dir DIR] [--resume]
rediff [--debug] sample RUN_DIR | --diffusers PATH
                      [--sampler NAME] [--steps N] [--n N] [--out FILE] [--seed S]
                      [--prefix TEXT] [--suffix TEXT] [--top-p P] [--overflow error|drop]
                      [--class K] [--guidance-scale W] [--classifier RUN_DIR]
                      [--share-noise-until K] [--groups G] [--clip-x0] [--dynamic-threshold P]
                      [--device auto|cpu|cuda] [--precision fp32|bf16] [--channels-last] [--compile]
rediff [--debug] eval RUN_DIR [--sampler NAME] [--steps N] [--n N] [--seed S]
                    [--guidance-scale W] [--classifier RUN_DIR]
rediff [--debug] nll RUN_DIR | --diffusers PATH [--method ode|vlb|exact] [--split held_out|train]
                   [--data PATH] [--n N] [--probes N] [--vlb-steps N] [--rtol R] [--seed S]
rediff [--debug] export RUN_DIR --diffusers OUT
rediff [--debug] upgrade RUN_DIR

One error path: a user error (bad config or flag, missing file, corrupt run, diverged
training) is one line on stderr naming the problem and the fix, with exit status 2; any other
failure is one line too, with exit status 1. ``--debug`` (or ``REDIFF_DEBUG=1``) shows the
traceback instead. SIGINT / SIGTERM during training stop with a checkpoint (exit 128 + signal).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rediff.cli import commands

#: exceptions that mean bad input (exit status 2); anything else is rediff's fault (1)
USER_ERRORS = (ValueError, OSError, ArithmeticError)


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (and the help to read)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status."""
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("REDIFF_DEBUG", "") not in ("", "0")
    prog = f"rediff {args.command}"
    try:
        return args.func(args)
    except commands.StoppedError as stop:  # a signal during training: checkpoint written
        print(f"{prog}: {stop}", file=sys.stderr, flush=True)
        return stop.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as error:
        if debug:
            raise
        if isinstance(error, USER_ERRORS):
            print(f"{prog}: error: {_one_line(error)}", file=sys.stderr, flush=True)
            return 2
        print(
            f"{prog}: internal error ({type(error).__name__}: {_one_line(error)}); rerun with "
            "--debug for the traceback and report it",
            file=sys.stderr,
            flush=True,
        )
        return 1


def _guidance_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=1.0,
        help="0: unconditional, 1: conditional (default), > 1: guided (classifier-free, or "
        "with --classifier, classifier guidance)",
    )
    parser.add_argument("--classifier", help="a classifier run (loss.kind = 'classifier')")


def _sampler_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sampler",
        help="a name in rediff.samplers.REGISTRY (discrete runs: ancestral, cached); default: "
        "the run's own (its config's sample.sampler)",
    )
    parser.add_argument("--steps", type=int, help="default: the run's own (sample.steps)")


def _add_demo(sub) -> None:
    demo = sub.add_parser(
        "demo", help="train a 2-D and a digits model, sample them, write pictures and a summary"
    )
    demo.add_argument(
        "--out", default="demo_out", help="folder for the pictures (default: demo_out)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument(
        "--no-train", action="store_true", help="only the pictures that need no training"
    )
    demo.set_defaults(func=commands.demo)


def _add_train(sub) -> None:
    train = sub.add_parser("train", help="train a model from a TOML config")
    train.add_argument("config", help="TOML config (see configs/)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=3e-4 --set data.path=my_images "
        "(TOML values; a bare word is text; repeatable)",
    )
    train.add_argument("--run-dir", help="run directory (default: runs/<config name>)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint (train.steps may be raised to train longer)",
    )
    train.set_defaults(func=commands.train)


def _run_or_folder(parser: argparse.ArgumentParser, what: str) -> None:
    """A run directory, or --diffusers PATH (a diffusers folder, read offline)."""
    parser.add_argument(
        "run_dir", nargs="?", help="a run directory written by rediff train (or --diffusers)"
    )
    parser.add_argument("--diffusers", metavar="PATH", help=f"{what}, offline")


def _add_sample(sub) -> None:
    sample = sub.add_parser("sample", help="draw samples from a trained run")
    _run_or_folder(sample, "sample a diffusers model folder (unet/ + scheduler/) instead")
    _sampler_options(sample)
    sample.add_argument(
        "--n", type=int, help="number of samples (default: 100 images or 2000 points)"
    )
    sample.add_argument(
        "--out",
        help="a picture (.png, .jpg, .pdf, .svg; default samples.png), text for text runs "
        "(.txt, default samples.txt, also printed) or arrays: .npz (samples, labels, "
        "settings) or .npy (samples)",
    )
    sample.add_argument(
        "--prefix", help="text runs: the text every sample starts with (infilling the rest)"
    )
    sample.add_argument(
        "--suffix", help="text runs, masked diffusion: the text every sample ends with"
    )
    sample.add_argument(
        "--top-p",
        type=float,
        default=1.0,
        help="models of tokens: nucleus sampling, keep the most probable tokens up to this "
        "mass (1: off, 0: greedy)",
    )
    sample.add_argument(
        "--overflow",
        default="error",
        help="insertion/deletion runs: what to do with a sample that outgrows the maximum "
        "length: error (default) or drop (leave it out; fewer samples come back)",
    )
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument(
        "--class",
        dest="class_label",
        type=int,
        help="class to sample (default for a conditional model: every class in turn)",
    )
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
    sample.add_argument(
        "--clip-x0", action="store_true", help="clamp x0_hat to [-1, 1] at every step"
    )
    sample.add_argument(
        "--dynamic-threshold",
        type=float,
        metavar="P",
        help="Imagen's dynamic thresholding of x0_hat at percentile P (e.g. 0.995)",
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
    sample.set_defaults(func=commands.sample)


def _add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="score a trained run against its data")
    ev.add_argument("run_dir", help="a run directory written by rediff train")
    _sampler_options(ev)
    ev.add_argument("--n", type=int, help="samples (default: 360 for digits, else up to 5000)")
    ev.add_argument("--seed", type=int, default=0)
    _guidance_options(ev)
    ev.set_defaults(func=commands.evaluate)


def _add_nll(sub) -> None:
    what = (
        "negative log-likelihood of a run's data: bits/dim for quantised data (digits, "
        "images), nats/dim for continuous data"
    )
    nll = sub.add_parser("nll", help=what, description=what)
    _run_or_folder(nll, "score --data under a diffusers model folder (unet/ + scheduler/) instead")
    nll.add_argument(
        "--method",
        choices=["ode", "vlb", "exact"],
        help="the probability-flow ODE (default), the variational bound (the default, and the "
        "only method, of a discrete or masked model: its ELBO) or the exact likelihood (an "
        "autoregressive model's only method)",
    )
    nll.add_argument(
        "--split",
        choices=["held_out", "train"],
        default="held_out",
        help="held-out data where the kind has them (digits), else the training data",
    )
    nll.add_argument("--data", help="other data: an image folder or a .npy/.npz file")
    nll.add_argument("--n", type=int, help="number of data points (default 512, or all)")
    nll.add_argument(
        "--probes", type=int, help="Hutchinson probes; 0 = exact divergence (default for d <= 16)"
    )
    nll.add_argument(
        "--vlb-steps",
        type=int,
        default=50,
        help="VLB steps sampled per point (0 = the full sum); masked diffusion: time samples",
    )
    nll.add_argument(
        "--rtol",
        type=float,
        default=None,
        help="solve the ODE adaptively at this tolerance (rtol = atol); default: the "
        "40-evaluation multistep solver",
    )
    nll.add_argument("--seed", type=int, default=0)
    nll.set_defaults(func=commands.nll)


def _add_upgrade(sub) -> None:
    upgrade = sub.add_parser(
        "upgrade", help="convert a run directory written by an older rediff (reads its data once)"
    )
    upgrade.add_argument("run_dir", help="the run directory")
    upgrade.set_defaults(func=commands.upgrade)


def _add_export(sub) -> None:
    what = "write a run as a diffusers folder (DDPMPipeline.from_pretrained loads it, offline)"
    export = sub.add_parser("export", help=what, description=what)
    export.add_argument("run_dir", help="a run with model.net = 'diffusers_unet2d'")
    export.add_argument(
        "--diffusers", metavar="OUT", required=True, help="the folder to write (must not exist)"
    )
    export.set_defaults(func=commands.export)


def build_parser() -> argparse.ArgumentParser:
    debug = Parser(add_help=False)
    debug.add_argument(
        "--debug", action="store_true", help="show Python tracebacks (also REDIFF_DEBUG=1)"
    )
    parser = Parser(
        prog="rediff", description="Diffusion and score-based generative models.", parents=[debug]
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    for add in (
        _add_demo,
        _add_train,
        _add_sample,
        _add_eval,
        _add_nll,
        _add_export,
        _add_upgrade,
    ):
        add(sub)
    for command in sub.choices.values():  # --debug after the command name too
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


if __name__ == "__main__":
    sys.exit(main())
