"""Deprecated alias of ``detectors.experiments.ood_suite`` (moved there); it goes in the next
release.  ``python -m detectors.ood_suite ARGS`` still runs ``python -m detectors ood-suite ARGS``."""

import sys
import warnings

if __name__ != "__main__":
    warnings.warn(
        "detectors.ood_suite is deprecated; import detectors.experiments.ood_suite",
        DeprecationWarning,
        stacklevel=2,
    )

from detectors.experiments import ood_suite as _new  # noqa: E402
from detectors.experiments.ood_suite import *  # noqa: E402,F403

globals().update({k: v for k, v in vars(_new).items() if not k.startswith("__")})


def main(argv=None) -> int:
    """``python -m detectors ood-suite ARGV``."""
    from detectors.cli import main as cli_main

    return cli_main(["ood-suite", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
