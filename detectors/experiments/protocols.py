"""Evaluation protocols: dataset vs dataset and one-vs-rest (Schmier et al. 2022 Sec. 5.2, Chali et al. 2023
Sec. 4.3), with optional class balancing, running any set of fitted detectors."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..metrics import evaluate


def one_vs_rest(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    normal_class: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One class is in-distribution, all others OOD: returns (train_in, test_in, test_out),
    the training images of ``normal_class`` and the test images of it and of the rest."""
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if len(x) != len(y):
            raise ValueError(f"one_vs_rest: {name} images and labels differ in length ({len(x)} vs {len(y)})")
    if not bool((train_y == normal_class).any()) or not bool((test_y == normal_class).any()):
        raise ValueError(f"one_vs_rest: class {normal_class} has no training or test samples")
    return train_x[train_y == normal_class], test_x[test_y == normal_class], test_x[test_y != normal_class]


def evaluate_detectors(
    detectors: Mapping, x_in: torch.Tensor, x_out: torch.Tensor, balance: bool = False, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Scores ``x_in`` (in-distribution test) and ``x_out`` (OOD) with each fitted detector:
    {NAME: metrics}.  ``balance`` equalises the two sets (Chali et al. 2023 Sec. 4.3)."""
    results = {}
    for name, det in detectors.items():
        results[name] = evaluate(det.score(x_in), det.score(x_out), balance=balance, seed=seed)
    return results


def scores_for(detectors: Mapping, x_in: torch.Tensor, x_out: torch.Tensor) -> dict:
    """{NAME: (s_in, s_out)}, the input of ``report.write_report``."""
    return {name: (det.score(x_in), det.score(x_out)) for name, det in detectors.items()}
