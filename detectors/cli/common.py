"""User errors on the command line: one line on stderr and exit code 2, not a traceback.

``DETECTORS_TRACEBACK=1`` in the environment shows the full traceback instead (for bug reports).
"""

from __future__ import annotations

import os
import sys

#: exceptions that mean bad input (a missing path, an empty folder, a corrupt file, a bad value)
USER_ERRORS = (
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ValueError,
    TypeError,
)


def user_errors() -> tuple:
    from ..data import DatasetUnavailable

    return USER_ERRORS + (DatasetUnavailable,)


def one_line(err: BaseException) -> str:
    """The exception's message on one line (OSErrors as 'message: path')."""
    if isinstance(err, OSError) and err.filename and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def run_guarded(prog: str, fn, *args) -> int:
    """Calls ``fn(*args)`` and returns its exit code (0 when it returns None); a user error
    becomes ``prog: error: MESSAGE`` on stderr and 2, Ctrl-C a hint and 130."""
    try:
        code = fn(*args)
    except user_errors() as err:
        if os.environ.get("DETECTORS_TRACEBACK"):
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = (
            "re-run with --resume to continue"
            if prog.endswith(" train")
            else "re-run the same command to resume"
        )
        print(f"{prog}: interrupted ({hint})", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)
