"""Detection metrics, all through scikit-learn, with the conventions of docs/design.md.

Scores follow the detectors' direction: HIGHER = MORE ANOMALOUS.

* ``auroc``: area under the ROC curve with OOD as the positive class.
* ``aupr_out``: average precision with OOD as the positive class (scores as they are).
* ``aupr_in``: average precision with in-distribution as the positive class (scores negated).
* ``fpr95``: share of OOD samples accepted as in-distribution when 95% of the
  in-distribution samples are accepted (the ODIN / OpenOOD convention); ``tnr95 = 1 - fpr95``
  (Chali et al. 2023 "TNR at 95% TPR", with in-distribution as the positive class).

``balance=True`` equalises the two classes before computing anything (Chali et al. 2023 Sec. 4.3:
ROC and PR curves are sensitive to class imbalance): the larger set is subsampled at
random (seeded) to the size of the smaller one.
"""

from __future__ import annotations

import numpy as np
import torch

METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95", "tnr95")


def _as_array(scores, name: str) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().double().numpy()
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"evaluate: {name} must be a 1-D array of scores, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"evaluate: {name} is empty")
    if np.isnan(arr).any():
        raise ValueError(
            f"evaluate: {name} contains NaN scores; set non-finite log-likelihoods to a "
            "finite floor (detectors use -3e6, Schirrmeister et al. 2020 S4.5) before scoring"
        )
    return arr


def balance_classes(s_in: np.ndarray, s_out: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Subsamples the larger of the two score sets to the size of the smaller one."""
    n = min(len(s_in), len(s_out))
    rng = np.random.default_rng(seed)
    if len(s_in) > n:
        s_in = s_in[np.sort(rng.choice(len(s_in), n, replace=False))]
    if len(s_out) > n:
        s_out = s_out[np.sort(rng.choice(len(s_out), n, replace=False))]
    return s_in, s_out


def fpr_at_tpr(s_in: np.ndarray, s_out: np.ndarray, tpr: float = 0.95) -> float:
    """Share of OOD samples accepted when a fraction ``tpr`` of in-distribution samples is
    accepted (in-distribution is the positive class, accepted = score at or below the
    threshold).  The threshold is the smallest in-distribution score quantile reaching ``tpr``."""
    # in-distribution positive: negate scores so that higher = more in-distribution.
    labels = np.concatenate([np.ones(len(s_in)), np.zeros(len(s_out))])
    from sklearn.metrics import roc_curve

    fpr, tpr_curve, _ = roc_curve(labels, -np.concatenate([s_in, s_out]), drop_intermediate=False)
    return float(fpr[np.searchsorted(tpr_curve, tpr, side="left")])


def evaluate(s_in, s_out, balance: bool = False, seed: int = 0) -> dict[str, float]:
    """Metrics of anomaly scores on in-distribution (``s_in``) and OOD (``s_out``) samples.

    Returns ``{"auroc", "aupr_in", "aupr_out", "fpr95", "tnr95"}`` as floats in [0, 1].
    +-inf scores are allowed (ranked at the ends); NaN raises ``ValueError``.
    """
    s_in, s_out = _as_array(s_in, "s_in"), _as_array(s_out, "s_out")
    if balance:
        s_in, s_out = balance_classes(s_in, s_out, seed)
    # sklearn rejects infinities: map them beyond every finite score, order preserved.
    both = np.concatenate([s_in, s_out])
    finite = both[np.isfinite(both)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    span = max(hi - lo, 1.0)
    both = np.where(both == np.inf, hi + span, np.where(both == -np.inf, lo - span, both))
    s_in, s_out = both[: len(s_in)], both[len(s_in) :]
    labels_out = np.concatenate([np.zeros(len(s_in)), np.ones(len(s_out))])
    fpr95 = fpr_at_tpr(s_in, s_out, 0.95)
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {
        "auroc": float(roc_auc_score(labels_out, both)),
        "aupr_in": float(average_precision_score(1 - labels_out, -both)),
        "aupr_out": float(average_precision_score(labels_out, both)),
        "fpr95": fpr95,
        "tnr95": 1.0 - fpr95,
    }
