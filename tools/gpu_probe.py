"""Bad-input probe of the raw ops, each case in its own process (stage 2 of `make gpu-check`).

    python tools/gpu_probe.py --device cpu --device cuda   # in `make gpu-check`
    python tools/gpu_probe.py --device cpu                 # DRY_RUN=1 (and make test)
    python tools/gpu_probe.py --list                       # the case names

Every case hands one raw op (``torch.ops.invflow.<name>``) one bad argument -- a gradient,
tangent, h, mask, bias or weight of the wrong shape, dtype or device -- and must get a
RuntimeError back.  Each case runs in a forked child, so a case that kills its process
names itself ("CRASH signal 11 (SIGSEGV): cuda actnorm_backward grad_y wrong shape")
instead of taking the whole check down with it, and the other cases still run.

PASS: a RuntimeError raised by the op's own argument checks.  FAIL: no error, another
exception type, or a CUDA error (a kernel ran on the bad input).  CRASH: the child died
on a signal.  TIMEOUT: it hung.  Exit status 1 when any case did not pass.

The parent imports torch and invflow but never touches CUDA (a process that initialised
CUDA cannot fork children that use it); every child initialises CUDA for itself.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import invflow  # noqa: E402,F401  (loads invflow._C: the ops' schemas and kernels)

OP = torch.ops.invflow
DTYPE = torch.float64
OTHER_DTYPE = torch.float32
SELF_TEST = "--self-test-crash"


@dataclass(frozen=True)
class Case:
    """One bad call: ``run(device)`` must raise RuntimeError."""

    name: str
    run: Callable[[str], object]
    cuda_only: bool = False  # wrong-device cases need a second device type


# ------------------------------------------------------------------------------ inputs
def _inputs(device: str) -> dict:
    """Good arguments for every op on ``device``: x [2, 3, 4, 4] and its channels-last twin."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=DTYPE).to(device)

    a = dict(
        x=rand(2, 3, 4, 4),
        bias=rand(3),
        log_scale=0.1 * rand(3),
        h=rand(2, 6, 4, 4),
        mask=(rand(3, 4, 4) > 0).to(DTYPE),
        gl=rand(2),
        weight=(torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=DTYPE))[0]).to(device),
    )
    a["gy"] = torch.randn_like(a["x"])
    a["x_cl"], a["h_cl"], a["gy_cl"] = (a[k].movedim(1, -1).contiguous() for k in ("x", "h", "gy"))
    a["u_x"], a["u_h"] = torch.randn_like(a["x_cl"]), torch.randn_like(a["h_cl"])
    return a


def _bad(t: torch.Tensor, kind: str) -> torch.Tensor:
    """``t`` made wrong: 'shape' (one more column), 'dtype' (float32) or 'device' (on the CPU)."""
    if kind == "shape":
        return torch.randn(*t.shape[:-1], t.shape[-1] + 1, dtype=t.dtype, device=t.device)
    if kind == "dtype":
        return t.to(OTHER_DTYPE)
    if kind == "device":
        return t.cpu()
    raise ValueError(kind)


# ------------------------------------------------------------------------------- cases
# Each backward op as a function of the arguments under test (the rest good).
def _actnorm_backward(a, gy, gl):
    return OP.actnorm_backward(gy, gl, a["x"], a["bias"], a["log_scale"])


def _coupling_backward(a, gy, gl):
    return OP.coupling_backward(gy, gl, a["x"], a["h"], a["mask"], "sigmoid", 2.0)


def _channel_mix_backward(a, gy, gl):
    return OP.channel_mix_backward(gy, a["x"], a["weight"])


def _coupling_cl_backward(a, gy, gl):
    return OP.coupling_cl_backward(gy, gl, a["x_cl"], a["h_cl"], "exp", 2.0)


def _coupling_cl_double_backward(a, gy, gl, u_x=None, u_h=None):
    u_x = a["u_x"] if u_x is None else u_x
    u_h = a["u_h"] if u_h is None else u_h
    return OP.coupling_cl_double_backward(u_x, u_h, gy, gl, a["x_cl"], a["h_cl"], "tanh", 2.0)


BACKWARD = {  # name: (call, channels-last, takes grad_logdet)
    "actnorm_backward": (_actnorm_backward, False, True),
    "coupling_backward": (_coupling_backward, False, True),
    "channel_mix_backward": (_channel_mix_backward, False, False),
    "coupling_cl_backward": (_coupling_cl_backward, True, True),
    "coupling_cl_double_backward": (_coupling_cl_double_backward, True, True),
}


