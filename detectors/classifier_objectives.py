"""Deprecated alias of ``detectors.objectives.classifier`` (moved there); it goes in the next release."""

import warnings

warnings.warn(
    "detectors.classifier_objectives is deprecated; import detectors.objectives.classifier",
    DeprecationWarning,
    stacklevel=2,
)

from detectors.objectives import classifier as _new  # noqa: E402
from detectors.objectives.classifier import *  # noqa: E402,F403

globals().update({k: v for k, v in vars(_new).items() if not k.startswith("__")})
