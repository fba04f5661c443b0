"""Command line of detectors: ``python -m detectors demo [--seconds S]``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detectors", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small flow on real MNIST digits and report bits/dim")
    demo.add_argument("--seconds", type=float, default=60.0, help="training wall-clock budget")
    demo.add_argument("--batch", type=int, default=64)
    demo.add_argument("--steps", type=int, default=4, help="Glow steps per level (2 levels)")
    demo.add_argument("--hidden", type=int, default=64, help="st-net width")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--lr", type=float, default=5e-3, help="Adamax learning rate after warm-up")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run

        run(seconds=args.seconds, batch=args.batch, steps=args.steps, hidden=args.hidden, seed=args.seed, lr=args.lr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
