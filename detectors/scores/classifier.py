"""Classifier-based OOD scores: the supervised baselines the five papers compare with
(Schirrmeister et al. 2020 Tab. 4 "MSP-OE" and S9's in-vs-general classifier; Chali et al. 2023 Tab. 2 Mahalanobis and
Energy).  All scores: HIGHER = MORE ANOMALOUS, float64 [B] on the CPU.

* ``MaxSoftmax``: s(x) = -max_k softmax(f(x) / T)_k (Hendrycks & Gimpel 2017; with a
  classifier trained by outlier exposure, Hendrycks, Mazeika & Dietterich 2019, it is MSP-OE).
* ``Energy``: s(x) = E(x) = -T logsumexp_k(f_k(x) / T) (Liu, Wang, Owens & Li 2020).
* ``Mahalanobis``: s(x) = min_k (g(x) - mu_k)^T P (g(x) - mu_k) on penultimate features g
  with class means mu_k and a tied precision P (Lee, Lee, Lee & Shin 2018), optionally on
  an input perturbed towards the closest class.
* ``BinaryClassifierScore``: s(x) = the logit of "general distribution" of a binary
  in-distribution (0) vs general-distribution (1) classifier (Schirrmeister et al. 2020 S9).

``f(x)`` are the logits [B, K] of any classifier module (e.g.
``detectors.baselines.ResNetClassifier``); inputs are raw uint8 images or floats
preprocessed into [-0.5, 0.5] (``as_model_input``).  Train the classifiers with
``detectors.objectives.classifier``.
"""

from __future__ import annotations

import numpy as np
import torch

from invflow.validation import IMAGE_RANGE, check_number

from .base import FOLDS, Detector, as_model_input, check_model, eval_mode


def _logits(model, x: torch.Tensor, where: str, min_classes: int = 1) -> torch.Tensor:
    logits = model(as_model_input(x, model))
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != len(x):
        shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{where}: the model must return logits [B, K], got {shape}")
    if logits.shape[1] < min_classes:
        raise ValueError(
            f"{where}: needs a classifier with at least {min_classes} classes, got {logits.shape[1]} logit(s)"
        )
    return logits


def _check_temperature(temperature, where: str) -> float:
    return check_number(temperature, "temperature", where, low=0, low_open=True)


class MaxSoftmax(Detector):
    """Maximum softmax probability (Hendrycks & Gimpel 2017, "A baseline for detecting
    misclassified and out-of-distribution examples"):

        s(x) = -max_k softmax(f(x) / T)_k          (in [-1, -1/K]; higher = more anomalous)

    ``temperature`` T > 0 (T = 1 is the paper's baseline; large T is ODIN's temperature
    scaling without the input perturbation).  With a classifier trained by
    ``classifier_objectives.outlier_exposure_objective`` (Hendrycks, Mazeika & Dietterich
    2019) this is "MSP-OE" of Schirrmeister et al. 2020 Tab. 4.  Needs K >= 2 classes."""

    uses = "labels"

    def __init__(self, model, temperature: float = 1.0, **kw):
        super().__init__(**kw)
        self.model = check_model(model, self.name, needs="logits")
        self.temperature = _check_temperature(temperature, "MaxSoftmax")

    def _score_batch(self, x):
        logits = _logits(self.model, x, self.name, min_classes=2)
        return -torch.softmax(logits.double() / self.temperature, dim=1).max(dim=1).values


class Energy(Detector):
    """Free energy of the logits (Liu, Wang, Owens & Li 2020, "Energy-based out-of-distribution
    detection", Eq. 1 with the logits as negative energies):

        s(x) = E(x; f) = -T logsumexp_k(f_k(x) / T)     (higher energy = more anomalous)

    ``temperature`` T > 0 (the paper uses T = 1).  Works with the classifier as trained with
    cross-entropy, or fine-tuned with ``classifier_objectives.energy_objective`` (the
    energy-bounded loss on auxiliary outliers, as Chali et al. 2023 Tab. 2 trained it)."""

    uses = "labels"

    def __init__(self, model, temperature: float = 1.0, **kw):
        super().__init__(**kw)
        self.model = check_model(model, self.name, needs="logits")
        self.temperature = _check_temperature(temperature, "Energy")

    def _score_batch(self, x):
        logits = _logits(self.model, x, self.name)
        t = self.temperature
        return -t * torch.logsumexp(logits.double() / t, dim=1)


