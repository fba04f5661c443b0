"""What every benchmark script here shares: the round-robin timer (warm-up, rotating rounds,
synchronised samples, median / IQR), the run metadata (torch, threads, allocator, machine,
commit) and the models they time, built the same way everywhere (same seeds, same weights).

Importing this module puts the repository root on ``sys.path``, so that ``python
bench/<script>.py`` finds ``invflow`` and ``detectors`` without an install.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import invflow  # noqa: E402
from invflow import masks  # noqa: E402
from invflow.data import preprocess, standard_normal_log_prob  # noqa: E402

# The environment variables that decide how freed buffers are reused: on these VMs first-touch
# page faults of fresh allocations can dominate a step (``make bench`` sets glibc's thresholds).
ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD", "PYTORCH_CUDA_ALLOC_CONF")

# The layer shape of the pytest-benchmark suites and profile_step.py: [batch, channels, H, W].
SHAPE = (64, 12, 16, 16)


# ------------------------------------------------------------------------------ timing
def sync(device: str) -> None:
    """Waits for the device's queued work (``torch.cuda.synchronize()``; nothing on CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(
    fn: Callable, device: str = "cpu", inner: int = 1, clock: Callable = time.perf_counter
) -> float:
    """Seconds per call of ``fn`` (``inner`` calls between two synchronised clock reads)."""
    sync(device)
    t0 = clock()
    for _ in range(inner):
        fn()
    sync(device)
    return (clock() - t0) / inner


def rotated(items: Sequence, round_index: int) -> list:
    """``items`` starting at ``round_index % len(items)``: the first runner changes every round,
    so that noise from a busy machine falls on all of them alike."""
    k = round_index % max(1, len(items))
    return list(items[k:]) + list(items[:k])


