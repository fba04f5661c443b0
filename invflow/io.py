"""File access (public): atomic writes, and reads that open regular files only.

* ``atomic_write``: checkpoints, the trainer, bundles and reports use it, so a crash or Ctrl-C
  leaves the old file or the complete new one, never a partial one.
* ``open_regular`` / ``check_regular`` / ``read_small_text``: every file invflow reads is
  opened through them, so a named pipe (FIFO), a device or a socket given where a file is
  expected raises a one-line ``ValueError`` instead of blocking forever (a FIFO's ``open``
  waits for a writer) or reading without end (``/dev/zero``).
* ``inside``: whether a path lies inside a directory after resolving symbolic links.
"""

from __future__ import annotations

import os
import stat
import tempfile


def atomic_write(path, data: bytes | str) -> None:
    """Writes ``data`` to ``path`` via a temporary file in the same directory, fsync and
    ``os.replace``: readers see the old file or the complete new one, never a partial one,
    and no temporary file is left behind, even on error."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; expected a file path to write")
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


def file_kind(mode: int) -> str:
    """What an ``os.stat`` mode is, in words: 'a named pipe (FIFO)', 'a directory', ..."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _not_regular(path: str, mode: int, what: str) -> ValueError:
    return ValueError(f"{path} is {file_kind(mode)}, not a regular file; expected {what}")


def check_regular(path, what: str = "a file") -> str:
    """``path`` (as a str) when it names a regular file, following symbolic links; otherwise
    ``FileNotFoundError`` (missing) or ``ValueError`` naming what it is (a FIFO, a device, a
    socket, a directory) and ``what`` was expected.  For readers that open the path themselves;
    ``open_regular`` also closes the gap between the check and the open."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file; expected {what}") from None
    if not stat.S_ISREG(mode):
        raise _not_regular(path, mode, what)
    return path


def open_regular(path, what: str = "a file"):
    """Opens ``path`` for binary reading if it is a regular file (symbolic links followed) and
    returns the file object.  The file is opened non-blocking and checked with ``fstat`` before
    any read, so a named pipe never blocks: ``ValueError`` for a FIFO, a device, a socket or a
    directory, ``FileNotFoundError`` for a missing path (both one line, naming ``what`` was
    expected); ``PermissionError`` and other OS errors as they are."""
    path = os.fspath(path)
    flags = (
        os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    )
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file; expected {what}") from None
    except OSError as err:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            raise err from None
        if stat.S_ISREG(mode):
            raise
        raise _not_regular(path, mode, what) from None  # a socket: ENXIO
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode, what)
        if getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_small_text(path, what: str = "a text file", limit: int = 4096) -> str:
    """The UTF-8 text of a small regular file (``open_regular``); ``ValueError`` when it holds
    more than ``limit`` bytes or is not UTF-8 text (a pointer file such as a run's ``latest``
    is a few bytes; this bounds what a replaced file can make the reader load)."""
    with open_regular(path, what) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{os.fspath(path)} holds more than {limit} bytes; expected {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{os.fspath(path)} is not UTF-8 text; expected {what}") from None


def inside(root, path) -> bool:
    """Whether ``path`` lies inside the directory ``root`` (or is it) once both are resolved
    (``os.path.realpath``: symbolic links followed, ``..`` collapsed)."""
    real_root, real = os.path.realpath(os.fspath(root)), os.path.realpath(os.fspath(path))
    try:
        return os.path.commonpath([real_root, real]) == real_root
    except ValueError:  # different drives (Windows)
        return False
