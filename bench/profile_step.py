"""Where the time of one Glow step (forward + backward) goes: torch.profiler self CPU time of
invflow-fused, invflow-eager (the pure-PyTorch reference) and torch.compile(reference),
side by side in one process, aggregated into categories.

    python bench/profile_step.py                           # batch 64, hidden 64, 10 steps
    python bench/profile_step.py --threads 1 --steps 10 --json bench/profile-cpu.json
    python bench/profile_step.py --smoke                    # seconds: batch 4, 1 step (tests)

The step is the one of ``bench/test_bench_glow_step.py`` (``harness.make_layer("glow_step")``:
ActNorm -> InvConv1x1 (LU) -> AffineCoupling(Channel mask, GlowNet st-net: 3x3 conv -> ReLU ->
1x1 conv -> ReLU -> ZeroConv2d)), x [64, 12, 16, 16] float32 on CPU, requires grad, loss
-(log N(z) + logdet).mean(), then ``loss.backward()`` (gradients accumulate, no optimizer,
exactly as the benchmark). Every impl gets its own copy of the layer with the same weights.

Method. After warm-up (which compiles; the compiled loss is checked against the eager
reference's), --steps rounds of unprofiled steps (median and IQR of the wall time, the
median process CPU time -- which, unlike wall time, leaves out the time the process waited
for a core on a busy machine -- and the minor page faults per step from getrusage), then
--steps rounds of profiled steps, each step under its own
``torch.profiler.profile(activities=[CPU], record_shapes=True)``. In every round each impl
runs one step, round-robin, the first impl changing from round to round (as in
bench/compare.py), so that noise from a busy machine falls on all impls alike. Every
recorded event's *self* CPU time (its time minus its recorded children) goes to exactly one
category, so the categories partition the recorded time; the profiled wall time minus the
recorded time is reported as "untracked" (Python between recorded ops and profiler
overhead), so the categories sum to the profiled wall time per step. Only the calling thread
records events: with --threads > 1 an op's self time is its wall time on the caller.

Attribution (an event inherits the category of the closest ancestor that decides one):

* eager impls (fused and reference): the st-net's forward runs inside a
  ``record_function("invflow.stnet")`` range and the loss inside ``"invflow.loss"`` (module
  hooks / a ``with``); every other forward op belongs to the flow layers. A backward op
  belongs to the forward op that created its autograd node: the profiler tags
  ``autograd::engine::evaluate_function: XBackward0`` with the forward op's sequence number.
  So "st-net" and "flow" are decided by *where* an op runs, not by its name (aten::mul is
  both the ZeroConv output scale and the actnorm/coupling multiply; aten::convolution is
  both an st-net conv and, in the reference, the 1x1 channel mix).
* torch.compile (inductor, ``torch._inductor.config.cpp.enable_kernel_profile = True`` so
  that each generated C++ kernel is its own ``graph_<n>_cpp_fused_<origin ops>_<i>`` event):
  the convolutions stay aten extern calls inside the compiled graph and are told apart by
  their weight shape: [C, C, 1, 1] on a C-channel input (C = the flow's channels) is the
  invertible 1x1 channel mix, every other conv is an st-net conv (ambiguous only if
  hidden == C). The generated kernels fuse st-net epilogues (ReLU, ZeroConv scale, conv-bias
  grads) with flow and loss elementwise work, so they are one category.

Categories and the op names seen in them (torch 2.13, CPU):

  st-net convolutions      aten::conv2d / convolution / _convolution / mkldnn_convolution /
                           thnn_conv2d / _slow_conv2d_forward (1x1 convs below batch 16 at one
                           thread) and aten::convolution_backward / _slow_conv2d_backward with
                           everything they call (weight and bias grads are computed inside)
  st-net elementwise       eager ops in the st-net scope: aten::relu / clamp_min (ReLU),
                           aten::threshold_backward (ReLU grad), aten::exp / mul (ZeroConv2d's
                           exp(3 logs) output scale) and their backward muls / sums, autograd's
                           gradient-accumulation adds
  flow ops, fused          invflow::actnorm_forward / channel_mix / coupling_forward and their
                           *_backward kernels, with the GeneratedBackwardFor_invflow_* autograd
                           wrappers and everything they call
  flow ops, eager          other ops of the flow layers: the reference ops themselves (add /
                           mul / exp / sigmoid / log_sigmoid / sum / where, the channel-mix
                           aten::convolution) and the glue every backend runs (LU weight
                           assembly: mul / add / diag / mm; channel slicing, cat, logdet
                           expand / clone) with their backward ops
  loss                     eager ops of -(log N(z) + logdet).mean(): pow / sum / add / mean /
                           neg and backward
  compiled kernels         inside a compiled graph: the inductor C++ kernels
                           (graph_*_cpp_fused_*) and every non-st-net-conv call the generated
                           code makes (the 1x1 channel-mix conv, the 12x12 aten::mm of the LU
                           weight, allocations); with --compile-backend aot_eager, the aten ops
                           of the graph
  compiled-graph runtime   self time of the wrappers around compiled code: TorchDynamo Cache
                           Lookup (guards), Torch-Compiled Region, Pregraph bytecode,
                           AOTDispatcher prologue, CompiledFunction(Backward), the generated
                           Python ``call`` ("## Call CompiledFxGraph ... ##")
  autograd / other         autograd engine and node self time (evaluate_function, XBackward0),
                           AccumulateGrad (the parameter / input gradient accumulation), the
                           backward seed, our record_function ranges' own self time (Python
                           of the st-net modules)
  untracked                profiled wall time not covered by any recorded event

Output per impl: the profiled ms per step, the category table (ms per step, % of step), the
conv / non-conv split, and the top ops by self time; then all impls side by side. ``--json
PATH`` writes one record per impl.

Layout experiments: inductor on CPU runs every mkldnn convolution of a compiled graph in
channels_last (``torch._inductor.config.layout_optimization``, on by default; the NCHW <-> NHWC
conversions land in its generated kernels).  The eager impls' st-nets follow
``invflow.nets.CPU_CHANNELS_LAST`` (NHWC by default since this finding); ``--stnet-layout
nchw`` turns it off and ``--inductor-layout-opt off`` compiles with NCHW convolutions, so the
two effects can be told apart.

On the 2-core VM, run with the allocator settings of ``make bench``
(MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736): without them, glibc
returns the step's large buffers to the kernel and every step page-faults them back (the
``minor page faults / step`` row), and that cost lands in whichever op first writes a buffer
-- mostly the convolutions.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import harness  # puts the repository root on sys.path
import torch
from harness import SHAPE, allocator_line, commit_hash, machine, make_layer, median_iqr, rotated, step_nll
from torch.profiler import ProfilerActivity, profile, record_function

import invflow
from invflow.data import standard_normal_log_prob

FUSED, EAGER, COMPILE = "invflow-fused", "invflow-eager", "torch.compile(reference)"
IMPLS = (FUSED, EAGER, COMPILE)

CATEGORIES = {  # key -> printed name
    "stnet_conv": "st-net convolutions",
    "stnet_elementwise": "st-net elementwise (eager)",
    "flow_fused": "flow ops, fused (invflow::*)",
    "flow_eager": "flow ops, eager (reference ops + glue)",
    "loss": "loss (eager)",
    "compiled_kernels": "compiled kernels (inductor + extern)",
    "compiled_runtime": "compiled-graph runtime (guards, wrappers)",
    "other": "autograd engine / AccumulateGrad / other",
    "untracked": "untracked (Python between ops, profiler)",
}
# "compute" = the categories that do arithmetic; the rest is overhead
COMPUTE = ("stnet_conv", "stnet_elementwise", "flow_fused", "flow_eager", "loss", "compiled_kernels")

STNET_SCOPE, LOSS_SCOPE = "invflow.stnet", "invflow.loss"
CONV_OPS = {
    "aten::conv2d",
    "aten::convolution",
    "aten::_convolution",
    "aten::mkldnn_convolution",
    "aten::thnn_conv2d",
    "aten::_slow_conv2d_forward",
    "aten::convolution_backward",
    "aten::_slow_conv2d_backward",
    "aten::mkldnn_convolution_backward",
    "aten::mkldnn_convolution_backward_input",
    "aten::mkldnn_convolution_backward_weights",
    "aten::slow_conv_dilated2d",
    "aten::_nnpack_spatial_convolution",
}
EVALUATE = "autograd::engine::evaluate_function: "
COMPILED_SCOPES = (
    "Torch-Compiled Region",
    "CompiledFunction",
    "CompiledFunctionBackward",
    "## Call CompiledFxGraph",
)
COMPILED_RUNTIME = (
    "TorchDynamo Cache Lookup",
    "Torch-Compiled Region",
    "Pregraph bytecode",
    "AOTDispatcher Runtime Wrapper",
    "CompiledFunction",
    "CompiledFunctionBackward",
    "## Call CompiledFxGraph",
    EVALUATE + "CompiledFunctionBackward",
)


# --------------------------------------------------------------------------- the step
def build(impl: str, args):
    """(step function, layer) of one impl; the layer has make_layer's weights."""
    layer = make_layer("glow_step", "cpu", hidden=args.hidden)
    backend = "fused" if impl == FUSED else "reference"
    if impl == COMPILE:

        def nll(x):
            with invflow.backend("reference"):
                return step_nll(layer, x)

        loss_fn = torch.compile(nll, backend=args.compile_backend)
    else:
        _mark_stnet(layer[2].net)

        def loss_fn(x):
            y, logdet = layer(x)
            with record_function(LOSS_SCOPE):
                return -(standard_normal_log_prob(y) + logdet).mean()

    def step(x):
        with invflow.backend(backend):
            loss = loss_fn(x)
            loss.backward()
        return loss

    return step, layer


