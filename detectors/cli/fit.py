"""``detectors fit --data TRAIN --out DET``: fits detectors on a folder of images (or a .npz /
named set) and writes a detector bundle (``detectors.bundle``)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings

from .common import (
    MAX_BATCH,
    MAX_DEPTH,
    MAX_FEATURE_SIZE,
    MAX_HIDDEN,
    MAX_IMAGE_SIZE,
    MAX_IMAGES,
    MAX_LEVELS,
    MAX_STEPS,
    MIN_FEATURE_SIZE,
    integer,
    number,
    out_dir,
    seed,
)

#: the defaults of ``detectors.bundle.FitConfig`` (a test checks they agree); kept here so that
#: building the parser imports neither torch's models nor scikit-learn
DEFAULTS = dict(
    detectors=None,
    steps=300,
    batch_size=32,
    lr=1e-3,
    levels=2,
    depth=4,
    hidden=32,
    max_size=32,
    holdout=0.2,
    fpr=0.05,
    feature_size=96,
    seed=0,
    feature_cap=5000,
    calibration_cap=2000,
    dagger_steps=300,
)
#: the default sets (``detectors.bundle.catalogue``; a test checks they agree)
DEFAULT_SETS = (("diff-dagger+pca+transforms+diff+png",), ("png+pca",))


def detector_list() -> str:
    """One line per catalogue detector: its name, what it needs beyond unlabelled
    in-distribution images, and its source."""
    from ..bundle.catalogue import CATALOGUE

    width = max(map(len, CATALOGUE))
    return "\n".join(
        f"{name:<{width}}  {spec.source}" + ("" if spec.uses == "-" else f" [uses {spec.uses}]")
        for name, spec in CATALOGUE.items()
    )


class _ListDetectors(argparse.Action):
    """``--list-detectors``: prints :func:`detector_list` and exits 0 (like ``--help``)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(detector_list())
        parser.exit(0)


def detector_name(text: str) -> str:
    """An argparse type: a name of the bundle catalogue."""
    from ..bundle.catalogue import CATALOGUE

    if text not in CATALOGUE:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (not a detector of the catalogue); choose from {', '.join(CATALOGUE)} (--list-detectors describes each)"
        )
    return text