def _backward_case(op: str, arg: str, kind: str) -> Case:
    call, channels_last, _ = BACKWARD[op]

    def run(device):
        a = _inputs(device)
        gy, gl = a["gy_cl" if channels_last else "gy"], a["gl"]
        if arg == "grad_y":
            gy = _bad(gy, kind)
        elif arg == "grad_logdet":
            gl = _bad(gl, kind)
        elif arg in ("u_x", "u_h"):
            return call(a, gy, gl, **{arg: _bad(a[arg], kind)})
        return call(a, gy, gl)

    return Case(f"{op} {arg} wrong {kind}", run, cuda_only=kind == "device")


def _forward_case(name: str, call: Callable[[dict], object], cuda_only: bool = False) -> Case:
    return Case(name, lambda device: call(_inputs(device)), cuda_only)


def _forward_cases() -> list[Case]:
    """Wrong-shape (and, on CUDA, host-resident) h / mask / bias / weight for the forward ops."""
    bad = _bad
    return [
        _forward_case(
            "actnorm_forward bias wrong shape",
            lambda a: OP.actnorm_forward(a["x"], bad(a["bias"], "shape"), a["log_scale"]),
        ),
        _forward_case(
            "actnorm_forward log_scale wrong shape",
            lambda a: OP.actnorm_forward(a["x"], a["bias"], bad(a["log_scale"], "shape")),
        ),
        _forward_case(
            "actnorm_inverse bias wrong shape",
            lambda a: OP.actnorm_inverse(a["x"], bad(a["bias"], "shape"), a["log_scale"]),
        ),
        _forward_case(
            "actnorm_forward bias wrong device",
            lambda a: OP.actnorm_forward(a["x"], bad(a["bias"], "device"), a["log_scale"]),
            True,
        ),
        _forward_case(
            "channel_mix weight wrong shape",
            lambda a: OP.channel_mix(a["x"], torch.eye(4, dtype=DTYPE, device=a["x"].device)),
        ),
        _forward_case(
            "channel_mix weight not square", lambda a: OP.channel_mix(a["x"], bad(a["weight"], "shape"))
        ),
        _forward_case(
            "channel_mix weight wrong device",
            lambda a: OP.channel_mix(a["x"], bad(a["weight"], "device")),
            True,
        ),
        _forward_case(
            "coupling_forward h wrong shape",
            lambda a: OP.coupling_forward(a["x"], a["h"][:, :5], None, "exp", 2.0),
        ),
        _forward_case(
            "coupling_forward h wrong batch",
            lambda a: OP.coupling_forward(a["x"], a["h"][:1], None, "exp", 2.0),
        ),
        _forward_case(
            "coupling_forward mask wrong shape",
            lambda a: OP.coupling_forward(a["x"], a["h"], a["mask"][0], "exp", 2.0),
        ),
        _forward_case(
            "coupling_forward h wrong device",
            lambda a: OP.coupling_forward(a["x"], bad(a["h"], "device"), None, "exp", 2.0),
            True,
        ),
        _forward_case(
            "coupling_inverse h wrong shape",
            lambda a: OP.coupling_inverse(a["x"], bad(a["h"], "shape"), None, "sigmoid", 2.0),
        ),
        _forward_case(
            "coupling_inverse mask wrong shape",
            lambda a: OP.coupling_inverse(a["x"], a["h"], bad(a["mask"], "shape"), "sigmoid", 2.0),
        ),
        _forward_case(
            "coupling_backward mask wrong shape",
            lambda a: OP.coupling_backward(
                a["gy"], a["gl"], a["x"], a["h"], bad(a["mask"], "shape"), "sigmoid", 2.0
            ),
        ),
        _forward_case(
            "coupling_cl_forward h wrong shape",
            lambda a: OP.coupling_cl_forward(a["x_cl"], bad(a["h_cl"], "shape"), "exp", 2.0),
        ),
        _forward_case(
            "coupling_cl_forward h wrong spatial shape",
            lambda a: OP.coupling_cl_forward(a["x_cl"], a["h_cl"][:, :3], "exp", 2.0),
        ),
        _forward_case(
            "coupling_cl_backward h wrong shape",
            lambda a: OP.coupling_cl_backward(
                a["gy_cl"], a["gl"], a["x_cl"], bad(a["h_cl"], "shape"), "exp", 2.0
            ),
        ),
    ]


def all_cases() -> list[Case]:
    """Every case, backward gradients first."""
    cases = []
    for op, (_, _, takes_logdet) in BACKWARD.items():
        args = ["grad_y"] + (["grad_logdet"] if takes_logdet else [])
        for arg in args:
            for kind in ("shape", "dtype", "device"):
                cases.append(_backward_case(op, arg, kind))
    for arg in ("u_x", "u_h"):
        for kind in ("shape", "dtype", "device"):
            cases.append(_backward_case("coupling_cl_double_backward", arg, kind))
    return cases + _forward_cases()


def _crash(device):
    """The hidden self-test case: dies on SIGSEGV, to prove a crash is named."""
    os.kill(os.getpid(), signal.SIGSEGV)


