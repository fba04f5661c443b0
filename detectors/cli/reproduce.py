"""``python -m detectors reproduce NAMES --seeds 0 1 2``: the papers' experiments over several
seeds (``detectors.experiments.reproduce``); per-seed reports and summaries under ``--out``."""

from __future__ import annotations

import argparse

from .common import MAX_THREADS, integer, out_dir, seed

NAME = "reproduce"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``reproduce`` subcommand."""
    p = subparsers.add_parser(NAME, help="the five papers' experiments over several seeds (docs/results.md)")
    p.add_argument(
        "names", nargs="+", help="experiments: glow, architectures, features, baselines, one-vs-rest, or all"
    )
    p.add_argument("--seeds", type=seed, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--out", type=out_dir, default="runs/reproduce", help="models, per-seed reports and summaries"
    )
    p.add_argument("--smoke", action="store_true", help="tiny configuration (seconds; for tests)")
    p.add_argument(
        "--threads",
        type=integer(1, MAX_THREADS, "MAX_THREADS"),
        default=None,
        help="torch intra-op threads (default: torch's)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of detectors.experiments.config.ReproduceConfig, e.g. --set steps_arch=250",
    )
    return p


def run(args) -> int:
    """Runs ``detectors.experiments.reproduce.reproduce``; ValueError for a bad ``--set`` or
    an unknown experiment name."""
    import torch

    from ..experiments.reproduce import parse_overrides, reproduce

    overrides = parse_overrides(args.set)
    if args.threads:
        torch.set_num_threads(args.threads)
    reproduce(args.names, seeds=args.seeds, out=args.out, smoke=args.smoke, **overrides)
    return 0