class Mahalanobis(Detector):
    """Mahalanobis distance to the closest class (Lee, Lee, Lee & Shin 2018, "A simple unified
    framework for detecting out-of-distribution samples and adversarial attacks", Eqs. 1-2),
    on the penultimate features g(x) = ``model.features(x)``:

        mu_k = mean of g over the fitting samples of class k
        Sigma = (1/N) sum_i (g(x_i) - mu_{y_i}) (g(x_i) - mu_{y_i})^T    (one tied covariance)
        M_k(x) = (g(x) - mu_k)^T P (g(x) - mu_k),   P = Sigma^-1
        s(x) = min_k M_k(x)                          (higher = farther = more anomalous)

    Lee et al.'s confidence score is max_k -M_k(x) (the 1/2 of the Gaussian log-density is a
    constant factor); this score is its negation.

    Input pre-processing (Lee et al. Eq. 4) with ``epsilon`` > 0: each input is moved towards
    its closest class before scoring, x' = x - epsilon * sign(d M_k*(x) / dx) with
    k* = argmin_k M_k(x), and s(x') is the score (on the preprocessed scale; each x' is
    clamped into [-0.5, 0.5] widened to its own x's range, so preprocessed images stay in the
    cube and a flow's samples, which leave it, are not clipped).  It needs input gradients
    (``needs_grad`` is then True).  ``epsilon = 0`` (default) is the plain distance.

    ``fit(x, fpr, y=labels)`` fits the class means and the precision on the features of the
    in-distribution training data x with their class labels (required), then calibrates the
    threshold on the same x.  The precision comes from scikit-learn:

    * ``covariance="ledoit_wolf"`` (default): ``LedoitWolf`` shrinkage of the tied covariance.
      With few fitting samples per feature dimension, or features that are (nearly) constant
      in-distribution (dead ReLU units of the penultimate layer), the empirical covariance is
      singular; its pseudo-inverse then gives zero weight to exactly the directions in which an
      OOD input differs.  Shrinkage keeps P well-conditioned and costs nothing when N >> F.
    * ``covariance="empirical"``: ``EmpiricalCovariance`` as in Lee et al.'s code (pseudo-
      inverse precision); ``fit`` raises ValueError when a fit would have fewer samples than
      feature dimensions (then the pseudo-inverse flagged most fresh in-distribution data).

    Only the penultimate layer is used (Lee et al.'s feature ensemble over several layers
    with a logistic-regression combination is not implemented)."""

    uses = "labels"

    def __init__(self, model, epsilon: float = 0.0, covariance: str = "ledoit_wolf", **kw):
        super().__init__(**kw)
        if not callable(getattr(model, "features", None)):
            raise TypeError(
                f"Mahalanobis: the model must have a features(x) -> [B, F] method (e.g. "
                f"ResNetClassifier), got {type(model).__name__}"
            )
        epsilon = check_number(epsilon, "epsilon", "Mahalanobis", low=0)
        if covariance not in ("ledoit_wolf", "empirical"):
            raise ValueError(
                f"Mahalanobis: covariance must be 'ledoit_wolf' or 'empirical', got {covariance!r}"
            )
        self.model = model
        self.epsilon = float(epsilon)
        self.covariance = covariance
        self.needs_grad = self.epsilon > 0
        self.classes_: torch.Tensor | None = None
        self.means_: torch.Tensor | None = None  # [K, F] float64
        self.precision_: torch.Tensor | None = None  # [F, F] float64

    @property
    def is_fitted(self) -> bool:
        return self.means_ is not None

    # -- fitting -------------------------------------------------------------------------
    def fit(self, x: torch.Tensor, fpr: float = 0.05, *, y=None) -> Mahalanobis:
        """Fits class means and the tied precision on ``model.features(x)`` with labels ``y``
        ([N] ints), then sets the threshold on cross-fitted scores of ``x`` (``Detector.fit``:
        each fold scored by means and precision fitted without it), so that a fraction ``fpr``
        of fresh in-distribution data is flagged."""
        if isinstance(fpr, torch.Tensor) or isinstance(fpr, np.ndarray):
            raise TypeError(
                "Mahalanobis.fit: the second argument is fpr; pass the class labels as fit(x, y=labels)"
            )
        fpr = self._check_fpr(fpr, "fit")
        self._check_batch(x, "fit")
        if y is None:
            raise ValueError(
                "Mahalanobis.fit: class labels are required: fit(x_in, y=labels), with one "
                "label per in-distribution sample (class means and a tied covariance are "
                "fitted per class)"
            )
        labels = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
        labels = labels.reshape(-1)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"Mahalanobis.fit: labels must be integers, got dtype {labels.dtype}")
        if len(labels) != len(x) or (isinstance(y, torch.Tensor) and y.dim() != 1):
            raise ValueError(
                f"Mahalanobis.fit: need one label per sample: x has {len(x)} samples, y has "
                f"shape {list(y.shape) if hasattr(y, 'shape') else [len(labels)]}"
            )
        labels = labels.cpu().numpy()
        feats = self._features(x).numpy()
        self._check_sample_size(len(feats), feats.shape[1], len(np.unique(labels)))
        self._fit_state(feats, labels)
        held_out = self._cross_fitted_scores(
            len(x),
            lambda det, i: det._fit_state(feats[i.numpy()], labels[i.numpy()]),
            lambda det, i: det.score(x[i]),
        )
        return self._set_threshold(held_out, fpr)

    def _check_sample_size(self, n: int, n_features: int, n_classes: int) -> None:
        """``covariance="empirical"`` needs more samples than feature dimensions in every fit
        (the full one and each cross-fitting fold): with n - K < F the tied covariance is
        singular and its pseudo-inverse blows up the directions with the least sampled variance
        (fresh in-distribution data got flagged at 71-91% for fpr=0.1 with 40 samples of 60
        features).  ``ledoit_wolf`` shrinkage has no such limit."""
        fold_n = n - -(-n // min(FOLDS, n))
        if self.covariance == "empirical" and fold_n - n_classes < n_features:
            need = next(
                m
                for m in range(n, 10 * (n + n_features + n_classes))
                if m - -(-m // FOLDS) - n_classes >= n_features
            )
            raise ValueError(
                f"Mahalanobis.fit: covariance='empirical' needs more samples than feature "
                f"dimensions in each cross-fitting fold ({fold_n} samples - {n_classes} classes < "
                f"{n_features} features): the covariance is singular; use covariance='ledoit_wolf' "
                f"(the default) or at least {need} samples"
            )

    def _fit_state(self, feats: np.ndarray, labels: np.ndarray) -> None:
        """Class means and tied precision from features [N, F] and labels [N]."""
        classes = np.unique(labels)
        means = np.stack([feats[labels == k].mean(0) for k in classes])
        centred = feats - means[np.searchsorted(classes, labels)]
        from sklearn.covariance import EmpiricalCovariance, LedoitWolf

        est = LedoitWolf if self.covariance == "ledoit_wolf" else EmpiricalCovariance
        precision = est(assume_centered=True).fit(centred).precision_
        self.classes_ = torch.from_numpy(classes)
        self.means_ = torch.from_numpy(means.astype(np.float64))
        self.precision_ = torch.from_numpy(np.asarray(precision, dtype=np.float64))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features of ``x`` in eval mode, batched: float64 [N, F] on the CPU."""
        parts = []
        with eval_mode(self.model), torch.no_grad():
            for i in range(0, len(x), self.batch_size):
                f = self.model.features(as_model_input(x[i : i + self.batch_size], self.model))
                if not isinstance(f, torch.Tensor) or f.dim() != 2:
                    raise ValueError(
                        f"Mahalanobis: model.features must return [B, F], got "
                        f"{list(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}"
                    )
                parts.append(f.to("cpu", torch.float64))
        feats = torch.cat(parts)
        bad = ~torch.isfinite(feats).all(1)
        if bool(bad.any()):
            raise ValueError(
                f"Mahalanobis.fit: model.features gave NaN or Inf for {int(bad.sum())} of {len(feats)} "
                f"finite inputs (first at index {int(bad.nonzero()[0, 0])}); check the model's weights"
            )
        return feats

    # -- scoring -------------------------------------------------------------------------
    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """M_k(x) for every class: [B, K] (differentiable in x; x preprocessed floats)."""
        if self.means_ is None:
            raise RuntimeError("Mahalanobis.score: call fit(x_in, y=labels) first")
        f = self.model.features(x)
        f = f.to(torch.float64)
        means, prec = self.means_.to(f.device), self.precision_.to(f.device)
        d = f.unsqueeze(1) - means.unsqueeze(0)  # [B, K, F]
        return torch.einsum("bkf,fg,bkg->bk", d, prec, d)

    def _score_batch(self, x):
        xin = as_model_input(x, self.model)
        if self.epsilon > 0:
            xin = xin.detach().requires_grad_(True)
            with torch.enable_grad():
                closest = self.distances(xin).min(dim=1).values
                (grad,) = torch.autograd.grad(closest.sum(), xin)
            # each input kept within its own range or the preprocessed cube, whichever is
            # wider: preprocessed images stay images, a flow's samples are not clipped
            dims = tuple(range(1, xin.dim()))
            shape = (-1,) + (1,) * len(dims)
            lo = xin.detach().amin(dim=dims).clamp(max=-IMAGE_RANGE).reshape(shape)
            hi = xin.detach().amax(dim=dims).clamp(min=IMAGE_RANGE).reshape(shape)
            xin = torch.minimum(torch.maximum(xin - self.epsilon * grad.sign(), lo), hi).detach()
        with torch.no_grad():
            return self.distances(xin).min(dim=1).values


class BinaryClassifierScore(Detector):
    """In-distribution vs general-distribution classifier (Schirrmeister et al. 2020 S9, "pure discriminative
    approach"): a classifier with one logit trained with in-distribution samples as class 0
    and general-distribution samples (e.g. Tiny Images) as class 1
    (``classifier_objectives.in_vs_general_objective``):

        s(x) = f(x) = log p(general | x) - log p(in | x)     (higher = more anomalous)

    The log-odds rank like S9's 1 - p_ResNet(y_indist | x) (sigmoid is monotone) without
    saturating at 0 / 1.  The model may return [B, 1] or [B]."""

    uses = "aux data"

    def __init__(self, model, **kw):
        super().__init__(**kw)
        self.model = check_model(model, self.name, needs="logits")

    def _score_batch(self, x):
        out = self.model(as_model_input(x, self.model))
        if not isinstance(out, torch.Tensor) or out.shape not in ((len(x),), (len(x), 1)):
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"{self.name}: the model must return one logit per sample ([B, 1] or [B]; "
                f"ResNetClassifier(num_classes=1)), got {shape}"
            )
        return out.reshape(-1).double()
