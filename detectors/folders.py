"""Deprecated: folders of image files, ``load_source`` and ``ImagePolicy`` moved to
:mod:`detectors.data.folders`; this module re-exports them for one release."""

from .data import folders as _folders
from .data.folders import *  # noqa: F403

globals().update({k: v for k, v in vars(_folders).items() if not k.startswith("__")})
