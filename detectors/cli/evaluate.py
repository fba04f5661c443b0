"""``detectors evaluate``: scores in-distribution vs OOD data with trained flows
(checkpoint files written by ``invflow.save``, or the trainer's run directories: their latest
checkpoint) and writes a report directory.  Images smaller than the model are padded at the
bottom and right with 0 exactly as ``python -m detectors train`` padded them."""

from __future__ import annotations

import argparse
import os

from .common import MAX_IMAGES, MAX_SEED, integer, out_dir


def add_parser(sub) -> argparse.ArgumentParser:
    """Adds the ``evaluate`` subcommand."""
    ev = sub.add_parser(
        "evaluate", help="score in-distribution vs OOD data with trained flows; write a report"
    )
    ev.add_argument(
        "--in-model",
        required=True,
        help="the in-distribution flow: a checkpoint file (invflow.save) "
        "or a training run directory (its latest checkpoint)",
    )
    ev.add_argument(
        "--general-model", help="a general-distribution flow, file or run directory (adds Diff rows)"
    )
    ev.add_argument(
        "--in-data", default="fashion-mnist-test", help="fashion-mnist[-train|-test], mnist, patches, .npz"
    )
    ev.add_argument("--ood-data", default="mnist")
    ev.add_argument(
        "--n",
        type=integer(1, MAX_IMAGES, "MAX_IMAGES"),
        default=None,
        help="score a seeded random subset of this size",
    )
    ev.add_argument("--out", required=True, type=out_dir, help="report directory")
    ev.add_argument(
        "--seed",
        type=integer(0, MAX_SEED - 1, "MAX_SEED"),
        default=0,
        help="seed (the OOD subset uses seed + 1)",
    )
    return ev


def run(args) -> int:
    """Scores and writes the report directory."""
    run_evaluate(args)
    return 0


def pad_to_model(x, model, name: str):
    """Pads uint8 images [N, C, H, W] at the bottom / right with 0 up to the model's input size,
    as the train command did; ValueError naming ``name`` when they cannot fit."""
    shape = getattr(model, "input_shape", None)
    if shape is None or len(shape) != 3 or tuple(x.shape[1:]) == tuple(shape):
        return x
    c, mh, mw = shape
    h, w = x.shape[-2:]
    if x.shape[1] != c or h > mh or w > mw:
        raise ValueError(
            f"{name}: images {list(x.shape[1:])} do not fit the model's input {list(shape)} "
            f"(channels must match; height and width at most the model's)"
        )
    print(f"{name}: padded images from {h}x{w} to {mh}x{mw} (as the train command did)")
    import torch

    return torch.nn.functional.pad(x, (0, mw - w, 0, mh - h))


def run_evaluate(args) -> dict:
    import invflow

    from ..data import load_named as load_dataset
    from ..report import format_table, write_report
    from ..scores import (
        ApproximateMass,
        InputComplexity,
        Likelihood,
        LikelihoodRatio,
        ScaleContribution,
        ScaleRatio,
    )

    in_model = invflow.load(args.in_model)
    general = invflow.load(args.general_model) if args.general_model else None
    x_in = pad_to_model(load_dataset(args.in_data, args.n, args.seed), in_model, "--in-data")
    x_out = pad_to_model(load_dataset(args.ood_data, args.n, args.seed + 1), in_model, "--ood-data")
    dets = {"likelihood": Likelihood(in_model, progress=True)}
    if hasattr(in_model, "latent_shapes") and len(in_model.latent_shapes()) > 1:
        dets["last scale"] = ScaleContribution(in_model, scales=-1)
    if x_in.shape[1] in (1, 3):
        dets["PNG complexity"] = InputComplexity(in_model)
    dets["approximate mass"] = ApproximateMass(in_model)
    if general is not None:
        dets["Diff"] = LikelihoodRatio(in_model, general)
        if "last scale" in dets:
            dets["Diff, last scale"] = ScaleRatio(in_model, general, scales=-1)
    scores = {name: (d.score(x_in), d.score(x_out)) for name, d in dets.items()}
    results = write_report(
        args.out,
        args.in_data,
        args.ood_data,
        scores,
        config={k: v for k, v in vars(args).items() if k not in ("func", "argv", "run")},
        supervised={n: d.uses for n, d in dets.items()},
    )
    print(format_table(results))
    print(f"report: {os.path.join(args.out, 'report.md')}")
    return results
