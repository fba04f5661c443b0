"""Deprecated alias of ``detectors.objectives.supervised`` (moved there); it goes in the next release."""

import warnings

warnings.warn(
    "detectors.supervised is deprecated; import detectors.objectives.supervised",
    DeprecationWarning,
    stacklevel=2,
)

from detectors.objectives import supervised as _new  # noqa: E402
from detectors.objectives.supervised import *  # noqa: E402,F403

globals().update({k: v for k, v in vars(_new).items() if not k.startswith("__")})
