"""``python -m detectors evaluate``: scores in-distribution vs OOD data with trained flows
(checkpoints written by ``invflow.save`` / the trainer) and writes a report directory."""

from __future__ import annotations

import os

import torch

import invflow

from .datasets import load_named as load_dataset
from .report import format_table, write_report
from .scores import (ApproximateMass, InputComplexity, Likelihood, LikelihoodRatio, ScaleContribution,
                     ScaleRatio)

def run_evaluate(args) -> dict:
    in_model = invflow.load(args.in_model).eval()
    general = invflow.load(args.general_model).eval() if args.general_model else None
    x_in = load_dataset(args.in_data, args.n, args.seed)
    x_out = load_dataset(args.ood_data, args.n, args.seed + 1)
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
    results = write_report(args.out, args.in_data, args.ood_data, scores,
                           config={k: v for k, v in vars(args).items() if k != "func"},
                           supervised={n: d.uses for n, d in dets.items()})
    print(format_table(results))
    print(f"report: {os.path.join(args.out, 'report.md')}")
    return results
