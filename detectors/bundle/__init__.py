"""Detector bundles: everything a fitted set of detectors needs, in one directory
(safetensors + JSON, no pickle), written by ``detectors fit`` / :func:`fit_bundle` and read by
``detectors.load(DET)`` / ``detectors score``.

    bundle = detectors.load("runs/det")      # read-only: never trains or writes
    bundle.score(images)                     # {detector name: float64 [B]}, higher = more anomalous
    bundle.predict(images)                   # {detector name: bool [B]} at the calibrated thresholds
    bundle["pca"]                            # the fitted detectors.PCA itself
    bundle["png+pca"]                        # a detectors.Ensemble of the bundle's png and pca

``images`` are anything ``detectors.inputs`` takes (tensors, numpy, lists of PIL images of
any sizes, Datasets, DataLoaders) or a path / named set (``detectors.data.load_source``);
they are resized and converted by the bundle's :class:`~detectors.data.ImagePolicy`, the
same at fit and score time.

Modules: :mod:`~detectors.bundle.catalogue` (the detectors a bundle can fit),
:mod:`~detectors.bundle.scoring` (:class:`Bundle`; how images come in),
:mod:`~detectors.bundle.store` (the directory layout; :func:`load`) and
:mod:`~detectors.bundle.fit` (:func:`fit_bundle`, in named steps).
"""

from .catalogue import (
    CATALOGUE,
    DEFAULT_DETECTORS,
    ENSEMBLE,
    FEATURE_FLOW_DIM,
    FEATURE_NEEDS,
    FEATURE_NOISE,
    FeatureVectors,
    Projection,
    Spec,
    members,
    with_members,
)
from .fit import (
    CalibrationOnTrainingDataWarning,
    FitConfig,
    check_calibration_data,
    fit_bundle,
    holdout_split,  # the seeded fit / held-out split
)
from .scoring import SCORE_CHUNK, Bundle, prepare, read_images, with_member_scores
from .store import BUNDLE_FILE, FEATURES_FILE, FIT_FILE, FORMAT, STATE_FILE, VERSION, load

__all__ = [
    "Bundle",
    "fit_bundle",
    "holdout_split",
    "load",
    "FitConfig",
    "CalibrationOnTrainingDataWarning",
    "check_calibration_data",
    "CATALOGUE",
    "DEFAULT_DETECTORS",
    "Spec",
    "members",
    "with_members",
    "prepare",
    "read_images",
    "with_member_scores",
    "SCORE_CHUNK",
    "Projection",
    "FeatureVectors",
    "ENSEMBLE",
    "FEATURE_NEEDS",
    "FEATURE_FLOW_DIM",
    "FEATURE_NOISE",
    "BUNDLE_FILE",
    "STATE_FILE",
    "FIT_FILE",
    "FEATURES_FILE",
    "FORMAT",
    "VERSION",
]
