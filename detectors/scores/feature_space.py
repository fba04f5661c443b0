"""Feature-space baselines of Schmier et al. 2022 Sec. 5.1 (on e.g. normalised EfficientNet / MOCO
features, ``detectors.features``), all with scikit-learn.  Inputs are vectors [B, D]; with a
``transform`` (e.g. a feature extractor) raw inputs are mapped first; images given without
one go through EfficientNet-Lite0 at ``feature_size`` (``detectors.features``).
HIGHER = MORE ANOMALOUS.

* ``MSEToMean``: ||f - mean_in||^2, the squared distance to the mean of the in-distribution
  features (a unit Gaussian around the mean).
* ``MSERatio``: ||f - mean_in||^2 - ||f - mean_aux||^2 (the log-ratio of two such Gaussians).
* ``KNN``: distance to the k-th nearest in-distribution feature.
* ``KDE``: -log density of a Gaussian kernel density estimate.
* ``PCA``: reconstruction error from the principal subspace of the in-distribution features.

The flow baselines "Flow" and "Flow-ratio" are ``Likelihood`` and ``LikelihoodRatio`` with a
vector flow (``invflow.VectorFlow``) trained on the features.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable

import numpy as np
import torch

from invflow.validation import IMAGE_RANGE, check_number, check_preprocessed

from .base import FOLDS, Detector


def _vectors(
    x: torch.Tensor, transform: Callable | None, where: str = "feature-space detector"
) -> np.ndarray:
    """Feature vectors float64 [B, D] of x (through ``transform`` if given); ValueError for
    another shape or for non-finite features."""
    if transform is not None:
        x = transform(x)
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"{where}: expected feature vectors [B, D] or images [B, C, H, W] "
            f"(run through EfficientNet-Lite0, or a given transform=), got {shape}"
        )
    f = x.detach().to("cpu", torch.float64).numpy()
    bad = ~np.isfinite(f).all(1)
    if bad.any():
        source = "the transform gave" if transform is not None else "got"
        raise ValueError(
            f"{where}: {source} NaN or Inf features for {int(bad.sum())} of {len(f)} inputs (first at "
            f"index {int(np.flatnonzero(bad)[0])}); drop or repair them"
        )
    return f


class _FeatureDetector(Detector):
    """Images [B, C, H, W] given without a ``transform`` go through EfficientNet-Lite0 at
    ``feature_size`` (``detectors.features``, unit-norm features) first: uint8, or floats
    preprocessed into [-0.5, 0.5] (values beyond it, as a flow's samples take, are clamped
    into it like ``invflow.data.to_images`` does; raw 0..255 or 0..1 floats raise ValueError).
    Any image size is taken (EfficientNet resizes); ``resize=True`` also takes lists of
    images of different sizes (resized to ``feature_size``, RGB)."""

    def __init__(self, transform: Callable | None = None, feature_size: int = 96, **kw):
        super().__init__(**kw)
        self.transform = transform
        self.feature_size = check_number(
            feature_size, "feature_size", type(self).__name__, low=1, integer=True
        )
        self._fitted = False

    def _vectors(self, x) -> np.ndarray:
        if self.transform is None and isinstance(x, torch.Tensor) and x.dim() == 4:
            from ..features import image_features

            check_preprocessed(x, self.name)  # raw pixel values given as floats
            if x.is_floating_point():  # e.g. a flow's samples: pixel intensities, as to_images clamps
                x = x.clamp(-IMAGE_RANGE, IMAGE_RANGE)
            return _vectors(image_features(x, self.feature_size, progress=self.progress), None, self.name)
        return _vectors(x, self.transform, self.name)

    @property
    def is_fitted(self) -> bool:
        return self._fitted

    def _resize_target(self):
        """Without a transform, images go to EfficientNet-Lite0 at ``feature_size`` (RGB)."""
        return (3, self.feature_size, self.feature_size) if self.transform is None else None

    def _fit(self, x):
        self._fit_features(self._vectors(x))
        self._fitted = True

    def fit(self, x, fpr=0.05):
        """Fits on the features of in-distribution ``x`` and sets the threshold on held-out
        scores (``_held_out_scores``: leave-one-out or cross-fitted), so that a fraction
        ``fpr`` of fresh in-distribution data is flagged (see ``Detector.fit``)."""
        fpr = self._check_fpr(fpr, "fit")
        self._check_batch(x, "fit")
        f = self._vectors(x)
        self._fit_features(f)
        self._fitted = True
        return self._set_threshold(torch.as_tensor(self._held_out_scores(f), dtype=torch.float64), fpr)

    def _held_out_scores(self, f: np.ndarray) -> np.ndarray:
        """Scores of the fitting features from states that did not see them (k-fold)."""
        return self._cross_fitted_scores(
            len(f),
            lambda det, idx: det._fit_features(f[idx.numpy()]),
            lambda det, idx: det._score_features(f[idx.numpy()]),
        ).numpy()

    def _score_batch(self, x):
        if not self._fitted:
            raise RuntimeError(f"{self.name}.score: call fit(x_in) first")
        f = self._vectors(x)
        dim = len(self.mean_) if hasattr(self, "mean_") else self.train_.shape[1]
        if f.shape[1] != dim:
            raise ValueError(
                f"{self.name}.score: fitted on {dim}-dimensional features, got {f.shape[1]}-dimensional "
                f"ones; score inputs of the kind it was fitted on (same transform)"
            )
        return torch.from_numpy(np.asarray(self._score_features(f), dtype=np.float64))

    def _fit_features(self, f: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _score_features(self, f: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class MSEToMean(_FeatureDetector):
    """s(f) = ||f - mean_in||^2 (Schmier et al. 2022 "MSE")."""

    def _fit_features(self, f):
        self.mean_ = f.mean(0)

    def _score_features(self, f):
        return ((f - self.mean_) ** 2).sum(1)


class MSERatio(_FeatureDetector):
    """s(f) = ||f - mean_in||^2 - ||f - mean_aux||^2 (Schmier et al. 2022 "MSE-ratio"); ``aux`` are the
    auxiliary-distribution inputs (transformed like the others)."""

    uses = "aux data"

    def __init__(self, aux: torch.Tensor, transform: Callable | None = None, **kw):
        super().__init__(transform=transform, **kw)
        self.aux_mean_ = self._vectors(aux).mean(0)

    def _fit_features(self, f):
        self.mean_ = f.mean(0)

    def _score_features(self, f):
        return ((f - self.mean_) ** 2).sum(1) - ((f - self.aux_mean_) ** 2).sum(1)


class KNN(_FeatureDetector):
    """s(f) = distance to the k-th nearest in-distribution training feature.  Calibration
    on the training data itself leaves each point out (it is its own nearest neighbour)."""

    def __init__(self, k: int = 5, transform: Callable | None = None, **kw):
        k = check_number(k, "k", "KNN", low=1, integer=True)
        super().__init__(transform=transform, **kw)
        self.k = k

    def _fit_features(self, f):
        if len(f) <= self.k:
            raise ValueError(f"KNN: need more than k={self.k} training vectors, got {len(f)}")
        from sklearn.neighbors import NearestNeighbors

        self.nn_ = NearestNeighbors(n_neighbors=self.k + 1).fit(f)
        self.train_ = f

    def _score_features(self, f):
        return self.nn_.kneighbors(f, n_neighbors=self.k)[0][:, -1]

    def _held_out_scores(self, f):
        # leave-one-out: the (k+1)-th neighbour of a training point, itself excluded
        return self.nn_.kneighbors(self.train_, n_neighbors=self.k + 1)[0][:, -1]


class KDE(_FeatureDetector):
    """s(f) = -log of a Gaussian kernel density estimate fitted on in-distribution features
    (bandwidth "scott" / "silverman" as scikit-learn's ``KernelDensity`` computes them, or a
    float).  The density is evaluated exactly (log-sum-exp over all training points, in
    chunks): scikit-learn's tree approximation is off by nats far from the data."""

    def __init__(self, bandwidth: float | str = "scott", transform: Callable | None = None, **kw):
        super().__init__(transform=transform, **kw)
        if not (isinstance(bandwidth, str) and bandwidth in ("scott", "silverman")):
            if isinstance(bandwidth, str):
                raise ValueError(
                    f"KDE: bandwidth must be 'scott', 'silverman' or a number > 0, got {bandwidth!r}"
                )
            bandwidth = check_number(bandwidth, "bandwidth", "KDE", low=0, low_open=True)
        self.bandwidth = bandwidth

    def _fit_features(self, f):
        from sklearn.neighbors import KernelDensity

        self.kde_ = KernelDensity(kernel="gaussian", bandwidth=self.bandwidth).fit(f)
        self.bandwidth_ = float(self.kde_.bandwidth_)
        self.train_ = f

    def _score_features(self, f, leave_one_out: bool = False):
        from scipy.special import logsumexp

        h, (n, d) = self.bandwidth_, self.train_.shape
        norm = np.log(n - leave_one_out) + 0.5 * d * np.log(2 * np.pi * h * h)
        sq_train = (self.train_**2).sum(1)
        out = np.empty(len(f))
        for i in range(0, len(f), 1024):
            q = f[i : i + 1024]
            sq = (q**2).sum(1)[:, None] + sq_train[None, :] - 2 * q @ self.train_.T
            if leave_one_out:  # f is the training set: drop each point's own kernel
                rows = np.arange(len(q))
                sq[rows, i + rows] = np.inf
            out[i : i + 1024] = logsumexp(-0.5 * np.maximum(sq, 0.0) / (h * h), axis=1) - norm
        return -out

    def _held_out_scores(self, f):
        # leave-one-out density of each training point (same bandwidth, its own kernel removed):
        # with it, each point sits on its own kernel and fit(x, 0.05) flagged ~50% of fresh data
        if len(f) < 2:
            raise ValueError(f"KDE.fit: needs at least 2 training vectors, got {len(f)}")
        return self._score_features(self.train_, leave_one_out=True)


