"""Deprecated alias of ``detectors.baselines.classifier`` (moved there); it goes in the next release."""

import warnings

warnings.warn(
    "detectors.models.classifier is deprecated; import detectors.baselines.classifier",
    DeprecationWarning,
    stacklevel=2,
)

from detectors.baselines import classifier as _new  # noqa: E402
from detectors.baselines.classifier import *  # noqa: E402,F403

globals().update({k: v for k, v in vars(_new).items() if not k.startswith("__")})
