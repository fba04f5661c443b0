"""Deprecated: moved to :mod:`detectors.cli.train`; this module re-exports it for one release."""

import warnings

from .cli import train as _new
from .cli.train import *  # noqa: F403

warnings.warn(
    "detectors.cli_train is deprecated; import detectors.cli.train", DeprecationWarning, stacklevel=2
)
globals().update({k: v for k, v in vars(_new).items() if not k.startswith("__")})