def add_parser(sub) -> argparse.ArgumentParser:
    """Adds the ``fit`` subcommand; every size, width and count flag is bounded
    (``detectors.cli.common``), so a bad value is refused before any work."""
    d = DEFAULTS
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
    p.add_argument(
        "--out", required=True, type=out_dir, metavar="DET", help="bundle directory to write (or resume)"
    )
    p.add_argument(
        "--detectors",
        nargs="+",
        type=detector_name,
        default=None,
        metavar="NAME",
        help=f"detectors to fit; --list-detectors names each (default: {' '.join(DEFAULT_SETS[0])} "
        f"with a shipped general model of the data's mode and size, else {' '.join(DEFAULT_SETS[1])}: "
        "the best worst cases, docs/results.md section 6); ensembles bring their members",
    )
    p.add_argument(
        "--list-detectors",
        action=_ListDetectors,
        help="list the detectors --detectors takes, one line each, and exit",
    )
    p.add_argument(
        "--steps",
        type=integer(1, MAX_STEPS, "MAX_STEPS"),
        default=d["steps"],
        help="training steps per flow (default: %(default)s)",
    )
    p.add_argument(
        "--size",
        type=integer(2, MAX_IMAGE_SIZE, "MAX_IMAGE_SIZE"),
        default=None,
        help=f"image side S, at most {MAX_IMAGE_SIZE} (images are resized, shorter side to S, and "
        f"centre-cropped to SxS); default: the most common size in TRAIN, at most {d['max_size']}, "
        "rounded down to a multiple of 2**levels",
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
        "--batch",
        type=integer(1, MAX_BATCH, "MAX_BATCH"),
        default=d["batch_size"],
        help="training batch size (default: %(default)s)",
    )
    p.add_argument(
        "--lr",
        type=number(0.0, 1.0, open_low=True),
        default=d["lr"],
        help="learning rate (default: %(default)s)",
    )
    p.add_argument(
        "--levels",
        type=integer(1, MAX_LEVELS, "MAX_LEVELS"),
        default=d["levels"],
        help="Glow scales (default: %(default)s)",
    )
    p.add_argument(
        "--depth",
        type=integer(1, MAX_DEPTH, "MAX_DEPTH"),
        default=d["depth"],
        help="Glow steps per scale (default: %(default)s)",
    )
    p.add_argument(
        "--hidden",
        type=integer(1, MAX_HIDDEN, "MAX_HIDDEN"),
        default=d["hidden"],
        help=f"Glow st-net channels, at most {MAX_HIDDEN} (default: %(default)s; 512 as in the Glow "
        "paper is impractical on a CPU)",
    )
    p.add_argument(
        "--holdout",
        type=number(0.0, 1.0, open_low=True, open_high=True),
        default=d["holdout"],
        help="share of TRAIN held out to calibrate thresholds, in (0, 1) (default: %(default)s)",
    )
    p.add_argument(
        "--fpr",
        type=number(0.0, 1.0, open_low=True, open_high=True),
        default=d["fpr"],
        help="share of held-out TRAIN each threshold flags, in (0, 1) (default: %(default)s)",
    )
    p.add_argument(
        "--feature-size",
        type=integer(MIN_FEATURE_SIZE, MAX_FEATURE_SIZE, "MAX_FEATURE_SIZE"),
        default=d["feature_size"],
        help="EfficientNet-Lite0 input side for the feature detectors (default: %(default)s)",
    )
    p.add_argument(
        "--n",
        type=integer(3, MAX_IMAGES, "MAX_IMAGES"),
        default=None,
        metavar="N",
        help="fit on a seeded random subset of N images of TRAIN (default: all)",
    )
    p.add_argument(
        "--seed",
        type=seed,
        default=d["seed"],
        help="seed of the split and the training (default: %(default)s)",
    )
    p.add_argument(
        "--feature-cap",
        type=integer(3, MAX_IMAGES, "MAX_IMAGES"),
        default=d["feature_cap"],
        metavar="N",
        help="feature detectors fit on at most N images, a seeded sample stratified by class "
        "folder (default: %(default)s)",
    )
    p.add_argument(
        "--calibration-cap",
        type=integer(2, MAX_IMAGES, "MAX_IMAGES"),
        default=d["calibration_cap"],
        metavar="N",
        help="thresholds and ensembles calibrate on at most N held-out images (default: %(default)s)",
    )
    p.add_argument(
        "--dagger-steps",
        type=integer(1, MAX_STEPS, "MAX_STEPS"),
        default=d["dagger_steps"],
        help="steps of the Diff-dagger finetune of the shipped general model (default: %(default)s)",
    )
    p.add_argument(
        "--no-zoo",
        action="store_true",
        help="train every flow here; by default fashion-mnist reuses its zoo models and diff / "
        "diff-dagger use the shipped general model for the data",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run(args) -> int:
    """Fits and writes the bundle; the command line is recorded in ``bundle.json``."""
    run_fit(args, getattr(args, "argv", None))
    return 0


def _print_one_line(category, show):
    """A ``warnings.showwarning`` that prints warnings of ``category`` as one line,
    ``warning: MESSAGE`` on stdout with the fit's other output (no file name, no source line),
    and passes every other warning to ``show``."""

    def showwarning(message, cat, filename, lineno, file=None, line=None):
        if issubclass(cat, category):
            print(f"warning: {' '.join(str(message).split())}", flush=True)
        else:
            show(message, cat, filename, lineno, file, line)

    return showwarning


def run_fit(args, argv=None) -> None:
    from ..bundle import CalibrationOnTrainingDataWarning, FitConfig, fit_bundle
    from ..data import UnreadableImagesWarning

    cfg = FitConfig(
        detectors=None if args.detectors is None else tuple(dict.fromkeys(args.detectors)),
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
        feature_cap=args.feature_cap,
        calibration_cap=args.calibration_cap,
        dagger_steps=args.dagger_steps,
        zoo=not args.no_zoo,
        progress=not args.no_progress,
    )
    if not os.path.exists(args.data) and (os.sep in args.data or "." in os.path.basename(args.data)):
        raise FileNotFoundError(f"--data {args.data}: no such file or folder")
    command = shlex.join(["python", "-m", "detectors"] + list(sys.argv[1:] if argv is None else argv))
    with warnings.catch_warnings():  # restores showwarning too
        warnings.simplefilter("ignore", UnreadableImagesWarning)  # fit_bundle prints them on one line
        warnings.simplefilter("always", CalibrationOnTrainingDataWarning)
        warnings.showwarning = _print_one_line(CalibrationOnTrainingDataWarning, warnings.showwarning)
        fit_bundle(args.data, args.out, cfg, command=command)
    print(
        f"bundle: {args.out}  (score with: python -m detectors score {shlex.quote(args.out)} --data TEST "
        f"[--ood OOD] --out REPORT)"
    )