# --------------------------------------------------------------------------- the child
def _outcome(case: Case, device: str) -> tuple[int, str]:
    """Runs the case in this (child) process: (0, message) for a clean RuntimeError,
    (1, why) otherwise."""
    try:
        case.run(device)
        if device == "cuda":
            torch.cuda.synchronize()
    except RuntimeError as err:
        first = (str(err).strip().splitlines() or [""])[0]
        if "CUDA error" in str(err) or type(err).__name__ == "AcceleratorError":
            return 1, f"a CUDA error instead of an argument check: {first[:160]}"
        return 0, f"{type(err).__name__}: {first[:160]}"
    except Exception as err:  # noqa: BLE001  (the verdict names it)
        return 1, f"{type(err).__name__} instead of RuntimeError: {str(err).strip()[:160]}"
    return 1, "no error raised"


def _child(case: Case, device: str, fd: int) -> None:
    """Body of the forked child: run, write the verdict to the pipe, exit without cleanup."""
    code, message = 1, "child failed before running the case"
    try:
        code, message = _outcome(case, device)
    finally:
        os.write(fd, message.encode(errors="replace")[:4000])
        os.close(fd)
        os._exit(code)


# -------------------------------------------------------------------------- the parent
@dataclass
class _Running:
    label: str
    pid: int
    fd: int
    start: float


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "?"


def _start(case: Case, device: str) -> _Running:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        _child(case, device, w)
    os.close(w)
    os.set_blocking(r, False)
    return _Running(f"{device} {case.name}", pid, r, time.monotonic())


def _read(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace").strip()


def _verdict(job: _Running, status: int) -> tuple[bool, str]:
    """(passed, report line) for a finished child."""
    message = _read(job.fd)
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        return False, f"CRASH signal {number} ({_signal_name(number)}): {job.label}"
    if os.waitstatus_to_exitcode(status) == 0:
        return True, f"PASS {job.label}: {message}"
    return False, f"FAIL {job.label}: {message or f'exit status {os.waitstatus_to_exitcode(status)}'}"


def run_cases(jobs: list[tuple[Case, str]], parallel: int, timeout: float, report=print) -> int:
    """Runs every (case, device) in its own forked child, ``parallel`` at a time; reports one
    line per case as it finishes; returns the number that did not pass."""
    pending, running, failed = list(jobs), [], 0
    while pending or running:
        while pending and len(running) < parallel:
            running.append(_start(*pending.pop(0)))
        time.sleep(0.005)
        for job in list(running):
            pid, status = os.waitpid(job.pid, os.WNOHANG)
            if pid == 0:
                if time.monotonic() - job.start <= timeout:
                    continue
                os.kill(job.pid, signal.SIGKILL)
                os.waitpid(job.pid, 0)
                _read(job.fd)
                ok, line = False, f"TIMEOUT after {timeout:.0f} s: {job.label}"
            else:
                ok, line = _verdict(job, status)
            running.remove(job)
            failed += not ok
            report(f"gpu_probe: {line}")
    return failed


def select(devices: list[str], only: str | None, self_test: bool) -> list[tuple[Case, str]]:
    """The (case, device) pairs to run: wrong-device cases on CUDA only."""
    cases = all_cases()
    if self_test:
        cases.append(Case("self-test crash (SIGSEGV on purpose)", _crash))
    if only:
        cases = [c for c in cases if only in c.name]
    return [(c, d) for d in devices for c in cases if d == "cuda" or not c.cuda_only]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", action="append", choices=["cpu", "cuda"], help="repeatable; default: cpu")
    parser.add_argument("--only", help="run the cases whose name contains this text")
    parser.add_argument("--parallel", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    parser.add_argument(SELF_TEST, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    devices = args.device or ["cpu"]
    jobs = select(devices, args.only, args.self_test_crash)
    if args.list:
        for case, device in jobs:
            print(f"{device} {case.name}")
        return 0
    if not jobs:
        print(f"gpu_probe: no case matches {args.only!r}", file=sys.stderr)
        return 2
    if not hasattr(OP, "actnorm_forward"):
        print("gpu_probe: invflow._C is not built (no invflow ops registered)", file=sys.stderr)
        return 1
    start = time.monotonic()
    sys.stdout.flush()
    failed = run_cases(jobs, max(1, args.parallel), args.timeout, report=lambda s: print(s, flush=True))
    took = time.monotonic() - start
    where = ", ".join(devices)
    if failed:
        print(
            f"gpu_probe: {failed} of {len(jobs)} bad-input cases did not raise cleanly on {where} "
            f"({took:.1f} s)"
        )
        return 1
    print(f"gpu_probe: all {len(jobs)} bad-input cases raised RuntimeError on {where} ({took:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
