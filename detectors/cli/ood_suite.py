"""``python -m detectors ood-suite``: the zoo detectors on a broad offline OOD suite
(``detectors.experiments.ood_suite``); writes ``OUT/suite.md`` and ``OUT/suite.json``."""

from __future__ import annotations

import argparse

from .common import MAX_FEATURE_SIZE, MAX_IMAGES, MIN_FEATURE_SIZE, integer, module_doc, number, out_dir, seed

NAME = "ood-suite"


def _ensemble_spec(spec: str) -> str:
    """The form of an ensemble now; its names once the detectors are built (before scoring)."""
    names = [n.strip() for n in spec.split("+")]
    if len(names) < 2 or len(set(names)) != len(names) or not all(names):
        raise argparse.ArgumentTypeError(
            f"{spec!r}: expected two or more different detector names joined by '+'"
        )
    return spec


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``ood-suite`` subcommand (same flags and defaults as the old
    ``python -m detectors.ood_suite``)."""
    p = subparsers.add_parser(
        NAME,
        help="the zoo detectors on a broad offline OOD suite; recommends by the worst case",
        description=module_doc("experiments/ood_suite.py"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=out_dir, default="runs/ood-suite")
    p.add_argument(
        "--n",
        type=integer(1, MAX_IMAGES, "MAX_IMAGES"),
        default=500,
        help="images per set (and in-distribution)",
    )
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument(
        "--floor",
        type=number(0.0, 1.0),
        default=0.9,
        help="worst-case AUROC a recommended detector reaches, in [0, 1]",
    )
    p.add_argument(
        "--features", action="store_true", help="add the EfficientNet feature detectors (slow on a CPU)"
    )
    p.add_argument(
        "--feature-size",
        type=integer(MIN_FEATURE_SIZE, MAX_FEATURE_SIZE, "MAX_FEATURE_SIZE"),
        default=64,
        help="EfficientNet-Lite0 input side (default: %(default)s)",
    )
    p.add_argument(
        "--ensemble",
        action="append",
        type=_ensemble_spec,
        default=[],
        metavar="A+B",
        help="add an ensemble (detectors.Ensemble: z-scores summed, standardised on held-out "
        "Fashion-MNIST test images) of the named detectors, e.g. 'features: PCA+last scale'",
    )
    return p


def run(args) -> int:
    """Runs the suite; ValueError (``--ensemble: ...``) for an ensemble naming unknown detectors."""
    from ..experiments.ood_suite import run_suite

    try:
        run_suite(
            out=args.out,
            n=args.n,
            seed=args.seed,
            floor=args.floor,
            features=args.features,
            feature_size=args.feature_size,
            ensemble=args.ensemble,
        )
    except ValueError as err:
        if args.ensemble and "ensemble" not in str(err).lower():
            raise ValueError(f"--ensemble: {err}") from err
        raise
    return 0