def _mark_stnet(net: torch.nn.Module) -> None:
    """The st-net's forward runs inside record_function(STNET_SCOPE) (eager impls only)."""
    ranges = []

    def pre(module, args):
        r = record_function(STNET_SCOPE)
        r.__enter__()
        ranges.append(r)

    def post(module, args, out):
        ranges.pop().__exit__(None, None, None)

    net.register_forward_pre_hook(pre)
    net.register_forward_hook(post)


# ------------------------------------------------------------------------ attribution
def _ancestors(e):
    p = e.cpu_parent
    while p is not None:
        yield p
        p = p.cpu_parent


def _is_conv(name: str) -> bool:
    return name in CONV_OPS


def _conv_weight_shape(e):
    shapes = getattr(e, "input_shapes", None) or []
    if e.name.endswith("_backward"):
        return shapes[2] if len(shapes) > 2 else None  # (grad_out, input, weight, ...)
    return shapes[1] if len(shapes) > 1 else None  # (input, weight, ...)


def _conv_input_channels(e):
    shapes = getattr(e, "input_shapes", None) or []
    i = 1 if e.name.endswith("_backward") else 0
    return shapes[i][1] if len(shapes) > i and len(shapes[i]) > 1 else None


def _is_channel_mix_conv(e, channels: int) -> bool:
    """The invertible 1x1 conv as a convolution: weight [C, C, 1, 1] on a C-channel input."""
    w = _conv_weight_shape(e)
    return list(w or []) == [channels, channels, 1, 1] and _conv_input_channels(e) == channels


