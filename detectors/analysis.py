"""Deprecated alias of ``detectors.experiments.analysis`` (moved there); it goes in the next release."""

import warnings

warnings.warn(
    "detectors.analysis is deprecated; import detectors.experiments.analysis",
    DeprecationWarning,
    stacklevel=2,
)

from detectors.experiments import analysis as _new  # noqa: E402
from detectors.experiments.analysis import *  # noqa: E402,F403

globals().update({k: v for k, v in vars(_new).items() if not k.startswith("__")})
