"""Training objectives: plain loss functions of log-likelihoods or logits, and factories of
objectives for ``invflow.train.Trainer`` (``objective(model, batch) -> (loss, logs)``).

* ``detectors.objectives`` itself (:mod:`.flow`): the flow losses of the papers --
  ``outlier_loss`` (Schirrmeister et al. 2020 Eq. 2), ``margin_loss``, ``contrastive_loss``
  (Schmier et al. 2022 Sec. 5), ``negative_loss``, ``approx_mass_penalty`` (Chali et al. 2023),
  ``supervised_outlier_loss`` and their ``*_objective`` factories;
* :mod:`.classifier`: classifier training (cross-entropy, outlier exposure, energy, in vs general);
* :mod:`.supervised`: the class-conditional flow and its objective (Schirrmeister et al. 2020 Sec. 3.2).
"""

from . import classifier, flow, supervised
from .flow import (  # the private names too: detectors.objectives was one module
    MAX_DROPPED,
    _check_pair,  # noqa: F401
    _draw,  # noqa: F401
    _per_dim,  # noqa: F401
    _with_draw,  # noqa: F401
    approx_mass_objective,
    approx_mass_penalty,
    contrastive_loss,
    contrastive_objective,
    diff_dagger_objective,
    draw_samples,
    margin_loss,
    margin_objective,
    negative_loss,
    negative_objective,
    nll,
    outlier_loss,
    outlier_objective,
    supervised_outlier_loss,
)

__all__ = [
    "MAX_DROPPED",
    "nll",
    "outlier_loss",
    "margin_loss",
    "contrastive_loss",
    "negative_loss",
    "approx_mass_penalty",
    "supervised_outlier_loss",
    "outlier_objective",
    "diff_dagger_objective",
    "margin_objective",
    "contrastive_objective",
    "negative_objective",
    "approx_mass_objective",
    "draw_samples",
    "classifier",
    "flow",
    "supervised",
]
