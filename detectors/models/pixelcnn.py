"""Deprecated alias of ``detectors.baselines.pixelcnn`` (moved there); it goes in the next release."""

import warnings

warnings.warn(
    "detectors.models.pixelcnn is deprecated; import detectors.baselines.pixelcnn",
    DeprecationWarning,
    stacklevel=2,
)

from detectors.baselines import pixelcnn as _new  # noqa: E402
from detectors.baselines.pixelcnn import *  # noqa: E402,F403

globals().update({k: v for k, v in vars(_new).items() if not k.startswith("__")})
