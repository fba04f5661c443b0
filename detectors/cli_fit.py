"""Deprecated: moved to :mod:`detectors.cli.fit`; this module re-exports it for one release."""

import warnings

from .cli import fit as _new
from .cli.fit import *  # noqa: F403

warnings.warn("detectors.cli_fit is deprecated; import detectors.cli.fit", DeprecationWarning, stacklevel=2)
globals().update({k: v for k, v in vars(_new).items() if not k.startswith("__")})
