"""Self-supervised transformation prediction: how sure a classifier trained to tell the
in-distribution images from their flipped, rotated and inverted copies is that an input is
*not* transformed (Golan & El-Yaniv 2018, "geometric transformations"; Hendrycks et al. 2019,
rotation prediction).  HIGHER = MORE ANOMALOUS.

Flow likelihoods and pooled ImageNet features are both nearly blind to orientation and
polarity: a flow models local pixel statistics, which an upside-down or rotated garment
shares, and EfficientNet was trained with flips and sees an inverted garment as a garment.
A classifier that learns the data's canonical orientation and polarity is not: on the OOD
suite of docs/results.md it scores upside-down, rotated and inverted Fashion-MNIST at
97.5-99.6 AUROC, where feature PCA reaches 67.6-94.0.  It is weak on what does not change
orientation (low contrast: 38.5), so the bundle's default uses it inside an ensemble.

The transformation classes (horizontal flips count as the identity: most image data is
left-right symmetric in distribution):

    0 identity (and its horizontal flip) | 1 vertical flip | 2 rotation by 90 degrees
    3 rotation by 270 degrees            | 4 inverted intensities (255 - k)

Features: the unit EfficientNet-Lite0 features of ``detectors.features`` at ``feature_size``;
classifier: scikit-learn's multinomial ``LogisticRegression`` (balanced classes).  Score:
-log p(identity | f(x)) in nats.
"""

from __future__ import annotations

import numpy as np
import torch

from invflow.validation import check_number

from .feature_space import _FeatureDetector

#: (name, transform of uint8 or float images [N, C, H, W]) of classes 1.. (0 is the identity)
TRANSFORMS = (
    ("vertical flip", lambda x: x.flip(-2)),
    ("rotation 90", lambda x: x.rot90(1, (-2, -1))),
    ("rotation 270", lambda x: x.rot90(-1, (-2, -1))),
    ("inversion", lambda x: 255 - x if x.dtype == torch.uint8 else -x),
)


class TransformationClassifier(_FeatureDetector):
    """Score = -log p(identity | features(x)) of a logistic regression trained on the
    features of the fitting images (class 0, with their horizontal flips) and of their
    vertical flips, 90 / 270 degree rotations and inversions (classes 1-4).

    ``fit`` / ``_fit`` take *images* [N, C, H, W] (uint8, or floats preprocessed into
    [-0.5, 0.5]; square, for the rotations): the transformed copies are made from them.  At
    most ``max_fit`` of them (a seeded random subset) are transformed; the identity class uses
    all.  ``score`` takes images or their feature vectors [B, 1280] (the bundle reuses the
    features it extracted).  ``C``: the inverse regularisation strength of scikit-learn.
    ValueError for non-square images or fewer than 2 images."""

    def __init__(self, feature_size: int = 96, max_fit: int = 1000, C: float = 1.0, seed: int = 0, **kw):
        super().__init__(feature_size=feature_size, **kw)
        self.max_fit = check_number(max_fit, "max_fit", "TransformationClassifier", low=2, integer=True)
        self.C = check_number(C, "C", "TransformationClassifier", low=0, low_open=True)
        self.seed = check_number(seed, "seed", "TransformationClassifier", low=0, integer=True)
        self.coef_: np.ndarray | None = None
        self.intercept_: np.ndarray | None = None

    def _image_vectors(self, x: torch.Tensor) -> np.ndarray:
        return super()._vectors(x)

    def _fit(self, x, features: np.ndarray | None = None):
        """Fits on in-distribution images ``x``; ``features``: their feature vectors when
        already extracted (else computed)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[-1] != x.shape[-2]:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"{self.name}: fit needs square images [N, C, S, S] to rotate, got {shape}; resize them first"
            )
        if len(x) < 2:
            raise ValueError(f"{self.name}: fit needs at least 2 images, got {len(x)}")
        f0 = self._image_vectors(x) if features is None else np.asarray(features, dtype=np.float64)
        g = torch.Generator().manual_seed(self.seed)
        sub = x[torch.randperm(len(x), generator=g)[: self.max_fit].sort().values]
        blocks, labels = [f0, self._image_vectors(sub.flip(-1))], [0, 0]
        for k, (_, t) in enumerate(TRANSFORMS, 1):
            blocks.append(self._image_vectors(t(sub)))
            labels.append(k)
        X = np.concatenate(blocks)
        y = np.concatenate([np.full(len(b), c) for b, c in zip(blocks, labels)])
        self._fit_classifier(X, y)
        self._fitted = True

    def _fit_classifier(self, X: np.ndarray, y: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=self.C, max_iter=3000, class_weight="balanced").fit(X, y)
        self.coef_, self.intercept_ = clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64)

    def fit(self, x, fpr=0.05):
        """Fits on in-distribution images ``x`` and sets the threshold on the scores of a
        held-out fifth of them (a classifier fitted on the other four fifths)."""
        fpr = self._check_fpr(fpr, "fit")
        self._check_batch(x, "fit")
        n = len(x)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + 1))
        n_cal = max(1, n // 5)
        self._fit(x[perm[n_cal:]])
        self._set_threshold(self.score(x[perm[:n_cal]]), fpr)
        self._fit(x)
        return self

    def _score_features(self, f: np.ndarray) -> np.ndarray:
        logits = f @ self.coef_.T + self.intercept_
        logits = logits - logits.max(1, keepdims=True)
        return -(logits[:, 0] - np.log(np.exp(logits).sum(1)))

    def _score_batch(self, x):
        if not self._fitted:
            raise RuntimeError(f"{self.name}.score: call fit(x_in) first")
        f = self._vectors(x)
        if f.shape[1] != self.coef_.shape[1]:
            raise ValueError(
                f"{self.name}.score: fitted on {self.coef_.shape[1]}-dimensional features, got "
                f"{f.shape[1]}-dimensional ones; score images or features of the kind it was fitted on"
            )
        return torch.from_numpy(self._score_features(f))

    def tensors(self) -> dict:
        """The fitted classifier as float64 tensors (for a bundle's state file)."""
        return {"coef": torch.from_numpy(self.coef_), "intercept": torch.from_numpy(self.intercept_)}

    def load_tensors(self, coef: torch.Tensor, intercept: torch.Tensor) -> None:
        """Restores :meth:`tensors`; ValueError for shapes that do not fit together."""
        if coef.dim() != 2 or coef.shape[0] != len(TRANSFORMS) + 1 or intercept.shape != (coef.shape[0],):
            raise ValueError(
                f"{self.name}: expected coef [{len(TRANSFORMS) + 1}, D] and intercept "
                f"[{len(TRANSFORMS) + 1}], got {list(coef.shape)} and {list(intercept.shape)}"
            )
        self.coef_, self.intercept_ = coef.double().numpy(), intercept.double().numpy()
        self._fitted = True
