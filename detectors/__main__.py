"""``python -m detectors ...``: the ``detectors`` command (:mod:`detectors.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
