"""Likelihood models and classifiers that are not flows, for the baselines of the
papers: PixelCNN++ (Schirrmeister et al. 2020 Tab. 1) and a small ResNet classifier (MSP, outlier exposure,
energy, Mahalanobis, in-vs-general classifier)."""

from .classifier import ResNetClassifier
from .pixelcnn import PixelCNNpp

__all__ = ["PixelCNNpp", "ResNetClassifier"]