def _outermost_conv(e):
    """The outermost conv op among e and its ancestors (it carries the useful shapes)."""
    found = e if _is_conv(e.name) else None
    for a in _ancestors(e):
        if _is_conv(a.name):
            found = a
    return found


def categorise(events, channels: int) -> list[tuple]:
    """(event, category) for every event, by the rules of the module docstring."""
    # forward ops' scope by sequence number, for the backward ops autograd runs for them
    fwd_scope: dict[int, str] = {}
    for e in events:
        if e.sequence_nr is None or e.sequence_nr < 0 or e.name.startswith(EVALUATE):
            continue
        anc = [a.name for a in _ancestors(e)]
        if any(a.startswith(EVALUATE) for a in anc):
            continue
        scope = "stnet" if STNET_SCOPE in anc else "loss" if LOSS_SCOPE in anc else "flow"
        fwd_scope.setdefault(e.sequence_nr, scope)

    out = []
    for e in events:
        chain = [e, *_ancestors(e)]
        names = [c.name for c in chain]
        cat = None
        # 1. compiled code
        if any(n.startswith(COMPILED_SCOPES) for n in names):
            conv = _outermost_conv(e)
            if conv is not None and not _is_channel_mix_conv(conv, channels):
                cat = "stnet_conv"
            elif e.name.startswith(COMPILED_RUNTIME):
                cat = "compiled_runtime"
            else:
                cat = "compiled_kernels"
        elif e.name.startswith(COMPILED_RUNTIME):
            cat = "compiled_runtime"
        # 2. fused invflow ops (and their autograd wrappers), wherever they run
        elif any("invflow::" in n or "GeneratedBackwardFor_invflow" in n for n in names):
            cat = "flow_fused"
        # 3. our own ranges and the autograd engine's bookkeeping
        elif (
            e.name in (STNET_SCOPE, LOSS_SCOPE)
            or e.name.startswith(EVALUATE)
            or any("AccumulateGrad" in n for n in names)
        ):
            cat = "other"
        elif (
            e.cpu_parent is not None
            and e.cpu_parent.name.startswith(EVALUATE)
            and not e.name.startswith("aten::")
        ):
            cat = "other"  # the autograd node itself (XBackward0)
        else:
            # 4. eager ops: scope from the forward range, or from the backward node's forward op
            scope = None
            if STNET_SCOPE in names:
                scope = "stnet"
            elif LOSS_SCOPE in names:
                scope = "loss"
            else:
                for c in chain:
                    if c.name.startswith(EVALUATE):
                        scope = fwd_scope.get(c.sequence_nr, "other")
                        break
                if scope is None:  # a forward op of the flow layers (grad mode on: it has a sequence
                    # number), or the backward seed (ones_like, no sequence number) -> other
                    scope = "flow" if chain[-1].sequence_nr >= 0 else "other"
            if scope == "stnet":
                cat = "stnet_conv" if _outermost_conv(e) is not None else "stnet_elementwise"
            elif scope == "loss":
                cat = "loss"
            elif scope == "flow":
                cat = "flow_eager"
            else:
                cat = "other"
        out.append((e, cat))
    return out


