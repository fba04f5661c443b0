"""Deprecated alias of ``detectors.experiments.ood_suite`` (moved there); it goes in the next
release.  ``python -m detectors.ood_suite ARGS`` still runs ``python -m detectors ood-suite ARGS``."""

import argparse
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
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from detectors.cli import main as cli_main
    except ImportError:  # no one command line yet: the subcommand on its own parser
        from detectors.cli.ood_suite import add_parser, run

        parser = argparse.ArgumentParser(prog="python -m detectors")
        sub = parser.add_subparsers(dest="command", required=True)
        p = add_parser(sub)
        args = parser.parse_args(["ood-suite", *argv])
        try:
            return run(args)
        except ValueError as err:
            p.error(str(err))
    return cli_main(["ood-suite", *argv])


if __name__ == "__main__":
    sys.exit(main())
