"""Deprecated alias of ``detectors.experiments.protocols`` (moved there); it goes in the next release."""

import warnings

warnings.warn(
    "detectors.protocols is deprecated; import detectors.experiments.protocols",
    DeprecationWarning,
    stacklevel=2,
)

from detectors.experiments import protocols as _new  # noqa: E402
from detectors.experiments.protocols import *  # noqa: E402,F403

globals().update({k: v for k, v in vars(_new).items() if not k.startswith("__")})