# ----------------------------------------------------------------------------- running
class Runner:
    """One impl: its step function and what its profiled and unprofiled steps accumulated."""

    def __init__(self, impl: str, args):
        self.impl = impl
        self.step, self.layer = build(impl, args)
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.faults: list[int] = []
        self.profiled_s = 0.0
        self.cats = dict.fromkeys(CATEGORIES, 0.0)  # self CPU us
        self.ops: dict[tuple, list] = defaultdict(lambda: [0.0, 0])

    def warm_up(self, x, n: int) -> None:
        t0 = time.perf_counter()
        loss = self.step(x)  # compiles
        self.first_s = time.perf_counter() - t0
        for _ in range(n - 1):
            loss = self.step(x)
        self.loss = float(loss.detach())

    def timed(self, x) -> None:
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        c, t = time.process_time(), time.perf_counter()
        self.step(x)
        self.wall.append(time.perf_counter() - t)
        self.cpu.append(time.process_time() - c)
        self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)

    def profiled(self, x) -> None:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            t = time.perf_counter()
            self.step(x)
            self.profiled_s += time.perf_counter() - t
        for e, cat in categorise(list(prof.events()), SHAPE[1]):
            us = e.self_cpu_time_total
            self.cats[cat] += us
            self.ops[(e.name, cat)][0] += us
            self.ops[(e.name, cat)][1] += 1

    def record(self, args) -> dict:
        n = args.steps
        total_ms = self.profiled_s * 1e3 / n
        categories = {k: v / 1e3 / n for k, v in self.cats.items()}
        recorded_ms = sum(categories.values())
        categories["untracked"] = max(0.0, total_ms - recorded_ms)
        top = sorted(self.ops.items(), key=lambda kv: -kv[1][0])[: args.top]
        conv = categories["stnet_conv"]
        wall_ms, wall_iqr_ms = (1e3 * v for v in median_iqr(self.wall, method="exclusive"))
        return {
            "impl": self.impl,
            "backend": (
                args.compile_backend
                if self.impl == COMPILE
                else "fused"
                if self.impl == FUSED
                else "reference"
            ),
            "total_ms": total_ms,
            "recorded_ms": recorded_ms,
            "unprofiled_ms": wall_ms,
            "unprofiled_iqr_ms": wall_iqr_ms,
            "unprofiled_cpu_ms": statistics.median(self.cpu) * 1e3,
            "minor_faults_per_step": int(statistics.median(self.faults)),
            "first_call_s": self.first_s,
            "categories": categories,
            "conv_ms": conv,
            "non_conv_ms": total_ms - conv,
            "non_conv_compute_ms": sum(categories[k] for k in COMPUTE if k != "stnet_conv"),
            "overhead_ms": sum(v for k, v in categories.items() if k not in COMPUTE),
            "top_ops": [
                {"name": name, "category": cat, "ms": us / 1e3 / n, "calls": c / n}
                for (name, cat), (us, c) in top
            ],
            "loss": self.loss,
        }


