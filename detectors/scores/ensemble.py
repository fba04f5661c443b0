"""Ensembles of detectors that look at different things (e.g. pixel-level complexity and
semantic features): each member's score is standardised on held-out in-distribution data
and the z-scores are summed.  HIGHER = MORE ANOMALOUS.

    ens = Ensemble({"PNG complexity": InputComplexity(glow), "PCA": PCA(transform=feats).fit(train)})
    ens.fit(x_val_in)          # members must already be fitted; this fits mean/std and the threshold
    ens.score(x)               # sum_i (s_i(x) - mean_i) / std_i

Fit the standardisation on in-distribution data the members were not fitted on (a held-out
split), otherwise the members' training data look more typical than new in-distribution data.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from invflow.validation import check_number

from .base import Detector


class Ensemble(Detector):
    """Sum of the members' scores, each standardised by its mean and standard deviation on the
    in-distribution data given to ``fit`` (z-score fusion).  ``weights`` (optional) scale the
    members' z-scores.  ``uses`` is the union of the members' ``uses``."""

    #: the fitted state is one mean and standard deviation per member, a monotone map of each
    #: member's score: the fitting data's fused scores are as typical as fresh data's
    calibrate_on_fit_data = True

    def __init__(self, members: Mapping[str, Detector], weights: Mapping[str, float] | None = None, **kw):
        super().__init__(**kw)
        if not isinstance(members, Mapping) or not members:
            raise ValueError("Ensemble: members must be a non-empty dict NAME -> fitted Detector")
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
        self.needs_grad = any(det.needs_grad for det in self.members.values())
        used = sorted({det.uses for det in self.members.values()} - {"-"})
        self.uses = ", ".join(used) if used else "-"
        self._stats: dict[str, tuple[float, float]] | None = None

    def _fit(self, x: torch.Tensor) -> None:
        if len(x) < 2:
            raise ValueError(
                f"Ensemble.fit: needs at least 2 in-distribution samples to estimate each member's "
                f"standard deviation, got {len(x)}"
            )
        stats = {}
        for name, det in self.members.items():
            s = det.score(x)
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
        return sum(self.weights[name] * v for name, v in z.items())
