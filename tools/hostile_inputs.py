"""A reproducible sweep of hostile inputs over the public entry points of invflow and detectors.

    python tools/hostile_inputs.py                      # every case, one at a time
    python tools/hostile_inputs.py --only fifo --only cli   # cases whose name holds a substring
    python tools/hostile_inputs.py --list               # the cases, without running them
    python tools/hostile_inputs.py --json sweep.json    # also write every result as JSON

Each case is data (:class:`Case`): an entry point, the kind of bad input, what the correct
behaviour is, a setup snippet and the call (Python) or the command line (``python -m
detectors ...``).  Each runs in its own child process, with a wall-clock timeout (a hang is a
timeout) and an address-space cap (``RLIMIT_AS``, default 6 GB, so that an input asking for
160 GB fails at once instead of taking the machine), and is classified as

* ``clear``: an expected refusal in one line: in Python a built-in exception (ValueError,
  TypeError, an OSError, or a RuntimeError raised by the project) whose message is one line
  and not a library's internal message (torch, numpy, json, pickle advice, ...); on the command
  line exit code 2, no traceback, and ``PROG: error: MESSAGE`` as the last stderr line;
* ``ok``: an expected success, whose checks passed;
* ``traceback``: an uncaught or internal error (another exception type, a multi-line or
  internal message, a command-line traceback, a crash, running out of the capped memory);
* ``silent``: success where it should have refused, or a wrong / non-finite result (a case's
  checks failed), or a pickle payload that ran (its marker file appeared);
* ``hang``: the timeout;
* ``wrong``: a one-line refusal of a valid input, or a refusal that names the wrong cause;
* ``harness``: the case's own setup failed (a fault of this script, not of the project).

By default the cases run in children forked from one process that has imported torch,
invflow and detectors once (``--isolation fork``, seconds per case instead of an import
each); ``--isolation process`` runs each in a fresh interpreter instead (exact, slower).
Cases that need a fresh interpreter (what ``import detectors`` registers) always get one.

Fixtures (tiny PNG folders, a tiny Glow checkpoint, a ``.npz`` and a detector bundle fitted
by ``python -m detectors fit`` in about a minute) are built once, in a subprocess, into a
temporary directory or ``--fixtures DIR`` (reused when present).  Nothing here imports torch
at module level: the test suite imports this file to check the classifier.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[:1] != [ROOT]:  # the checkout this file lives in, not an installed copy
    sys.path.insert(0, ROOT)
STATUSES = ("clear", "ok", "traceback", "silent", "hang", "wrong", "harness")
EXPECTS = ("refuse", "succeed", "either")
DEFAULT_TIMEOUT, DEFAULT_MEM_GB = 15.0, 6.0
#: extra seconds a case gets in a fresh interpreter (importing torch and detectors)
IMPORT_SECONDS = 20.0
MARKER = "PWNED"  # the file a pickle payload would create in the case's work directory


# ----------------------------------------------------------------------------- cases


@dataclasses.dataclass(frozen=True)
class Case:
    """One hostile input.

    ``entry``: the entry point ("invflow.load", "cli fit", ...); ``kind``: the kind of bad
    input ("fifo", "symlink-loop", ...); ``expect``: "refuse" (a clear error is right),
    "succeed" (the call must work and pass its checks) or "either" (a clear refusal or a
    checked success); ``why``: the correct behaviour in words.  ``setup`` runs first (its
    failure is a harness error); ``code`` is the Python call and its checks (``expect(cond,
    msg)`` fails the case as silent), or ``argv`` the command line after ``python -m
    detectors`` ("{W}": the case's work directory, "{F.name}": a fixture), with ``check``
    run after exit code 0.  ``message``: a regex a refusal's message must match (else
    "wrong").  ``needs``: fixtures.  ``on_timeout``: "hang", or "silent" where a timeout means
    the bad value was accepted and a long job started.  ``fresh``: always a new interpreter."""

    name: str
    entry: str
    kind: str
    expect: str
    why: str
    setup: str = ""
    code: str = ""
    argv: tuple = ()
    check: str = ""
    message: str = ""
    needs: tuple = ()
    timeout: float | None = None
    on_timeout: str = "hang"
    fresh: bool = False
    prelude: bool = True

    @property
    def cli(self) -> bool:
        return bool(self.argv)


class WrongResult(Exception):
    """Raised by ``expect`` in a case: the call returned, but not what it should."""


# ----------------------------------------------------------------------------- classifier

#: (regex, label): messages that are a library's internals, not an answer to the user.  Patterns
#: anchored with ^ count only unwrapped (a parser's detail inside the project's own sentence,
#: "bundle.json: not valid JSON (Expecting value: ...)", is fine); the others count anywhere
INTERNAL_MESSAGES = [
    (r"allow_pickle|pickle\.load|load it .*with pickle|trust the file", "advice to unpickle"),
    (r"DefaultCPUAllocator|can't allocate memory|out of memory|Cannot allocate memory", "out of memory"),
    (r"received an invalid combination of arguments|but got \w+ for argument", "torch argument parser"),
    (
        r"expected scalar type|Input type \(.*\) and weight type|mat1 and mat2|must match the size of tensor",
        "torch",
    ),
    (r"Expected all tensors to be on the same device|not implemented for '|Given groups=", "torch"),
    (r"Sizes of tensors must match|is invalid for input of size|negative dimension", "torch"),
    (r"check_uniform_bounds|expects floating point dtypes|result type \w+ can't be cast", "torch"),
    (r"Error\(s\) in loading state_dict|size mismatch for", "torch state_dict"),
    (r"^(invalid literal for int\(\)|could not convert string to float)", "int() / float() of a string"),
    (r"^(cannot convert float (NaN|infinity) to integer|math domain error)", "arithmetic on a bad value"),
    (r"^(Expecting value: line|Expecting property name|Unterminated string|Extra data: line)", "json"),
    (r"^'[\w-]+' codec can't (de|en)code", "text encoding"),
    (r"^maximum recursion depth", "recursion"),
    (r"^'?\w+'? object (has no attribute|is not subscriptable|is not iterable)", "Python internals"),
    (r"^(unsupported operand type|unhashable type|'.+' not supported between instances)", "Python internals"),
    (r"^('NoneType' object|list indices must be|string indices must be|cannot unpack)", "Python internals"),
    (
        r"^(invalid load key|pickle data was truncated|could not find MARK|unpickling stack underflow)",
        "pickle",
    ),
    (
        r"^(HeaderTooLarge|HeaderTooSmall|InvalidHeader|MetadataIncompleteBuffer|Error while deserializing)",
        "safetensors",
    ),
]
#: exception classes that are a clear refusal when raised with a one-line, non-internal message
CLEAR_TYPES = (
    "ValueError",
    "TypeError",
    "OSError",
    "FileNotFoundError",
    "NotADirectoryError",
    "IsADirectoryError",
    "PermissionError",
    "FileExistsError",
)
#: built-in exception classes that are never a clear refusal (internal errors)
INTERNAL_TYPES = (
    "RecursionError",
    "MemoryError",
    "KeyError",
    "IndexError",
    "AttributeError",
    "AssertionError",
    "ZeroDivisionError",
    "NotImplementedError",
    "UnicodeDecodeError",
    "UnicodeEncodeError",
    "UnicodeError",
    "OverflowError",
    "StopIteration",
    "SystemError",
    "NameError",
    "UnboundLocalError",
)


def internal_label(message: str) -> str | None:
    """The label of the first internal-message pattern ``message`` matches, else None."""
    for pattern, label in INTERNAL_MESSAGES:
        if re.search(pattern, message):
            return label
    return None


def judge_exception(exc: dict) -> tuple[bool, str]:
    """(is it a clear refusal, why not) for an exception recorded by the child: ``type``,
    ``module``, ``mro`` (class names), ``message``, ``origin`` ("project", "case" or
    "library:NAME")."""
    name, module, mro, msg = exc["type"], exc["module"], exc["mro"], exc["message"]
    own = module.split(".")[0] in ("invflow", "detectors")
    if name in INTERNAL_TYPES or (module == "json.decoder"):
        return False, f"{name} (an internal error, not a refusal)"
    if not msg.strip():
        return False, f"{name} with an empty message"
    if "\n" in msg.strip():
        return False, f"{name} with a message of {len(msg.strip().splitlines())} lines"
    label = internal_label(msg)
    if label:
        return False, f"{name}: internal message ({label})"
    oserror = "OSError" in mro
    if module == "builtins" and name in CLEAR_TYPES:
        if oserror or exc["origin"] in ("project", "case"):
            return True, ""
        return False, f"{name} raised inside {exc['origin'].split(':')[-1]}"
    if module == "builtins" and name == "RuntimeError":
        if exc["origin"] == "project":
            return True, ""
        return False, f"RuntimeError raised inside {exc['origin'].split(':')[-1]}"
    if own and any(t in mro for t in CLEAR_TYPES + ("RuntimeError",)):
        return True, ""
    if oserror:  # e.g. PIL.UnidentifiedImageError: an OSError with a one-line message
        return True, ""
    return False, f"{module}.{name} (not a built-in user error)"


def judge_cli(rc: int, stderr: str) -> tuple[bool, str, str]:
    """(a clear refusal, why not, the error line) of a command line that did not exit 0."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else ""
    if "Traceback (most recent call last)" in stderr:
        return False, f"traceback, exit {rc}: {last[:160]}", last
    if rc != 2:
        return False, f"exit {rc}: {last[:160] or '(no stderr)'}", last
    if "error:" not in last:
        return False, f"exit 2 without an error line: {last[:160]}", last
    label = internal_label(last.split(": error: ", 1)[-1])
    if label:
        return False, f"internal message ({label})", last
    return True, "", last


def classify(case: Case, res: dict | None, timed_out: bool, elapsed: float, marker: bool) -> tuple[str, str]:
    """(status, detail) of one finished case (see the module docstring)."""
    if marker:
        return "silent", "PAYLOAD RAN: the pickle's os.system marker file appeared"
    if timed_out:
        what = "accepted the value and was still running" if case.on_timeout == "silent" else "no answer"
        return case.on_timeout, f"{what} after {elapsed:.0f} s"
    if res is None:
        return "traceback", "the process died without a result (a crash or a kill)"
    if res.get("outcome") == "setup-error":
        return "harness", "setup failed: " + res.get("error", "")[-300:]
    if case.cli:
        rc = res.get("rc")
        if rc == 0:
            if case.expect == "refuse":
                return "silent", f"exit 0 where it should refuse ({case.why})"
            if res.get("check_error"):
                return "silent", "after exit 0: " + res["check_error"]
            return "ok", ""
        clear, why_not, line = judge_cli(rc, res.get("stderr", ""))
        if not clear:
            return "traceback", why_not
        message = line
    else:
        outcome = res.get("outcome")
        if outcome == "returned":
            if case.expect == "refuse":
                return "silent", f"returned where it should refuse ({case.why})"
            return "ok", ""
        if outcome == "wrong-result":
            return "silent", res.get("message", "")
        if outcome != "raised":
            return "harness", f"unknown outcome {outcome!r}"
        exc = res["exception"]
        clear, why_not = judge_exception(exc)
        if not clear:
            return "traceback", f"{why_not}: {_first_line(exc['message'])[:160]}"
        message = f"{exc['type']}: {exc['message']}"
    if case.expect == "succeed":
        return "wrong", f"refused a valid input: {message[:200]}"
    if case.message and not re.search(case.message, message):
        return "wrong", f"the message does not say /{case.message}/: {message[:200]}"
    return "clear", message[:200]


