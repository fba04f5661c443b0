"""Deprecated alias of ``detectors.features`` (``image_features`` moved there); it goes in the
next release."""

import warnings

warnings.warn(
    "detectors.imagefeatures is deprecated; import detectors.features", DeprecationWarning, stacklevel=2
)

from detectors.features import DEFAULT_INPUT_SIZE, extractor, image_features  # noqa: E402

__all__ = ["DEFAULT_INPUT_SIZE", "extractor", "image_features"]
