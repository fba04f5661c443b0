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

Cases (see docs/benchmarks.md for what each measures and the matching caveats):
  step         one Glow step forward+backward, loss = -(log N(z; 0, I) + logdet).mean()
  model        whole-model training step of invflow.Glow: forward + backward + Adamax step
  model_paper_size  the same at the size of Schirrmeister et al. 2020: K=32 steps per scale, hidden 512, 3x32x32
               (batch 16 on CPU, 64 on GPU)
  approx_mass  detectors.objectives.approx_mass_penalty (double backward) vs the plain NLL step
  memory       bytes saved for backward (saved_tensors_hooks; + peak CUDA memory on GPU)
               with and without Glow(memory_free=True), K=32
  bandwidth    effective bandwidth of the elementwise kernels against a measured copy

Timing (``harness.rounds``): warm-up calls, then ``repeats`` rounds in which the
implementations of a case run round-robin (the starting implementation rotates every round)
so machine noise is spread over all of them; every sample is timed with
``time.perf_counter`` around a synchronised call (``torch.cuda.synchronize()`` on GPU),
repeated ``inner`` times when one call is shorter than the mode's target sample time.
Reported: median and inter-quartile range (p75 - p25) per call, and ``vs eager`` =
median(invflow-eager) / median(row) (> 1: faster than the eager reference; for memory rows
the same ratio of bytes).

``--quick`` (< 5 min on 2 CPU cores) uses fewer repeats and smaller shapes, ``--smoke``
(seconds) tiny shapes, one repeat and torch.compile(backend="aot_eager"); both are for
checking that everything runs, not for numbers.  ``--json PATH`` writes one record per row.
FrEIA and normflows are optional (``pip install -e .[bench]``; their adapters are in
peers.py); a missing one prints "not installed" in its rows.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import harness  # puts the repository root on sys.path
import peers
import torch
from harness import allocator_line, commit_hash, init_actnorm, machine, rounds, summarise
from peers import FREIA, FREIA_AIO, NORMFLOWS
from torch import nn

import invflow
from invflow.data import standard_normal_log_prob

CASES = ("step", "model", "model_paper_size", "approx_mass", "memory", "bandwidth")
FUSED, EAGER, COMPILE = "invflow-fused", "invflow-eager", "torch.compile(reference)"
COMPILE_FUSED = "torch.compile(fused)"
COMPILED = (COMPILE, COMPILE_FUSED)


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
def n_params(module: nn.Module | None) -> int | None:
    if module is None:
        return None
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def short(exc: BaseException, limit: int = 160) -> str:
    msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


# ------------------------------------------------------------------------------ timing
def bench(fns: dict, cfg: Config, device: str, repeats: int | None = None, calibrate: bool = True) -> dict:
    """Round-robin timing of callables (:func:`harness.rounds` with the mode's warm-up, rounds
    and target sample time); returns name -> (median_s, iqr_s) or an exception."""
    repeats = cfg.repeats if repeats is None else repeats
    target_s = cfg.target_s if calibrate else 0.0
    return summarise(rounds(fns, repeats, device, warmup=cfg.warmup, target_s=target_s))


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


def peer_row(name: str, build: Callable) -> Impl:
    """Builds a peer row, or a row saying why it has no numbers."""
    why = peers.missing(name)
    if why is not None:
        return Impl(name, missing=why)
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
    base = harness.glow_step(c, hidden).to(device)
    x = torch.randn(b, c, s, s, device=device)
    init_actnorm(base, x)
    base.eval()
    rows = invflow_impls(base, step_log_prob, compile_whole(cfg), cfg, compile_whole(cfg, "fused"))

    def freia():
        inn, log_prob = peers.freia_step(base, c, s, device)
        return Impl(FREIA, inn, log_prob, reference_ctx, note="1x1 conv fixed (Fixed1x1Conv)")

    def freia_aio():
        inn, log_prob = peers.freia_allinone_step(c, s, hidden, device)
        note = "own maths: tanh clamp, softplus global affine, hard permutation"
        return Impl(FREIA_AIO, inn, log_prob, reference_ctx, note=note)

    def normflows():
        block, log_prob = peers.normflows_step(base, c, hidden, device)
        note = "shift before scale; no logs in last conv"
        return Impl(NORMFLOWS, block, log_prob, reference_ctx, note=note)

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


def build_model_rows(
    gcfg: dict, cfg: Config, device: str, with_compile: bool = True, compile_fused: bool = True
):
    key = (tuple(sorted(gcfg.items())), device, with_compile, compile_fused)
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    base, x = harness.glow_model(**gcfg, device=device)
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
        inn, lp = peers.freia_glow(base, device)
        return Impl(FREIA, inn, lp, reference_ctx, note="GraphINN; 1x1 conv fixed (Fixed1x1Conv)")

    def normflows():
        nfm, lp = peers.normflows_glow(base, device)
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
    opts = {r.name: harness.trainer_optimizer(r.module.parameters()) for r in rows if r.ok}

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
    step = harness.glow_step(4, 4).eval()
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
    data = harness.bandwidth_inputs(shape, device)
    x, h, gy, gl, b, ls = (data[k] for k in ("x", "h", "gy", "gl", "b", "ls"))
    numel = x.numel()

    def eager_backward(forward, *inputs):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        y, logdet = forward(*leaves)
        return lambda: torch.autograd.grad((y, logdet), leaves, (gy, gl), retain_graph=True)

    def coupling_ref(a, hh):
        return ref.coupling_forward(a, hh, None, "sigmoid", 2.0)

    calls = harness.bandwidth_calls(data)
    fused = calls if invflow.fused_available() else {}
    eager = {
        "actnorm_forward": lambda: ref.actnorm_forward(x, b, ls),
        "actnorm_backward": eager_backward(ref.actnorm_forward, x, b, ls),
        "coupling_forward": lambda: coupling_ref(x, h),
        "coupling_backward": eager_backward(coupling_ref, x, h),
    }
    # op -> (tensors moved: every input read once and every output written once, {impl: fn})
    ops = {"copy": (harness.BANDWIDTH_TENSORS["copy"], {"torch copy_": calls["copy"]})}
    for name, fn in eager.items():
        ops[name] = (harness.BANDWIDTH_TENSORS[name], {FUSED: fused.get(name), EAGER: fn})
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
    versions = peers.versions()
    meta = dict(torch=torch.__version__, commit=commit_hash(), machine=machine(args.device))
    print(
        f"invflow compare: mode={mode} device={args.device} torch {meta['torch']} "
        f"threads={torch.get_num_threads()} commit={meta['commit'] or '?'}"
    )
    print(f"machine: {meta['machine']}")
    print("allocator: " + allocator_line())
    print(
        f"fused extension: {invflow.fused_available()}; "
        f"torch.compile backend: {cfg.compile_backend}; peers: "
        + ", ".join(f"{k} {v or 'not installed'}" for k, v in versions.items())
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
