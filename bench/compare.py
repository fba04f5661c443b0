#!/usr/bin/env python
"""Side-by-side comparison of invflow against the same Glow architecture in other
implementations, all in one process, on the same weights and data.

    python bench/compare.py [--device cpu|cuda] [--quick | --smoke] [--json PATH]
                            [--cases step model model_paper_size approx_mass memory bandwidth] [--threads N]

Implementations (rows):
  invflow-fused             invflow on its fused C++/CUDA kernels (``invflow.backend("fused")``)
  invflow-eager             the same modules on the pure-PyTorch reference (``backend("reference")``)
  torch.compile(reference)  the reference compiled with torch.compile (first order only)
  torch.compile(fused)      the fused backend compiled with torch.compile: the fused ops inside the
                            graph (fake kernels); the whole model as one graph (fullgraph=True)
  FrEIA                     FrEIA 0.2: ActNorm -> Fixed1x1Conv -> AffineCouplingOneSided (GraphINN
                            for the multi-scale model), Glow's sigmoid scale via clamp_activation
  FrEIA-AllInOne            FrEIA's idiomatic AllInOneBlock (step case only; different maths)
  normflows                 normflows 1.7: GlowBlock (MultiscaleFlow for the multi-scale model)

Cases (see BENCHMARKS.md for what each measures and the matching caveats):
  step         one Glow step forward+backward, loss = -(log N(z; 0, I) + logdet).mean()
  model        whole-model training step of invflow.Glow: forward + backward + Adamax step
  model_paper_size  the same at the size of Schirrmeister et al. 2020: K=32 steps per scale, hidden 512, 3x32x32
               (batch 16 on CPU, 64 on GPU)
  approx_mass  detectors.objectives.approx_mass_penalty (double backward) vs the plain NLL step
  memory       bytes saved for backward (saved_tensors_hooks; + peak CUDA memory on GPU)
               with and without Glow(memory_free=True), K=32
  bandwidth    effective bandwidth of the elementwise kernels against a measured copy

Timing: warm-up calls, then ``repeats`` rounds in which the implementations of a case run
round-robin (the starting implementation rotates every round) so machine noise is spread
over all of them; every sample is timed with ``time.perf_counter`` around a synchronised
call (``torch.cuda.synchronize()`` on GPU), repeated ``inner`` times when one call is
shorter than the mode's target sample time.  Reported: median and inter-quartile range
(p75 - p25) per call, and ``vs eager`` = median(invflow-eager) / median(row) (> 1: faster
than the eager reference; for memory rows the same ratio of bytes).

``--quick`` (< 5 min on 2 CPU cores) uses fewer repeats and smaller shapes, ``--smoke``
(seconds) tiny shapes, one repeat and torch.compile(backend="aot_eager"); both are for
checking that everything runs, not for numbers.  ``--json PATH`` writes one record per row.
FrEIA and normflows are optional (``pip install -e .[bench]``); a missing one prints
"not installed" in its rows.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import invflow  # noqa: E402
from invflow import masks  # noqa: E402
from invflow.data import preprocess, standard_normal_log_prob  # noqa: E402

CASES = ("step", "model", "model_paper_size", "approx_mass", "memory", "bandwidth")
FUSED, EAGER, COMPILE = "invflow-fused", "invflow-eager", "torch.compile(reference)"
COMPILE_FUSED = "torch.compile(fused)"
COMPILED = (COMPILE, COMPILE_FUSED)
FREIA, FREIA_AIO, NORMFLOWS = "FrEIA", "FrEIA-AllInOne", "normflows"
PIP = {
    FREIA: "pip install FrEIA, or pip install -e .[bench]",
    FREIA_AIO: "pip install FrEIA, or pip install -e .[bench]",
    NORMFLOWS: "pip install normflows, or pip install -e .[bench]",
}
ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD", "PYTORCH_CUDA_ALLOC_CONF")


# ------------------------------------------------------------------------------- configs
@dataclass
class Config:
    mode: str
    warmup: int
    repeats: int
    target_s: float  # a timed sample repeats a call until it lasts about this long
    step: tuple  # (batch, channels, size, hidden)
    model: dict  # Glow config + batch for the model / approx_mass cases
    model_paper_size: (
        dict  # the Schirrmeister et al. 2020 model (K=32, hidden 512) for the model_paper_size case
    )
    memory: dict  # Glow config + batch for the memory case
    bandwidth: tuple  # tensor shape [B, C, H, W] for the elementwise kernels
    compile_backend: str
    memory_repeats: int = 3
    model_repeats: int | None = None  # rounds of the model_paper_size case (one step takes seconds on CPU)
    paper_size_compile_fused: bool = (
        False  # compile(fused) row of model_paper_size (whole-model compile: slow)
    )


def glow_cfg(image, levels, steps, hidden, batch):
    return dict(image=image, levels=levels, steps=steps, hidden=hidden, batch=batch)


def make_config(mode: str, device: str) -> Config:
    if mode == "smoke":
        return Config(
            "smoke",
            1,
            1,
            0.0,
            (2, 4, 4, 8),
            glow_cfg(8, 2, 1, 8, 2),
            glow_cfg(8, 2, 2, 8, 2),
            glow_cfg(8, 2, 4, 8, 2),
            (4, 4, 8, 8),
            "aot_eager",
            memory_repeats=1,
            paper_size_compile_fused=True,
        )
    if device == "cuda":
        if mode == "quick":
            return Config(
                "quick",
                3,
                10,
                0.02,
                (64, 12, 16, 512),
                glow_cfg(32, 3, 8, 512, 64),
                glow_cfg(32, 3, 32, 512, 64),
                glow_cfg(32, 3, 32, 512, 64),
                (1024, 12, 64, 64),
                "inductor",
            )
        return Config(
            "full",
            5,
            30,
            0.05,
            (64, 12, 16, 512),
            glow_cfg(32, 3, 32, 512, 64),
            glow_cfg(32, 3, 32, 512, 64),
            glow_cfg(32, 3, 32, 512, 64),
            (1024, 12, 64, 64),
            "inductor",
        )
    if mode == "quick":
        return Config(
            "quick",
            1,
            5,
            0.02,
            (16, 12, 16, 64),
            glow_cfg(32, 3, 4, 64, 16),
            glow_cfg(32, 3, 32, 512, 16),
            glow_cfg(32, 3, 32, 64, 8),
            (64, 12, 32, 32),
            "inductor",
            memory_repeats=2,
        )
    return Config(
        "full",
        2,
        25,
        0.05,
        (16, 12, 16, 64),
        glow_cfg(32, 3, 4, 64, 16),
        glow_cfg(32, 3, 32, 512, 16),
        glow_cfg(32, 3, 32, 64, 16),
        (256, 12, 32, 32),
        "inductor",
        model_repeats=9,
    )


# ------------------------------------------------------------------------------ helpers
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def n_params(module: nn.Module | None) -> int | None:
    if module is None:
        return None
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def short(exc: BaseException, limit: int = 160) -> str:
    msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def peer_versions() -> dict:
    out = {}
    for name, mod in (("FrEIA", "FrEIA"), ("normflows", "normflows")):
        try:
            from importlib.metadata import version

            __import__(mod)
            out[name] = version(name)
        except Exception:  # noqa: BLE001 - any failure means "not usable"
            out[name] = None
    return out


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


def allocator_settings() -> dict:
    return {k: os.environ.get(k, "<unset>") for k in ALLOCATOR_ENV}


# ------------------------------------------------------------------------------ timing
def time_call(fn: Callable, device: str, inner: int = 1) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / inner


def bench(fns: dict, cfg: Config, device: str, repeats: int | None = None, calibrate: bool = True) -> dict:
    """Round-robin timing of callables; returns name -> (median_s, iqr_s) or an exception."""
    repeats = cfg.repeats if repeats is None else repeats
    out: dict = {}
    live = {}
    for name, fn in fns.items():
        try:
            for _ in range(cfg.warmup):
                fn()
            sync(device)
            live[name] = fn
        except Exception as e:  # noqa: BLE001 - reported in the row
            out[name] = e
    inner = {}
    for name, fn in live.items():
        inner[name] = 1
        if calibrate and cfg.target_s > 0:
            t = time_call(fn, device)
            inner[name] = max(1, min(10_000, math.ceil(cfg.target_s / max(t, 1e-7))))
    samples: dict = {name: [] for name in live}
    names = list(live)
    for r in range(repeats):
        k = r % max(1, len(names))
        for name in names[k:] + names[:k]:
            samples[name].append(time_call(live[name], device, inner[name]))
    for name, s in samples.items():
        a = np.asarray(s)
        out[name] = (float(np.median(a)), float(np.percentile(a, 75) - np.percentile(a, 25)))
    return out


# ------------------------------------------------------------------------ implementations
@dataclass
class Impl:
    """One row: ``log_prob(x) -> [B]`` run inside ``ctx()``; ``module`` holds the parameters."""

    name: str
    module: nn.Module | None = None
    log_prob: Callable | None = None
    ctx: Callable = contextlib.nullcontext
    note: str = ""
    missing: str | None = None  # why this row has no numbers (not installed, error, unsupported)

    @property
    def ok(self) -> bool:
        return self.missing is None


def reference_ctx():
    return invflow.backend("reference")


def fused_ctx():
    return invflow.backend("fused")


def invflow_impls(
    base: nn.Module,
    log_prob_of: Callable,
    compile_fn: Callable | None,
    cfg: Config,
    compile_fused_fn: Callable | None = None,
) -> list:
    """invflow-fused, invflow-eager, torch.compile(reference) and torch.compile(fused) rows on
    copies of ``base``."""
    rows = []
    fused = copy.deepcopy(base)
    if invflow.fused_available():
        rows.append(Impl(FUSED, fused, log_prob_of(fused), fused_ctx))
    else:
        rows.append(
            Impl(
                FUSED, fused, missing="extension invflow._C not built (pip install -e . --no-build-isolation)"
            )
        )
    eager = copy.deepcopy(base)
    rows.append(Impl(EAGER, eager, log_prob_of(eager), reference_ctx))
    if compile_fn is not None:
        comp = copy.deepcopy(base)
        try:
            rows.append(
                Impl(
                    COMPILE,
                    comp,
                    compile_fn(comp, log_prob_of),
                    reference_ctx,
                    note=f"backend={cfg.compile_backend}",
                )
            )
        except Exception as e:  # noqa: BLE001
            rows.append(Impl(COMPILE, comp, missing="error: " + short(e)))
    if compile_fused_fn is not None:
        comp = copy.deepcopy(base)
        if not invflow.fused_available():
            rows.append(Impl(COMPILE_FUSED, comp, missing="extension invflow._C not built"))
        else:
            try:
                rows.append(
                    Impl(
                        COMPILE_FUSED,
                        comp,
                        compile_fused_fn(comp, log_prob_of),
                        fused_ctx,
                        note=f"backend={cfg.compile_backend}",
                    )
                )
            except Exception as e:  # noqa: BLE001
                rows.append(Impl(COMPILE_FUSED, comp, missing="error: " + short(e)))
    return rows


def glow_log_scale(raw: torch.Tensor) -> torch.Tensor:
    """FrEIA clamp_activation giving Glow's scale: clamp(=1) * f(raw) = log sigmoid(raw + 2)."""
    return F.logsigmoid(raw + 2.0)