def rounds(
    fns: dict,
    repeats: int,
    device: str = "cpu",
    warmup: int = 0,
    target_s: float = 0.0,
    clock: Callable = time.perf_counter,
) -> dict:
    """Round-robin samples of callables: name -> list of seconds per call, or the exception
    its warm-up raised.

    Each callable runs ``warmup`` times, then ``repeats`` rounds in which every callable gives
    one sample, in :func:`rotated` order. With ``target_s > 0`` a sample repeats the call
    ``inner`` times, ``inner`` chosen from one timed call so a sample lasts about ``target_s``
    seconds (at most 10,000 calls). ``clock`` is ``time.perf_counter`` (wall) or
    ``time.process_time`` (process CPU time: leaves out waiting for a core).
    """
    out: dict = {}
    live = {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
            sync(device)
            live[name] = fn
        except Exception as e:  # noqa: BLE001 - reported by the caller
            out[name] = e
    inner = {}
    for name, fn in live.items():
        inner[name] = 1
        if target_s > 0:
            t = time_call(fn, device, clock=clock)
            inner[name] = max(1, min(10_000, math.ceil(target_s / max(t, 1e-7))))
    samples: dict = {name: [] for name in live}
    for r in range(repeats):
        for name in rotated(list(live), r):
            samples[name].append(time_call(live[name], device, inner[name], clock))
    out.update(samples)
    return out


def median_iqr(samples: Sequence[float], method: str = "inclusive") -> tuple[float, float]:
    """(median, p75 - p25) of ``samples``; the IQR of fewer than two samples is 0.

    ``method`` is :func:`statistics.quantiles`'s: "inclusive" is numpy's default linear
    interpolation (compare.py), "exclusive" the statistics module's default (profile_step.py
    and ab_model_step.py).
    """
    med = float(statistics.median(samples))
    if len(samples) < 2:
        return med, 0.0
    q = statistics.quantiles(samples, n=4, method=method)
    return med, float(q[2] - q[0])


def summarise(samples: dict) -> dict:
    """:func:`rounds`' result as name -> (median s, IQR s) (inclusive quantiles); an exception
    stays as it is."""
    return {k: median_iqr(v) if isinstance(v, list) else v for k, v in samples.items()}


# ---------------------------------------------------------------------------- metadata
def allocator_settings() -> dict:
    """The :data:`ALLOCATOR_ENV` variables as set in this process ("<unset>" when not)."""
    return {k: os.environ.get(k, "<unset>") for k in ALLOCATOR_ENV}


def allocator_line() -> str:
    """``NAME=value, ...`` of :func:`allocator_settings`, for a report header."""
    return ", ".join(f"{k}={v}" for k, v in allocator_settings().items())


def commit_hash() -> str | None:
    """HEAD's commit read from .git (no git process): handles worktrees and packed refs."""
    try:
        git = REPO / ".git"
        if git.is_file():
            git = (REPO / git.read_text().split("gitdir:", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(":", 1)[1].strip()
        common = git
        if (git / "commondir").exists():
            common = (git / (git / "commondir").read_text().strip()).resolve()
        for base in (git, common):
            if (base / ref).exists():
                return (base / ref).read_text().strip()
        for base in (git, common):
            packed = base / "packed-refs"
            if packed.exists():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
    except Exception:  # noqa: BLE001
        pass
    return None


def machine(device: str) -> str:
    """ "<CPU model>, <n> cpus", plus the GPU's name when ``device`` is "cuda"."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} cpus"
    if device == "cuda":
        desc += f", {torch.cuda.get_device_name()}"
    return desc


def environment_lines() -> list[str]:
    """The pytest-benchmark report header: torch, threads, CUDA, allocator settings."""
    return [
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, cuda={torch.cuda.is_available()}",
        "allocator: " + allocator_line(),
    ]


# ------------------------------------------------------------------------------ models
def init_actnorm(module: torch.nn.Module, x: torch.Tensor) -> None:
    """Runs ``module`` once on ``x`` in training mode under the reference backend, without
    gradients: the data-dependent initialisation of every ActNorm / ActNorm2d (Kingma and
    Dhariwal 2018, S3.1). Leaves the module in training mode."""
    with torch.no_grad(), invflow.backend("reference"):
        module.train()
        module(x)


def glow_step(channels: int, hidden: int) -> invflow.Sequential:
    """One Glow step (Kingma and Dhariwal 2018): ActNorm -> InvConv1x1 (LU) ->
    AffineCoupling (channel mask, GlowNet st-net of width ``hidden``), on ``channels``
    channels, with the weights that ``torch.manual_seed(0)`` gives."""
    torch.manual_seed(0)
    return invflow.Sequential(
        invflow.ActNorm(channels),
        invflow.InvConv1x1(channels, lu=True),
        invflow.AffineCoupling(channels, masks.Channel(0), hidden=hidden),
    )


def glow_model(
    image: int, levels: int, steps: int, hidden: int, batch: int, device: str = "cpu"
) -> tuple[invflow.Glow, torch.Tensor]:
    """(initialised ``invflow.Glow``, input batch): a Glow on 3 x ``image`` x ``image``
    (``steps`` steps per scale, ``levels`` scales, st-net width ``hidden``; weights of
    ``torch.manual_seed(0)``) and ``batch`` dequantised uniform-random 8-bit images,
    preprocessed as in training, float32 [batch, 3, image, image]. The model is in training
    mode, its ActNorms initialised on that batch."""
    torch.manual_seed(0)
    model = invflow.Glow(3, image, levels=levels, steps=steps, hidden=hidden).to(device)
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (batch, 3, image, image), dtype=torch.uint8, generator=g)
    x = preprocess(raw, dequantize=True, generator=g).to(device)
    init_actnorm(model, x)
    return model, x


def trainer_optimizer(params) -> torch.optim.Optimizer:
    """The optimizer of ``invflow.train.Trainer`` at its defaults (Schirrmeister et al. 2020
    S4.1): Adamax, learning rate 5e-4, weight decay 5e-5, multi-tensor (foreach) updates."""
    return torch.optim.Adamax(params, lr=5e-4, weight_decay=5e-5, foreach=True)


def step_nll(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """-(log N(z; 0, I) + logdet).mean() of a flow layer ``layer(x) -> (z, logdet)``: a scalar."""
    y, logdet = layer(x)
    return -(standard_normal_log_prob(y) + logdet).mean()


class _ParamsFromInput(torch.nn.Module):
    """A free st-net: h = [x, x] * w. Isolates the coupling's elementwise part in the op benchmark."""

    def __init__(self, channels: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.full((1, 2 * channels, 1, 1), 0.1))

    def forward(self, x):
        return torch.cat([x, x], dim=1) * self.w


def _identity_params(i, o):
    return _ParamsFromInput(i)


def make_layer(kind: str, device: str, hidden: int = 64) -> invflow.Flow:
    """A layer of the pytest-benchmark suites on :data:`SHAPE`'s channels, in eval mode, every
    parameter moved off its initial value by 0.05 N(0, 1) so that no path is an identity:
    "actnorm", "invconv" (LU), "coupling" (checkerboard mask, the free st-net
    :class:`_ParamsFromInput`) or "glow_step" (:func:`glow_step` with width ``hidden``)."""
    c = SHAPE[1]
    torch.manual_seed(0)
    layer = {
        "actnorm": lambda: invflow.ActNorm(c),
        "invconv": lambda: invflow.InvConv1x1(c, lu=True),
        "coupling": lambda: invflow.AffineCoupling(c, masks.Checkerboard(0), net=_identity_params),
        "glow_step": lambda: glow_step(c, hidden),
    }[kind]()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return layer.to(device).eval()


# ------------------------------------------------------------- elementwise bandwidth
# kernel -> tensors of the input's size it must move: every input read once, every output
# written once (per-channel parameters ignored; the coupling's h counts twice: 2C channels)
BANDWIDTH_TENSORS = {
    "copy": 2,
    "actnorm_forward": 2,
    "actnorm_backward": 3,
    "coupling_forward": 4,
    "coupling_backward": 7,
}


def bandwidth_inputs(shape: Sequence[int], device: str, seed: int = 0) -> dict:
    """The tensors of the bandwidth cases, float32, from a generator seeded ``seed``: x
    [B, C, H, W] and its cotangent gy, h [B, 2C, H, W] (an st-net output, 0.5 N(0, 1)), gl [B]
    (the log-determinant's cotangent), b and ls [C] (actnorm bias and log-scale, 0.1 N(0, 1)),
    dst (a copy target like x)."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(shape, device=device, generator=g)
    h = 0.5 * torch.randn((shape[0], 2 * shape[1]) + tuple(shape[2:]), device=device, generator=g)
    gy = torch.randn(shape, device=device, generator=g)
    gl = torch.randn(shape[0], device=device, generator=g)
    b = torch.randn(shape[1], device=device, generator=g)
    ls = 0.1 * torch.randn(shape[1], device=device, generator=g)
    return dict(x=x, h=h, gy=gy, gl=gl, b=b, ls=ls, dst=torch.empty_like(x))


def bandwidth_calls(t: dict) -> dict:
    """:data:`BANDWIDTH_TENSORS`' kernel -> a call on :func:`bandwidth_inputs` ``t``: "copy"
    is ``dst.copy_(x)``, the others the fused ops ``torch.ops.invflow.*`` (sigmoid scale,
    clamp 2; they need the extension invflow._C)."""
    op = torch.ops.invflow
    x, h, gy, gl, b, ls, dst = (t[k] for k in ("x", "h", "gy", "gl", "b", "ls", "dst"))
    return {
        "copy": lambda: dst.copy_(x),
        "actnorm_forward": lambda: op.actnorm_forward(x, b, ls),
        "actnorm_backward": lambda: op.actnorm_backward(gy, gl, x, b, ls),
        "coupling_forward": lambda: op.coupling_forward(x, h, None, "sigmoid", 2.0),
        "coupling_backward": lambda: op.coupling_backward(gy, gl, x, h, None, "sigmoid", 2.0),
    }
