"""Deprecated: the broad offline photo set moved to :mod:`detectors.data.photos`; this module
re-exports it for one release."""

import warnings

from .data import photos as _photos
from .data.photos import *  # noqa: F403

globals().update({k: v for k, v in vars(_photos).items() if not k.startswith("__")})

warnings.warn(
    "detectors.photos is deprecated; import detectors.data.photos", DeprecationWarning, stacklevel=2
)
