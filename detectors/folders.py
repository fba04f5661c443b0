"""Deprecated: folders of image files, ``load_source`` and ``ImagePolicy`` moved to
:mod:`detectors.data.folders`; this module re-exports them for one release."""

import warnings

from .data import folders as _folders
from .data.folders import *  # noqa: F403

globals().update({k: v for k, v in vars(_folders).items() if not k.startswith("__")})

warnings.warn("detectors.folders is deprecated; import detectors.data", DeprecationWarning, stacklevel=2)
