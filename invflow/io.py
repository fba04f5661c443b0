"""Atomic file writes (public): checkpoints, the trainer, bundles and reports use them, so a
crash or Ctrl-C leaves the old file or the complete new one, never a partial one."""

from __future__ import annotations

import os
import tempfile


def atomic_write(path, data: bytes | str) -> None:
    """Writes ``data`` to ``path`` via a temporary file in the same directory, fsync and
    ``os.replace``: readers see the old file or the complete new one, never a partial one,
    and no temporary file is left behind, even on error."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
