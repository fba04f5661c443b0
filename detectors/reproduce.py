"""Deprecated alias of ``detectors.experiments.reproduce`` (moved there); it goes in the next release."""

import warnings

warnings.warn(
    "detectors.reproduce is deprecated; import detectors.experiments.reproduce",
    DeprecationWarning,
    stacklevel=2,
)

from detectors.experiments import reproduce as _new  # noqa: E402
from detectors.experiments.reproduce import *  # noqa: E402,F403

globals().update({k: v for k, v in vars(_new).items() if not k.startswith("__")})
