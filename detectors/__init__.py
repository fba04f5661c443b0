"""detectors: anomaly / out-of-distribution detection with normalizing flows.

    import detectors
    det = detectors.LikelihoodRatio(in_model, general_model)   # any model with log_prob / per_scale
    det.fit(x_val_in)               # calibrates the threshold (5% of in-distribution flagged)
    s = det.score(x)                # float64 [B]; HIGHER = MORE ANOMALOUS
    det.predict(x)                  # bool [B]
    detectors.metrics.evaluate(s_in, s_out)   # {"auroc", "aupr_in", "aupr_out", "fpr95", "tnr95"}

    bundle = detectors.load("runs/det")   # written by: python -m detectors fit --data TRAIN --out runs/det
    bundle.score(images); bundle.predict(images)   # {detector name: [B]}

Detectors take tensors, numpy arrays, lists of PIL images, Datasets and DataLoaders
(``detectors.inputs``); ``det.decision_function(x)`` and ``det(x)`` are ``det.score(x)``.

The packages:

* ``scores`` -- the detectors (every class here is one), HIGHER = MORE ANOMALOUS;
* ``metrics`` -- AUROC, AUPR, FPR at 95% TPR;
* ``objectives`` -- training losses of flows (``objectives.classifier``: of classifiers;
  ``objectives.supervised``: the class-conditional flow);
* ``baselines`` -- models that are not flows: PixelCNN++ and a ResNet classifier;
* ``features`` -- images -> EfficientNet-Lite0 feature vectors for the feature-space detectors;
* ``zoo`` -- trained models shipped with the package (no network);
* ``data`` -- the named offline datasets and image folders; ``inputs`` -- any input -> one batch;
* ``bundle`` -- fitted detectors saved as a directory (``load``, ``fit_bundle``);
* ``experiments`` -- the demo, the papers' experiments, the OOD suite and the analyses;
* ``report`` -- tables, plots and ``report.md``; ``cli`` -- ``python -m detectors``.

Built only on invflow's public API.
"""

from . import baselines, inputs, metrics, objectives, scores, zoo
from .baselines import PixelCNNpp, ResNetClassifier
from .bundle import Bundle, fit_bundle, load
from .metrics import evaluate
from .scores import (
    KDE,
    KNN,
    PCA,
    ApproximateMass,
    BinaryClassifierScore,
    BitsPerDim,
    ContrastiveFlow,
    Detector,
    Energy,
    Ensemble,
    InputComplexity,
    LastScale,
    Likelihood,
    LikelihoodRatio,
    Mahalanobis,
    MaxSoftmax,
    MSERatio,
    MSEToMean,
    ScaleContribution,
    ScaleRatio,
    TransformationClassifier,
    Typicality,
)

#: submodules imported on first access (``detectors.data``, ``detectors.experiments``, ...),
#: the deprecated ones among them with their DeprecationWarning (not on ``import detectors``)
_LAZY = frozenset(
    {
        "bundle",
        "cli",
        "data",
        "experiments",
        "features",
        "report",
        # deprecated aliases (one release)
        "analysis",
        "classifier_objectives",
        "cli_common",
        "cli_evaluate",
        "cli_fit",
        "cli_score",
        "cli_train",
        "datasets",
        "demo",
        "folders",
        "imagefeatures",
        "models",
        "ood_suite",
        "photos",
        "protocols",
        "reproduce",
        "supervised",
    }
)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "load",
    "Bundle",
    "fit_bundle",
    "inputs",
    "metrics",
    "baselines",
    "objectives",
    "scores",
    "zoo",
    "evaluate",
    "PixelCNNpp",
    "ResNetClassifier",
    "MaxSoftmax",
    "Energy",
    "Mahalanobis",
    "BinaryClassifierScore",
    "Ensemble",
    "Detector",
    "Likelihood",
    "BitsPerDim",
    "LikelihoodRatio",
    "ScaleContribution",
    "LastScale",
    "ScaleRatio",
    "ContrastiveFlow",
    "ApproximateMass",
    "InputComplexity",
    "Typicality",
    "TransformationClassifier",
    "MSEToMean",
    "MSERatio",
    "KNN",
    "KDE",
    "PCA",
]
