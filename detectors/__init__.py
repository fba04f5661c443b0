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

Scores (``detectors.scores``), training objectives (``detectors.objectives``; classifier
training in ``detectors.classifier_objectives``), baseline models (``detectors.models``:
PixelCNN++ and a ResNet classifier), offline
datasets, features, analyses and reports; ``python -m detectors demo`` runs them all on
Fashion-MNIST vs MNIST.  Built only on invflow's public API.
"""

from . import classifier_objectives, datasets, imagefeatures, inputs, metrics, models, objectives, scores, zoo
from .bundle import Bundle, fit_bundle, load
from .metrics import evaluate
from .models import PixelCNNpp, ResNetClassifier
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
    Typicality,
)

__all__ = [
    "load",
    "Bundle",
    "fit_bundle",
    "inputs",
    "datasets",
    "metrics",
    "models",
    "objectives",
    "classifier_objectives",
    "scores",
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
    "MSEToMean",
    "MSERatio",
    "KNN",
    "KDE",
    "PCA",
]
