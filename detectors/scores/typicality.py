"""Typicality test (Nalisnick et al. 2019, "Detecting out-of-distribution inputs to deep
generative models using typicality"), batch-wise.

Fit: the entropy estimate H = mean of -log p(x) over in-distribution training data.
Score of a batch of M inputs: | mean_{m} (-log p(x_m)) - H |; every member of a batch of
``batch_size`` consecutive inputs gets its batch's statistic (``batch_size=1`` scores each
input alone).  The threshold is calibrated on bootstrap batches of the calibration data, so
a fraction ``fpr`` of in-distribution *batches* is flagged.
"""

from __future__ import annotations

import numpy as np
import torch

from invflow.validation import check_number

from .base import Detector, check_model
from .likelihood import Likelihood


class Typicality(Detector):
    #: the fitted state is the mean -log p of the fitting data (each sample is 1/N of it), so
    #: the fitting data's statistics are as typical as fresh data's up to O(1/N)
    calibrate_on_fit_data = True

    def __init__(self, model, batch_size: int = 1, bootstrap: int = 1000, seed: int = 0, **kw):
        batch_size = check_number(
            batch_size, "batch_size (inputs per test)", "Typicality", low=1, integer=True
        )
        bootstrap = check_number(bootstrap, "bootstrap", "Typicality", low=1, integer=True)
        seed = check_number(seed, "seed", "Typicality", low=0, integer=True)
        super().__init__(**kw)
        self.model = check_model(model, "Typicality")
        self.test_batch, self.bootstrap, self.seed = batch_size, bootstrap, seed
        self.entropy: float | None = None

    @property
    def is_fitted(self) -> bool:
        return self.entropy is not None

    def _nll(self, x: torch.Tensor) -> torch.Tensor:
        """-log p per input (floored), batched like every detector's scores."""
        return Likelihood(self.model, batch_size=self.batch_size, progress=self.progress).score(x)

    def _fit(self, x):
        self.entropy = float(self._nll(x).mean())

    def score(self, x):
        self._check_batch(x, "score")
        if self.entropy is None:
            raise RuntimeError("Typicality.score: call fit(x_train_in) first (estimates the entropy)")
        nll = self._nll(x)
        group = torch.arange(len(nll)) // self.test_batch
        sums = torch.zeros(int(group[-1]) + 1, dtype=nll.dtype).index_add_(0, group, nll)
        counts = torch.bincount(group).to(nll.dtype)
        return (sums / counts - self.entropy).abs()[group]

    def _calibration_scores(self, x):
        if self.test_batch == 1:
            return self.score(x)
        nll = self._nll(x).numpy()
        rng = np.random.default_rng(self.seed)
        idx = rng.integers(0, len(nll), size=(self.bootstrap, self.test_batch))
        return torch.from_numpy(np.abs(nll[idx].mean(1) - self.entropy))
