"""Fused kernels vs the eager PyTorch reference, side by side in one process.

Cases (CPU always, CUDA when present), at ``harness.SHAPE`` = [64, 12, 16, 16]:
each op (actnorm, LU 1x1 conv, affine coupling) forward and forward+backward, and a Glow
step (actnorm -> LU 1x1 -> affine coupling with a small GlowNet st-net) forward+backward
and the double-backward step (log p plus the norm of d log p / dx, Chali et al. 2023's penalty).

Every case has the impls "fused" and "reference" (eager), and every first-order case also
"compile": ``torch.compile`` (inductor) of a function that runs the layer under
``invflow.backend("reference")``. A compile row compiles in its warm-up (outside the timed
region), checks once that the compiled function gives the eager reference's values (and
gradients) within float32 tolerance, and times under ``torch._dynamo.config.error_on_recompile``,
so a wrong compiled result or a recompilation inside the timed loop fails the benchmark
instead of silently timing something else.

Run ``make bench`` (or ``python -m pytest bench --benchmark-only``); ``python
bench/ratios.py RESULTS.json`` prints the fused/reference/compile ratios per group from
``--benchmark-json RESULTS.json``.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from harness import SHAPE, allocator_settings, make_layer, step_nll, sync

import invflow
from invflow.data import standard_normal_log_prob

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IMPLS = ["fused", "reference"]
FIRST_ORDER_IMPLS = IMPLS + ["compile"]  # torch.compile refuses double backward
# float32 tolerance of compiled (inductor: reordered reductions, fused math) vs eager values
COMPILE_RTOL, COMPILE_ATOL = 1e-4, 1e-4
# Glow-step cases run at batch 64 everywhere and also at a large batch on CUDA.
STEP_CASES = [(d, b) for d in DEVICES for b in ([64, 1024] if d == "cuda" else [64])]


def _record(benchmark, impl, device, group, batch=SHAPE[0]):
    shape = [batch, *SHAPE[1:]]
    benchmark.group = f"{group} [{device}]" if batch == SHAPE[0] else f"{group} [{device}, batch {batch}]"
    benchmark.extra_info.update(impl=impl, device=device, shape=shape, **allocator_settings())


def _run(benchmark, impl, device, fn):
    """Warm-up call, then the timed loop. impl "compile" runs under the reference backend (its
    compiled function selects it itself) and times under ``error_on_recompile``: the warm-up
    (and ``_check_compiled``) compiled everything, so a guard failure in the loop is an error."""
    backend = "reference" if impl == "compile" else impl
    with invflow.backend(backend):
        fn()  # warm-up (and data-dependent paths; compiles the compile rows)

        def timed():
            fn()
            sync(device)

        if impl == "compile":
            with torch._dynamo.config.patch(error_on_recompile=True):
                benchmark(timed)
        else:
            benchmark(timed)


def _compile_reference(fn):
    """torch.compile (inductor) of ``fn`` run under the reference backend. Dynamo's caches are
    reset first: every test builds a new closure over the same code object, and each new one
    would otherwise count as a recompile of it (and past ``recompile_limit`` dynamo silently
    falls back to eager)."""
    torch._dynamo.reset()

    def in_reference(*args):
        with invflow.backend("reference"):
            return fn(*args)

    return torch.compile(in_reference)


def _grads(tensors):
    return [None if t.grad is None else t.grad.detach().clone() for t in tensors]


def _zero_grads(tensors):
    for t in tensors:
        t.grad = None


def _check_compiled(eager_fn, compiled_fn, x, grad_leaves=(), backward=None):
    """Runs the eager reference and the compiled function once on x (this call compiles) and
    asserts they agree: outputs, and with ``backward(outputs)`` the gradients of ``grad_leaves``."""
    results = []
    for fn in (eager_fn, compiled_fn):
        _zero_grads(grad_leaves)
        with invflow.backend("reference"):
            out = fn(x)
        if backward is not None:
            backward(out)
        outs = out if isinstance(out, tuple) else (out,)
        results.append(([o.detach().clone() for o in outs], _grads(grad_leaves)))
    _zero_grads(grad_leaves)
    (eager_out, eager_grads), (comp_out, comp_grads) = results
    tol = dict(rtol=COMPILE_RTOL, atol=COMPILE_ATOL)
    for i, (a, b) in enumerate(zip(comp_out, eager_out)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, i=i: f"compiled output {i} != reference: {m}")
    for i, (a, b) in enumerate(zip(comp_grads, eager_grads)):
        assert (a is None) == (b is None), f"gradient {i}: compiled {a is None=}, eager {b is None=}"
        if a is not None:
            torch.testing.assert_close(
                a, b, **tol, msg=lambda m, i=i: f"compiled gradient {i} != reference: {m}"
            )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", FIRST_ORDER_IMPLS)
@pytest.mark.parametrize("kind", ["actnorm", "invconv", "coupling"])
def test_op_forward(benchmark, kind, impl, device):
    """The layer's forward alone, under no_grad. impl "compile": torch.compile of the reference
    layer call (compiled under no_grad, i.e. an inference graph)."""
    layer = make_layer(kind, device)
    x = torch.randn(SHAPE, device=device)
    fwd = layer
    with torch.no_grad():
        if impl == "compile":
            fwd = _compile_reference(layer)
            _check_compiled(layer, fwd, x)  # compiles
        _record(benchmark, impl, device, f"{kind} forward")
        _run(benchmark, impl, device, lambda: fwd(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", FIRST_ORDER_IMPLS)
@pytest.mark.parametrize("kind", ["actnorm", "invconv", "coupling"])
def test_op_forward_backward(benchmark, kind, impl, device):
    """The layer's forward and backward alone: fixed cotangents for (y, logdet), no loss.
    impl "compile": torch.compile of the reference layer call (its forward and, through
    aot_autograd, its backward graph); the backward is driven by the same autograd call."""
    layer = make_layer(kind, device)
    x = torch.randn(SHAPE, device=device, requires_grad=True)
    grad_y, grad_logdet = torch.randn(SHAPE, device=device), torch.randn(SHAPE[0], device=device)

    def backward(out):
        torch.autograd.backward(out, (grad_y, grad_logdet))

    fwd = layer
    if impl == "compile":
        fwd = _compile_reference(layer)
        _check_compiled(layer, fwd, x, grad_leaves=[x, *layer.parameters()], backward=backward)

    def step():
        backward(fwd(x))

    _record(benchmark, impl, device, f"{kind} forward+backward")
    _run(benchmark, impl, device, step)


@pytest.mark.parametrize("device,batch", STEP_CASES)
@pytest.mark.parametrize("impl", FIRST_ORDER_IMPLS)
def test_glow_step_forward_backward(benchmark, impl, device, batch):
    """A maximum-likelihood training step through one Glow step (st-net GlowNet, hidden 64).

    impl "compile" is torch.compile of the reference step (first order only: torch.compile
    refuses double backward, so it has no double-backward row)."""
    layer = make_layer("glow_step", device)
    x = torch.randn((batch, *SHAPE[1:]), device=device, requires_grad=True)
    backend = "reference" if impl == "compile" else impl

    def nll(x):
        with invflow.backend(backend):
            return step_nll(layer, x)

    loss_fn = nll
    if impl == "compile":
        loss_fn = _compile_reference(nll)
        _check_compiled(
            nll, loss_fn, x, grad_leaves=[x, *layer.parameters()], backward=lambda loss: loss.backward()
        )

    def step():
        loss_fn(x).backward()

    _record(benchmark, impl, device, "glow_step forward+backward", batch)
    _run(benchmark, impl, device, step)


@pytest.mark.parametrize("device,batch", STEP_CASES)
@pytest.mark.parametrize("impl", IMPLS)
def test_glow_step_double_backward(benchmark, impl, device, batch):
    """Training step of the approximate-mass objective: -log p + ||d log p / dx|| (Chali et al. 2023 Eq. 2)."""
    layer = make_layer("glow_step", device)
    x = torch.randn((batch, *SHAPE[1:]), device=device, requires_grad=True)

    def step():
        y, logdet = layer(x)
        log_p = standard_normal_log_prob(y) + logdet
        (g,) = torch.autograd.grad(log_p.sum(), x, create_graph=True)
        loss = -log_p.mean() + 2.0 * g.flatten(1).norm(dim=1).mean()
        loss.backward()

    _record(benchmark, impl, device, "glow_step double-backward", batch)
    _run(benchmark, impl, device, step)
