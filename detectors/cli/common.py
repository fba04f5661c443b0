"""User errors on the command line: one line on stderr and exit code 2, not a traceback; and
the argument types that bound every size, width and count flag before any work is done.

``DETECTORS_TRACEBACK=1`` in the environment shows the full traceback instead (for bug reports).

This module imports only the standard library (and ``detectors.limits``, which does too), so
that building the parser (``--help``) stays fast; the limits are named in the errors of the
flags they bound.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys

#: bounds of the size / width / count flags (``detectors fit``, ``train`` ...), from
#: ``detectors.limits`` (shared with ``FitConfig.check`` and ``reproduce --set``)
from ..limits import (  # noqa: F401 - the flags' modules import them from here
    MAX_BATCH,
    MAX_DEPTH,
    MAX_FEATURE_SIZE,
    MAX_HIDDEN,
    MAX_IMAGE_SIZE,
    MAX_IMAGES,
    MAX_LEVELS,
    MAX_SEED,
    MAX_STEPS,
    MAX_THREADS,
    MIN_FEATURE_SIZE,
)

#: exceptions that mean bad input (a missing path, an empty folder, a corrupt file, a bad value,
#: a file where a directory is expected, input nested too deeply, a number too large)
USER_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ValueError,  # UnicodeError and json.JSONDecodeError among them
    TypeError,
    RecursionError,
    OverflowError,
)
#: other OSErrors that the user's paths or disk cause (their errno): a symbolic-link loop, a name
#: too long, a full or read-only disk, a quota, too many open files
USER_OS_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ELOOP", "ENAMETOOLONG", "ENOSPC", "EROFS", "EDQUOT", "EMFILE", "EXDEV")
    if hasattr(errno, name)
)


def user_errors() -> tuple:
    """The exception types :func:`run_guarded` reports in one line (:data:`USER_ERRORS`, the
    offline datasets' ``DatasetUnavailable`` and Pillow's decompression-bomb error)."""
    from ..data import DatasetUnavailable

    extra = (DatasetUnavailable,)
    pil = sys.modules.get("PIL.Image")
    if pil is not None and hasattr(pil, "DecompressionBombError"):
        extra += (pil.DecompressionBombError,)
    return USER_ERRORS + extra


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is bad input or a problem of the user's files or disk, not a bug."""
    if isinstance(err, user_errors()):
        return True
    return isinstance(err, OSError) and err.errno in USER_OS_ERRNOS


def one_line(err: BaseException) -> str:
    """The exception's message on one line (OSErrors as 'path: message')."""
    if isinstance(err, OSError) and err.filename and err.strerror:
        text = f"{err.filename}: {err.strerror}"
        if err.filename2:
            text = f"{err.filename} -> {err.filename2}: {err.strerror}"
    elif isinstance(err, RecursionError):
        text = f"input nested too deeply to read ({err})"
    elif isinstance(err, UnicodeError) and not str(err).strip():
        text = "text that is not valid UTF-8"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def run_guarded(prog: str, fn, *args) -> int:
    """Calls ``fn(*args)`` and returns its exit code (0 when it returns None); a user error
    (:func:`is_user_error`) becomes ``prog: error: MESSAGE`` on stderr and 2, Ctrl-C a hint
    and 130.  Any other exception (a bug) propagates with its traceback."""
    try:
        code = fn(*args)
    except KeyboardInterrupt:
        hint = (
            "re-run with --resume to continue"
            if prog.endswith(" train")
            else "re-run the same command to resume"
        )
        print(f"{prog}: interrupted ({hint})", file=sys.stderr)
        return 130
    except Exception as err:
        if not is_user_error(err) or os.environ.get("DETECTORS_TRACEBACK"):
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0 if code is None else int(code)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``prog: error: MESSAGE (see prog --help)``
    and exit code 2, like the errors :func:`run_guarded` reports."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def script_parser(module: str, doc: str) -> Parser:
    """The :class:`Parser` of a ``python -m MODULE`` script: ``prog`` that command, the first
    paragraph of the module's ``doc`` as description, defaults shown in ``--help``."""
    return Parser(
        prog=f"python -m {module}",
        description=doc.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def integer(low: int, high: int, limit: str | None = None):
    """An argparse type: an integer in [low, high]; past ``high`` the error names ``limit``
    (the constant that sets it).  argparse prefixes the error with the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            named = f" ({high} is the limit {limit})" if limit and value > high else ""
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}]{named}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def number(low: float, high: float, open_low: bool = False, open_high: bool = False):
    """An argparse type: a finite float in the interval from ``low`` to ``high`` (each end
    open or closed); NaN and infinities are refused."""
    lo, hi = "(" if open_low else "[", ")" if open_high else "]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        inside = (
            math.isfinite(value)
            and (value > low if open_low else value >= low)
            and (value < high if open_high else value <= high)
        )
        if not inside:
            raise argparse.ArgumentTypeError(
                f"expected a finite number in {lo}{low:g}, {high:g}{hi}, got {text}"
            )
        return value

    parse.__name__ = "number"
    return parse


def out_dir(text: str) -> str:
    """An argparse type: a directory to write (existing or new).  Refuses a path that is a
    file, or one below a file, before any work."""
    if not text or "\x00" in text:
        raise argparse.ArgumentTypeError(f"expected a directory path, got {text!r}")
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(
            f"{text} exists and is not a directory; name a new or existing directory"
        )
    parent = os.path.dirname(os.path.abspath(text))
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"{text}: {parent} is not a directory; name a directory path")
    return text


def seed(text: str) -> int:
    """An argparse type: a seed in [0, :data:`MAX_SEED`]."""
    return integer(0, MAX_SEED, "MAX_SEED")(text)


def module_doc(relpath: str) -> str:
    """The docstring of the module file ``relpath`` under the ``detectors`` package (e.g.
    ``"experiments/ood_suite.py"``), read without importing it (a subcommand's ``--help``
    quotes it without loading torch or scikit-learn)."""
    import ast

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), relpath)
    with open(path, encoding="utf-8") as f:
        return ast.get_docstring(ast.parse(f.read(), path)) or ""
