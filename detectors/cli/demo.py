"""``detectors demo [--out DIR]``: Fashion-MNIST vs MNIST with every detector
(``detectors.experiments.demo``); scores with the shipped zoo models unless ``--train``."""

from __future__ import annotations

import argparse

from .common import out_dir, seed


def add_parser(sub) -> argparse.ArgumentParser:
    """Adds the ``demo`` subcommand."""
    demo = sub.add_parser(
        "demo", help="Fashion-MNIST vs MNIST with every detector (zoo models); writes a report"
    )
    demo.add_argument(
        "--out", type=out_dir, default="runs/demo", help="report directory (models, plots, results.json)"
    )
    demo.add_argument("--seed", type=seed, default=0)
    demo.add_argument("--smoke", action="store_true", help="tiny configuration (seconds; for tests)")
    demo.add_argument("--no-features", action="store_true", help="skip the EfficientNet feature detectors")
    demo.add_argument(
        "--train",
        action="store_true",
        help="train every model from scratch instead of scoring with "
        "the shipped zoo models (detectors.zoo); resumable under --out/models",
    )
    return demo


def run(args) -> int:
    """Runs the demo (``detectors.experiments.demo.run``)."""
    from ..experiments.demo import run as run_demo

    run_demo(
        out=args.out,
        smoke=args.smoke,
        seed=args.seed,
        features=not args.no_features,
        train=True if args.smoke or args.train else False,
    )
    return 0
