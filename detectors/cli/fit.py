"""``detectors fit --data TRAIN --out DET``: fits detectors on a folder of images (or a .npz /
named set) and writes a detector bundle (``detectors.bundle``)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings

from ..bundle import CATALOGUE, DEFAULT_DETECTORS, FitConfig, fit_bundle


def add_parser(sub) -> argparse.ArgumentParser:
    """Adds the ``fit`` subcommand."""
    defaults = FitConfig()
    names = ", ".join(f"{k} ({v.source})" for k, v in CATALOGUE.items())
    p = sub.add_parser(
        "fit",
        help="fit detectors on your images (a folder, .npz or named set); writes a bundle",
        description="Trains the models the chosen detectors need on TRAIN, calibrates each "
        "threshold on a held-out part of TRAIN and writes the detector bundle DET "
        "(safetensors + JSON). Interrupting and re-running the same command resumes.",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="TRAIN",
        help="in-distribution images: a folder of image files (PNG, JPEG, BMP, TIFF, WebP, any sizes, "
        "flat or nested class folders), a .npz of uint8 images, or a named set (fashion-mnist, mnist, ...)",
    )
    p.add_argument("--out", required=True, metavar="DET", help="bundle directory to write (or resume)")
    p.add_argument(
        "--detectors",
        nargs="+",
        default=list(DEFAULT_DETECTORS),
        metavar="NAME",
        choices=list(CATALOGUE),
        help=f"detectors to fit (default: {' '.join(DEFAULT_DETECTORS)}: the ensemble of png "
        "and pca plus both members, chosen by the worst case over the OOD suite of docs/results.md "
        "section 6: every single detector collapses on some kind of OOD data (png on upside-down "
        "Fashion-MNIST, pca on inverted Fashion-MNIST, last-scale on constant images), png+pca keeps "
        "the best worst case without auxiliary data; an ensemble's members are always fitted and "
        f"reported too); choose from: {names}",
    )
    p.add_argument(
        "--steps", type=int, default=defaults.steps, help="training steps per flow (default: %(default)s)"
    )
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help=f"image side S (images are resized, shorter side to S, and centre-cropped to SxS); "
        f"default: the most common size in TRAIN, at most {defaults.max_size}, rounded down to a multiple "
        f"of 2**levels",
    )
    colour = p.add_mutually_exclusive_group()
    colour.add_argument(
        "--grey",
        dest="channels",
        action="store_const",
        const=1,
        help="convert to greyscale (default: RGB if any image is in colour, else grey)",
    )
    colour.add_argument("--rgb", dest="channels", action="store_const", const=3, help="convert to RGB")
    p.add_argument(
        "--batch", type=int, default=defaults.batch_size, help="training batch size (default: %(default)s)"
    )
    p.add_argument("--lr", type=float, default=defaults.lr, help="learning rate (default: %(default)s)")
    p.add_argument("--levels", type=int, default=defaults.levels, help="Glow scales (default: %(default)s)")
    p.add_argument(
        "--depth", type=int, default=defaults.depth, help="Glow steps per scale (default: %(default)s)"
    )
    p.add_argument(
        "--hidden",
        type=int,
        default=defaults.hidden,
        help="Glow st-net channels (default: %(default)s; 512 as in the Glow paper is impractical on a CPU)",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=defaults.holdout,
        help="share of TRAIN held out to calibrate thresholds (default: %(default)s)",
    )
    p.add_argument(
        "--fpr",
        type=float,
        default=defaults.fpr,
        help="share of held-out TRAIN each threshold flags (default: %(default)s)",
    )
    p.add_argument(
        "--feature-size",
        type=int,
        default=defaults.feature_size,
        help="EfficientNet-Lite0 input side for the feature detectors (default: %(default)s)",
    )
    p.add_argument(
        "--n",
        type=int,
        default=None,
        metavar="N",
        help="fit on a seeded random subset of N images of TRAIN (default: all)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="seed of the split and the training (default: %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run(args) -> int:
    """Fits and writes the bundle; the command line is recorded in ``bundle.json``."""
    run_fit(args, getattr(args, "argv", None))
    return 0


def run_fit(args, argv=None) -> None:
    from ..data import UnreadableImagesWarning

    cfg = FitConfig(
        detectors=tuple(dict.fromkeys(args.detectors)),
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        levels=args.levels,
        depth=args.depth,
        hidden=args.hidden,
        size=args.size,
        channels=args.channels,
        holdout=args.holdout,
        fpr=args.fpr,
        feature_size=args.feature_size,
        seed=args.seed,
        max_images=args.n,
        progress=not args.no_progress,
    )
    if not os.path.exists(args.data) and (os.sep in args.data or "." in os.path.basename(args.data)):
        raise FileNotFoundError(f"--data {args.data}: no such file or folder")
    command = shlex.join(["python", "-m", "detectors"] + list(sys.argv[1:] if argv is None else argv))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImagesWarning)  # fit_bundle prints them on one line
        fit_bundle(args.data, args.out, cfg, command=command)
    print(
        f"bundle: {args.out}  (score with: python -m detectors score {shlex.quote(args.out)} --data TEST "
        f"[--ood OOD] --out REPORT)"
    )
