"""Deprecated: moved to :mod:`detectors.cli.common`; this module re-exports it for one release."""

import warnings

from .cli import common as _new
from .cli.common import *  # noqa: F403

warnings.warn(
    "detectors.cli_common is deprecated; import detectors.cli.common", DeprecationWarning, stacklevel=2
)
globals().update({k: v for k, v in vars(_new).items() if not k.startswith("__")})
