"""Deprecated alias of ``detectors.baselines`` (moved there); it goes in the next release."""

import warnings

warnings.warn("detectors.models is deprecated; import detectors.baselines", DeprecationWarning, stacklevel=2)

from detectors import baselines as _new  # noqa: E402
from detectors.baselines import *  # noqa: E402,F403

globals().update({k: v for k, v in vars(_new).items() if not k.startswith("__")})
