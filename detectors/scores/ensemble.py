"""Ensembles of detectors that look at different things (e.g. pixel-level complexity and
semantic features): each member's score is standardised on held-out in-distribution data
and the z-scores are summed.  HIGHER = MORE ANOMALOUS.

    ens = Ensemble({"PNG complexity": InputComplexity(glow), "PCA": PCA(transform=feats)})
    ens.fit(x_in)              # fits PCA on one part of x_in, standardises and calibrates on the rest
    ens.score(x)               # sum_i w_i (s_i(x) - mean_i) / std_i

Members may come fitted or not.  ``fit`` fits the members that are not fitted yet
(``Detector.is_fitted``) on a seeded part ``member_fraction`` of its data and standardises and
calibrates on the rest: the members' own training data look more typical than new
in-distribution data, so standardising on them would flag more than ``fpr`` of fresh data.
When every member is fitted already, all of ``fit``'s data standardise and calibrate (give
data the members were not fitted on).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import numpy as np
import torch

from invflow.validation import check_number

from .base import Detector


class Ensemble(Detector):
    """Sum of the members' scores, each standardised by its mean and standard deviation on
    held-out in-distribution data (z-score fusion).  ``weights`` (optional) scale the members'
    z-scores.  ``uses`` is the union of the members' ``uses``.

    Args:
        members: NAME -> Detector, fitted or not (``fit`` fits those that are not).
        weights: NAME -> finite weight of the member's z-score (default 1).
        member_fraction: the part of ``fit``'s data, in (0, 1), on which members that are not
            fitted yet are fitted (seeded by ``seed``); the rest standardises and calibrates.

    Raises ``TypeError`` for a member that is not a Detector and ``ValueError`` for members
    that take different input shapes (naming them), empty members or unknown weights."""

    #: the fitted state is one mean and standard deviation per member, a monotone map of each
    #: member's score: the fitting data's fused scores are as typical as fresh data's
    calibrate_on_fit_data = True

    def __init__(
        self,
        members: Mapping[str, Detector],
        weights: Mapping[str, float] | None = None,
        member_fraction: float = 0.5,
        seed: int = 0,
        **kw,
    ):
        super().__init__(**kw)
        if not isinstance(members, Mapping) or not members:
            raise ValueError("Ensemble: members must be a non-empty dict NAME -> Detector")
        for name, det in members.items():
            if not isinstance(det, Detector):
                raise TypeError(f"Ensemble: member {name!r} is a {type(det).__name__}, expected a Detector")
        self.members = dict(members)
        self.weights = {
            name: check_number((weights or {}).get(name, 1.0), f"weights[{name!r}]", "Ensemble")
            for name in self.members
        }
        unknown = set(weights or {}) - set(self.members)
        if unknown:
            raise ValueError(f"Ensemble: weights for unknown members {sorted(unknown)}")
        self.member_fraction = check_number(
            member_fraction, "member_fraction", "Ensemble", low=0, high=1, low_open=True, high_open=True
        )
        self.seed = check_number(seed, "seed", "Ensemble", low=0, integer=True)
        self.needs_grad = any(det.needs_grad for det in self.members.values())
        used = sorted({det.uses for det in self.members.values()} - {"-"})
        self.uses = ", ".join(used) if used else "-"
        self._stats: dict[str, tuple[float, float]] | None = None

    @property
    def is_fitted(self) -> bool:
        return self._stats is not None

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The input shape the members agree on (None when none of them fixes one)."""
        shapes = [det.input_shape for det in self.members.values() if det.input_shape is not None]
        return shapes[0] if shapes else None

    def _check_models(self) -> None:
        shaped = {name: det.input_shape for name, det in self.members.items() if det.input_shape is not None}
        if len(set(shaped.values())) > 1:
            named = ", ".join(f"{name!r} ({list(shape)})" for name, shape in shaped.items())
            raise ValueError(
                f"Ensemble: its members take inputs of different shapes: {named}; combine detectors "
                f"whose models take the same images"
            )
        super()._check_models()

    def fit(self, x: torch.Tensor, fpr: float = 0.05, *, y=None) -> Ensemble:
        """Fits the members that are not fitted yet, then each member's mean and standard
        deviation and the threshold (a fraction ``fpr`` of in-distribution data flagged).

        x: in-distribution inputs [N, ...] (any input kind of ``detectors.inputs``).  With
        members to fit, a seeded part ``member_fraction`` of x fits them (each with its own
        ``fit(x_part, fpr)``) and the rest standardises and calibrates; both parts need at
        least 2 samples.  y: class labels [N], passed (split alike) to members whose ``fit``
        takes labels (``Mahalanobis``).  Errors of a member's fit name the member."""
        fpr = self._check_fpr(fpr, "fit")
        self._check_batch(x, "fit")
        to_fit = [name for name, det in self.members.items() if not det.is_fitted]
        if to_fit:
            x = self._fit_members(x, fpr, to_fit, y)
        self._fit(x)
        return self._set_threshold(self._calibration_scores(x), fpr)

    def _fit_members(self, x: torch.Tensor, fpr: float, names: list[str], y) -> torch.Tensor:
        """Fits the members ``names`` on a seeded part of x; returns the other part."""
        n = len(x)
        n_fit = int(round(self.member_fraction * n))
        if n_fit < 2 or n - n_fit < 2:
            raise ValueError(
                f"Ensemble.fit: members {names} are not fitted yet; fitting them on "
                f"member_fraction={self.member_fraction:g} of the data and standardising on the rest "
                f"needs at least 2 samples in each part, got {n} samples"
            )
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        fit_idx, rest_idx = perm[:n_fit].sort().values, perm[n_fit:].sort().values
        labels = None
        if y is not None:
            labels = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
            if labels.shape[:1] != (n,):
                raise ValueError(
                    f"Ensemble.fit: need one label per sample: x has {n}, y has shape {list(labels.shape)}"
                )
        for name in names:
            det = self.members[name]
            kwargs = {}
            if labels is not None and "y" in inspect.signature(det.fit).parameters:
                kwargs["y"] = labels[fit_idx.to(labels.device)]
            try:
                det.fit(x[fit_idx.to(x.device)], fpr, **kwargs)
            except (ValueError, TypeError, RuntimeError) as e:
                raise type(e)(f"Ensemble.fit: member {name!r}: {e}") from e
        return x[rest_idx.to(x.device)]

    def _fit(self, x: torch.Tensor) -> None:
        if len(x) < 2:
            raise ValueError(
                f"Ensemble.fit: needs at least 2 in-distribution samples to estimate each member's "
                f"standard deviation, got {len(x)}"
            )
        stats = {}
        for name, det in self.members.items():
            s = det.score(x)
            if not bool(torch.isfinite(s).all()):
                raise ValueError(
                    f"Ensemble.fit: member {name!r} gives infinite scores to "
                    f"{int((~torch.isfinite(s)).sum())} of {len(s)} in-distribution samples; it cannot "
                    f"be standardised"
                )
            sd = float(s.std())
            if not sd > 0:
                raise ValueError(
                    f"Ensemble.fit: member {name!r} gives the same score to every in-distribution "
                    f"sample; it cannot be standardised"
                )
            stats[name] = (float(s.mean()), sd)
        self._stats = stats

    def member_z_scores(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each member's standardised score on ``x``: {NAME: [B]}."""
        if self._stats is None:
            raise RuntimeError("Ensemble.score: call fit(x_val_in) first (it standardises the members)")
        return {
            name: (det.score(x) - self._stats[name][0]) / self._stats[name][1]
            for name, det in self.members.items()
        }

    def score(self, x: torch.Tensor) -> torch.Tensor:
        self._check_batch(x, "score")
        z = self.member_z_scores(x)
        out = sum(self.weights[name] * v for name, v in z.items())
        self._check_scores(out)
        return out
