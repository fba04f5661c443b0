"""Anomaly scores: every detector has ``fit`` / ``score`` (HIGHER = MORE ANOMALOUS) /
``predict`` (see ``base.Detector``)."""

from .base import LOG_LIKELIHOOD_FLOOR, Detector, as_model_input, floor_log_likelihood
from .classifier import BinaryClassifierScore, Energy, Mahalanobis, MaxSoftmax
from .complexity import InputComplexity, png_bits
from .ensemble import Ensemble
from .feature_space import KDE, KNN, PCA, MSERatio, MSEToMean
from .likelihood import (
    ApproximateMass,
    BitsPerDim,
    ContrastiveFlow,
    LastScale,
    Likelihood,
    LikelihoodRatio,
    ScaleContribution,
    ScaleRatio,
    approximate_mass,
)
from .transformations import TransformationClassifier
from .typicality import Typicality

__all__ = [
    "Detector",
    "LOG_LIKELIHOOD_FLOOR",
    "floor_log_likelihood",
    "as_model_input",
    "Likelihood",
    "BitsPerDim",
    "LikelihoodRatio",
    "ScaleContribution",
    "LastScale",
    "ScaleRatio",
    "ContrastiveFlow",
    "ApproximateMass",
    "approximate_mass",
    "InputComplexity",
    "png_bits",
    "Typicality",
    "Ensemble",
    "MaxSoftmax",
    "Energy",
    "Mahalanobis",
    "BinaryClassifierScore",
    "MSEToMean",
    "MSERatio",
    "KNN",
    "KDE",
    "PCA",
    "TransformationClassifier",
]