class PCA(_FeatureDetector):
    """s(f) = squared reconstruction error of f from the in-distribution principal subspace
    (``n_components``: an int, or a float in (0, 1) = the smallest number of components whose
    explained variance reaches that fraction, as scikit-learn counts them).

    The subspace always leaves a residual of real size: at most r - 1 components are kept,
    where r is the number of directions in which the fitting vectors vary (their numerical
    rank after centring: singular values with squared value above ``RANK_TOL`` times the
    largest; r <= min(n - 1, d)), and at most as many as the smallest cross-fitting fold
    (``Detector.fit``) can keep, so that calibration and fresh scores have one distribution.  Keeping all r (isotropic data, where a fraction of 0.9
    needs every direction; n <= d; constant features) reconstructs in-distribution data
    exactly, so the score is rounding noise and a threshold calibrated on it does not hold
    (``fit(x, fpr=0.1)`` flagged 0.13% of fresh data).  When ``n_components`` asks for more,
    it is capped at r - 1 with a ``UserWarning``; ``n_components_`` is the number kept.
    ``ValueError`` when the vectors vary in fewer than 2 directions (use ``MSEToMean``)."""

    #: squared singular values below RANK_TOL x the largest count as no variation (float64
    #: rounding of centred data is ~1e-16 relative; float32 features ~1e-14)
    RANK_TOL = 1e-10

    def __init__(self, n_components: int | float = 0.9, transform: Callable | None = None, **kw):
        super().__init__(transform=transform, **kw)
        if isinstance(n_components, numbers.Integral) and not isinstance(n_components, bool):
            n_components = check_number(n_components, "n_components", "PCA", low=1, integer=True)
        else:
            n_components = check_number(
                n_components,
                "n_components",
                "PCA (a fraction of variance)",
                low=0,
                high=1,
                low_open=True,
                high_open=True,
            )
        self.n_components = n_components
        self.n_components_: int | None = None
        self.capped_: str | None = None  # why n_components was capped at the last fit, if it was

    def _fit_features(self, f, k: int | None = None):
        """Fits the subspace on features [N, D]: ``k`` components (capped silently at the
        data's rank - 1, for the cross-fitting folds), or ``n_components`` resolved and capped
        with a warning when None."""
        constant = len(f) < 2 or not bool((f.std(0) > 0).any())
        from sklearn.decomposition import PCA as _SkPCA

        pca = None if constant else _SkPCA(n_components=None, svd_solver="full").fit(f)
        var = pca.explained_variance_ if pca is not None else np.zeros(1)
        rank = int((var > var[0] * self.RANK_TOL).sum()) if var[0] > 0 else 0
        if rank < 2:
            raise ValueError(
                f"PCA.fit: the {len(f)} fitting vectors vary in {rank} direction(s); a principal "
                f"subspace with a residual needs at least 2; give more varied data or use MSEToMean"
            )
        cap = rank - 1
        if k is None:
            # the cross-fitting folds (Detector.fit) must keep as many components: at most the
            # smallest fold's rank - 1, so that calibration and fresh data see one residual size
            fold_n = len(f) - -(-len(f) // min(FOLDS, len(f)))
            cap = min(cap, fold_n - 2) if fold_n >= 3 else cap
            if isinstance(self.n_components, int):
                k = self.n_components
            else:
                ratio = np.cumsum(pca.explained_variance_ratio_)
                k = int(np.searchsorted(ratio, self.n_components, side="right")) + 1
            self.capped_ = (
                f"PCA: n_components={self.n_components!r} asks for {k} components, but the "
                f"{len(f)} fitting vectors vary in {rank} directions ({fold_n} per cross-fitting "
                f"fold): keeping that many leaves rounding noise as the reconstruction error and "
                f"a threshold that does not hold; keeping {cap}"
                if k > cap
                else None
            )
        k = min(k, cap)
        self.pca_, self.n_components_ = pca, k
        self.mean_, self.components_ = pca.mean_, pca.components_[:k]

    def fit(self, x, fpr=0.05):
        """``_FeatureDetector.fit``; warns (``UserWarning``) when the subspace was capped."""
        super().fit(x, fpr)
        self._warn_if_capped(stacklevel=5)  # the caller of fit (through the input wrappers)
        return self

    def _fit(self, x):
        super()._fit(x)
        self._warn_if_capped(stacklevel=3)

    def _warn_if_capped(self, stacklevel: int) -> None:
        if self.capped_:
            warnings.warn(self.capped_, UserWarning, stacklevel=stacklevel)

    def _held_out_scores(self, f):
        k = self.n_components_  # each fold keeps the subspace size of the full fit
        return self._cross_fitted_scores(
            len(f),
            lambda det, idx: det._fit_features(f[idx.numpy()], k=k),
            lambda det, idx: det._score_features(f[idx.numpy()]),
        ).numpy()

    def _score_features(self, f):
        r = f - self.mean_
        return ((r - (r @ self.components_.T) @ self.components_) ** 2).sum(1)