def _first_line(text: str) -> str:
    lines = [ln for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else ""


# ----------------------------------------------------------------------------- helpers in cases


def expect(cond, message: str) -> None:
    """In a case: fails it as silent with ``message`` unless ``cond``."""
    if not cond:
        raise WrongResult(message)


def fifo(path: str) -> str:
    """A named pipe at ``path`` (nobody writes to it: opening it for reading blocks)."""
    os.mkfifo(path)
    return path


def evil_pickle(path: str, work: str) -> str:
    """A pickle that runs ``os.system("touch WORK/PWNED")`` when loaded, written to ``path``."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {os.path.join(work, MARKER)}",))

    with open(path, "wb") as f:
        pickle.dump({"data": Payload(), "images": Payload()}, f, protocol=2)
    return path


def evil_torch_save(path: str, work: str) -> str:
    """A ``torch.save`` file (zip + pickle) with the same payload."""
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {os.path.join(work, MARKER)}",))

    torch.save({"state": Payload()}, path)
    return path


def read_checkpoint(path: str) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def tamper_checkpoint(src: str, dst: str, config=None, tensors=None, metadata=None, raw_config=None) -> str:
    """Copies the checkpoint ``src`` to ``dst`` with its config updated by ``config`` (a dict),
    replaced by ``raw_config`` (a string), its tensors passed through ``tensors(dict) ->
    dict`` and its metadata updated by ``metadata`` (None values delete keys)."""
    from safetensors.torch import save_file

    t, meta = read_checkpoint(src)
    if config is not None:
        cfg = json.loads(meta["config"])
        cfg.update(config)
        meta["config"] = json.dumps(cfg)
    if raw_config is not None:
        meta["config"] = raw_config
    if tensors is not None:
        t = tensors(t)
    for k, v in (metadata or {}).items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    save_file({k: v.contiguous() for k, v in t.items()}, dst, metadata=meta or None)
    return dst


def all_nan(t: dict) -> dict:
    """Every floating tensor filled with NaN."""
    return {k: v.clone().fill_(float("nan")) if v.is_floating_point() else v for k, v in t.items()}


def copy_bundle(src: str, dst: str) -> str:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def edit_json(path: str, fn) -> None:
    """``fn(obj)`` mutates the JSON in ``path`` (NaN / Infinity are written as such)."""
    with open(path) as f:
        obj = json.load(f)
    out = fn(obj)
    with open(path, "w") as f:
        json.dump(obj if out is None else out, f, allow_nan=True)


def run_latest(run: str) -> str:
    """The checkpoint directory a Trainer run's ``latest`` names."""
    with open(os.path.join(run, "latest")) as f:
        return os.path.join(run, f.read().strip())


def write_pngs(folder: str, n: int, size: int = 12, seed: int = 0, colour: bool = False) -> str:
    """``n`` small random PNGs (grey, or RGB) in ``folder``, named 000.png, 001.png, ..."""
    import numpy as np
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        shape = (size, size, 3) if colour else (size, size)
        a = (rng.random(shape) * 60 + (i % 4) * 40).astype("uint8")
        Image.fromarray(a).save(os.path.join(folder, f"{i:03d}.png"))
    return folder


def png_header(width: int, height: int, mode: int = 0) -> bytes:
    """A PNG signature and IHDR chunk declaring ``width`` x ``height`` (8-bit, colour type
    ``mode``), with a valid CRC and no image data."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def float_tiff(path: str, array) -> str:
    """A 32-bit float (mode F) TIFF of the 2-D ``array``."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.asarray(array, dtype=np.float32), mode="F").save(path)
    return path


def npy_bomb(path: str, shape: tuple) -> str:
    """A ``.npz`` whose ``images.npy`` header declares uint8 ``shape`` but holds 16 bytes."""
    import zipfile

    header = "{'descr': '|u1', 'fortran_order': False, 'shape': " + repr(tuple(shape)) + ", }"
    header = header + " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    blob = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 16
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images.npy", blob)
    return path


def images(n: int = 8, size: int = 8, channels: int = 1, seed: int = 0):
    """uint8 [n, channels, size, size] random images."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


def pre(x, seed: int = 0):
    """``invflow.data.preprocess`` with a seeded generator."""
    import torch

    import invflow

    return invflow.data.preprocess(x, generator=torch.Generator().manual_seed(seed))


def features(n: int, d: int, seed: int = 0):
    """float64 [n, d] standard-normal feature vectors."""
    import torch

    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def csv_rows(path: str) -> list:
    """The data rows of a CSV file (header dropped)."""
    import csv

    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.reader(f))[1:]


def _namespace(spec: dict, wlist: list, start: list) -> dict:
    """The globals of a case's snippets: the helpers above, ``W`` (its work directory), ``F``
    (the fixture paths), ``warned(regex)`` (a warning since the setup matched) and, with the
    prelude, ``np``, ``torch``, ``invflow`` and ``detectors``."""
    fx = types.SimpleNamespace(**spec["fixtures"])
    ns = {
        "__name__": "__case__",
        "os": os,
        "json": json,
        "shutil": shutil,
        "W": spec["work"],
        "F": fx,
        "MARKER": os.path.join(spec["work"], MARKER),
        "expect": expect,
        "fifo": fifo,
        "evil_pickle": lambda path: evil_pickle(path, spec["work"]),
        "evil_torch_save": lambda path: evil_torch_save(path, spec["work"]),
        "read_checkpoint": read_checkpoint,
        "tamper_checkpoint": tamper_checkpoint,
        "all_nan": all_nan,
        "copy_bundle": copy_bundle,
        "edit_json": edit_json,
        "run_latest": run_latest,
        "write_pngs": write_pngs,
        "png_header": png_header,
        "float_tiff": float_tiff,
        "npy_bomb": npy_bomb,
        "images": images,
        "pre": pre,
        "features": features,
        "csv_rows": csv_rows,
        "warned": lambda pattern="": any(re.search(pattern, str(w.message)) for w in wlist[start[0] :]),
    }
    if spec["prelude"]:
        import numpy as np
        import torch

        import detectors
        import invflow

        ns.update(np=np, torch=torch, invflow=invflow, detectors=detectors)
    return ns


# ----------------------------------------------------------------------------- the child


def _origin(exc: BaseException) -> str:
    tb, last = exc.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    path = last.tb_frame.f_code.co_filename if last is not None else "<case>"
    if path in ("<case>", "<setup>", "<check>"):
        return "case"
    real = os.path.realpath(path) if os.path.exists(path) else path
    for pkg in ("invflow", "detectors"):
        if real.startswith(os.path.join(ROOT, pkg) + os.sep):
            return "project"
    m = re.search(r"(?:site-packages|dist-packages)/([^/]+)", real) or re.search(
        r"/lib/python3[.\d]*/([^/]+)", real
    )
    return "library:" + (m.group(1).removesuffix(".py") if m else os.path.basename(real))


def _exception_record(exc: BaseException) -> dict:
    cls = type(exc)
    return {
        "type": cls.__name__,
        "module": cls.__module__,
        "mro": [c.__name__ for c in cls.__mro__],
        "message": str(exc),
        "origin": _origin(exc),
        "traceback": "".join(traceback.format_exception(exc))[-4000:],
    }


def _run_cli(argv: list) -> int:
    """``python -m detectors ARGV`` in this process: its exit code; an uncaught exception is
    printed as Python prints it, with exit code 1."""
    import detectors.cli

    sys.argv = [os.path.join(ROOT, "detectors", "__main__.py")] + argv
    try:
        code = detectors.cli.main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return int(code or 0)


def child_main(spec: dict) -> int:
    """Runs one case in this (child) process and writes its result JSON; returns the exit code
    (the command line's, for a CLI case)."""
    import contextlib
    import warnings

    os.environ.pop("DETECTORS_TRACEBACK", None)
    os.chdir(spec["work"])
    result: dict = {}
    start = [0]
    # Python calls record every warning (``warned`` reads them); the command line prints its own
    recording = contextlib.nullcontext([]) if spec["cli"] else warnings.catch_warnings(record=True)
    try:
        with recording as wlist:
            if not spec["cli"]:
                warnings.simplefilter("always")
            ns = _namespace(spec, wlist, start)
            try:
                exec(compile(spec["setup"] or "pass", "<setup>", "exec"), ns)
            except BaseException as e:
                result = {"outcome": "setup-error", "error": "".join(traceback.format_exception(e))}
                return 3
            start[0] = len(wlist)  # the setup's warnings do not count
            if spec["cli"]:
                argv = [a.format(W=ns["W"], F=ns["F"]) for a in spec["argv"]]
                rc = _run_cli(argv)
                result = {"rc": rc}
                if rc == 0 and spec["check"]:
                    try:
                        exec(compile(spec["check"], "<check>", "exec"), ns)
                    except WrongResult as e:
                        result["check_error"] = str(e)
                    except BaseException as e:
                        result["check_error"] = f"the check raised {type(e).__name__}: {e}"
                return rc
            try:
                exec(compile(spec["code"], "<case>", "exec"), ns)
                result = {"outcome": "returned"}
            except WrongResult as e:
                result = {"outcome": "wrong-result", "message": str(e)}
            except BaseException as e:
                result = {"outcome": "raised", "exception": _exception_record(e)}
            result["warnings"] = [
                {"category": w.category.__name__, "message": str(w.message)[:300]} for w in wlist[start[0] :]
            ]
            return 0
    finally:
        tmp = spec["result"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, spec["result"])


# ----------------------------------------------------------------------------- the parent


def _set_limits(mem_bytes: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _redirect(stdout: str, stderr: str) -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    for path, target in ((stdout, 1), (stderr, 2)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, target)
        os.close(fd)


def _start(spec: dict, fresh: bool, mem_bytes: int) -> int:
    """Forks a child that runs the case (in this interpreter, or a fresh one); its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child
        code = 98
        try:
            os.setpgid(0, 0)
            _redirect(spec["stdout"], spec["stderr"])
            _set_limits(mem_bytes)
            if fresh:
                os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), "--child", spec["spec"]])
            code = child_main(spec)
        except BaseException:
            try:
                traceback.print_exc()
            except BaseException:
                pass
        finally:
            os._exit(code)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass
    return pid


def _kill_group(pid: int) -> None:
    for sig_target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            sig_target()
            return
        except OSError:
            continue


@dataclasses.dataclass
class Running:
    case: Case
    pid: int
    start: float
    deadline: float
    spec: dict
    index: int


def _prepare(case: Case, fixtures: dict, scratch: str, index: int, fresh: bool) -> dict:
    work = os.path.join(scratch, f"case-{index:03d}")
    os.makedirs(work)
    spec = {
        "name": case.name,
        "work": work,
        "fixtures": fixtures,
        "setup": case.setup,
        "code": case.code,
        "argv": list(case.argv),
        "check": case.check,
        "cli": case.cli,
        "prelude": case.prelude,
        "result": os.path.join(scratch, f"result-{index:03d}.json"),
        "stdout": os.path.join(scratch, f"stdout-{index:03d}.txt"),
        "stderr": os.path.join(scratch, f"stderr-{index:03d}.txt"),
        "spec": os.path.join(scratch, f"spec-{index:03d}.json"),
    }
    if fresh:
        with open(spec["spec"], "w") as f:
            json.dump(spec, f)
    return spec


def _finish(run: Running, timed_out: bool) -> dict:
    elapsed = time.monotonic() - run.start
    res = None
    if os.path.exists(run.spec["result"]):
        with open(run.spec["result"]) as f:
            res = json.load(f)
        if run.case.cli:
            with open(run.spec["stderr"], errors="replace") as f:
                res["stderr"] = f.read()[-20000:]
    marker = os.path.exists(os.path.join(run.spec["work"], MARKER))
    status, detail = classify(run.case, res, timed_out, elapsed, marker)
    return {
        "name": run.case.name,
        "entry": run.case.entry,
        "kind": run.case.kind,
        "expect": run.case.expect,
        "why": run.case.why,
        "status": status,
        "detail": " ".join(detail.split()),
        "seconds": round(elapsed, 2),
        "warnings": (res or {}).get("warnings", []),
        "exception": (res or {}).get("exception"),
        "rc": (res or {}).get("rc"),
        "stderr_tail": (res or {}).get("stderr", "")[-1500:],
    }


def run_cases(
    cases: list,
    fixtures: dict,
    jobs: int = 1,
    isolation: str = "fork",
    timeout: float | None = None,
    mem_gb: float = DEFAULT_MEM_GB,
    scratch: str | None = None,
    on_result=None,
) -> list:
    """Runs ``cases`` (``jobs`` at a time) and returns one result dict per case, in order.

    ``isolation``: "fork" (children of this process; import torch and detectors here first
    with :func:`preload`) or "process" (a fresh interpreter per case).  ``timeout`` overrides
    every case's own; ``on_result(result)`` is called as each finishes."""
    own_scratch = scratch is None
    scratch = scratch or tempfile.mkdtemp(prefix="hostile-")
    mem_bytes = int(mem_gb * 2**30)
    pending = list(enumerate(cases))
    running: list[Running] = []
    results: dict[int, dict] = {}
    try:
        while pending or running:
            while pending and len(running) < max(1, jobs):
                i, case = pending.pop(0)
                fresh = case.fresh or isolation == "process"
                t = timeout if timeout is not None else (case.timeout or DEFAULT_TIMEOUT)
                if fresh and case.prelude:
                    t += IMPORT_SECONDS
                spec = _prepare(case, fixtures, scratch, i, fresh)
                pid = _start(spec, fresh, mem_bytes)
                now = time.monotonic()
                running.append(Running(case, pid, now, now + t, spec, i))
            time.sleep(0.02)
            for run in list(running):
                done, _ = os.waitpid(run.pid, os.WNOHANG)
                timed_out = not done and time.monotonic() > run.deadline
                if timed_out:
                    _kill_group(run.pid)
                    os.waitpid(run.pid, 0)
                if done or timed_out:
                    _kill_group(run.pid)  # stray grandchildren (data-loader workers, ...)
                    running.remove(run)
                    results[run.index] = _finish(run, timed_out)
                    if on_result:
                        on_result(results[run.index])
    finally:
        for run in running:
            _kill_group(run.pid)
        if own_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return [results[i] for i in range(len(cases))]


def preload() -> None:
    """Imports what the cases use, once, before forking (no torch computation here: a parent
    that ran OpenMP regions must not fork)."""
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch

    import detectors
    import detectors.bundle
    import detectors.cli
    import detectors.data
    import detectors.zoo
    import invflow
    import invflow.train  # noqa: F401

    detectors.cli.build_parser()  # imports every subcommand module
    # building a model imports torch's lazy modules (linalg on the meta device: seconds per
    # child otherwise); meta tensors compute nothing, so no OpenMP region runs here
    with torch.device("meta"):
        invflow.Glow(1, 8, levels=2, steps=1, hidden=8)
        invflow.RealNVP(1, 8, levels=2, blocks=1, hidden=8)


def summary(results: list) -> dict:
    """Counts: entry points, cases and each status."""
    counts = {s: sum(r["status"] == s for r in results) for s in STATUSES}
    return {"entry_points": len({r["entry"] for r in results}), "cases": len(results), **counts}


def summary_line(s: dict) -> str:
    line = (
        f"entry points: {s['entry_points']}, cases: {s['cases']}, clear: {s['clear']}, ok: {s['ok']}, "
        f"tracebacks: {s['traceback']}, silent: {s['silent']}, hangs: {s['hang']}, "
        f"wrong refusals: {s['wrong']}"
    )
    return line + (f", harness errors: {s['harness']}" if s["harness"] else "")


def format_row(r: dict) -> str:
    return f"{r['status']:<9} {r['seconds']:6.1f}s  {r['name']:<58} {r['detail'][:150]}"


# ----------------------------------------------------------------------------- fixtures

FIXTURE_FILES = {
    "pngs": "pngs",
    "three": "three",
    "npz": "images.npz",
    "ckpt": "tiny.safetensors",
    "ckpt_rgb": "tiny-rgb.safetensors",
    "ckpt16": "tiny16.safetensors",
    "ccf": "ccf.safetensors",
    "bundle": "bundle",
    "run": "bundle/models/flow",
}
#: what each fixture group builds
FIXTURE_GROUPS = {
    "files": ("pngs", "three", "npz"),
    "ckpt": ("ckpt", "ckpt_rgb", "ckpt16"),
    "ccf": ("ccf",),
    "bundle": ("bundle", "run"),
}
#: the tiny fit that makes the bundle fixture (seconds on a CPU)
BUNDLE_FIT = (
    "--steps 2 --size 8 --hidden 8 --depth 1 --levels 1 --no-progress "
    "--detectors likelihood typicality png pca png+pca"
).split()


def fixture_paths(root: str) -> dict:
    return {"root": root, **{k: os.path.join(root, v) for k, v in FIXTURE_FILES.items()}}


def build_fixtures(root: str, groups) -> dict:
    """Builds the fixture ``groups`` into ``root`` (those already there are kept) and returns
    the fixture paths; torch work runs in a subprocess."""
    os.makedirs(root, exist_ok=True)
    todo = [g for g in groups if not os.path.exists(os.path.join(root, f".ready-{g}"))]
    if todo:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--build-fixtures",
            root,
            "--groups",
            ",".join(todo),
        ]
        subprocess.run(cmd, check=True, cwd=root)
    return fixture_paths(root)


def _build_fixtures_here(root: str, groups: list) -> None:
    paths = fixture_paths(root)
    for group in ("files", "ckpt", "ccf", "bundle"):
        if group not in groups and not (group == "files" and "bundle" in groups):
            continue
        ready = os.path.join(root, f".ready-{group}")
        if os.path.exists(ready):
            continue
        if group == "files":
            import numpy as np

            write_pngs(paths["pngs"], 64)
            write_pngs(paths["three"], 3)
            np.savez(paths["npz"], images=images(64, 8).numpy())
        elif group in ("ckpt", "ccf"):
            import torch

            import invflow

            torch.manual_seed(0)
            for key, c, s in (("ckpt", 1, 8), ("ckpt_rgb", 3, 8), ("ckpt16", 1, 16)):
                if group != "ckpt":
                    break
                m = invflow.Glow(c, s, levels=2, steps=1, hidden=8)
                m.train()
                with torch.no_grad():
                    m(pre(images(32, s, c)))  # initialises the ActNorms
                invflow.save(m.eval(), paths[key])
            if group == "ccf":
                from detectors.objectives.supervised import ClassConditionalFlow

                m = ClassConditionalFlow(invflow.Glow(1, 8, levels=2, steps=1, hidden=8), 3)
                invflow.save(m.eval(), paths["ccf"])
        elif group == "bundle":
            if os.path.exists(paths["bundle"]):
                shutil.rmtree(paths["bundle"])
            cmd = [
                sys.executable,
                "-m",
                "detectors",
                "fit",
                "--data",
                paths["pngs"],
                "--out",
                paths["bundle"],
            ]
            subprocess.run(cmd + BUNDLE_FIT, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        open(ready, "w").close()


# ----------------------------------------------------------------------------- main


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--", "invflow", "detectors"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def select(cases: list, only) -> list:
    """The cases whose name or entry point holds one of the substrings ``only`` (all if none)."""
    if not only:
        return list(cases)
    return [c for c in cases if any(s in c.name or s in c.entry for s in only)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SUBSTR",
        help="run the cases whose name or entry point holds SUBSTR (repeatable)",
    )
    p.add_argument("--jobs", type=int, default=1, help="cases run at once (default: 1)")
    p.add_argument("--json", metavar="PATH", help="write every result and the summary as JSON")
    p.add_argument(
        "--isolation",
        choices=("fork", "process"),
        default="fork",
        help="fork: children of one process that imported torch once (default); "
        "process: a fresh interpreter per case",
    )
    p.add_argument("--timeout", type=float, default=None, help="seconds per case (default: each case's own)")
    p.add_argument(
        "--mem-gb",
        type=float,
        default=DEFAULT_MEM_GB,
        help="address-space cap per case, GB (default: %(default)s)",
    )
    p.add_argument("--fixtures", metavar="DIR", help="build / reuse the fixtures here (default: a temp dir)")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    p.add_argument("--label", default=None, help="what was tested, for the record (default: the git commit)")
    p.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)
    p.add_argument("--build-fixtures", metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument("--groups", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        with open(args.child) as f:
            return child_main(json.load(f))
    if args.build_fixtures:
        _build_fixtures_here(args.build_fixtures, [g for g in args.groups.split(",") if g])
        return 0
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.timeout is not None and not args.timeout > 0:
        p.error(f"--timeout must be > 0, got {args.timeout}")

    cases = select(all_cases(), args.only)
    if not cases:
        p.error(f"no case matches {args.only}")
    if args.list:
        for c in cases:
            print(f"{c.expect:<8} {c.entry:<32} {c.name}")
        print(f"{len({c.entry for c in cases})} entry points, {len(cases)} cases")
        return 0

    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread in a process that forks
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    groups = sorted({g for c in cases for g in c.needs})
    own_fixtures = args.fixtures is None
    fx_root = args.fixtures or tempfile.mkdtemp(prefix="hostile-fixtures-")
    try:
        t0 = time.monotonic()
        print(f"fixtures: {fx_root} ({', '.join(groups) or 'none'})", flush=True)
        fixtures = build_fixtures(fx_root, groups)
        if args.isolation == "fork":
            preload()
        print(
            f"ready in {time.monotonic() - t0:.0f} s; {len(cases)} cases, {args.jobs} at a time\n", flush=True
        )
        bar = tqdm(total=len(cases), unit="case", file=sys.stderr, dynamic_ncols=True)

        def report(r: dict) -> None:
            bar.write(format_row(r), file=sys.stdout)
            bar.set_postfix_str(r["status"])
            bar.update(1)

        results = run_cases(
            cases, fixtures, args.jobs, args.isolation, args.timeout, args.mem_gb, on_result=report
        )
        bar.close()
    finally:
        if own_fixtures:
            shutil.rmtree(fx_root, ignore_errors=True)
    s = summary(results)
    wall = time.monotonic() - t0
    print("\nnot clear / ok, by status:")
    for status in ("traceback", "silent", "hang", "wrong", "harness"):
        for r in results:
            if r["status"] == status:
                print(f"  {status:<9} {r['name']}: {r['detail'][:200]}")
    label = args.label or f"commit {_commit()}"
    print(f"\n{summary_line(s)}  ({wall:.0f} s, {label})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"label": label, "seconds": round(wall, 1), "summary": s, "results": results},
                f,
                indent=1,
            )
    return 0


# ----------------------------------------------------------------------------- the cases

# fmt: off
# Snippets below run in a child with the helpers of this file in scope (see _namespace).
_M = "m = invflow.load(F.ckpt)\n"
_X = "x = pre(images(8))\n"
_B = "b = detectors.load(F.bundle)\n"
_DET = "det = copy_bundle(F.bundle, W + '/det')\n"
_LOOP3 = "d = shutil.copytree(F.three, W + '/d')\n"
_FIT = ("--steps", "1", "--size", "8", "--hidden", "8", "--depth", "1", "--levels", "1", "--no-progress")
_FIT_ARGS = ("fit", "--data", "{F.pngs}", "--out", "{W}/det", "--detectors", "likelihood") + _FIT
_TRAIN_ARGS = ("train", "--data", "{F.npz}", "--out", "{W}/run", "--steps", "1", "--levels", "1", "--depth", "1", "--hidden", "8", "--batch", "8")
_SCORE_ARGS = ("score", "{F.bundle}", "--data", "{F.three}", "--out", "{W}/rep", "--no-progress")
_EVAL_ARGS = ("evaluate", "--in-model", "{F.ckpt}", "--out", "{W}/ev", "--n", "16")


def _replace(args: tuple, flag: str, value: str) -> tuple:
    """``args`` with the value after ``flag`` replaced (or ``flag value`` appended)."""
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return tuple(args)


def _api(entry, short, kind, expect_, why, code, setup="", needs=("ckpt",), **kw) -> Case:
    return Case(f"{entry}/{short}", entry, kind, expect_, why, setup=setup, code=code, needs=needs, **kw)


def _cli(
    cmd, short, kind, expect_, why, argv, setup="", check="", needs=("files",), timeout=30.0, **kw
) -> Case:
    return Case(
        f"cli {cmd}/{short}",
        f"cli {cmd}",
        kind,
        expect_,
        why,
        setup=setup,
        argv=tuple(argv),
        check=check,
        needs=needs,
        timeout=timeout,
        **kw,
    )


def _checkpoint_cases() -> list:
    L = "invflow.load"
    ck = ("ckpt",)
    load = "invflow.load(p)"
    tampered = [
        ("config-hidden-200000", "memory", {"hidden": 200000}, "the stored tensors are 8 wide: refuse before allocating"),
        ("config-image-size-100000", "memory", {"image_size": 100000}, "refuse a config that does not match the tensors"),
        ("config-steps-100000", "memory", {"steps": 100000}, "refuse a config that does not match the tensors"),
        ("config-levels-10", "config", {"levels": 10}, "refuse: 8 is not divisible by 2**10"),
        ("config-hidden-negative", "config", {"hidden": -5}, "refuse a negative width"),
        ("config-hidden-string", "wrong-type", {"hidden": "wide"}, "refuse a width that is a string"),
        ("config-hidden-float", "wrong-type", {"hidden": 8.5}, "refuse a fractional width"),
        ("config-hidden-nan", "non-finite", {"hidden": float("nan")}, "refuse a NaN width"),
        ("config-unknown-key", "config", {"backdoor": 1}, "refuse an unknown constructor argument"),
        ("config-scale-unknown", "config", {"scale": "os.system"}, "refuse an unknown scale function"),
    ]
    out = [
        _api(L, "missing-file", "missing", "refuse", "FileNotFoundError naming the path", "invflow.load(W + '/nope.safetensors')", needs=()),
        _api(L, "empty-directory", "empty", "refuse", "say the directory holds no checkpoint", "invflow.load(W)", needs=()),
        _api(L, "fifo", "fifo", "refuse", "open regular files only: a FIFO must not block", load, setup="p = fifo(W + '/m.safetensors')", needs=()),
        _api(L, "dev-zero", "device-file", "refuse", "open regular files only", "invflow.load('/dev/zero')", needs=()),
        _api(L, "symlink-to-dev-zero", "device-file", "refuse", "open regular files only (after resolving links)", load, setup="p = W + '/z.safetensors'; os.symlink('/dev/zero', p)", needs=()),
        _api(L, "symlink-loop", "symlink-loop", "refuse", "a symlink loop is not a checkpoint", load, setup="p = W + '/a.safetensors'; os.symlink('b.safetensors', p); os.symlink('a.safetensors', W + '/b.safetensors')", needs=()),
        _api(L, "empty-file", "empty", "refuse", "an empty file is not a checkpoint", load, setup="p = W + '/e.safetensors'; open(p, 'wb').close()", needs=()),
        _api(L, "truncated-half", "truncated", "refuse", "a truncated checkpoint", load, setup="b = open(F.ckpt, 'rb').read(); p = W + '/t.safetensors'; open(p, 'wb').write(b[: len(b) // 2])"),
        _api(L, "text-named-safetensors", "text-as-binary", "refuse", "a text file is not a checkpoint", load, setup="p = W + '/t.safetensors'; open(p, 'w').write('hello world\\n' * 10)", needs=()),
        _api(L, "pickle-payload", "pickle", "refuse", "refuse without unpickling (the payload must not run)", load, setup="p = evil_pickle(W + '/m.safetensors')", needs=()),
        _api(L, "torch-save-payload", "pickle", "refuse", "refuse a torch.save zip without unpickling", load, setup="p = evil_torch_save(W + '/m.safetensors')", needs=()),
        _api(L, "pickle-payload-in-run-dir", "pickle", "refuse", "a run directory's model file holding a pickle", "invflow.load(W + '/c')", setup="os.mkdir(W + '/c'); evil_pickle(W + '/c/model.safetensors')", needs=()),
        _api(L, "header-length-2^62", "huge-header", "refuse", "a header length far beyond the file", load, setup="import struct; p = W + '/h.safetensors'; open(p, 'wb').write(struct.pack('<Q', 2**62) + b'{}')", needs=()),
        _api(L, "header-not-an-object", "wrong-type", "refuse", "a header that is a JSON list", load, setup="import struct; h = b'[1, 2, 3]'; p = W + '/h.safetensors'; open(p, 'wb').write(struct.pack('<Q', len(h)) + h)", needs=()),
        _api(L, "header-offsets-beyond-file", "truncated", "refuse", "tensor offsets beyond the file", load, setup="import struct; h = json.dumps({'w': {'dtype': 'F32', 'shape': [1000000], 'data_offsets': [0, 4000000]}}).encode(); " "p = W + '/h.safetensors'; open(p, 'wb').write(struct.pack('<Q', len(h)) + h + b'\\0' * 16)", needs=()),
        _api(L, "header-deep-nesting", "deep-nesting", "refuse", "a deeply nested header", load, setup="import struct; h = b'[' * 100000 + b']' * 100000; p = W + '/h.safetensors'; " "open(p, 'wb').write(struct.pack('<Q', len(h)) + h)", needs=()),
        _api(L, "config-deep-nesting", "deep-nesting", "refuse", "a deeply nested config (no RecursionError)", load, setup="p = tamper_checkpoint(F.ckpt, W + '/c.safetensors', raw_config='[' * 100000 + ']' * 100000)", needs=ck),
        _api(L, "config-not-json", "wrong-format", "refuse", "a config that is not JSON", load, setup="p = tamper_checkpoint(F.ckpt, W + '/c.safetensors', raw_config='{hidden: 8')", needs=ck),
        _api(L, "config-a-list", "wrong-type", "refuse", "a config that is a JSON list", load, setup="p = tamper_checkpoint(F.ckpt, W + '/c.safetensors', raw_config='[1, 8, 2]')", needs=ck),
        _api(L, "class-unknown", "config", "refuse", "an unregistered class name", load, setup="p = tamper_checkpoint(F.ckpt, W + '/c.safetensors', metadata={'class': 'posix.system'})", needs=ck),
        _api(L, "no-metadata", "wrong-format", "refuse", "a safetensors file without invflow metadata", load, setup="from safetensors.torch import save_file; p = W + '/c.safetensors'; " "save_file(read_checkpoint(F.ckpt)[0], p)", needs=ck),
        _api(L, "format-other", "wrong-format", "refuse", "metadata format other than invflow", load, setup="p = tamper_checkpoint(F.ckpt, W + '/c.safetensors', metadata={'format': 'pt'})", needs=ck),
        _api(L, "version-99", "wrong-format", "refuse", "a checkpoint version this release cannot read", load, setup="p = tamper_checkpoint(F.ckpt, W + '/c.safetensors', metadata={'version': '99'})", needs=ck),
        _api(L, "nan-weights", "non-finite", "refuse", "all-NaN weights make every score the floor: refuse on load", load, setup="p = tamper_checkpoint(F.ckpt, W + '/c.safetensors', tensors=all_nan)", needs=ck),
        _api(L, "one-inf-weight", "non-finite", "refuse", "an infinite weight: refuse on load", load, setup="def f(t):\n    k = next(k for k, v in t.items() if v.is_floating_point() and v.numel() > 1)\n" "    t[k] = t[k].clone(); t[k].view(-1)[0] = float('inf'); return t\n" "p = tamper_checkpoint(F.ckpt, W + '/c.safetensors', tensors=f)", needs=ck),
        _api(L, "tensor-wrong-shape", "shape", "refuse", "a tensor whose shape is not the model's", load, setup="def f(t):\n    k = next(k for k, v in t.items() if v.dim() == 4)\n    t[k] = torch.zeros(3, 3); return t\n" "p = tamper_checkpoint(F.ckpt, W + '/c.safetensors', tensors=f)", needs=ck),
        _api(L, "tensor-missing", "shape", "refuse", "a tensor missing", load, setup="def f(t):\n    t.pop(sorted(t)[0]); return t\np = tamper_checkpoint(F.ckpt, W + '/c.safetensors', tensors=f)", needs=ck),
        _api(L, "tensor-extra", "shape", "refuse", "an unexpected tensor (strict)", load, setup="def f(t):\n    t['extra.weight'] = torch.zeros(2); return t\np = tamper_checkpoint(F.ckpt, W + '/c.safetensors', tensors=f)", needs=ck),
        _api(L, "tensors-int", "dtype", "refuse", "integer weights", load, setup="def f(t):\n    return {k: v.to(torch.int32) for k, v in t.items()}\np = tamper_checkpoint(F.ckpt, W + '/c.safetensors', tensors=f)", needs=ck),
        _api(L, "map-location-banana", "bad-argument", "refuse", "an unknown device", "invflow.load(F.ckpt, map_location='banana')", needs=ck),
        _api(L, "path-none", "wrong-type", "refuse", "TypeError for None", "invflow.load(None)", needs=()),
        _api(L, "run-latest-escapes", "path-escape", "refuse", "a run's latest file pointing outside the run", "invflow.load(W + '/run')", setup="shutil.copytree(F.run, W + '/run'); open(W + '/run/latest', 'w').write('../../../../../../etc')", needs=("bundle",)),
        _api(L, "run-latest-absolute-elsewhere", "path-escape", "refuse", "a run's latest naming another run's checkpoint by absolute path", "invflow.load(W + '/run')", setup="shutil.copytree(F.run, W + '/run'); open(W + '/run/latest', 'w').write(run_latest(F.run))", needs=("bundle",)),
        _api(L, "run-latest-fifo", "fifo", "refuse", "a run's latest file that is a FIFO", "invflow.load(W + '/run')", setup="shutil.copytree(F.run, W + '/run'); os.remove(W + '/run/latest'); fifo(W + '/run/latest')", needs=("bundle",)),
        _api(L, "run-latest-50MB", "huge-file", "refuse", "a 50 MB latest file", "invflow.load(W + '/run')", setup="shutil.copytree(F.run, W + '/run'); open(W + '/run/latest', 'w').write('a' * 50_000_000)", needs=("bundle",)),
        _api(L, "valid", "baseline", "succeed", "a valid checkpoint loads in eval mode", "m = invflow.load(F.ckpt); expect(not m.training, 'not in eval mode')", needs=ck),
        _api(L, "valid-non-utf8-name", "non-utf8", "succeed", "a valid checkpoint under a non-UTF-8 file name", "invflow.load(p)", setup="p = os.fsdecode(W.encode() + b'/\\xff\\xfe.safetensors'); shutil.copy(F.ckpt, p)", needs=ck),
        _api(L, "class-conditional-after-import", "registration", "succeed", "a ClassConditionalFlow checkpoint loads after import invflow, detectors", "invflow.load(F.ccf)", needs=("ccf",), fresh=True),
    ]
    for short, kind, cfg, why in tampered:
        out.append(
            _api(L, short, kind, "refuse", why, load, setup=f"p = tamper_checkpoint(F.ckpt, W + '/c.safetensors', config={cfg!r})".replace("nan", "float('nan')" ), needs=ck)
        )
    S = "invflow.save"
    out += [
        _api(S, "to-directory", "path-kind", "refuse", "a directory is not a file name", _M + "invflow.save(m, W)"),
        _api(S, "not-a-module", "wrong-type", "refuse", "TypeError for a non-module", "invflow.save('model', W + '/m.safetensors')", needs=()),
    ]
    return out


def _preprocess_cases() -> list:
    E = "invflow.data.preprocess"
    u = "x = images(4)\n"
    return [
        _api(E, "float-input", "dtype", "refuse", "TypeError: raw uint8 images expected", "invflow.data.preprocess(torch.rand(4, 1, 8, 8))", needs=()),
        _api(E, "int64-input", "dtype", "refuse", "TypeError: raw uint8 images expected", "invflow.data.preprocess(images(4).long())", needs=()),
        _api(E, "list-input", "wrong-type", "refuse", "TypeError for a list", "invflow.data.preprocess([[1, 2], [3, 4]])", needs=()),
        _api(E, "dtype-int64", "bad-argument", "refuse", "dtype must be a floating dtype", u + "invflow.data.preprocess(x, dtype=torch.int64)", needs=()),
        _api(E, "dtype-string", "bad-argument", "refuse", "dtype must be a torch dtype", u + "invflow.data.preprocess(x, dtype='float32')", needs=()),
        _api(E, "generator-string", "bad-argument", "refuse", "generator must be a torch.Generator", u + "invflow.data.preprocess(x, generator='seed')", needs=()),
        _api(E, "rank-5", "shape", "refuse", "[B, C, H, W] or [B, H, W]", "invflow.data.preprocess(images(4)[None])", needs=()),
        _api(E, "empty-batch", "empty", "either", "an empty batch in, an empty batch out (or a clear refusal)", "y = invflow.data.preprocess(images(4)[:0]); expect(y.shape[0] == 0, str(y.shape))", needs=()),
        _api(E, "valid", "baseline", "succeed", "floats in [-0.5, 0.5)", "y = pre(images(16)); expect(float(y.min()) >= -0.5 and float(y.max()) < 0.5, 'out of range')", needs=()),
    ]


def _model_cases() -> list:
    out = []
    LP, INV, SMP = "model.log_prob", "model.inverse", "model.sample"
    bad_lp = [
        ("nan", "non-finite", "x[0, 0, 0, 0] = float('nan')", "refuse NaN input"),
        ("inf", "non-finite", "x[0, 0, 0, 0] = float('inf')", "refuse infinite input"),
        ("0-255-floats", "range", "x = images(8).float()", "refuse unpreprocessed 0..255 floats, saying to preprocess"),
        ("totensor-0-1", "range", "x = images(8).float() / 255", "refuse ToTensor's 0..1 floats, saying to preprocess"),
        ("uint8", "dtype", "x = images(8)", "TypeError: preprocess uint8 images first"),
        ("float64-input", "dtype", "x = x.double()", "TypeError: the model is float32"),
        ("3-channels", "shape", "x = pre(images(8, channels=3))", "refuse 3 channels for a 1-channel model"),
        ("16x16", "shape", "x = pre(images(8, size=16))", "refuse a spatial size not the model's"),
        ("rank-3", "shape", "x = x[:, 0]", "refuse [B, H, W]"),
        ("list", "wrong-type", "x = x.tolist()", "TypeError for a list"),
    ]
    for short, kind, mutate, why in bad_lp:
        msg = "preprocess" if short in ("0-255-floats", "totensor-0-1") else ""
        out.append(_api(LP, short, kind, "refuse", why, _M + _X + mutate + "\nm.log_prob(x)", message=msg))
    out += [
        _api(LP, "empty-batch", "empty", "either", "an empty batch gives [0] (or a clear refusal)", _M + _X + "y = m.log_prob(x[:0]); expect(y.shape == (0,), str(y.shape))"),
        _api(LP, "own-samples-t0.7", "own-samples", "succeed", "log p of the model's own samples is finite", _M + "torch.manual_seed(0)\nfor _ in range(5):\n    y = m.log_prob(m.sample(16, temperature=0.7))\n" "    expect(bool(torch.isfinite(y).all()), 'non-finite log p of own samples')"),
        _api(LP, "own-samples-t1.0", "own-samples", "succeed", "log p of the model's own samples is finite", _M + "torch.manual_seed(0)\nfor _ in range(5):\n    y = m.log_prob(m.sample(16))\n" "    expect(bool(torch.isfinite(y).all()), 'non-finite log p of own samples')"),
        _api(LP, "channels-last", "layout", "succeed", "a channels-last tensor gives the same log p", _M + _X + "a = m.log_prob(x); b = m.log_prob(x.to(memory_format=torch.channels_last))\n" "expect(torch.allclose(a, b, atol=1e-4), f'{a} != {b}')"),
        _api(LP, "requires-grad", "autograd", "succeed", "gradients w.r.t. the input are finite", _M + _X + "x.requires_grad_(True); m.log_prob(x).sum().backward()\n" "expect(bool(torch.isfinite(x.grad).all()), 'non-finite input gradient')"),
    ]
    # the zoo model (the issue's report)
    Z = "zoo model.log_prob"
    zm = "m = detectors.zoo.load('fmnist-glow')\n"
    out += [
        _api(Z, "own-samples-t0.7", "own-samples", "succeed", "log p of the zoo model's own samples (T=0.7) is finite", zm + "torch.manual_seed(0)\nfor _ in range(2):\n    y = m.log_prob(m.sample(16, temperature=0.7))\n" "    expect(bool(torch.isfinite(y).all()), 'non-finite log p')", needs=(), timeout=40.0),
        _api(Z, "0-255-floats", "range", "refuse", "refuse 0..255 floats with a true hint", zm + "m.log_prob(images(4, 28).float())", message="preprocess", needs=()),
        _api(Z, "totensor-0-1", "range", "refuse", "refuse 0..1 floats with a true hint", zm + "m.log_prob(images(4, 28).float() / 255)", message="preprocess", needs=()),
        _api("zoo model.sample", "n-negative", "negative-number", "refuse", "n must be >= 0", zm + "m.sample(-3)", needs=()),
        _api("zoo model.inverse", "nan-latents", "non-finite", "refuse", "NaN latents give NaN images: refuse", zm + "zs = [torch.full((2, *s), float('nan')) for s in m.latent_shapes()]\nm.inverse(zs)", needs=()),
    ]
    lat = _M + "zs = m(pre(images(4))).latents\n"
    out += [
        _api(INV, "nan-latents", "non-finite", "refuse", "refuse NaN latents", lat + "zs[0][0] = float('nan')\nm.inverse(zs)"),
        _api(INV, "inf-latents", "non-finite", "refuse", "refuse infinite latents", lat + "zs[-1][0] = float('inf')\nm.inverse(zs)"),
        _api(INV, "float64-latents", "dtype", "refuse", "TypeError naming the dtype, not torch's error", lat + "m.inverse([z.double() for z in zs])"),
        _api(INV, "one-latent-missing", "shape", "refuse", "one latent per scale", lat + "m.inverse(zs[:-1])" ),
        _api(INV, "latent-wrong-shape", "shape", "refuse", "latents of the model's shapes", lat + "m.inverse([z[..., :2] for z in zs])"),
        _api(INV, "single-tensor", "wrong-type", "refuse", "a list of latents, not one tensor", lat + "m.inverse(zs[0])"),
        _api(INV, "round-trip", "baseline", "succeed", "inverse(forward(x)) == x", _M + _X + "y = m.inverse(m(x).latents); expect(torch.allclose(x, y, atol=1e-4), 'round trip differs')"),
    ]
    bad_sample = [
        ("n-negative", "negative-number", "m.sample(-1)", "n must be >= 0"),
        ("n-fractional", "wrong-type", "m.sample(1.5)", "n must be an integer"),
        ("n-1e9", "memory", "m.sample(10**9)", "a billion samples: refuse with the memory needed, not an allocator crash"),
        ("temperature-nan", "non-finite", "m.sample(2, temperature=float('nan'))", "temperature must be finite"),
        ("temperature-negative", "negative-number", "m.sample(2, temperature=-1.0)", "temperature must be >= 0"),
        ("temperature-string", "wrong-type", "m.sample(2, temperature='hot')", "temperature must be a number"),
        ("generator-string", "wrong-type", "m.sample(2, generator='seed')", "generator must be a torch.Generator"),
    ]
    for short, kind, call, why in bad_sample:
        out.append(_api(SMP, short, kind, "refuse", why, _M + call))
    out += [
        _api(SMP, "n-zero", "empty", "either", "zero samples (or a clear refusal)", _M + "y = m.sample(0); expect(y.shape[0] == 0, str(y.shape))"),
        _api(SMP, "temperature-zero", "edge", "either", "the mode (or a clear refusal)", _M + "y = m.sample(2, temperature=0.0); expect(bool(torch.isfinite(y).all()), 'non-finite')"),
    ]
    C = "invflow.Glow"
    bad_glow = [
        ("hidden-1e9", "memory", "invflow.Glow(1, 8, levels=2, steps=1, hidden=10**9)", "an upper bound on widths, named in the error"),
        ("hidden-200000", "memory", "invflow.Glow(1, 32, levels=3, steps=8, hidden=200000)", "an upper bound on widths, named in the error"),
        ("image-size-100000", "memory", "m = invflow.Glow(1, 100000, levels=2, steps=1, hidden=8); m(torch.zeros(1, 1, 100000, 100000))", "an upper bound on sizes, named in the error"),
        ("levels-10-size-8", "config", "invflow.Glow(1, 8, levels=10, steps=1, hidden=8)", "8 is not divisible by 2**10"),
        ("steps-negative", "negative-number", "invflow.Glow(1, 8, levels=2, steps=-1, hidden=8)", "steps must be >= 1"),
        ("hidden-float", "wrong-type", "invflow.Glow(1, 8, levels=2, steps=1, hidden=2.5)", "hidden must be an integer"),
        ("image-size-string", "wrong-type", "invflow.Glow(1, '8', levels=2, steps=1, hidden=8)", "image_size must be an int or (H, W)"),
    ]
    for short, kind, call, why in bad_glow:
        out.append(_api(C, short, kind, "refuse", why, call, needs=()))
    out += [
        _api("invflow.RealNVP", "hidden-1e9", "memory", "refuse", "an upper bound on widths", "invflow.RealNVP(1, 8, hidden=10**9)", needs=()),
        _api("invflow.VectorFlow", "dim-zero", "edge", "refuse", "dim must be >= 1", "invflow.VectorFlow(0)", needs=()),
        _api("invflow.VectorFlow", "dim-1e6-hidden-1e5", "memory", "refuse", "an upper bound on widths", "invflow.VectorFlow(10**6, blocks=2, hidden=10**5)", needs=()),
        _api("invflow.ActNorm", "near-constant-channel", "edge", "succeed", "the data-dependent scale of a near-constant channel (std 2e-5) is bounded (checked: < 1e4)", "a = invflow.ActNorm(2); x = torch.randn(64, 2, 4, 4); x[:, 1] = 0.3 + 2e-5 * torch.randn(64, 4, 4)\n" "a.train(); y, _ = a(x)\nscale = (y[:, 1].std() / x[:, 1].std()).item()\n" "expect(scale < 1e4, f'scale {scale:.3g} on a channel of std 2e-5')", needs=()),
        _api("invflow.ActNorm", "channels-negative", "negative-number", "refuse", "num_channels must be >= 1", "invflow.ActNorm(-1)", needs=()),
    ]
    FM = "invflow.train.finite_mean"
    out += [
        _api(FM, "readme-pattern-gradient", "non-finite", "succeed", "finite_mean(-lp) with one non-finite value leaves the kept samples' gradient finite (or warns)", _M + "from invflow.train import finite_mean\nm.train()\nlp = m(pre(images(8))).log_prob\n" "lp = torch.cat([lp[:1] * float('inf'), lp[1:]])\nfinite_mean(-lp).backward()\n" "bad = [n for n, p in m.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]\n" "expect(not bad or warned('(?i)gradient|nan|finite'), f'{len(bad)} parameters got NaN gradients, no warning')"),
        _api(FM, "max-dropped-2", "bad-argument", "refuse", "max_dropped in [0, 1]", "from invflow.train import finite_mean\nfinite_mean(torch.ones(4), max_dropped=2.0)", needs=()),
    ]
    Zl = "detectors.zoo.load"
    out += [
        _api(Zl, "unknown-name", "bad-argument", "refuse", "name the available models", "detectors.zoo.load('banana')", needs=()),
        _api(Zl, "path-escape", "path-escape", "refuse", "a name is not a path", "detectors.zoo.load('../../../etc/passwd')", needs=()),
        _api(Zl, "none", "wrong-type", "refuse", "TypeError for None", "detectors.zoo.load(None)", needs=()),
        _api(Zl, "empty", "empty", "refuse", "an empty name", "detectors.zoo.load('')", needs=()),
    ]
    return out


def _bundle_cases() -> list:
    L = "detectors.load"
    bn = ("bundle",)
    load = "detectors.load(det)"

    def meta(short, kind, why, fn, expect_="refuse", **kw):
        setup = _DET + f"def fn(m):\n{fn}\nedit_json(det + '/bundle.json', fn)"
        return _api(L, short, kind, expect_, why, load, setup=setup, needs=bn, **kw)

    def ind(body: str) -> str:
        return "\n".join("    " + ln for ln in body.splitlines())

    out = [
        _api(L, "missing", "missing", "refuse", "FileNotFoundError naming the path", "detectors.load(W + '/nope')", needs=()),
        _api(L, "a-file", "path-kind", "refuse", "a file is not a bundle", "detectors.load(F.ckpt)", needs=("ckpt",)),
        _api(L, "fifo", "fifo", "refuse", "a FIFO is not a bundle", "detectors.load(fifo(W + '/det'))", needs=()),
        _api(L, "bundle-json-fifo", "fifo", "refuse", "a bundle.json that is a FIFO must not block", load, setup=_DET + "os.remove(det + '/bundle.json'); fifo(det + '/bundle.json')", needs=bn),
        _api(L, "bundle-json-empty", "empty", "refuse", "an empty bundle.json", load, setup=_DET + "open(det + '/bundle.json', 'w').close()", needs=bn),
        _api(L, "bundle-json-binary", "non-utf8", "refuse", "a binary bundle.json", load, setup=_DET + "open(det + '/bundle.json', 'wb').write(b'\\x89PNG\\xff\\xfe' * 100)", needs=bn),
        _api(L, "bundle-json-deep-nesting", "deep-nesting", "refuse", "a deeply nested bundle.json (no RecursionError)", load, setup=_DET + "open(det + '/bundle.json', 'w').write('[' * 100000 + ']' * 100000)", needs=bn),
        _api(L, "bundle-json-deep-dict", "deep-nesting", "refuse", "a deeply nested value inside bundle.json", load, setup=_DET + "t = open(det + '/bundle.json').read().rstrip()[:-1] + ', \"x\": ' + '{\"a\": ' * 50000 + '1' + '}' * 50000 + '}'\n" "open(det + '/bundle.json', 'w').write(t)", needs=bn),
        _api(L, "bundle-json-a-list", "wrong-type", "refuse", "bundle.json that is a list", load, setup=_DET + "open(det + '/bundle.json', 'w').write('[1, 2]')", needs=bn),
        _api(L, "bundle-json-50MB", "huge-file", "refuse", "a 50 MB bundle.json of padding (refuse or read; never hang)", load, setup=_DET + "open(det + '/bundle.json', 'w').write(' ' * 50_000_000)", needs=bn),
        meta(
            "models-flow-etc-passwd",
            "path-escape",
            "a bundle reads only files inside itself",
            "    m['models']['flow'] = '/etc/passwd'",
        ),
        meta(
            "models-flow-dotdot",
            "path-escape",
            "a bundle reads only files inside itself",
            "    m['models']['flow'] = '../../../../..'",
        ),
        meta(
            "models-flow-other-bundle",
            "path-escape",
            "another bundle's model must not be used",
            "    m['models']['flow'] = F.run",
        ),
        meta(
            "models-flow-not-a-string",
            "wrong-type",
            "a model path must be a string",
            "    m['models']['flow'] = 42",
        ),
        meta("models-a-list", "wrong-type", "models must be an object", "    m['models'] = ['models/flow']"),
        meta(
            "models-flow-dev-zero",
            "device-file",
            "open regular files only",
            "    m['models']['flow'] = '/dev/zero'",
        ),
        _api(L, "models-flow-symlink-outside", "path-escape", "refuse", "a link inside the bundle to a model outside it", load, setup=_DET + "shutil.rmtree(det + '/models/flow'); os.symlink(F.run, det + '/models/flow')", needs=bn),
        _api(L, "latest-escapes", "path-escape", "refuse", "the run's latest naming a path outside the bundle", load, setup=_DET + "open(det + '/models/flow/latest', 'w').write(os.path.dirname(run_latest(F.run)) + '/' + os.path.basename(run_latest(F.run)))", needs=bn),
        _api(L, "latest-dotdot", "path-escape", "refuse", "the run's latest climbing out of the bundle", load, setup=_DET + "open(det + '/models/flow/latest', 'w').write('../../../' + os.path.relpath(run_latest(F.run), os.path.dirname(det)))", needs=bn),
        _api(L, "model-fifo", "fifo", "refuse", "a model file that is a FIFO must not block", load, setup=_DET + "p = run_latest(det + '/models/flow') + '/model.safetensors'; os.remove(p); fifo(p)", needs=bn),
        _api(L, "model-pickle-payload", "pickle", "refuse", "a model file holding a pickle is refused, unrun", load, setup=_DET + "evil_pickle(run_latest(det + '/models/flow') + '/model.safetensors')", needs=bn),
        _api(L, "model-nan-weights", "non-finite", "refuse", "all-NaN weights: refuse on load", load, setup=_DET + "p = run_latest(det + '/models/flow') + '/model.safetensors'; tamper_checkpoint(p, p, tensors=all_nan)", needs=bn),
        _api(L, "model-hidden-200000", "memory", "refuse", "a config that does not match the tensors: refuse before allocating", load, setup=_DET + "p = run_latest(det + '/models/flow') + '/model.safetensors'; tamper_checkpoint(p, p, config={'hidden': 200000})", needs=bn),
        _api(L, "state-pickle-payload", "pickle", "refuse", "state.safetensors holding a pickle is refused, unrun", load, setup=_DET + "evil_pickle(det + '/state.safetensors')", needs=bn),
        _api(L, "state-truncated", "truncated", "refuse", "a truncated state.safetensors", load, setup=_DET + "b = open(det + '/state.safetensors', 'rb').read(); open(det + '/state.safetensors', 'wb').write(b[: len(b) // 3])", needs=bn),
        _api(L, "state-nan-features", "non-finite", "refuse", "NaN fitted features: refuse on load", load, setup=_DET + "from safetensors.torch import save_file\nt, md = read_checkpoint(det + '/state.safetensors')\n" "t = all_nan(t)\nsave_file(t, det + '/state.safetensors', metadata=md or None)", needs=bn),
        _api(L, "state-fifo", "fifo", "refuse", "state.safetensors that is a FIFO must not block", load, setup=_DET + "os.remove(det + '/state.safetensors'); fifo(det + '/state.safetensors')", needs=bn),
        _api(L, "valid", "baseline", "succeed", "the fixture bundle loads with its five detectors", "b = detectors.load(F.bundle); expect(len(b) == 5, str(list(b)))", needs=bn),
    ]
    for short, kind, why, body in [
        ("threshold-nan", "non-finite", "a NaN threshold never flags: refuse", "m['detectors'][0]['threshold'] = float('nan')"),
        ("threshold-inf", "non-finite", "an infinite threshold never flags: refuse", "m['detectors'][0]['threshold'] = float('inf')"),
        ("threshold-string", "wrong-type", "a threshold must be a number", "m['detectors'][0]['threshold'] = 'high'"),
        ("threshold-missing", "missing", "a detector without a threshold", "del m['detectors'][0]['threshold']"),
        ("fpr-5", "range", "fpr in [0, 1)", "m['detectors'][0]['fpr'] = 5"),
        ("preprocessing-size-100000", "memory", "an upper bound on the image size, named in the error", "m['preprocessing']['size'] = 100000"),
        ("preprocessing-size-negative", "negative-number", "size must be >= 1", "m['preprocessing']['size'] = -3"),
        ("preprocessing-size-string", "wrong-type", "size must be an integer", "m['preprocessing']['size'] = 'big'"),
        ("preprocessing-channels-7", "range", "channels 1 or 3", "m['preprocessing']['channels'] = 7"),
        ("preprocessing-missing", "missing", "the preprocessing policy is required", "del m['preprocessing']"),
        ("detectors-a-dict", "wrong-type", "detectors must be a list", "m['detectors'] = {'likelihood': 1}"),
        ("detectors-entry-no-name", "missing", "each detector needs a name", "del m['detectors'][0]['name']"),
        ("detectors-unknown-name", "bad-argument", "an unknown detector name", "m['detectors'][0]['name'] = 'os.system'"),
        ("detectors-empty", "empty", "a bundle without detectors", "m['detectors'] = []"),
        ("feature-size-100000", "memory", "an upper bound on the feature size", "m['feature_size'] = 100000"),
        ("typicality-entropy-nan", "non-finite", "a NaN entropy: refuse", "[e.setdefault('state', {}).update(entropy=float('nan')) for e in m['detectors'] if e['name'] == 'typicality']"),
        ("ensemble-std-nan", "non-finite", "a NaN standardisation: refuse", "[e['state']['standardisation'].update(png=[0.0, float('nan')]) for e in m['detectors'] if e['name'] == 'png+pca']"),
        ("ensemble-mean-inf", "non-finite", "an infinite mean: refuse", "[e['state']['standardisation'].update(png=[float('inf'), 1.0]) for e in m['detectors'] if e['name'] == 'png+pca']"),
        ("version-2", "wrong-format", "a format version this release cannot read", "m['version'] = 2"),
    ]:
        out.append(meta(short, kind, why, ind(body)))
    BS = "Bundle.score"
    out += [
        _api(BS, "pil-images-of-any-size", "size", "succeed", "PIL images of other sizes are resized by the policy", _B + "from PIL import Image\nims = [Image.new('L', (s, s + 3), 100) for s in (5, 40, 300)]\n" "s = b.score(ims); expect(all(v.shape == (3,) and bool(torch.isfinite(v).all()) for v in s.values()), str(s))", needs=bn),
        _api(BS, "uint8-other-size", "size", "either", "uint8 images of another size are resized (or a clear refusal)", _B + "s = b.score(images(4, 20)); expect(all(v.shape == (4,) for v in s.values()), str(s))", needs=bn),
        _api(BS, "float-nan", "non-finite", "refuse", "refuse NaN images", _B + "x = torch.full((2, 1, 8, 8), float('nan'))\nb.score(x)", needs=bn),
        _api(BS, "float-0-255", "range", "refuse", "refuse unpreprocessed floats", _B + "b.score(images(2).float())", needs=bn),
        _api(BS, "flow-own-samples", "range", "succeed", "the bundle flow's own samples (beyond [-0.5, 0.5]) are scored, as a batch and as a list", _B + "m = next(d.model for d in b.detectors.values() if hasattr(d, 'model'))\nx = m.sample(6, generator=torch.Generator().manual_seed(0))\nexpect(float(x.abs().max()) > 0.5, 'samples inside the cube')\ns, t = b.score(x), b.score(list(x))\nexpect(all(v.shape == (6,) and bool(torch.isfinite(v).all()) and torch.equal(v, t[k]) for k, v in s.items()), str(s))", needs=bn),
        _api(BS, "missing-path", "missing", "refuse", "FileNotFoundError for a missing folder", _B + "b.score(W + '/nope')", needs=bn),
        _api(BS, "fifo-path", "fifo", "refuse", "a FIFO named .png must not block", _B + "b.score(fifo(W + '/x.png'))", needs=bn),
        _api(BS, "folder-with-symlink-loop", "symlink-loop", "succeed", "3 PNGs and a -> . score 3 rows", _B + "s = b.score(d); expect(all(len(v) == 3 for v in s.values()), f'{len(next(iter(s.values())))} rows for 3 files')", setup=_LOOP3 + "os.symlink('.', d + '/a')", needs=bn + ("files",)),
        _api(BS, "folder-with-two-symlink-loops", "symlink-loop", "succeed", "3 PNGs and two loops score 3 rows, promptly", _B + "s = b.score(d); expect(all(len(v) == 3 for v in s.values()), f'{len(next(iter(s.values())))} rows for 3 files')", setup=_LOOP3 + "os.symlink('.', d + '/a'); os.symlink('.', d + '/b')", needs=bn + ("files",)),
        _api(BS, "folder-with-fifo", "fifo", "succeed", "a FIFO named .png is skipped (reported), 3 rows", _B + "s = b.score(d); expect(all(len(v) == 3 for v in s.values()), 'rows')", setup=_LOOP3 + "fifo(d + '/p.png')", needs=bn + ("files",)),
    ]
    return out


def _detector_cases() -> list:
    out = []
    x = _M + _X
    lk = "det = detectors.Likelihood(m)\n"
    LF, LS = "Likelihood.fit", "Likelihood.score"
    for short, kind, fpr in [
        ("fpr-nan", "non-finite", "float('nan')"),
        ("fpr-1.5", "range", "1.5"),
        ("fpr-negative", "negative-number", "-0.1"),
        ("fpr-string", "wrong-type", "'0.05'"),
    ]:
        out.append(
            _api(LF, short, kind, "refuse", "fpr must be a number in [0, 1)", x + lk + f"det.fit(x, fpr={fpr})" )
        )
    out += [
        _api(LF, "nan-images", "non-finite", "refuse", "refuse NaN calibration data", x + lk + "x[0] = float('nan')\ndet.fit(x)"),
        _api(LF, "threshold-finite", "baseline", "succeed", "fit gives a finite threshold", x + lk + "det.fit(x); expect(np.isfinite(det.threshold), str(det.threshold))"),
        _api(LS, "other-size", "size", "either", "images of another size: resize, or say how to resize", x + lk + "det.score(pre(images(4, 16)))", message="(?i)resiz"),
        _api(LS, "uint8", "dtype", "either", "uint8 images: preprocess them (or refuse saying to)", x + lk + "s = det.score(images(4)); expect(bool(torch.isfinite(s).all()), 'non-finite scores')", message="preprocess"),
        _api(LS, "string-path", "wrong-type", "either", "a folder path: read it (or a TypeError)", _M + lk + "s = det.score(F.three); expect(len(s) == 3, str(s))", needs=("ckpt", "files")),
        _api(LS, "list-of-ints", "wrong-type", "refuse", "TypeError for a list of ints", x + lk + "det.score([1, 2, 3])"),
        _api(LS, "dataloader-nan", "non-finite", "refuse", "NaN images from a DataLoader", x + lk + "ds = torch.utils.data.TensorDataset(torch.full((4, 1, 8, 8), float('nan')), torch.zeros(4))\n" "det.score(torch.utils.data.DataLoader(ds, batch_size=2))"),
        _api(LS, "predict-before-fit", "order", "refuse", "predict needs a threshold: say to fit", x + lk + "det.predict(x)"),
        _api(LS, "rgb-model-grey-images", "mismatch", "refuse", "a 3-channel model given grey images: name the model and the mode", "m = invflow.load(F.ckpt_rgb)\n" + _X + "detectors.Likelihood(m).score(x)"),
        _api("Likelihood", "model-none", "wrong-type", "refuse", "TypeError: a flow model is needed", "detectors.Likelihood(None)", needs=()),
        _api("Likelihood", "model-string", "wrong-type", "refuse", "TypeError: a model, not its name", "detectors.Likelihood('fmnist-glow')", needs=()),
        _api("Likelihood", "batch-size-zero", "edge", "refuse", "batch_size >= 1", _M + "detectors.Likelihood(m, batch_size=0)"),
        _api("Typicality", "batch-size-zero", "edge", "refuse", "batch_size >= 1", _M + "detectors.Typicality(m, batch_size=0)"),
        _api("Typicality", "bootstrap-negative", "negative-number", "refuse", "bootstrap >= 1", _M + "detectors.Typicality(m, bootstrap=-1)"),
        _api("LikelihoodRatio", "models-of-other-modes", "mismatch", "refuse", "check at construction: grey and RGB models", _M + "detectors.LikelihoodRatio(m, invflow.load(F.ckpt_rgb))"),
        _api("LikelihoodRatio", "models-of-other-sizes", "mismatch", "refuse", "check at construction: 8x8 and 16x16 models", _M + "detectors.LikelihoodRatio(m, invflow.load(F.ckpt16))"),
        _api("ScaleContribution", "scale-5-of-2", "range", "refuse", "the model has 2 scales", _M + "detectors.ScaleContribution(m, scales=5).score(pre(images(2)))"),
        _api("ScaleContribution", "scales-empty", "empty", "refuse", "at least one scale", _M + "detectors.ScaleContribution(m, scales=[]).score(pre(images(2)))"),
        _api("InputComplexity", "float-0-255", "range", "refuse", "refuse unpreprocessed floats", _M + "detectors.InputComplexity(m).score(images(2).float())"),
        _api("ApproximateMass", "nan-images", "non-finite", "refuse", "refuse NaN images", x + "x[:] = float('nan')\ndetectors.ApproximateMass(m).score(x)"),
    ]
    f = "f = features(200, 4)\n"
    P = "PCA"
    out += [
        _api(P, "n-components-1.5", "range", "refuse", "a fraction in (0, 1] or an integer", "detectors.PCA(n_components=1.5)", needs=()),
        _api(P, "n-components-zero", "edge", "refuse", "n_components >= 1", "detectors.PCA(n_components=0)", needs=()),
        _api(P, "n-components-string", "wrong-type", "refuse", "a number", "detectors.PCA(n_components='all')", needs=()),
        _api(P, "isotropic-data", "calibration", "either", "all dimensions needed: refuse, or cap the subspace and warn (flagged share near fpr=0.1)", "g = torch.Generator().manual_seed(0)\nf = torch.randn(400, 4, generator=g, dtype=torch.float64)\n" "f2 = torch.randn(4000, 4, generator=g, dtype=torch.float64)\n" "det = detectors.PCA(n_components=0.9).fit(f, fpr=0.1)\nshare = float(det.predict(f2).double().mean())\n" "expect(warned('(?i)pca|component|dimension') and 0.03 <= share <= 0.3, " "f'flags {share:.2%} of fresh data at fpr=0.1' + ('' if warned('(?i)pca|component|dimension') else ', without a warning'))", needs=()),
        _api(P, "nan-features", "non-finite", "refuse", "refuse NaN features", f + "f[0, 0] = float('nan')\ndetectors.PCA().fit(f)", needs=()),
        _api(P, "one-dimensional", "shape", "refuse", "[B, D] features, not [B]", "detectors.PCA().fit(features(200, 1)[:, 0])", needs=()),
        _api(P, "score-before-fit", "order", "refuse", "say to fit first", "detectors.PCA().score(features(4, 4))", needs=()),
        _api(P, "fit-one-sample", "edge", "refuse", "at least 2 samples", "detectors.PCA().fit(features(1, 4))", needs=()),
        _api(P, "score-other-dimension", "shape", "refuse", "features of the fitted dimension", f + "detectors.PCA().fit(f).score(features(3, 5))", needs=()),
        _api(P, "transform-wrong-shape", "shape", "refuse", "a transform returning [B] instead of [B, D]", "detectors.PCA(transform=lambda t: t.flatten(1).sum(1)).fit(torch.rand(20, 1, 4, 4))", needs=()),
        _api("KNN", "k-zero", "edge", "refuse", "k >= 1", "detectors.KNN(k=0)", needs=()),
        _api("KNN", "k-above-n", "edge", "either", "k larger than the fitting set: cap it or refuse", "det = detectors.KNN(k=100).fit(features(10, 4)); s = det.score(features(3, 4, 1)); expect(bool(torch.isfinite(s).all()), str(s))", needs=()),
        _api("KDE", "bandwidth-negative", "negative-number", "refuse", "bandwidth > 0", "detectors.KDE(bandwidth=-1.0)", needs=()),
        _api("KDE", "bandwidth-nan", "non-finite", "refuse", "bandwidth finite", "detectors.KDE(bandwidth=float('nan'))", needs=()),
        _api("MSEToMean", "nan-score-input", "non-finite", "refuse", "refuse NaN features at score time", f + "det = detectors.MSEToMean().fit(f); g = features(3, 4); g[0, 0] = float('nan'); det.score(g)", needs=()),
        _api("Mahalanobis", "fit-without-labels", "missing", "refuse", "Mahalanobis needs labels y", "class Feat(torch.nn.Module):\n    def features(self, x):\n        return x\n    def forward(self, x):\n        return x\n" "detectors.Mahalanobis(Feat()).fit(features(40, 4))", needs=()),
        _api("MaxSoftmax", "temperature-zero", "edge", "refuse", "temperature > 0", "detectors.MaxSoftmax(torch.nn.Linear(4, 3), temperature=0.0)", needs=()),
        _api("Energy", "temperature-nan", "non-finite", "refuse", "temperature finite", "detectors.Energy(torch.nn.Linear(4, 3), temperature=float('nan'))", needs=()),
    ]
    E = "Ensemble"
    out += [
        _api(E, "fit-unfitted-members", "order", "either", "fit fits the members not fitted yet, or says in one line that the ensemble expects fitted members", "det = detectors.Ensemble({'pca': detectors.PCA(), 'knn': detectors.KNN()}).fit(features(100, 4))\n" "s = det.score(features(5, 4, 1)); expect(bool(torch.isfinite(s).all()), str(s))", message="(?i)ensemble.*(fit|fitted)", needs=()),
        _api(E, "no-members", "empty", "refuse", "at least one member", "detectors.Ensemble({})", needs=()),
        _api(E, "member-not-a-detector", "wrong-type", "refuse", "TypeError for a non-detector member", "detectors.Ensemble({'a': 3})", needs=()),
        _api(E, "weight-nan", "non-finite", "refuse", "weights finite", "detectors.Ensemble({'pca': detectors.PCA()}, weights={'pca': float('nan')})", needs=()),
        _api(E, "constant-member", "edge", "refuse", "a member that scores every sample the same cannot be standardised", "f = features(50, 4); p = detectors.PCA().fit(f)\np._score_features = lambda g: np.zeros(len(g))\n" "detectors.Ensemble({'pca': p}).fit(f)", needs=()),
        _api(E, "other-dimension-than-members", "shape", "refuse", "features of the members' dimension", "p = detectors.PCA().fit(features(50, 4)); detectors.Ensemble({'pca': p}).fit(features(50, 5))", needs=()),
    ]
    EV = "detectors.evaluate"
    out += [
        _api(EV, "nan-scores", "non-finite", "refuse", "refuse NaN scores", "detectors.evaluate(torch.tensor([0.1, float('nan')]), torch.tensor([1.0, 2.0]))", needs=()),
        _api(EV, "empty-in", "empty", "refuse", "both sets non-empty", "detectors.evaluate(torch.tensor([]), torch.tensor([1.0, 2.0]))", needs=()),
        _api(EV, "lists", "baseline", "succeed", "lists of numbers work; separable sets give AUROC 1", "r = detectors.evaluate([0.1, 0.2, 0.3], [0.9, 1.0]); expect(abs(r['auroc'] - 1) < 1e-9, str(r))", needs=()),
        _api(EV, "constant", "edge", "succeed", "identical scores give AUROC 0.5", "r = detectors.evaluate([1.0] * 5, [1.0] * 5); expect(abs(r['auroc'] - 0.5) < 1e-9, str(r))", needs=()),
    ]
    return out


def _data_cases() -> list:
    LS = "detectors.data.load_source"
    ls = "s = detectors.data.load_source(d)\n"
    fl = ("files",)

    def count(n, skipped=None):
        c = f"expect(len(s) == {n}, f'{{len(s)}} images from a folder of {n} readable files')"
        if skipped is not None:
            c += f"\nexpect(len(s.skipped) == {skipped}, f'{{len(s.skipped)}} skipped, expected {skipped}')"
        return c

    out = [
        _api(LS, "symlink-loop", "symlink-loop", "succeed", "3 PNGs and a -> . give 3 images: walk each real directory once", ls + count(3), setup=_LOOP3 + "os.symlink('.', d + '/a')", needs=fl),
        _api(LS, "two-symlink-loops", "symlink-loop", "succeed", "two loops: 3 images, promptly", ls + count(3), setup=_LOOP3 + "os.symlink('.', d + '/a'); os.symlink('.', d + '/b')", needs=fl),
        _api(LS, "symlink-to-parent", "symlink-loop", "succeed", "a sub-folder's link to its parent: each real directory once (4 images)", ls + count(4), setup=_LOOP3 + "os.mkdir(d + '/sub'); shutil.copy(d + '/000.png', d + '/sub/x.png'); os.symlink('..', d + '/sub/up')", needs=fl),
        _api(LS, "fifo-png-in-folder", "fifo", "succeed", "a FIFO named .png is skipped and reported", ls + count(3, 1), setup=_LOOP3 + "fifo(d + '/p.png')", needs=fl),
        _api(LS, "dev-zero-link-in-folder", "device-file", "succeed", "a link to /dev/zero named .png is skipped", ls + count(3, 1), setup=_LOOP3 + "os.symlink('/dev/zero', d + '/z.png')", needs=fl),
        _api(LS, "broken-files-in-folder", "truncated", "succeed", "empty, text and truncated .png files are skipped and reported", ls + count(3, 3), setup=_LOOP3 + "open(d + '/e.png', 'wb').close(); open(d + '/t.png', 'w').write('not an image')\n" "b = open(d + '/000.png', 'rb').read(); open(d + '/h.png', 'wb').write(b[: len(b) // 2])", needs=fl),
        _api(LS, "huge-dimensions-header", "huge-header", "succeed", "a PNG header claiming 100000x100000 is skipped, without allocating", ls + count(3, 1), setup=_LOOP3 + "open(d + '/big.png', 'wb').write(png_header(100000, 100000))", needs=fl),
        _api(LS, "only-broken-files", "empty", "refuse", "no readable image: one line naming the files", ls, setup="d = W + '/d'; os.mkdir(d); open(d + '/e.png', 'wb').close(); open(d + '/t.png', 'w').write('x')", needs=()),
        _api(LS, "empty-folder", "empty", "refuse", "no image files", "detectors.data.load_source(W)", needs=() ),
        _api(LS, "non-utf8-name", "non-utf8", "succeed", "a file named b'\\xff.png' is read, named with surrogate escapes", ls + count(4) + "\nexpect(any('\\udcff' in p for p in s.paths), str(s.paths))", setup=_LOOP3 + "shutil.copy(d + '/000.png', os.fsdecode(d.encode() + b'/\\xff.png'))", needs=fl),
        _api(LS, "float-tiff-and-negative", "float-image", "either", "a float TIFF in [0, 1] and its negative: scaled by the declared range (they differ, not black) or refused", ls + "a = np.asarray(s.images[0], dtype=float); b = np.asarray(s.images[1], dtype=float)\n" "expect(a.max() > 0 and b.max() > 0, f'read as black: max {a.max()}, {b.max()}')\n" "expect(np.abs(a - b).max() > 10, 'an image and its negative read the same')", setup="d = W + '/d'; os.mkdir(d); r = np.linspace(0, 1, 64).reshape(8, 8)\nfloat_tiff(d + '/a.tif', r); float_tiff(d + '/b.tif', 1 - r)", needs=()),
        _api(LS, "16-bit-png", "bit-depth", "succeed", "a 16-bit PNG keeps its top 8 bits (not black)", ls + "a = np.asarray(s.images[0]); expect(a.max() > 100, f'max {a.max()}')", setup="from PIL import Image\nd = W + '/d'; os.mkdir(d)\n" "Image.fromarray((np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)).save(d + '/a.png')", needs=()),
        _api(LS, "fifo-npz", "fifo", "refuse", "a FIFO named .npz must not block", "detectors.data.load_source(fifo(W + '/x.npz'))", needs=()),
        _api(LS, "fifo-png", "fifo", "refuse", "a FIFO named .png must not block", "detectors.data.load_source(fifo(W + '/x.png'))", needs=()),
        _api(LS, "text-named-npz", "text-as-binary", "refuse", "a text file named .npz: one line, no advice to unpickle", "detectors.data.load_source(p)", setup="p = W + '/x.npz'; open(p, 'w').write('hello\\n')", needs=()),
        _api(LS, "pickle-payload-npz", "pickle", "refuse", "a pickle named .npz is refused, unrun", "detectors.data.load_source(p)", setup="p = evil_pickle(W + '/x.npz')", needs=()),
        _api(LS, "npz-float64", "dtype", "refuse", "TypeError: uint8 images", "detectors.data.load_source(p)", setup="p = W + '/x.npz'; np.savez(p, images=np.random.rand(4, 8, 8))", needs=()),
        _api(LS, "npz-zero-images", "empty", "refuse", "an empty .npz", "detectors.data.load_source(p)", setup="p = W + '/x.npz'; np.savez(p, images=np.zeros((0, 8, 8), np.uint8))", needs=()),
        _api(LS, "npz-object-array", "pickle", "refuse", "object arrays: refuse without advice to unpickle", "detectors.data.load_source(p)", setup="p = W + '/x.npz'; a = np.empty(2, dtype=object); a[0] = 1; a[1] = 'x'; np.savez(p, images=a)", needs=()),
        _api(LS, "npz-truncated", "truncated", "refuse", "a truncated .npz", "detectors.data.load_source(p)", setup="b = open(F.npz, 'rb').read(); p = W + '/x.npz'; open(p, 'wb').write(b[: len(b) // 2])", needs=fl),
        _api(LS, "npz-header-claims-1e12-bytes", "huge-header", "refuse", "a .npy header declaring 10^12 bytes: refuse, no allocation", "detectors.data.load_source(p)", setup="p = npy_bomb(W + '/x.npz', (1000, 1000, 1000, 1000))", needs=()),
        _api(LS, "empty-string", "empty", "refuse", "an empty source name", "detectors.data.load_source('')", needs=()),
        _api(LS, "none", "wrong-type", "refuse", "TypeError for None", "detectors.data.load_source(None)", needs=()),
        _api(LS, "named-n-negative", "negative-number", "refuse", "n >= 1", "detectors.data.load_source('fashion-mnist', n=-5)", needs=()),
        _api(LS, "dev-zero", "device-file", "refuse", "not a folder, image or .npz", "detectors.data.load_source('/dev/zero')", needs=()),
    ]
    IF = "detectors.data.ImageFolder"
    out += [
        _api(IF, "root-fifo", "fifo", "refuse", "a FIFO is not a folder", "detectors.data.ImageFolder(fifo(W + '/d'))", needs=()),
        _api(IF, "root-symlink-loop", "symlink-loop", "refuse", "a self-referencing link is not a folder", "detectors.data.ImageFolder(W + '/d')", setup="os.symlink('d', W + '/d')", needs=()),
        _api(IF, "getitem-fifo", "fifo", "refuse", "reading a FIFO item must not block", "ds = detectors.data.ImageFolder(d); i = [os.path.basename(p) for p in ds.paths].index('p.png'); ds[i]", setup=_LOOP3 + "fifo(d + '/p.png')", needs=fl),
        _api(IF, "symlink-loop-len", "symlink-loop", "succeed", "3 PNGs and a -> . are 3 items", "ds = detectors.data.ImageFolder(d); expect(len(ds) == 3, f'{len(ds)} items')", setup=_LOOP3 + "os.symlink('.', d + '/a')", needs=fl),
    ]
    out += [
        _api("detectors.data.load_npz", "fifo", "fifo", "refuse", "a FIFO must not block", "detectors.data.load_npz(fifo(W + '/x.npz'))", needs=()),
        _api("detectors.data.open_image", "fifo", "fifo", "refuse", "a FIFO must not block", "detectors.data.open_image(fifo(W + '/x.png'))", needs=()),
        _api("detectors.data.open_image", "text-named-png", "text-as-binary", "refuse", "one line naming the file", "detectors.data.open_image(p)", setup="p = W + '/x.png'; open(p, 'w').write('hello')", needs=()),
        _api("detectors.data.open_image", "float-tiff", "float-image", "either", "a float TIFF in [0, 1]: scaled (not black) or refused", "a = np.asarray(detectors.data.open_image(p)); expect(a.max() > 0, 'read as all black')", setup="p = float_tiff(W + '/x.tif', np.linspace(0, 1, 64).reshape(8, 8))", needs=()),
        _api("detectors.data.read_idx", "fifo", "fifo", "refuse", "a FIFO must not block", "detectors.data.read_idx(fifo(W + '/x.idx'))", needs=()),
        _api("detectors.data.read_idx", "dims-2^32", "huge-header", "refuse", "a header declaring 2^32 x 2^32 items, without allocating", "detectors.data.read_idx(p)", setup="p = W + '/x.idx'; open(p, 'wb').write(bytes([0, 0, 8, 2]) + b'\\xff' * 8)", needs=()),
        _api("detectors.data.load_cifar", "pickle-payload", "pickle", "refuse", "CIFAR pickles with a payload are refused, unrun", "detectors.data.load_cifar(W, split='test')", setup="evil_pickle(W + '/test_batch')", needs=()),
        _api("detectors.data.load_cifar", "truncated-pickle", "truncated", "refuse", "a truncated CIFAR pickle: one line", "detectors.data.load_cifar(W, split='test')", setup="import pickle; b = pickle.dumps({'data': np.zeros((2, 3072), np.uint8), 'labels': [0, 1]}); open(W + '/test_batch', 'wb').write(b[:40])", needs=()),
        _api("detectors.data.load_cifar", "text-file", "text-as-binary", "refuse", "a text file as a CIFAR batch: one line", "detectors.data.load_cifar(W, split='test')", setup="open(W + '/test_batch', 'w').write('hello')", needs=()),
        _api("detectors.data.load_cifar", "fifo", "fifo", "refuse", "a FIFO as a CIFAR batch must not block", "detectors.data.load_cifar(W, split='test')", setup="fifo(W + '/test_batch')", needs=()),
        _api("detectors.data.load_image_folder", "size-1e6", "memory", "refuse", "an upper bound on the size", "detectors.data.load_image_folder(W, size=10**6)", setup="write_pngs(W + '/a', 2)", needs=()),
        _api("detectors.data.load_image_folder", "fifo-in-class", "fifo", "refuse", "a FIFO in a class folder must not block", "detectors.data.load_image_folder(W)", setup="write_pngs(W + '/a', 2); fifo(W + '/a/p.png')", needs=()),
    ]
    IP = "detectors.data.ImagePolicy"
    out += [
        _api(IP, "size-100000", "memory", "refuse", "an upper bound on the size, named in the error", "detectors.data.ImagePolicy(100000, 1)", needs=()),
        _api(IP, "size-float", "wrong-type", "refuse", "an integer size", "detectors.data.ImagePolicy(8.0, 1)", needs=()),
        _api(IP, "from-json-empty", "missing", "refuse", "say which keys are missing", "detectors.data.ImagePolicy.from_json({})", needs=()),
        _api(IP, "from-json-size-string", "wrong-type", "refuse", "an integer size", "detectors.data.ImagePolicy.from_json({'size': 'abc', 'channels': 1})", needs=()),
        _api(IP, "from-json-a-list", "wrong-type", "refuse", "an object", "detectors.data.ImagePolicy.from_json([8, 1])", needs=()),
        _api(IP, "from-json-size-nan", "non-finite", "refuse", "an integer size", "detectors.data.ImagePolicy.from_json({'size': float('nan'), 'channels': 1})", needs=()),
    ]
    FB = "detectors.fit_bundle"
    out += [
        _api(FB, "out-a-file", "path-kind", "refuse", "--out must be a directory", "detectors.fit_bundle(F.three, F.npz)", needs=fl),
        _api(FB, "data-fifo", "fifo", "refuse", "a FIFO as data must not block", "detectors.fit_bundle(fifo(W + '/x.npz'), W + '/det')", needs=()),
        _api(FB, "config-a-dict", "wrong-type", "succeed", "a dict of FitConfig settings is taken", "b = detectors.fit_bundle(F.three, W + '/det', config={'detectors': ['likelihood'], 'steps': 1, 'depth': 1, 'hidden': 4, 'levels': 1, 'max_size': 8, 'progress': False}, say=lambda *a: None); expect(list(b) == ['likelihood'], str(list(b)))", needs=fl, timeout=60.0),
        _api(FB, "config-unknown-key", "wrong-type", "refuse", "TypeError naming the unknown setting", "detectors.fit_bundle(F.three, W + '/det', config={'hiden': 4})", needs=fl, message="unknown settings 'hiden'"),
        _api(FB, "config-an-int", "wrong-type", "refuse", "TypeError: a FitConfig or a dict", "detectors.fit_bundle(F.three, W + '/det', config=3)", needs=fl),
        _api(FB, "config-hidden-1e9", "memory", "refuse", "the limit of the --hidden flag, named", "detectors.fit_bundle(F.three, W + '/det', config={'hidden': 10**9})", needs=fl, message="MAX_HIDDEN"),
        _api(FB, "config-size-100000", "memory", "refuse", "the limit of the --size flag, named", "detectors.fit_bundle(F.three, W + '/det', config=detectors.bundle.FitConfig(size=100000))", needs=fl, message="MAX_IMAGE_SIZE"),
    ]
    return out


def _cli_cases() -> list:
    out = []
    fit = _FIT_ARGS
    nimg = (
        "meta = json.load(open(W + '/det/bundle.json'))\nn = meta['data']['n_images']\n"
        "expect(n == 64, f'{n} images fitted from a folder of 64')"
    )
    out += [
        _cli("fit", "data-missing", "missing", "refuse", "no such folder", _replace(fit, "--data", "{W}/nope"), needs=()),
        _cli("fit", "data-fifo", "fifo", "refuse", "a FIFO as --data must not block", _replace(fit, "--data", "{W}/x.png"), setup="fifo(W + '/x.png')"),
        _cli("fit", "data-fifo-npz", "fifo", "refuse", "a FIFO .npz must not block", _replace(fit, "--data", "{W}/x.npz"), setup="fifo(W + '/x.npz')"),
        _cli("fit", "data-dev-zero", "device-file", "refuse", "not a folder, image or .npz", _replace(fit, "--data", "/dev/zero")),
        _cli("fit", "data-empty-folder", "empty", "refuse", "no image files", _replace(fit, "--data", "{W}/e"), setup="os.mkdir(W + '/e')"),
        _cli("fit", "data-empty-string", "empty", "refuse", "an empty --data", _replace(fit, "--data", "")),
        _cli("fit", "data-text-npz", "text-as-binary", "refuse", "one line, no advice to unpickle", _replace(fit, "--data", "{W}/x.npz"), setup="open(W + '/x.npz', 'w').write('hello')"),
        _cli("fit", "data-pickle-npz", "pickle", "refuse", "refused, payload unrun", _replace(fit, "--data", "{W}/x.npz"), setup="evil_pickle(W + '/x.npz')"),
        _cli("fit", "data-symlink-loop", "symlink-loop", "succeed", "64 PNGs and a -> .: 64 images fitted", _replace(fit, "--data", "{W}/d"), setup="shutil.copytree(F.pngs, W + '/d'); os.symlink('.', W + '/d/a')", check=nimg, timeout=120.0),
        _cli("fit", "data-two-symlink-loops", "symlink-loop", "succeed", "two loops: 64 images, promptly", _replace(fit, "--data", "{W}/d"), setup="shutil.copytree(F.pngs, W + '/d'); os.symlink('.', W + '/d/a'); os.symlink('.', W + '/d/b')", check=nimg, timeout=120.0),
        _cli("fit", "data-fifo-in-folder", "fifo", "succeed", "a FIFO named .png among 64 PNGs is skipped", _replace(fit, "--data", "{W}/d"), setup="shutil.copytree(F.pngs, W + '/d'); fifo(W + '/d/p.png')", check=nimg, timeout=120.0),
        _cli("fit", "out-a-file", "path-kind", "refuse", "--out names an existing file", _replace(fit, "--out", "{F.npz}")),
    ]
    for flag, value, kind, why in [
        ("--size", "100000", "memory", "an upper bound on --size, named in the error"),
        ("--size", "0", "edge", "--size >= 1"),
        ("--hidden", "1000000000", "memory", "an upper bound on --hidden"),
        ("--hidden", "1e9", "wrong-type", "an integer (argparse)"),
        ("--levels", "10", "memory", "--levels too deep for the size"),
        ("--depth", "100000", "memory", "an upper bound on --depth"),
        ("--steps", "-1", "negative-number", "--steps >= 0"),
        ("--batch", "0", "edge", "--batch >= 1"),
        ("--lr", "nan", "non-finite", "--lr finite and > 0"),
        ("--lr", "-1", "negative-number", "--lr > 0"),
        ("--holdout", "0", "edge", "--holdout in (0, 1)"),
        ("--holdout", "nan", "non-finite", "--holdout in (0, 1)"),
        ("--fpr", "nan", "non-finite", "--fpr in [0, 1)"),
        ("--fpr", "1.5", "range", "--fpr in [0, 1)"),
        ("--feature-size", "100000", "memory", "an upper bound on --feature-size"),
        ("--n", "0", "edge", "--n >= 1"),
    ]:
        argv = _replace(fit, flag, value)
        if flag == "--feature-size":
            argv = _replace(argv, "--detectors", "pca")
        out.append(
            _cli("fit", f"{flag[2:]}-{value}", kind, "refuse", why, argv, timeout=40.0, on_timeout="silent")
        )

    sc = _SCORE_ARGS
    rows = lambda n: (
        f"r = csv_rows(W + '/rep/scores.csv'); expect(len(r) == {n}, f'{{len(r)}} rows for {n} files')"
    )  # noqa: E731
    bn = ("bundle", "files")
    out += [
        _cli("score", "bundle-missing", "missing", "refuse", "no such bundle", ("score", "{W}/nope") + sc[2:], needs=bn),
        _cli("score", "bundle-fifo", "fifo", "refuse", "a FIFO is not a bundle", ("score", "{W}/det") + sc[2:], setup="fifo(W + '/det')", needs=bn),
        _cli("score", "bundle-threshold-nan", "non-finite", "refuse", "a NaN threshold: refuse on load", ("score", "{W}/det") + sc[2:], setup=_DET + "edit_json(det + '/bundle.json', lambda m: m['detectors'][0].update(threshold=float('nan')))", needs=bn),
        _cli("score", "bundle-model-etc-passwd", "path-escape", "refuse", "a bundle reads only its own files", ("score", "{W}/det") + sc[2:], setup=_DET + "edit_json(det + '/bundle.json', lambda m: m['models'].update(flow='/etc/passwd'))", needs=bn),
        _cli("score", "bundle-model-hidden-200000", "memory", "refuse", "refuse a config that does not fit the tensors, before allocating", ("score", "{W}/det") + sc[2:], setup=_DET + "p = run_latest(det + '/models/flow') + '/model.safetensors'; tamper_checkpoint(p, p, config={'hidden': 200000})", needs=bn),
        _cli("score", "bundle-model-nan-weights", "non-finite", "refuse", "all-NaN weights: refuse on load", ("score", "{W}/det") + sc[2:], setup=_DET + "p = run_latest(det + '/models/flow') + '/model.safetensors'; tamper_checkpoint(p, p, tensors=all_nan)", needs=bn),
        _cli("score", "bundle-json-deep-nesting", "deep-nesting", "refuse", "a deeply nested bundle.json: one line", ("score", "{W}/det") + sc[2:], setup=_DET + "open(det + '/bundle.json', 'w').write('[' * 100000 + ']' * 100000)", needs=bn),
        _cli("score", "data-symlink-loop", "symlink-loop", "succeed", "3 PNGs and a -> .: 3 rows", _replace(sc, "--data", "{W}/d"), setup=_LOOP3 + "os.symlink('.', d + '/a')", check=rows(3), needs=bn, timeout=60.0),
        _cli("score", "data-two-symlink-loops", "symlink-loop", "succeed", "two loops: 3 rows, promptly", _replace(sc, "--data", "{W}/d"), setup=_LOOP3 + "os.symlink('.', d + '/a'); os.symlink('.', d + '/b')", check=rows(3), needs=bn, timeout=60.0),
        _cli("score", "data-fifo-in-folder", "fifo", "succeed", "a FIFO named .png is skipped: 3 rows", _replace(sc, "--data", "{W}/d"), setup=_LOOP3 + "fifo(d + '/p.png')", check=rows(3), needs=bn, timeout=60.0),
        _cli("score", "data-non-utf8-name", "non-utf8", "succeed", "a non-UTF-8 file name: scores.csv written with 4 rows", _replace(sc, "--data", "{W}/d"), setup=_LOOP3 + "shutil.copy(d + '/000.png', os.fsdecode(d.encode() + b'/\\xff.png'))", check=rows(4), needs=bn, timeout=60.0),
        _cli("score", "data-fifo", "fifo", "refuse", "a FIFO as --data must not block", _replace(sc, "--data", "{W}/x.npz"), setup="fifo(W + '/x.npz')", needs=bn),
        _cli("score", "ood-fifo", "fifo", "refuse", "a FIFO as --ood must not block", sc + ("--ood", "{W}/x.png"), setup="fifo(W + '/x.png')", needs=bn),
        _cli("score", "data-pickle-npz", "pickle", "refuse", "refused, payload unrun", _replace(sc, "--data", "{W}/x.npz"), setup="evil_pickle(W + '/x.npz')", needs=bn),
        _cli("score", "data-float-tiffs", "float-image", "either", "float TIFFs: scaled or refused; an image and its negative score differently", _replace(sc, "--data", "{W}/d"), setup="d = W + '/d'; os.mkdir(d); r = np.linspace(0, 1, 144).reshape(12, 12)\nfloat_tiff(d + '/a.tif', r); float_tiff(d + '/b.tif', 1 - r)", check="r = csv_rows(W + '/rep/scores.csv'); expect(len(r) == 2 and r[0][2] != r[1][2], f'same scores: {r}')", needs=bn, timeout=60.0),
        _cli("score", "out-a-file", "path-kind", "refuse", "--out names an existing file: one line, exit 2", _replace(sc, "--out", "{F.npz}"), needs=bn),
        _cli("score", "n-zero", "edge", "refuse", "--n >= 1", sc + ("--n", "0"), needs=bn),
        _cli("score", "n-1e12", "memory", "refuse", "--n bounded (MAX_IMAGES)", sc + ("--n", str(10**12)), needs=bn, message="MAX_IMAGES"),
    ]
    tr = _TRAIN_ARGS
    npz = ("files",)
    out += [
        _cli("train", "out-a-file", "path-kind", "refuse", "--out names an existing file: one line, exit 2", _replace(tr, "--out", "{F.npz}"), needs=npz),
        _cli("train", "data-missing", "missing", "refuse", "no such file", _replace(tr, "--data", "{W}/nope.npz"), needs=npz),
        _cli("train", "data-fifo", "fifo", "refuse", "a FIFO as --data must not block", _replace(tr, "--data", "{W}/x.npz"), setup="fifo(W + '/x.npz')", needs=npz),
        _cli("train", "data-pickle-npz", "pickle", "refuse", "refused, payload unrun", _replace(tr, "--data", "{W}/x.npz"), setup="evil_pickle(W + '/x.npz')", needs=npz),
    ]
    for flag, value, kind, why in [
        ("--levels", "10", "memory", "--levels 10 pads 8x8 images to 1024x1024: refuse, naming the limit"),
        ("--levels", "0", "edge", "--levels >= 1"),
        ("--hidden", "1000000000", "memory", "an upper bound on --hidden"),
        ("--hidden", "0", "edge", "--hidden >= 1"),
        ("--steps", "-1", "negative-number", "--steps >= 0"),
        ("--batch", "0", "edge", "--batch >= 1"),
        ("--lr", "nan", "non-finite", "--lr finite"),
        ("--checkpoint-every", "0", "edge", "--checkpoint-every >= 1"),
    ]:
        out.append(
            _cli("train", f"{flag[2:]}-{value}", kind, "refuse", why, _replace(tr, flag, value), needs=npz, timeout=40.0, on_timeout="silent")
        )
    ev = _EVAL_ARGS
    ck = ("ckpt", "files")
    out += [
        _cli("evaluate", "in-model-missing", "missing", "refuse", "no such checkpoint", _replace(ev, "--in-model", "{W}/nope.safetensors"), needs=ck),
        _cli("evaluate", "in-model-fifo", "fifo", "refuse", "a FIFO checkpoint must not block", _replace(ev, "--in-model", "{W}/m.safetensors"), setup="fifo(W + '/m.safetensors')", needs=ck),
        _cli("evaluate", "in-model-pickle", "pickle", "refuse", "refused, payload unrun", _replace(ev, "--in-model", "{W}/m.safetensors"), setup="evil_pickle(W + '/m.safetensors')", needs=ck),
        _cli("evaluate", "in-model-nan-weights", "non-finite", "refuse", "all-NaN weights: refuse on load", _replace(ev, "--in-model", "{W}/m.safetensors"), setup="tamper_checkpoint(F.ckpt, W + '/m.safetensors', tensors=all_nan)", needs=ck, on_timeout="silent", timeout=60.0),
        _cli("evaluate", "in-model-hidden-200000", "memory", "refuse", "refuse before allocating", _replace(ev, "--in-model", "{W}/m.safetensors"), setup="tamper_checkpoint(F.ckpt, W + '/m.safetensors', config={'hidden': 200000})", needs=ck),
        _cli("evaluate", "n-negative", "negative-number", "refuse", "--n >= 1", _replace(ev, "--n", "-1"), needs=ck, on_timeout="silent"),
        _cli("evaluate", "out-a-file", "path-kind", "refuse", "--out names an existing file", _replace(ev, "--out", "{F.npz}"), needs=ck, on_timeout="silent", timeout=60.0),
        _cli("evaluate", "in-data-banana", "bad-argument", "refuse", "an unknown data set", ev + ("--in-data", "banana"), needs=ck),
    ]
    z = ("zoo", "fmnist-glow", "--root", "{W}/zoo", "--steps", "2", "--eval-every", "1")
    out += [
        _cli("zoo", "unknown-name", "bad-argument", "refuse", "argparse names the models", ("zoo", "banana"), needs=()),
        _cli("zoo", "steps-negative", "negative-number", "refuse", "--steps >= 1", _replace(z, "--steps", "-1"), needs=(), on_timeout="silent"),
        _cli("zoo", "eval-every-zero", "edge", "refuse", "--eval-every >= 1", _replace(z, "--eval-every", "0"), needs=(), on_timeout="silent"),
        _cli("zoo", "threads-zero", "edge", "refuse", "--threads >= 1", z + ("--threads", "0"), needs=(), on_timeout="silent"),
        _cli("zoo", "root-a-file", "path-kind", "refuse", "--root names an existing file", _replace(z, "--root", "{F.npz}"), needs=("files",), on_timeout="silent"),
        _cli("demo", "out-a-file", "path-kind", "refuse", "--out names an existing file: refuse up front", ("demo", "--smoke", "--no-features", "--out", "{F.npz}"), needs=("files",), timeout=60.0, on_timeout="silent"),
        _cli("ood-suite", "n-negative", "negative-number", "refuse", "--n >= 1, up front", ("ood-suite", "--n", "-5", "--out", "{W}/o"), needs=(), on_timeout="silent"),
        _cli("ood-suite", "floor-nan", "non-finite", "refuse", "--floor finite, up front", ("ood-suite", "--floor", "nan", "--n", "8", "--out", "{W}/o"), needs=(), on_timeout="silent"),
        _cli("ood-suite", "feature-size-zero", "edge", "refuse", "--feature-size >= 1, up front", ("ood-suite", "--features", "--feature-size", "0", "--n", "8", "--out", "{W}/o"), needs=(), on_timeout="silent"),
        _cli("reproduce", "unknown-experiment", "bad-argument", "refuse", "name the experiments", ("reproduce", "banana", "--smoke", "--out", "{W}/r"), needs=(), on_timeout="silent"),
        _cli("reproduce", "set-garbage", "bad-argument", "refuse", "--set KEY=VALUE of a known key", ("reproduce", "glow", "--smoke", "--set", "no_such_key=1", "--out", "{W}/r"), needs=(), on_timeout="silent"),
        _cli("reproduce", "set-hidden-1e9", "memory", "refuse", "--set values bounded like the flags (MAX_HIDDEN)", ("reproduce", "glow", "--smoke", "--set", "hidden=1000000000", "--out", "{W}/r"), needs=(), on_timeout="silent", message="MAX_HIDDEN"),
        _cli("reproduce", "set-lr-nan", "non-finite", "refuse", "--set lr finite, in (0, 1]", ("reproduce", "glow", "--smoke", "--set", "lr=nan", "--out", "{W}/r"), needs=(), on_timeout="silent"),
    ]
    return out


# fmt: on


def all_cases() -> list:
    """Every case, in a fixed order (names are unique)."""
    cases = (
        _checkpoint_cases()
        + _preprocess_cases()
        + _model_cases()
        + _bundle_cases()
        + _detector_cases()
        + _data_cases()
        + _cli_cases()
    )
    names = [c.name for c in cases]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"duplicate case names: {sorted(dup)}")
    return cases


if __name__ == "__main__":
    sys.exit(main())
