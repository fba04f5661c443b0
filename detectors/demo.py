"""Deprecated alias of ``detectors.experiments.demo`` (moved there); it goes in the next release."""

import warnings

warnings.warn(
    "detectors.demo is deprecated; import detectors.experiments.demo", DeprecationWarning, stacklevel=2
)

from detectors.experiments import demo as _new  # noqa: E402
from detectors.experiments.demo import *  # noqa: E402,F403

globals().update({k: v for k, v in vars(_new).items() if not k.startswith("__")})