def _copy_invconv_to_normflows(conv: invflow.InvConv1x1, nf_conv) -> None:
    with torch.no_grad():
        nf_conv.P.copy_(conv.perm)
        nf_conv.L.copy_(conv.lower)
        nf_conv.U.copy_(conv.upper)
        nf_conv.log_S.copy_(conv.log_s)
        nf_conv.sign_S.copy_(conv.sign_s)


def _copy_actnorm_to_normflows_inverse(an: invflow.ActNorm, nf_an) -> None:
    """normflows' ActNorm runs backwards in the data direction: x -> (x - t) * exp(-s)."""
    with torch.no_grad():
        nf_an.s.copy_(-an.log_scale.view_as(nf_an.s))
        nf_an.t.copy_(-an.bias.view_as(nf_an.t))
        nf_an.data_dep_init_done.fill_(1.0)


def _copy_glownet_to_normflows(net: nn.Module, param_map) -> None:
    """invflow GlowNet -> normflows ConvNet2d: the three convs (the last is zero-initialised in
    both; invflow's ZeroConv2d ``logs`` has no normflows counterpart and is 0 = scale 1) and
    the hidden ActNorm2d layers (net_actnorm=True)."""
    from invflow.nets import ActNorm2d

    src_convs = [m for m in net if isinstance(m, nn.Conv2d)]
    dst_convs = [m for m in param_map.net if isinstance(m, nn.Conv2d)]
    src_an = [m for m in net if isinstance(m, ActNorm2d)]
    dst_an = [m for m in param_map.net if type(m).__name__ == "ActNorm"]
    assert len(src_convs) == len(dst_convs) == 3 and len(src_an) == len(dst_an)
    with torch.no_grad():
        for s, d in zip(src_convs, dst_convs):
            d.weight.copy_(s.weight)
            if d.bias is not None:
                d.bias.copy_(s.bias if s.bias is not None else torch.zeros_like(d.bias))
        for s, d in zip(src_an, dst_an):  # ActNorm2d: (x + b) e^logs = x e^s + t
            d.actNorm.s.copy_(s.logs.view_as(d.actNorm.s))
            d.actNorm.t.copy_((s.bias * torch.exp(s.logs)).view_as(d.actNorm.t))
            d.actNorm.data_dep_init_done.fill_(1.0)