def run(args, x: torch.Tensor) -> list[dict]:
    """Warm-up (the eager reference first: every other impl's loss is checked against it),
    then --steps rounds of unprofiled steps and --steps rounds of profiled steps; in each round
    every impl runs one step, round-robin, the first impl changing from round to round, so
    that machine noise falls on all of them alike."""
    order = sorted(args.impls, key=lambda i: (i != EAGER, IMPLS.index(i)))
    runners = [Runner(impl, args) for impl in order]
    ref = None
    for r in runners:
        r.warm_up(x, args.warmup)
        if r.impl == EAGER:
            ref = r.loss
        elif ref is not None:
            assert abs(r.loss - ref) <= 1e-4 * max(1.0, abs(ref)), (
                f"{r.impl}: loss {r.loss} != eager reference {ref}"
            )
    for phase in (Runner.timed, Runner.profiled):
        for i in range(args.steps):
            for r in rotated(runners, i):
                phase(r, x)
    return sorted((r.record(args) for r in runners), key=lambda rec: IMPLS.index(rec["impl"]))


def print_impl(r: dict) -> None:
    total = r["total_ms"]
    extra = f", backend={r['backend']}" if r["impl"] == COMPILE else ""
    print(
        f"\n== {r['impl']}{extra}: {total:.3f} ms/step profiled "
        f"({r['recorded_ms']:.3f} ms in recorded ops); "
        f"unprofiled median {r['unprofiled_ms']:.3f} ms/step (IQR {r['unprofiled_iqr_ms']:.3f}; "
        f"process CPU time {r['unprofiled_cpu_ms']:.3f}), "
        f"{r['minor_faults_per_step']:g} minor page faults/step; first call {r['first_call_s']:.1f} s"
    )
    print(f"{'category':<44} {'ms/step':>9} {'% step':>7}")
    for k, name in CATEGORIES.items():
        v = r["categories"][k]
        if v > 0 or k in ("stnet_conv", "untracked"):
            print(f"{name:<44} {v:>9.3f} {100 * v / total:>6.1f}%")
    print(f"{'total':<44} {total:>9.3f} {100.0:>6.1f}%")
    print(
        f"conv / non-conv: st-net convs {r['conv_ms']:.3f} ms ({100 * r['conv_ms'] / total:.1f}%), "
        f"everything else {r['non_conv_ms']:.3f} ms = {r['non_conv_compute_ms']:.3f} ms non-conv compute "
        f"+ {r['overhead_ms']:.3f} ms overhead (runtime, autograd, untracked)"
    )
    print(f"top {len(r['top_ops'])} ops by self time:")
    print(f"  {'op':<64} {'category':<18} {'ms/step':>8} {'% step':>7} {'calls':>6}")
    for op in r["top_ops"]:
        name = op["name"] if len(op["name"]) <= 64 else op["name"][:61] + "..."
        print(
            f"  {name:<64} {op['category']:<18} {op['ms']:>8.3f} {100 * op['ms'] / total:>6.1f}% "
            f"{op['calls']:>6g}"
        )


def print_side_by_side(records: list[dict]) -> None:
    names = [r["impl"] for r in records]
    short = {FUSED: "fused", EAGER: "eager", COMPILE: "compile"}
    cols = [short.get(n, n) for n in names]
    print("\n== side by side, ms per step (profiled)")
    print(f"{'category':<44} " + " ".join(f"{c:>9}" for c in cols))
    for k, name in CATEGORIES.items():
        vals = [r["categories"][k] for r in records]
        if any(v > 0 for v in vals):
            print(f"{name:<44} " + " ".join(f"{v:>9.3f}" for v in vals))
    rows = [
        ("total (profiled wall)", "total_ms"),
        ("  st-net convolutions", "conv_ms"),
        ("  everything else", "non_conv_ms"),
        ("    non-conv compute", "non_conv_compute_ms"),
        ("    overhead (runtime, autograd, untracked)", "overhead_ms"),
        ("unprofiled median", "unprofiled_ms"),
        ("unprofiled IQR", "unprofiled_iqr_ms"),
        ("unprofiled median process CPU time", "unprofiled_cpu_ms"),
        ("minor page faults / step (unprofiled)", "minor_faults_per_step"),
    ]
    for label, key in rows:
        print(
            f"{label:<44} "
            + " ".join(f"{r[key]:>9.3f}" if isinstance(r[key], float) else f"{r[key]:>9}" for r in records)
        )


