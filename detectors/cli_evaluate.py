"""Deprecated: moved to :mod:`detectors.cli.evaluate`; this module re-exports it for one release."""

import warnings

from .cli import evaluate as _new
from .cli.evaluate import *  # noqa: F403

warnings.warn(
    "detectors.cli_evaluate is deprecated; import detectors.cli.evaluate", DeprecationWarning, stacklevel=2
)
globals().update({k: v for k, v in vars(_new).items() if not k.startswith("__")})
