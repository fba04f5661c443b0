"""Deprecated: the offline sets and file loaders moved to :mod:`detectors.data`
(``detectors.data.named`` and ``detectors.data.files``); this module re-exports them for one
release."""

import warnings

from .data import files as _files
from .data import folders as _folders
from .data import named as _named
from .data.files import *  # noqa: F403
from .data.folders import *  # noqa: F403
from .data.named import *  # noqa: F403

# the private helpers users and tests reached for (_natural_photos.cache_clear, ...)
globals().update(
    {k: v for m in (_files, _named, _folders) for k, v in vars(m).items() if not k.startswith("__")}
)

warnings.warn("detectors.datasets is deprecated; import detectors.data", DeprecationWarning, stacklevel=2)