def _layout_opt(args) -> bool | None:
    if args.compile_backend != "inductor":
        return None
    import torch._inductor.config as inductor_config

    return bool(inductor_config.layout_optimization)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=None, help="profiled (and unprofiled) steps per impl (10)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps, the first compiles (3)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--batch", type=int, default=None, help=f"batch size ({SHAPE[0]})")
    ap.add_argument("--hidden", type=int, default=None, help="st-net hidden channels (64)")
    ap.add_argument(
        "--compile-backend", default=None, help="torch.compile backend (inductor; smoke: aot_eager)"
    )
    ap.add_argument(
        "--inductor-layout-opt",
        choices=("default", "on", "off"),
        default="default",
        help="torch._inductor.config.layout_optimization (default: inductor's, i.e. on: "
        "on CPU it runs every mkldnn conv of the graph in channels_last)",
    )
    ap.add_argument(
        "--stnet-layout",
        choices=("nhwc", "nchw"),
        default="nhwc",
        help="eager impls' st-net convolutions: nhwc (invflow.nets.CPU_CHANNELS_LAST, the default) or nchw",
    )
    ap.add_argument("--top", type=int, default=15, help="top ops listed per impl")
    ap.add_argument(
        "--impls",
        nargs="+",
        default=list(IMPLS),
        choices=IMPLS,
        metavar="IMPL",
        help=f"subset of {', '.join(IMPLS)}",
    )
    ap.add_argument("--smoke", action="store_true", help="batch 4, 1 warm-up + 1 step, aot_eager (for tests)")
    ap.add_argument("--json", type=Path, default=None, help="write the records here")
    args = ap.parse_args(argv)
    smoke = args.smoke
    args.steps = args.steps or (1 if smoke else 10)
    args.warmup = args.warmup or (1 if smoke else 3)
    args.batch = args.batch or (4 if smoke else SHAPE[0])
    args.hidden = args.hidden or 64
    args.compile_backend = args.compile_backend or ("aot_eager" if smoke else "inductor")
    if args.threads:
        torch.set_num_threads(args.threads)
    invflow.nets.CPU_CHANNELS_LAST = args.stnet_layout == "nhwc"
    if args.compile_backend == "inductor":
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True  # one profiler event per generated kernel
        if args.inductor_layout_opt != "default":
            inductor_config.layout_optimization = args.inductor_layout_opt == "on"

    mode = "smoke" if smoke else "profile"
    header = {
        "mode": mode,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "shape": [args.batch, *SHAPE[1:]],
        "hidden": args.hidden,
        "steps": args.steps,
        "warmup": args.warmup,
        "compile_backend": args.compile_backend,
        "inductor_layout_opt": _layout_opt(args),
        "stnet_layout": args.stnet_layout,
        "machine": machine("cpu"),
        "commit": commit_hash(),
        "fused_available": invflow.fused_available(),
        **harness.allocator_settings(),
    }
    print(
        f"invflow profile_step: Glow step forward+backward, x {header['shape']} float32 cpu, "
        f"hidden {args.hidden}; mode={mode}, {args.steps} profiled steps after {args.warmup} warm-up, "
        f"threads={header['threads']}, "
        f"torch {torch.__version__}, compile backend {args.compile_backend} "
        f"(layout optimisation: {header['inductor_layout_opt']}); eager st-net "
        f"{args.stnet_layout.upper()}"
    )
    print(f"machine: {header['machine']}; commit {header['commit']}; " + allocator_line())
    if not invflow.fused_available():
        print("fused extension not built: skipping invflow-fused")
        args.impls = [i for i in args.impls if i != FUSED]

    torch.manual_seed(1)
    x = torch.randn(args.batch, *SHAPE[1:], requires_grad=True)
    records = [{**header, **r} for r in run(args, x)]
    for r in records:
        print_impl(r)
    print_side_by_side(records)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=1))
        print(f"\nrecords: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