def _freia_actnorm(mod, bias: torch.Tensor, log_scale: torch.Tensor) -> None:
    """FrEIA ActNorm computes x e^scale + bias; invflow's (x + b) e^log_s."""
    with torch.no_grad():
        mod.scale.copy_(log_scale.view_as(mod.scale))
        mod.bias.copy_((bias * torch.exp(log_scale)).view_as(mod.bias))
    mod.init_on_next_batch = False


def _nf_glow_block(channels: int, hidden: int, parity: int, net_actnorm: bool):
    import normflows as nf

    return nf.flows.GlowBlock(
        channels,
        hidden,
        scale=True,
        scale_map="sigmoid",
        split_mode="channel" if parity == 0 else "channel_inv",
        leaky=0.0,
        init_zeros=True,
        use_lu=True,
        net_actnorm=net_actnorm,
    )


def _nf_copy_step(step: invflow.Sequential, block) -> None:
    an, conv, cp = step.flows
    coupling_block, nf_conv, nf_an = block.flows
    _copy_actnorm_to_normflows_inverse(an, nf_an)
    _copy_invconv_to_normflows(conv, nf_conv)
    _copy_glownet_to_normflows(cp.net, coupling_block.flows[1].param_map)


def _parity(cp: invflow.AffineCoupling) -> int:
    return 0 if cp.split[0].start == 0 else 1


