"""Runs pytest with some packages made unimportable, to prove that a test selection still
collects on a machine without them (the GPU check's machine has torch and pytest only).

    python tools/collect_without.py --block hypothesis,numpy --min 100 -- --collect-only -k cuda tests/invflow/ops

Exits non-zero when collection fails or selects fewer than --min tests.
"""

from __future__ import annotations

import argparse
import importlib.abc
import os
import sys


class _Blocker(importlib.abc.MetaPathFinder):
    """Makes the named top-level packages (and their submodules) raise ModuleNotFoundError."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(
                f"No module named {fullname!r} (blocked by collect_without)", name=fullname
            )
        return None


class _Count:
    selected = 0

    def pytest_collection_finish(self, session):
        self.selected = len(session.items)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", default="", help="comma-separated top-level packages to block")
    parser.add_argument("--min", type=int, default=1, help="fewest tests the selection must hold")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    blocked = [n for n in args.block.split(",") if n]
    for name in list(sys.modules):
        if name.split(".")[0] in blocked:
            del sys.modules[name]
    sys.meta_path.insert(0, _Blocker(blocked))
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # installed plugins (hypothesis's) stay out
    import pytest

    counter = _Count()
    pytest_args = [a for a in args.pytest_args if a != "--"]
    rc = pytest.main(pytest_args, plugins=[counter])
    print(f"collect_without: {counter.selected} tests selected with {args.block or 'nothing'} blocked")
    if rc != 0:
        return int(rc)
    if counter.selected < args.min:
        print(f"collect_without: expected at least {args.min}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
