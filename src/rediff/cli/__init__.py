"""The ``rediff`` command line: ``rediff demo [--out DIR] [--seed S]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    from rediff import demo

    print(f"rediff demo: writing pictures to {args.out} ...", flush=True)
    paths = demo.run(args.out, seed=args.seed)
    for path in paths:
        print(f"  wrote {path}")
    print(f"done: open the PNG files in {args.out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rediff", description="Diffusion and score-based generative models."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="write pictures of the forward processes")
    demo.add_argument(
        "--out", default="demo_out", help="folder for the pictures (default: demo_out)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
