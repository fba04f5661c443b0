"""Deprecated: moved to :mod:`detectors.cli.score`; this module re-exports it for one release."""

import warnings

from .cli import score as _new
from .cli.score import *  # noqa: F403

warnings.warn(
    "detectors.cli_score is deprecated; import detectors.cli.score", DeprecationWarning, stacklevel=2
)
globals().update({k: v for k, v in vars(_new).items() if not k.startswith("__")})