def peer_row(name: str, build: Callable) -> Impl:
    """Builds a peer row, or a row saying why it has no numbers."""
    mod = {FREIA: "FrEIA", FREIA_AIO: "FrEIA", NORMFLOWS: "normflows"}[name]
    try:
        __import__(mod)
    except ImportError:
        return Impl(name, missing=f"not installed ({PIP[name]})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build()
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        return Impl(name, missing="error: " + short(e))


# ------------------------------------------------------------------ case 1: a Glow step
def step_log_prob(step: nn.Module) -> Callable:
    def log_prob(x):
        y, logdet = step(x)
        return standard_normal_log_prob(y) + logdet

    return log_prob


def compile_whole(cfg: Config, backend: str = "reference") -> Callable:
    def build(module, log_prob_of):
        lp = log_prob_of(module)

        def in_backend(x):
            with invflow.backend(backend):
                return lp(x)

        return torch.compile(in_backend, backend=cfg.compile_backend)

    return build


def build_step(cfg: Config, device: str):
    b, c, s, hidden = cfg.step
    torch.manual_seed(0)
    base = invflow.Sequential(
        invflow.ActNorm(c),
        invflow.InvConv1x1(c, lu=True),
        invflow.AffineCoupling(c, masks.Channel(0), hidden=hidden),
    ).to(device)
    x = torch.randn(b, c, s, s, device=device)
    with torch.no_grad(), invflow.backend("reference"):
        base.train()
        base(x)  # ActNorm's data-dependent initialisation
    base.eval()
    rows = invflow_impls(base, step_log_prob, compile_whole(cfg), cfg, compile_whole(cfg, "fused"))
    an, conv, cp = base.flows

    def freia():
        import FrEIA.framework as Ff
        import FrEIA.modules as Fm

        inn = Ff.SequenceINN(c, s, s)
        inn.append(Fm.ActNorm)
        w = conv.weight_and_logdet()[0].detach()
        inn.append(Fm.Fixed1x1Conv, M=w.t().cpu().clone())  # conv2d with M^T: y = W x
        net = copy.deepcopy(cp.net)
        inn.append(
            Fm.AffineCouplingOneSided,
            subnet_constructor=lambda cin, cout: net,
            clamp=1.0,
            clamp_activation=glow_log_scale,
            split_len=cp.split[0].stop,
        )
        inn = inn.to(device).eval()
        _freia_actnorm(inn.module_list[0], an.bias, an.log_scale)

        def log_prob(x):
            z, jac = inn(x)
            return standard_normal_log_prob(z) + jac

        return Impl(FREIA, inn, log_prob, reference_ctx, note="1x1 conv fixed (Fixed1x1Conv)")

    def freia_aio():
        import FrEIA.framework as Ff
        import FrEIA.modules as Fm

        inn = Ff.SequenceINN(c, s, s)
        inn.append(
            Fm.AllInOneBlock,
            affine_clamping=2.0,
            permute_soft=False,
            subnet_constructor=lambda cin, cout: invflow.nets.GlowNet(cin, cout, hidden),
        )
        inn = inn.to(device).eval()

        def log_prob(x):
            z, jac = inn(x)
            return standard_normal_log_prob(z) + jac

        return Impl(
            FREIA_AIO,
            inn,
            log_prob,
            reference_ctx,
            note="own maths: tanh clamp, softplus global affine, hard permutation",
        )

    def normflows():
        block = _nf_glow_block(c, hidden, 0, net_actnorm=False).to(device)
        _nf_copy_step(base, block)
        block.eval()

        def log_prob(x):
            z, logdet = block.inverse(x)  # normflows flows run data -> latent in .inverse
            return standard_normal_log_prob(z) + logdet

        return Impl(
            NORMFLOWS, block, log_prob, reference_ctx, note="shift before scale; no logs in last conv"
        )

    rows += [peer_row(FREIA, freia), peer_row(FREIA_AIO, freia_aio), peer_row(NORMFLOWS, normflows)]
    x.requires_grad_(True)
    check_log_prob(rows, x, skip=(FREIA_AIO,))
    return rows, x


def check_log_prob(rows: list, x: torch.Tensor, skip=()) -> None:
    """Same weights => same log p: notes max |log p - log p(invflow-eager)| on every row
    (a check that the architectures really match; rows in ``skip`` have different maths)."""
    ref = None
    vals = {}
    for r in rows:
        if not r.ok or r.name in COMPILED:  # compiling under no_grad would compile twice
            continue
        try:
            with torch.no_grad(), r.ctx():
                vals[r.name] = r.log_prob(x.detach()).double()
        except Exception as e:  # noqa: BLE001
            r.missing = "error: " + short(e)
    ref = vals.get(EAGER)
    if ref is None:
        return
    scale = ref.abs().max().clamp_min(1.0)
    for r in rows:
        if r.name in vals and r.name != EAGER and r.name not in skip:
            d = float((vals[r.name] - ref).abs().max() / scale)
            r.note = (r.note + "; " if r.note else "") + f"log p rel. diff {d:.0e}"


def run_step(cfg, device, out):
    rows, x = build_step(cfg, device)
    b, c, s, hidden = cfg.step

    def fwd_bwd(r):
        def f():
            r.module.zero_grad(set_to_none=True)
            x.grad = None  # x requires grad: a step inside a model backpropagates to its input
            with r.ctx():
                loss = -r.log_prob(x).mean()
            loss.backward()

        return f

    res = bench({r.name: fwd_bwd(r) for r in rows if r.ok}, cfg, device)
    emit(
        out,
        "step",
        "fwd+bwd",
        rows,
        res,
        device,
        [b, c, s, s],
        header=f"one Glow step forward+backward, x {[b, c, s, s]}, hidden {hidden}",
    )


# ------------------------------------------------------------- case 2/3: the whole model
_MODEL_CACHE: dict = {}


def model_input(gcfg: dict, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    s = gcfg["image"]
    raw = torch.randint(0, 256, (gcfg["batch"], 3, s, s), dtype=torch.uint8, generator=g)
    return preprocess(raw, dequantize=True, generator=g).to(device)


def model_log_prob(model: nn.Module) -> Callable:
    return lambda x: model(x).log_prob


def compile_regional(backend: str) -> Callable:
    """torch.compile of every Glow step (regional compilation): identical steps share their
    compiled graphs (8 graphs for K=4, L=3), where the compile time of one whole-model graph
    grows with K."""

    def build(model, log_prob_of):
        for scale in model.scales:
            for step in scale.flows:
                step.compile(backend=backend)
        return log_prob_of(model)

    return build


def compile_model_fused(backend: str) -> Callable:
    """torch.compile of the whole model under the fused backend (``Glow._forward``: everything
    after the input checks, whose data-dependent tests would break the graph): one graph with
    the fused ops inside (they have fake kernels), ``fullgraph=True`` so that a graph break is
    an error rather than a silent slowdown."""

    def build(model, log_prob_of):
        model._forward = torch.compile(model._forward, backend=backend, fullgraph=True)
        return log_prob_of(model)

    return build


def actnorm_eval(model: nn.Module) -> None:
    """Puts the (already initialised) ActNorm / ActNorm2d layers in eval mode: in training mode
    their data-dependent-init check ``bool(self.initialized)`` is a dynamo graph break (one per
    layer), which multiplies compile time; in eval mode they compute exactly the same thing."""
    from invflow.nets import ActNorm2d

    for m in model.modules():
        if isinstance(m, (invflow.ActNorm, ActNorm2d)):
            m.eval()


def freia_glow(model: invflow.Glow, device: str):
    """FrEIA GraphINN equal to ``model`` (same weights).  FrEIA's one-sided coupling always
    conditions on the first half; a parity-1 invflow step (conditions on the second half)
    is emulated exactly by folding the half swap S into the fixed 1x1 matrix (S W) and the
    next layer's parameters, so no extra op runs."""
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    c, s = model.input_shape[0], model.input_shape[1]
    nodes = [Ff.InputNode(c, s, s, name="x")]
    node = nodes[0]
    outs, pending = [], []
    for j, scale in enumerate(model.scales):
        node = Ff.Node(node, Fm.IRevNetDownsampling, {})  # same channel order as invflow.Squeeze
        nodes.append(node)
        c *= 4
        assert c % 2 == 0
        idx = torch.cat([torch.arange(c // 2, c), torch.arange(0, c // 2)])
        swap = torch.eye(c)[idx]  # swap @ v = [v2, v1]
        swapped = False
        for step in scale.flows:
            an, conv, cp = step.flows
            bias, log_scale = an.bias.detach().cpu(), an.log_scale.detach().cpu()
            if swapped:
                bias, log_scale = bias[idx], log_scale[idx]
            w = conv.weight_and_logdet()[0].detach().cpu()
            parity = _parity(cp)
            m = (swap if parity else torch.eye(c)) @ w @ (swap if swapped else torch.eye(c))
            an_node = Ff.Node(node, Fm.ActNorm, {})
            conv_node = Ff.Node(an_node, Fm.Fixed1x1Conv, {"M": m.t().contiguous()})
            net = copy.deepcopy(cp.net)
            node = Ff.Node(
                conv_node,
                Fm.AffineCouplingOneSided,
                {
                    "subnet_constructor": (lambda n: lambda cin, cout: n)(net),
                    "clamp": 1.0,
                    "clamp_activation": glow_log_scale,
                    "split_len": c // 2,
                },
            )
            nodes += [an_node, conv_node, node]
            pending.append((an_node, bias, log_scale))
            swapped = parity == 1
        if j < len(model.scales) - 1:
            split = Ff.Node(node, Fm.Split, {"n_sections": 2, "dim": 0})
            nodes.append(split)
            latent, keep = (0, 1) if swapped else (1, 0)
            outs.append(Ff.OutputNode((split, latent)))
            node = (split, keep)
            c //= 2
        else:
            outs.append(Ff.OutputNode(node))
    inn = Ff.GraphINN(nodes + outs, force_tuple_output=True)
    for an_node, bias, log_scale in pending:
        _freia_actnorm(an_node.module, bias, log_scale)
    inn = inn.to(device)

    def log_prob(x):
        zs, jac = inn(x)
        return sum(standard_normal_log_prob(z) for z in zs) + jac

    return inn, log_prob


def normflows_glow(model: invflow.Glow, device: str):
    """normflows MultiscaleFlow equal to ``model`` (same weights): per level a list
    [GlowBlock_{K-1}, ..., GlowBlock_0, Squeeze] (normflows lists flows in the sampling
    direction), channel Merge between levels, fixed standard-normal DiagGaussian priors."""
    import normflows as nf

    c_in, s = model.input_shape[0], model.input_shape[1]
    levels = len(model.scales)
    q0, flows, merges = [], [], []
    for i in range(levels):  # normflows level 0 is the coarsest
        j = levels - 1 - i
        c = c_in * 2 ** (j + 2)
        blocks = []
        for step in model.scales[j].flows:
            cp = step.flows[2]
            block = _nf_glow_block(c, model.config()["hidden"], _parity(cp), net_actnorm=True)
            _nf_copy_step(step, block)
            blocks.append(block)
        flows.append(list(reversed(blocks)) + [nf.flows.Squeeze()])
        side = s // 2 ** (j + 1)
        shape = (c, side, side) if j == levels - 1 else (c // 2, side, side)
        q0.append(nf.distributions.DiagGaussian(shape, trainable=False))
        if i > 0:
            merges.append(nf.flows.Merge())
    nfm = nf.MultiscaleFlow(q0, flows, merges, class_cond=False).to(device)
    return nfm, lambda x: nfm.log_prob(x, None)


def build_model_rows(
    gcfg: dict, cfg: Config, device: str, with_compile: bool = True, compile_fused: bool = True
):
    key = (tuple(sorted(gcfg.items())), device, with_compile, compile_fused)
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    torch.manual_seed(0)
    base = invflow.Glow(
        3, gcfg["image"], levels=gcfg["levels"], steps=gcfg["steps"], hidden=gcfg["hidden"]
    ).to(device)
    x = model_input(gcfg, device)
    with torch.no_grad(), invflow.backend("reference"):
        base.train()
        base(x)  # data-dependent init of every ActNorm / ActNorm2d
    comp = compile_regional(cfg.compile_backend) if with_compile else None
    comp_fused = compile_model_fused(cfg.compile_backend) if with_compile and compile_fused else None
    rows = invflow_impls(base, model_log_prob, comp, cfg, comp_fused)
    if with_compile and not compile_fused:
        rows.append(
            Impl(
                COMPILE_FUSED,
                missing="not run: compiling the whole K=32 model takes tens of minutes on "
                "2 CPU cores (--paper-size-compile-fused runs it); see the model case",
            )
        )
    for r in rows:
        if r.name == COMPILE:
            r.note = f"backend={cfg.compile_backend}, per-step (regional) compile, ActNorms in eval mode"
        if r.name == COMPILE_FUSED and r.ok:
            r.note = f"backend={cfg.compile_backend}, whole model (Glow._forward), fullgraph"

    def freia():
        inn, lp = freia_glow(base, device)
        return Impl(FREIA, inn, lp, reference_ctx, note="GraphINN; 1x1 conv fixed (Fixed1x1Conv)")

    def normflows():
        nfm, lp = normflows_glow(base, device)
        return Impl(NORMFLOWS, nfm, lp, reference_ctx, note="MultiscaleFlow; shift before scale")

    rows += [peer_row(FREIA, freia), peer_row(NORMFLOWS, normflows)]
    for r in rows:
        if r.module is not None:
            r.module.train()
        if r.name == COMPILE:
            actnorm_eval(r.module)
    check_log_prob(rows, x)
    _MODEL_CACHE[key] = (rows, x, base)
    return rows, x, base


def glow_desc(g: dict) -> str:
    shape = [g["batch"], 3, g["image"], g["image"]]
    return f"Glow K={g['steps']} L={g['levels']} hidden {g['hidden']}, x {shape}"


def graph_breaks() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(sum(counters["graph_break"].values()))
    except Exception:  # noqa: BLE001
        return -1


def run_model(cfg, device, out, g=None, case="model", repeats=None, compile_fused=True):
    g = cfg.model if g is None else g
    rows, x, _ = build_model_rows(g, cfg, device, compile_fused=compile_fused)
    opts = {
        r.name: torch.optim.Adamax(
            r.module.parameters(), lr=5e-4, weight_decay=5e-5, foreach=True
        )  # Trainer's
        for r in rows
        if r.ok
    }

    def train_step(r):
        opt = opts[r.name]

        def f():
            opt.zero_grad(set_to_none=True)
            with r.ctx():
                loss = -r.log_prob(x).mean()
            loss.backward()
            opt.step()

        return f

    res = bench({r.name: train_step(r) for r in rows if r.ok}, cfg, device, repeats=repeats)
    for r in rows:
        if r.name in COMPILED and r.ok:
            r.note += f"; dynamo graph breaks so far: {graph_breaks()}"
    emit(
        out,
        case,
        "train_step",
        rows,
        res,
        device,
        [g["batch"], 3, g["image"], g["image"]],
        header=f"training step (forward + backward + Adamax) of {glow_desc(g)}",
    )


def run_model_paper_size(cfg, device, out):
    """The model case at the size of Schirrmeister et al. 2020 (Glow K=32 per scale, hidden 512, 3x32x32)."""
    run_model(
        cfg,
        device,
        out,
        g=cfg.model_paper_size,
        case="model_paper_size",
        repeats=cfg.model_repeats,
        compile_fused=cfg.paper_size_compile_fused,
    )


def run_approx_mass(cfg, device, out):
    from detectors.objectives import approx_mass_penalty

    g = cfg.model
    rows, x, base = build_model_rows(g, cfg, device)

    class LogProb:  # approx_mass_penalty calls model.log_prob(x)
        def __init__(self, fn):
            self.log_prob = fn

    def nll(r):
        def f():
            r.module.zero_grad(set_to_none=True)
            with r.ctx():
                loss = -r.log_prob(x).mean()
            loss.backward()

        return f

    def penalty(r):
        model = LogProb(r.log_prob)

        def f():
            r.module.zero_grad(set_to_none=True)
            with r.ctx():
                loss = approx_mass_penalty(model, x)
            loss.backward()

        return f

    fns = {}
    pen_rows = []
    for r in rows:
        if not r.ok:
            pen_rows.append(r)
            continue
        fns[(r.name, "nll")] = nll(r)
        if r.name in COMPILED:
            pen_rows.append(Impl(r.name, r.module, missing=compile_double_backward_status()))
        else:
            fns[(r.name, "penalty")] = penalty(r)
            pen_rows.append(r)
    res = bench(fns, cfg, device)
    shape = [g["batch"], 3, g["image"], g["image"]]
    nll_res = {k[0]: v for k, v in res.items() if k[1] == "nll"}
    pen_res = {k[0]: v for k, v in res.items() if k[1] == "penalty"}
    extra = {}
    for name, v in pen_res.items():
        n = nll_res.get(name)
        if isinstance(v, tuple) and isinstance(n, tuple):
            extra[name] = {"penalty_over_nll": v[0] / n[0], "target_max": 2.5}
    emit(
        out,
        "approx_mass",
        "nll",
        rows,
        nll_res,
        device,
        shape,
        header=f"plain NLL step (forward + backward, no optimizer) of {glow_desc(g)}",
    )
    emit(
        out,
        "approx_mass",
        "penalty",
        pen_rows,
        pen_res,
        device,
        shape,
        extra=extra,
        header="approx_mass_penalty(model, x) + backward (double backward); 'pen/nll' = penalty / NLL time "
        "(target <= 2.5x)",
    )


def compile_double_backward_status() -> str:
    """Whether torch.compile can double-backward, tried once on a tiny Glow step compiled with
    backend aot_eager (the aot_autograd path that inductor uses too, without code generation;
    donated buffers off so that the error is aot_autograd's own)."""
    torch.manual_seed(0)
    step = invflow.Sequential(
        invflow.ActNorm(4), invflow.InvConv1x1(4), invflow.AffineCoupling(4, masks.Channel(0), hidden=4)
    ).eval()
    x = torch.randn(2, 4, 4, 4, requires_grad=True)
    lp = step_log_prob(step)

    def in_reference(x):
        with invflow.backend("reference"):
            return lp(x)

    try:
        patch = torch._functorch.config.patch(donated_buffer=False)
    except Exception:  # noqa: BLE001 - older / newer torch without the flag
        patch = contextlib.nullcontext()
    try:
        with patch:
            f = torch.compile(in_reference, backend="aot_eager")
            (g,) = torch.autograd.grad(f(x).sum(), x, create_graph=True)
            g.flatten(1).norm(dim=1).mean().backward()
    except Exception as e:  # noqa: BLE001
        return "unsupported: torch.compile cannot double-backward (" + short(e, 110) + ")"
    return "unsupported: not timed (double backward through torch.compile ran; update compare.py)"


# ---------------------------------------------------------------------- case 4: memory
def saved_bytes(fn: Callable, module: nn.Module) -> tuple:
    """(bytes, activation bytes, output) of the unique storages autograd saves during fn()."""
    storages: dict = {}
    kept = []  # keeps every packed tensor alive, so no address is reused while counting

    def pack(t):
        kept.append(t)
        try:
            st = t.untyped_storage()
            storages[(st.data_ptr(), str(t.device))] = st.nbytes()
        except Exception:  # noqa: BLE001 - e.g. tensors without storage
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    owned = {
        (t.untyped_storage().data_ptr(), str(t.device))
        for t in list(module.parameters()) + list(module.buffers())
    }
    total = sum(storages.values())
    act = sum(v for k, v in storages.items() if k not in owned)
    kept.clear()
    return total, act, loss


def run_memory(cfg, device, out):
    g = cfg.memory
    rows, x, _ = build_model_rows(g, cfg, device, with_compile=False)
    variants = []
    for r in rows:
        variants.append((r, "standard"))
        if r.name in (FUSED, EAGER):
            variants.append((r, "memory_free"))

    def loss_fn(r, free):
        def f():
            if hasattr(r.module, "memory_free"):
                r.module.memory_free = free
            with r.ctx():
                return -r.log_prob(x).mean()

        return f

    meas = {}
    fns = {}
    for r, v in variants:
        if not r.ok:
            continue
        lf = loss_fn(r, v == "memory_free")
        try:
            r.module.zero_grad(set_to_none=True)
            total, act, loss = saved_bytes(lf, r.module)
            loss.backward()
            del loss
            peak = None
            if device == "cuda":
                r.module.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                lf().backward()
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() - before
            meas[(r.name, v)] = (total, act, peak)

            def step(lf=lf, r=r):
                r.module.zero_grad(set_to_none=True)
                lf().backward()

            fns[(r.name, v)] = step
        except Exception as e:  # noqa: BLE001
            meas[(r.name, v)] = e
    res = {}
    if cfg.memory_repeats > 0:
        res = bench(fns, cfg, device, repeats=cfg.memory_repeats, calibrate=False)
    for r in rows:
        if hasattr(r.module, "memory_free"):
            r.module.memory_free = False
    key_bytes = 2 if device == "cuda" else 0
    eager_std = meas.get((EAGER, "standard"))
    shape = [g["batch"], 3, g["image"], g["image"]]
    print_header(
        f"memory: {glow_desc(g)}; bytes = "
        + (
            "peak torch.cuda.max_memory_allocated over fwd+bwd"
            if device == "cuda"
            else "unique storages saved for backward (saved_tensors_hooks)"
        )
        + "; 'vs eager' = eager-standard bytes / row bytes; time = fwd+bwd"
    )
    print(
        f"{'impl':<26}{'variant':<13}{'bytes':>12}{'act. bytes':>12}{'vs eager':>10}{'reduction':>10}"
        f"{'fwd+bwd ms':>12}  note"
    )
    for r, v in variants:
        m = meas.get((r.name, v))
        t = res.get((r.name, v))
        rec = dict(
            case="memory",
            variant=v,
            impl=r.name,
            device=device,
            params=n_params(r.module),
            shape=shape,
            note=r.note,
            median_s=None,
            iqr_s=None,
            ratio_vs_eager=None,
            bytes=None,
            extra={},
        )
        if not r.ok or not isinstance(m, tuple):
            rec["note"] = r.missing if not r.ok else "error: " + short(m)
            out.append(rec)
            print(f"{r.name:<26}{v:<13}{'-':>12}{'-':>12}{'-':>10}{'-':>10}{'-':>12}  {rec['note']}")
            continue
        total, act, peak = m
        rec["bytes"] = peak if device == "cuda" else total
        rec["extra"] = {"saved_bytes": total, "activation_bytes": act}
        if peak is not None:
            rec["extra"]["peak_bytes"] = peak
        if isinstance(eager_std, tuple) and rec["bytes"]:
            rec["ratio_vs_eager"] = eager_std[key_bytes] / rec["bytes"]
        std = meas.get((r.name, "standard"))
        red = ""
        if v == "memory_free" and isinstance(std, tuple) and rec["bytes"]:
            rec["extra"].update(reduction_vs_standard=std[key_bytes] / rec["bytes"], target_min=4.0)
            red = f"{rec['extra']['reduction_vs_standard']:.1f}x"
        if isinstance(t, tuple):
            rec["median_s"], rec["iqr_s"] = t
        elif t is not None:
            rec["note"] = (rec["note"] + "; " if rec["note"] else "") + "timing error: " + short(t)
        out.append(rec)
        ratio = f"{rec['ratio_vs_eager']:.2f}x" if rec["ratio_vs_eager"] else "-"
        ms = f"{rec['median_s'] * 1e3:.2f}" if rec["median_s"] is not None else "-"
        print(
            f"{r.name:<26}{v:<13}{human(rec['bytes']):>12}{human(act):>12}{ratio:>10}{red:>10}{ms:>12}  "
            f"{rec['note']}"
        )


def human(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ------------------------------------------------------------------- case 5: bandwidth
def run_bandwidth(cfg, device, out):
    from invflow.ops import reference as ref

    shape = cfg.bandwidth
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, device=device, generator=g)
    h = 0.5 * torch.randn((shape[0], 2 * shape[1]) + tuple(shape[2:]), device=device, generator=g)
    gy = torch.randn(shape, device=device, generator=g)
    gl = torch.randn(shape[0], device=device, generator=g)
    b = torch.randn(shape[1], device=device, generator=g)
    ls = 0.1 * torch.randn(shape[1], device=device, generator=g)
    dst = torch.empty_like(x)
    numel = x.numel()

    def eager_backward(forward, *inputs):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        y, logdet = forward(*leaves)
        return lambda: torch.autograd.grad((y, logdet), leaves, (gy, gl), retain_graph=True)

    op = torch.ops.invflow if invflow.fused_available() else None

    def coupling_ref(a, hh):
        return ref.coupling_forward(a, hh, None, "sigmoid", 2.0)

    def coupling_fused_bwd():
        return op.coupling_backward(gy, gl, x, h, None, "sigmoid", 2.0)

    # op -> (tensors moved: every input read once and every output written once, {impl: fn})
    ops = {
        "copy": (2, {"torch copy_": lambda: dst.copy_(x)}),
        "actnorm_forward": (
            2,
            {
                FUSED: op and (lambda: op.actnorm_forward(x, b, ls)),
                EAGER: lambda: ref.actnorm_forward(x, b, ls),
            },
        ),
        "actnorm_backward": (
            3,
            {
                FUSED: op and (lambda: op.actnorm_backward(gy, gl, x, b, ls)),
                EAGER: eager_backward(ref.actnorm_forward, x, b, ls),
            },
        ),
        "coupling_forward": (
            4,
            {
                FUSED: op and (lambda: op.coupling_forward(x, h, None, "sigmoid", 2.0)),
                EAGER: lambda: coupling_ref(x, h),
            },
        ),
        "coupling_backward": (
            7,
            {FUSED: op and coupling_fused_bwd, EAGER: eager_backward(coupling_ref, x, h)},
        ),
    }
    fns = {
        (name, impl): fn for name, (_, impls) in ops.items() for impl, fn in impls.items() if fn is not None
    }
    res = bench(fns, cfg, device)
    copy_t = res.get(("copy", "torch copy_"))
    print_header(
        f"bandwidth: elementwise kernels on {list(shape)} float32; GB/s = bytes that must move "
        f"(inputs read once, outputs written once) / median; '% copy' = share of the copy's GB/s"
    )
    print(f"{'op':<20}{'impl':<16}{'median ms':>11}{'IQR ms':>9}{'GB/s':>8}{'% copy':>8}{'vs eager':>10}")
    for name, (tensors, impls) in ops.items():
        nbytes = tensors * numel * 4
        for impl, fn in impls.items():
            rec = dict(
                case="bandwidth",
                variant=name,
                impl=impl,
                device=device,
                params=None,
                shape=list(shape),
                bytes=nbytes,
                median_s=None,
                iqr_s=None,
                ratio_vs_eager=None,
                note="",
                extra={},
            )
            t = res.get((name, impl))
            if fn is None:
                rec["note"] = "extension invflow._C not built"
            elif not isinstance(t, tuple):
                rec["note"] = "error: " + short(t)
            else:
                rec["median_s"], rec["iqr_s"] = t
                gbps = nbytes / t[0] / 1e9
                rec["extra"]["gbps"] = gbps
                if isinstance(copy_t, tuple):
                    rec["extra"]["pct_of_copy"] = 100 * (nbytes / t[0]) / (2 * numel * 4 / copy_t[0])
                e = res.get((name, EAGER))
                if isinstance(e, tuple):
                    rec["ratio_vs_eager"] = e[0] / t[0]
            out.append(rec)
            ms = f"{rec['median_s'] * 1e3:.3f}" if rec["median_s"] is not None else "-"
            iqr = f"{rec['iqr_s'] * 1e3:.3f}" if rec["iqr_s"] is not None else "-"
            gb = f"{rec['extra']['gbps']:.1f}" if "gbps" in rec["extra"] else "-"
            pc = f"{rec['extra']['pct_of_copy']:.0f}%" if "pct_of_copy" in rec["extra"] else "-"
            ra = f"{rec['ratio_vs_eager']:.2f}x" if rec["ratio_vs_eager"] else "-"
            print(f"{name:<20}{impl:<16}{ms:>11}{iqr:>9}{gb:>8}{pc:>8}{ra:>10}  {rec['note']}")


# --------------------------------------------------------------------------- reporting
def print_header(text: str) -> None:
    print(f"\n== {text}")


def emit(
    out: list,
    case: str,
    variant: str,
    rows: list,
    res: dict,
    device: str,
    shape,
    header: str,
    extra: dict | None = None,
) -> None:
    """Prints one table (a row per implementation) and appends its records to ``out``."""
    print_header(f"{case}: {header}")
    has_extra = bool(extra)
    print(
        f"{'impl':<26}{'median ms':>11}{'IQR ms':>9}{'vs eager':>10}"
        + (f"{'pen/nll':>9}" if has_extra else "")
        + f"{'params':>11}  note"
    )
    eager = res.get(EAGER)
    for r in rows:
        rec = dict(
            case=case,
            variant=variant,
            impl=r.name,
            device=device,
            median_s=None,
            iqr_s=None,
            ratio_vs_eager=None,
            bytes=None,
            params=n_params(r.module),
            shape=list(shape),
            note=r.note,
            extra=dict((extra or {}).get(r.name, {})),
        )
        t = res.get(r.name)
        if not r.ok:
            rec["note"] = r.missing
        elif isinstance(t, tuple):
            rec["median_s"], rec["iqr_s"] = t
            if isinstance(eager, tuple):
                rec["ratio_vs_eager"] = eager[0] / t[0]
        elif t is not None:
            rec["note"] = "error: " + short(t)
        out.append(rec)
        ms = f"{rec['median_s'] * 1e3:.3f}" if rec["median_s"] is not None else "-"
        iqr = f"{rec['iqr_s'] * 1e3:.3f}" if rec["iqr_s"] is not None else "-"
        ra = f"{rec['ratio_vs_eager']:.2f}x" if rec["ratio_vs_eager"] else "-"
        px = ""
        if has_extra:
            pn = rec["extra"].get("penalty_over_nll")
            px = f"{pn:>8.2f}x" if pn else f"{'-':>9}"
        params = f"{rec['params']:,}" if rec["params"] is not None else "-"
        print(f"{r.name:<26}{ms:>11}{iqr:>9}{ra:>10}{px}{params:>11}  {rec['note']}")


# -------------------------------------------------------------------------------- main
RUNNERS = {
    "step": run_step,
    "model": run_model,
    "model_paper_size": run_model_paper_size,
    "approx_mass": run_approx_mass,
    "memory": run_memory,
    "bandwidth": run_bandwidth,
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="fewer repeats, smaller shapes (< 5 min on 2 CPU cores)"
    )
    mode.add_argument(
        "--smoke", action="store_true", help="tiny shapes, one repeat (seconds; used by the tests)"
    )
    p.add_argument("--json", metavar="PATH", help="write the records as a JSON list")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--compile-backend", help="torch.compile backend (default inductor; aot_eager in --smoke)")
    p.add_argument(
        "--paper-size-compile-fused",
        action="store_true",
        help="also run the torch.compile(fused) row of model_paper_size (compiles the whole K=32 model)",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("compare.py: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch._logging.set_logs(dynamo=logging.ERROR)
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = make_config(mode, args.device)
    if args.compile_backend:
        cfg.compile_backend = args.compile_backend
    if args.paper_size_compile_fused:
        cfg.paper_size_compile_fused = True
    peers = peer_versions()
    meta = dict(torch=torch.__version__, commit=commit_hash(), machine=machine(args.device))
    print(
        f"invflow compare: mode={mode} device={args.device} torch {meta['torch']} "
        f"threads={torch.get_num_threads()} commit={meta['commit'] or '?'}"
    )
    print(f"machine: {meta['machine']}")
    print("allocator: " + ", ".join(f"{k}={v}" for k, v in allocator_settings().items()))
    print(
        f"fused extension: {invflow.fused_available()}; "
        f"torch.compile backend: {cfg.compile_backend}; peers: "
        + ", ".join(f"{k} {v or 'not installed'}" for k, v in peers.items())
    )
    print(
        f"timing: {cfg.warmup} warm-up + {cfg.repeats} round-robin rounds per case "
        f"(memory: {cfg.memory_repeats}), median and IQR per call"
    )
    records: list = []
    t0 = time.perf_counter()
    for case in CASES:
        if case not in args.cases:
            continue
        tc = time.perf_counter()
        try:
            RUNNERS[case](cfg, args.device, records)
        except Exception as e:  # noqa: BLE001 - one broken case must not hide the others
            traceback.print_exc()
            records.append(
                dict(
                    case=case,
                    variant="",
                    impl="",
                    device=args.device,
                    median_s=None,
                    iqr_s=None,
                    ratio_vs_eager=None,
                    bytes=None,
                    params=None,
                    shape=None,
                    note="error: " + short(e),
                    extra={},
                )
            )
        print(f"   ({case}: {time.perf_counter() - tc:.1f} s)")
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")
    for r in records:
        r.update(meta)
        r.setdefault("mode", mode)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records, indent=1))
        print(f"wrote {len(records)} records to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
