"""The detector API shared by every score (docs/design.md, "Detectors"; pytorch-ood style).

    det = SomeDetector(...)
    det.fit(x_in)          # fits what the detector needs and calibrates the threshold
    s = det.score(x)       # float64 [B]; HIGHER = MORE ANOMALOUS
    det.predict(x)         # bool [B]: score above the threshold that flags a fraction
                           # ``fpr`` of in-distribution data (default 5%)

Inputs are image batches either as raw ``uint8`` (preprocessed here without noise, Schirrmeister et al. 2020
S4.5 "noise-free evaluation") or as floats already preprocessed into [-0.5, 0.5]
(``invflow.data.preprocess``), or feature / tabular vectors [B, D] for vector models, as
tensors, numpy arrays, lists of PIL images, Datasets or DataLoaders (``detectors.inputs``);
``det.decision_function(x)`` (PyOD) and ``det(x)`` are ``det.score(x)``.
Non-finite log-likelihoods are set to ``LOG_LIKELIHOOD_FLOOR = -3e6`` before any
difference is taken (Schirrmeister et al. 2020 S4.5).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from invflow.data import preprocess
from invflow.layers import UninitializedWarning, warn_if_uninitialized
from invflow.validation import IMAGE_RANGE, check_number

from ..inputs import accepts_any_input

LOG_LIKELIHOOD_FLOOR = -3e6

#: folds of the cross-fitting with which ``Detector.fit`` calibrates detectors that fit a state
FOLDS = 5


def floor_log_likelihood(log_p: torch.Tensor) -> torch.Tensor:
    """Non-finite (-inf, +inf, NaN) log-likelihoods -> -3e6 (Schirrmeister et al. 2020 S4.5)."""
    return torch.where(torch.isfinite(log_p), log_p, torch.full_like(log_p, LOG_LIKELIHOOD_FLOOR))


def model_dtype_device(model) -> tuple[torch.dtype, torch.device]:
    if isinstance(model, nn.Module):
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                return t.dtype, t.device
    return torch.get_default_dtype(), torch.device("cpu")


def as_model_input(x: torch.Tensor, model=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 images -> noise-free preprocessed floats in the model's dtype; floats pass
    through unchanged (the model validates them).  Both move to the model's device."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor batch, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        m_dtype, device = model_dtype_device(model) if model is not None else (torch.float32, x.device)
        return preprocess(x, dequantize=False, dtype=dtype or m_dtype).to(device)
    if not x.is_floating_point():
        raise TypeError(
            f"expected uint8 images (0..255) or floats preprocessed into [-0.5, 0.5], got {x.dtype}"
        )
    if model is not None:
        _, device = model_dtype_device(model)
        if x.device != device:
            x = x.to(device)
    return x


class eval_mode:
    """Context manager: puts the given modules in eval mode (no ActNorm initialisation, no
    dropout) and restores their previous modes afterwards."""

    def __init__(self, *modules):
        self.modules = [m for m in modules if isinstance(m, nn.Module)]

    def __enter__(self):
        self.saved = [[(sub, sub.training) for sub in m.modules()] for m in self.modules]
        for m in self.modules:
            m.eval()
        return self

    def __exit__(self, *exc):
        for states in self.saved:
            for sub, mode in states:
                sub.training = mode
        return False


def log_prob(model, x: torch.Tensor) -> torch.Tensor:
    """log p(x) [B] of any model exposing ``log_prob`` (or a forward returning ``.log_prob``)."""
    if hasattr(model, "log_prob"):
        return model.log_prob(x)
    return model(x).log_prob


class Detector:
    """Base class: subclasses implement ``_score_batch(x) -> [B]`` and optionally ``_fit``.

    ``batch_size`` bounds memory while scoring; ``progress`` shows a tqdm bar.
    """

    #: the stated score direction (pytorch-ood convention)
    higher_is_more_anomalous = True
    #: what beyond unlabelled in-distribution data the detector uses: "-", "aux data", "labels"
    uses = "-"
    #: whether scoring needs gradients w.r.t. the input
    needs_grad = False

    def __init_subclass__(cls, **kw):
        """fit / calibrate / score / predict of every subclass take every input kind of
        ``detectors.inputs`` (tensors, numpy, lists of PIL images, Datasets, DataLoaders)."""
        super().__init_subclass__(**kw)
        for name in ("fit", "calibrate", "score", "predict"):
            if name in vars(cls):
                setattr(cls, name, accepts_any_input(vars(cls)[name]))

    #: whether the state ``_fit`` learns leaves the fitting data's scores typical of fresh
    #: in-distribution data (then ``fit`` calibrates on them directly, without cross-fitting)
    calibrate_on_fit_data = False

    def __init__(self, batch_size: int = 256, progress: bool = False):
        self.batch_size = check_number(batch_size, "batch_size", type(self).__name__, low=1, integer=True)
        self.progress = progress
        self.threshold: float | None = None
        self.fpr: float | None = None

    # -- API -------------------------------------------------------------------------
    @accepts_any_input
    def fit(self, x: torch.Tensor, fpr: float = 0.05) -> Detector:
        """Fits the detector's own state on in-distribution ``x`` (if it has any) and sets the
        threshold so that a fraction ``fpr`` of *fresh* in-distribution data is flagged: a
        detector that fits a state calibrates on out-of-fold scores (``FOLDS``-fold
        cross-fitting: the state fitted without each fold scores that fold), since its own
        training points score as more typical than new data (a KDE's points sit on their own
        kernels: calibrating on them flagged 53% of fresh data at fpr 5%).  Detectors without
        a state (likelihoods of a given model) calibrate on ``x`` itself.  Use ``calibrate``
        to set the threshold on separate held-out data."""
        fpr = self._check_fpr(fpr, "fit")
        self._check_batch(x, "fit")
        self._fit(x)
        if type(self)._fit is Detector._fit or self.calibrate_on_fit_data:
            return self._set_threshold(self._calibration_scores(x), fpr)
        held_out = self._cross_fitted_scores(
            len(x), lambda det, idx: det._fit(x[idx]), lambda det, idx: det._calibration_scores(x[idx])
        )
        return self._set_threshold(held_out, fpr)

    def _cross_fitted_scores(self, n: int, fit_subset, score_subset) -> torch.Tensor:
        """Out-of-fold calibration scores of n samples [N]: for each of ``FOLDS`` seeded folds a
        shallow copy of the detector is fitted on the other folds (``fit_subset(copy, idx)``)
        and scores the fold (``score_subset(copy, idx)``)."""
        if n < 2:
            raise ValueError(
                f"{self.name}.fit: needs at least 2 in-distribution samples to fit and calibrate, got {n}"
            )
        folds = min(FOLDS, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        scores = torch.empty(n, dtype=torch.float64)
        for f in range(folds):
            held = perm[f::folds]
            rest = torch.cat([perm[g::folds] for g in range(folds) if g != f])
            det = copy.copy(self)
            fit_subset(det, rest)
            scores[held] = torch.as_tensor(np.asarray(score_subset(det, held)), dtype=torch.float64)
        return scores

    def _check_fpr(self, fpr, where: str) -> float:
        return check_number(fpr, "fpr", f"{self.name}.{where}", low=0, high=1, high_open=True)

    @accepts_any_input
    def calibrate(self, x: torch.Tensor, fpr: float = 0.05) -> Detector:
        """Sets the threshold so that a fraction ``fpr`` of in-distribution ``x`` scores above it."""
        fpr = self._check_fpr(fpr, "calibrate")
        return self._set_threshold(self._calibration_scores(x), fpr)

    def _set_threshold(self, in_scores: torch.Tensor, fpr: float) -> Detector:
        """Threshold = the (1 - fpr) quantile of in-distribution scores (an observed score)."""
        s = in_scores.numpy()
        self.threshold = float(np.quantile(s, 1.0 - fpr, method="higher")) if fpr > 0 else float(s.max())
        self.fpr = fpr
        return self

    @accepts_any_input
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly scores, float64 [B] on the CPU; higher = more anomalous."""
        self._check_batch(x, "score")
        parts = []
        n = len(x)
        models = [v for v in vars(self).values() if isinstance(v, nn.Module)]
        for m in models:  # an untrained model's scores are meaningless (its ActNorms say so)
            warn_if_uninitialized(m, f"{self.name}.score", stacklevel=4)
        with (
            eval_mode(*models),
            warnings.catch_warnings(),
            tqdm(total=n, disable=not self.progress, desc=self.name, unit="img", leave=False) as bar,
        ):
            warnings.simplefilter("ignore", UninitializedWarning)  # said once above, not per batch
            for i in range(0, n, self.batch_size):
                xb = x[i : i + self.batch_size]
                if self.needs_grad:
                    s = self._score_batch(xb)
                else:
                    with torch.no_grad():
                        s = self._score_batch(xb)
                parts.append(s.detach().to("cpu", torch.float64).reshape(-1))
                bar.update(len(xb))
        out = torch.cat(parts)
        if out.shape[0] != n:
            raise RuntimeError(f"{self.name}: produced {out.shape[0]} scores for {n} inputs")
        return out

    @accepts_any_input
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """True where ``x`` is flagged anomalous (score above the calibrated threshold)."""
        if self.threshold is None:
            raise RuntimeError(
                f"{type(self).__name__}.predict: no threshold yet; call fit(x_in) or "
                f"calibrate(x_val_in, fpr=...) first"
            )
        return self.score(x) > self.threshold

    def decision_function(self, x) -> torch.Tensor:
        """PyOD's name for :meth:`score` (higher = more anomalous)."""
        return self.score(x)

    def __call__(self, x) -> torch.Tensor:
        """``det(x)`` is ``det.score(x)``."""
        return self.score(x)

    @property
    def name(self) -> str:
        return type(self).__name__

    # -- hooks -----------------------------------------------------------------------
    def _fit(self, x: torch.Tensor) -> None:
        pass

    def _calibration_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x)

    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_batch(self, x, where: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.name}.{where}: expected a torch.Tensor batch, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(
                f"{self.name}.{where}: expected a batch [B, ...] (images [B, C, H, W] or "
                f"vectors [B, D]), got shape {list(x.shape)}"
            )
        if len(x) == 0:
            raise ValueError(f"{self.name}.{where}: empty batch")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{self.name}.{where}: input contains NaN or Inf")
        # float images go to models that take [-0.5, 0.5]; a user's ``transform`` sets its own convention
        if (
            x.is_floating_point()
            and x.dim() == 4
            and getattr(self, "transform", None) is None
            and bool((x.abs() > IMAGE_RANGE).any())
        ):
            raise ValueError(
                f"{self.name}.{where}: floating images must be preprocessed into [-{IMAGE_RANGE:g}, "
                f"{IMAGE_RANGE:g}] (got min {float(x.min()):.4g}, max {float(x.max()):.4g}: 0..255 or "
                f"torchvision's 0..1?); pass uint8 images, or preprocess them with "
                f"invflow.data.preprocess"
            )

    def __repr__(self) -> str:
        t = "uncalibrated" if self.threshold is None else f"threshold={self.threshold:.4g} at fpr={self.fpr}"
        return f"{self.name}({t})"
