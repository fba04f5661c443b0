"""``python -m detectors zoo NAME``: trains a zoo model for real (resumable, early stop on the
held-out bits/dim) or, with ``--export``, exports it with its model card into detectors/zoo
(``detectors.zoo.train``)."""

from __future__ import annotations

import argparse

from .common import MAX_STEPS, MAX_THREADS, integer, module_doc, out_dir

NAME = "zoo"


def zoo_name(text: str) -> str:
    """An argparse type: a zoo recipe name or ``features`` (the recipes load only when a name is
    parsed, so that ``--help`` imports no torch)."""
    from ..zoo.recipes import RECIPES

    if text not in RECIPES and text != "features":
        raise argparse.ArgumentTypeError(
            f"unknown zoo model {text!r}; choose from {', '.join(sorted(RECIPES))} or features"
        )
    return text


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``zoo`` subcommand (same flags and defaults as the old
    ``python -m detectors.zoo.train``)."""
    p = subparsers.add_parser(
        NAME,
        help="train or export a shipped zoo model (detectors.zoo)",
        description=module_doc("zoo/train.py"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "name",
        type=zoo_name,
        help="a zoo model (a recipe of detectors.zoo.recipes), or 'features' (with --export: the "
        "demo's feature fit sets)",
    )
    p.add_argument(
        "--steps",
        type=integer(1, MAX_STEPS, "MAX_STEPS"),
        default=20000,
        help="upper bound; early stop on the held-out bits/dim (default: %(default)s)",
    )
    p.add_argument(
        "--eval-every",
        type=integer(1, MAX_STEPS, "MAX_STEPS"),
        default=250,
        help="steps between held-out evaluations and checkpoints (default: %(default)s)",
    )
    p.add_argument(
        "--patience",
        type=integer(1, MAX_STEPS, "MAX_STEPS"),
        default=4,
        help="evaluations without improvement before stopping (default: %(default)s)",
    )
    p.add_argument(
        "--root", type=out_dir, default="runs/zoo", help="where the runs live (default: %(default)s)"
    )
    p.add_argument(
        "--threads",
        type=integer(1, MAX_THREADS, "MAX_THREADS"),
        default=1,
        help="torch threads (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=integer(0, 2**31 - 1),
        default=0,
        help="training seed; K >= 1 trains a replicate in ROOT/NAME-seedK for experiments "
        "(never exported; the zoo ships seed 0) (default: %(default)s)",
    )
    p.add_argument(
        "--from-shipped",
        action="store_true",
        help="start a new run from the shipped weights at the card's step instead of from scratch "
        "(to train a shipped model on; the optimizer restarts with the recipe's warm-up; --steps "
        "counts from the original step 0)",
    )
    p.add_argument(
        "--anneal",
        type=integer(0, MAX_STEPS, "MAX_STEPS"),
        default=0,
        help="once the constant learning rate stops (--steps or --patience), N more steps with the "
        "rate falling linearly to 0; a re-run finishes them (default: %(default)s, none)",
    )
    p.add_argument("--export", action="store_true", help="export the latest checkpoint into detectors/zoo")
    p.add_argument(
        "--status",
        default="training continues",
        help="with --export: the card's note on why training stopped (default: %(default)r)",
    )
    return p


def run(args) -> int:
    """Trains (``detectors.zoo.train.train``) or exports (``export`` / ``export_features``)."""
    import torch

    from ..zoo.train import export, export_features, train

    torch.set_num_threads(args.threads)
    if args.name == "features":
        if not args.export or args.seed:
            raise ValueError(
                "'features' is exported, not trained: run python -m detectors zoo features --export"
            )
        export_features()
    elif args.export:
        if args.from_shipped or args.anneal:
            flag = "--from-shipped" if args.from_shipped else "--anneal"
            raise ValueError(f"{flag} is a training option; export the run afterwards with --export alone")
        if args.seed:
            raise ValueError(
                f"--export ships the seed-0 training only; the replicate with --seed {args.seed} "
                "stays in its run for experiments (detectors.zoo.train.load_replicate)"
            )
        export(args.name, args.root, args.status)
    else:
        train(
            args.name,
            args.steps,
            args.eval_every,
            args.root,
            args.patience,
            args.seed,
            args.from_shipped,
            args.anneal,
        )
    return 0
