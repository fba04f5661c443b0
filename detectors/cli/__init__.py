"""The ``detectors`` command (also ``python -m detectors``): one subcommand per module.

    detectors fit --data TRAIN --out DET                       # your own images -> a bundle
    detectors score DET --data TEST [--ood OOD] --out REPORT   # scores.csv (+ a report)
    detectors demo [--out DIR]                                 # Fashion-MNIST vs MNIST
    detectors train --out DIR [...]                            # a flow (torchrun for several processes)
    detectors evaluate --in-model CKPT --out DIR
    detectors reproduce glow architectures ... --seeds 0 1 2
    detectors ood-suite [--out DIR]
    detectors zoo NAME [--export]

Each subcommand module has ``add_parser(subparsers) -> argparse.ArgumentParser`` and
``run(args) -> int``; ``add_parser`` imports nothing heavy (torch, scikit-learn, matplotlib
load in ``run``), so ``--help`` is quick.  Errors in the input, in the arguments as in the run,
are one line on stderr with exit code 2 (``DETECTORS_TRACEBACK=1`` shows the traceback of an
error in the run instead).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: subcommand -> module of detectors.cli, in the order ``--help`` lists them
SUBCOMMANDS = {
    "demo": "demo",
    "fit": "fit",
    "score": "score",
    "train": "train",
    "evaluate": "evaluate",
    "reproduce": "reproduce",
    "ood-suite": "ood_suite",
    "zoo": "zoo",
}


def _prog() -> str:
    """``detectors`` for the console script, ``python -m detectors`` otherwise."""
    return "detectors" if os.path.basename(sys.argv[0] or "") == "detectors" else "python -m detectors"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand; each sets ``args.run`` to its module's ``run``."""
    from .common import Parser

    parser = Parser(
        prog=prog or _prog(),
        description="Anomaly / out-of-distribution detection with normalizing flows (invflow).",
        epilog="Errors in the input are one line with exit code 2; set "
        "DETECTORS_TRACEBACK=1 to see the traceback instead.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for module in SUBCOMMANDS.values():
        mod = importlib.import_module(f"{__name__}.{module}")
        p = mod.add_parser(sub)
        p.set_defaults(run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    from .common import run_guarded

    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    return run_guarded(f"{parser.prog} {args.command}", args.run, args)
