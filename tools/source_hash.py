"""A content hash of the project's sources, the same on any machine holding the same tree.

    python tools/source_hash.py [ROOT]        # prints: <sha256> <file count>

`make gpu-check` records it, so a run on a copied tree (no .git) still names the exact
sources it verified.  The hash covers every file under csrc/ invflow/ tools/ tests/ bench/
plus setup.py, pyproject.toml and Makefile: names and contents, sorted by path.  Build
products and caches are left out as .gitignore leaves them out (compiled extensions,
__pycache__, the build stamp, bench results...), so building or running the tests does
not change it.  Standard library only: it runs before anything is built.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import sys

TOP_DIRS = ("csrc", "invflow", "tools", "tests", "bench")
TOP_FILES = ("setup.py", "pyproject.toml", "Makefile")
# the .gitignore entries that can occur below TOP_DIRS
SKIP_DIRS = (
    "__pycache__",
    ".pytest_cache",
    ".benchmarks",
    ".hypothesis",
    "build",
    "runs",
    "out",
    ".venv",
    "*.egg-info",
)
SKIP_FILES = ("*.so", "*.o", "*.pyc", ".build-stamp", "results-*.json")


def _skipped(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def source_files(root: str) -> list[str]:
    """The hashed files, as sorted '/'-separated paths relative to ``root``."""
    paths = [name for name in TOP_FILES if os.path.isfile(os.path.join(root, name))]
    for top in TOP_DIRS:
        for folder, dirs, files in os.walk(os.path.join(root, top)):
            dirs[:] = [d for d in dirs if not _skipped(d, SKIP_DIRS)]
            rel = os.path.relpath(folder, root).replace(os.sep, "/")
            for name in files:
                path = os.path.join(folder, name)
                if not _skipped(name, SKIP_FILES) and os.path.isfile(path) and not os.path.islink(path):
                    paths.append(f"{rel}/{name}")
    return sorted(paths, key=lambda p: p.encode())


def source_hash(root: str) -> tuple[str, int]:
    """(sha256 hex digest, number of files) over the names and contents of source_files(root)."""
    digest = hashlib.sha256()
    files = source_files(root)
    for rel in files:
        with open(os.path.join(root, rel), "rb") as f:
            content = hashlib.sha256(f.read()).hexdigest()
        digest.update(f"{rel}\0{content}\n".encode())
    return digest.hexdigest(), len(files)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = argv[0] if argv else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isdir(root):
        print(f"source_hash: no such directory: {root}", file=sys.stderr)
        return 2
    value, count = source_hash(root)
    print(value, count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
