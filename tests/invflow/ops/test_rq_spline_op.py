"""The rational-quadratic spline op (Durkan et al. 2019): the fused kernels against the
reference (random, edge and tail inputs, extreme bin sizes, K = 2 and 32), inverse(forward(x))
== x, the elementwise log-det against autograd of the map, opcheck, gradcheck and
gradgradcheck of both directions and of the backward op, low precision, argument errors."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import invflow
from invflow.ops import fused, rq_spline, rq_spline_reference
from invflow.ops.spline import MIN_DERIVATIVE

OP = torch.ops.invflow
needs_fused = pytest.mark.skipif(not fused.AVAILABLE, reason="invflow._C is not built")
F64 = torch.float64


def params(shape, K, device="cpu", dtype=F64, spread=2.0):
    g = dict(device=device, dtype=dtype)
    return (
        spread * torch.randn(*shape, K, **g),
        spread * torch.randn(*shape, K, **g),
        torch.randn(*shape, K - 1, **g),
    )


def both(x, w, h, d, bound, inverse=False):
    with invflow.backend("fused"):
        got = rq_spline(x, w, h, d, bound, inverse=inverse)
    return got, rq_spline_reference(x, w, h, d, bound, inverse=inverse)


def assert_same(got, want, tol=1e-10):
    for g, r in zip(got, want):
        assert g.shape == r.shape and g.dtype == r.dtype
        torch.testing.assert_close(g, r, rtol=tol, atol=tol)


# ------------------------------------------------------------------------ semantics
def test_reference_matches_the_papers_code_where_installed():
    """nflows' unconstrained_rational_quadratic_spline (the code of Durkan et al.), linear tails."""
    splines = pytest.importorskip("nflows.transforms.splines.rational_quadratic")
    x = 2.5 * torch.randn(40, 3, dtype=F64)
    w, h, d = params((40, 3), 6)
    for inverse in (False, True):
        want = splines.unconstrained_rational_quadratic_spline(x, w, h, d, inverse=inverse, tail_bound=2.0)
        got = rq_spline_reference(x, w, h, d, 2.0, inverse=inverse)
        for g, r in zip(got, want):
            torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_tails_are_the_identity_and_the_spline_is_continuous_at_the_bound():
    w, h, d = params((6,), 5)
    x = torch.tensor([-7.0, -3.0 - 1e-9, 3.0 + 1e-9, 50.0, -3.0, 3.0], dtype=F64)
    y, lad = rq_spline_reference(x, w, h, d, 3.0)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-8)
    assert (lad[:4] == 0).all()
    torch.testing.assert_close(lad[4:], torch.zeros(2, dtype=F64), rtol=0, atol=1e-9)  # slope 1 at +-B


def test_boundary_derivatives_are_one():
    """The derivative at the outer knots is 1 (continuous linear tails), inner ones >= 1e-3."""
    w, h, d = params((3,), 4)
    d = torch.full_like(d, -80.0)  # softplus underflows: inner derivatives at their minimum
    x = torch.tensor([-2.0, 2.0, 0.3], dtype=F64, requires_grad=True)
    y, lad = rq_spline_reference(x, w, h, d, 2.0)
    (slope,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(slope[:2], torch.ones(2, dtype=F64))
    assert (slope > MIN_DERIVATIVE * 0.5).all()


# ----------------------------------------------------------- fused == reference
@needs_fused
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("K", [2, 5, 32])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4, 5), ()])
def test_fused_equals_reference(shape, K, inverse, device):
    x = 2.0 * torch.randn(shape, dtype=F64, device=device)  # inside and in both tails
    w, h, d = params(shape, K, device)
    assert_same(*both(x, w, h, d, 3.0, inverse))


@needs_fused
@pytest.mark.parametrize("inverse", [False, True])
def test_fused_float32_is_as_accurate_as_the_reference(inverse, device):
    """float32 against the float64 truth: the fused op's error is that of the float32 reference
    (log|dy/dx| of narrow bins cancels digits in either)."""
    x = 2.0 * torch.randn(64, 9, device=device)
    w, h, d = params((64, 9), 8, device, torch.float32)
    with invflow.backend("fused"):
        got = rq_spline(x, w, h, d, 3.0, inverse=inverse)
    ref32 = rq_spline_reference(x, w, h, d, 3.0, inverse=inverse)
    truth = rq_spline_reference(*(t.double() for t in (x, w, h, d)), 3.0, inverse=inverse)
    for g, r, t in zip(got, ref32, truth):
        assert g.dtype == torch.float32
        err, ref_err = (g.double() - t).abs().max(), (r.double() - t).abs().max()
        assert err <= 2 * ref_err + 1e-6, (err, ref_err)
        # no gross error either; the bound is loose because float32 log|dy/dx| of a narrow bin
        # loses digits to cancellation (7e-4 seen on an H200 with a reference error of 4e-4)
        torch.testing.assert_close(g.double(), t, rtol=1e-4, atol=5e-3)


@needs_fused
@pytest.mark.parametrize("inverse", [False, True])
def test_fused_equals_reference_on_knots_bounds_and_tails(inverse, device):
    """Values exactly on the knots (from the reference's own knots), at +-bound, in both tails."""
    from invflow.ops.spline import _knots

    K, B = 6, 2.5
    w, h, d = params((1,), K, device)
    knots = _knots(h if inverse else w, B, 1e-3)[0]
    x = torch.cat([knots, torch.tensor([-B, B, -1e3, 1e3, -B - 1e-12, B + 1e-12], dtype=F64, device=device)])
    n = x.numel()
    w, h, d = (t.expand(n, -1) for t in (w, h, d))
    (got, want) = both(x, w, h, d, B, inverse)
    assert_same(got, want)
    assert (got[1][-4:] == 0).all() and torch.equal(got[0][-4:], x[-4:])


@needs_fused
@pytest.mark.parametrize("inverse", [False, True])
def test_fused_equals_reference_for_extreme_bins(inverse, device):
    """Logits of +-30: bins at the minimum width / height, derivatives at their minimum and huge."""
    n, K = 200, 7
    sign = lambda: 30.0 * torch.sign(torch.randn(n, K, dtype=F64, device=device))  # noqa: E731
    w, h = sign(), sign()
    d = 30.0 * torch.sign(torch.randn(n, K - 1, dtype=F64, device=device))
    x = 3.2 * (2 * torch.rand(n, dtype=F64, device=device) - 1)
    assert_same(*both(x, w, h, d, 3.0, inverse), tol=1e-8)


@needs_fused
def test_fused_reads_strided_parameter_columns(device):
    """widths / heights / derivatives as column blocks of one st-net output (no copy)."""
    K = 4
    raw = torch.randn(10, 6, 3 * K - 1, dtype=F64, device=device)
    w, h, d = raw[..., :K], raw[..., K : 2 * K], raw[..., 2 * K :]
    x = 2 * torch.randn(10, 6, dtype=F64, device=device).t().contiguous().t()  # non-contiguous x
    for inverse in (False, True):
        assert_same(*both(x, w, h, d, 2.0, inverse))


@needs_fused
def test_empty_input(device):
    x = torch.empty(0, 3, dtype=F64, device=device)
    w, h, d = params((0, 3), 4, device)
    (y, lad), _ = both(x, w, h, d, 1.0)
    assert y.shape == (0, 3) and lad.shape == (0, 3)


# ------------------------------------------------------------ inverse and log-det
@pytest.mark.parametrize("backend", ["reference", pytest.param("fused", marks=needs_fused)])
@pytest.mark.parametrize("K", [2, 8, 32])
def test_inverse_of_forward_is_identity(K, backend):
    x = 2.0 * torch.randn(50, 4, dtype=F64)
    w, h, d = params((50, 4), K)
    with invflow.backend(backend):
        y, lad = rq_spline(x, w, h, d, 3.0)
        x_back, lad_inv = rq_spline(y, w, h, d, 3.0, inverse=True)
    torch.testing.assert_close(x_back, x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lad_inv, -lad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", ["reference", pytest.param("fused", marks=needs_fused)])
@pytest.mark.parametrize("inverse", [False, True])
def test_logabsdet_is_the_log_derivative(inverse, backend):
    """The elementwise log|dy/dx| equals the log of the Jacobian's diagonal (brute force)."""
    x = 2.0 * torch.randn(30, dtype=F64)
    w, h, d = params((30,), 5)
    with invflow.backend(backend):
        jac = torch.autograd.functional.jacobian(lambda v: rq_spline(v, w, h, d, 3.0, inverse=inverse)[0], x)
        _, lad = rq_spline(x, w, h, d, 3.0, inverse=inverse)
    assert torch.count_nonzero(jac - torch.diag(torch.diagonal(jac))) == 0  # elementwise
    torch.testing.assert_close(lad, torch.log(torch.diagonal(jac).abs()), rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------ gradients
def grad_inputs(device, K=3, shape=(3,)):
    x = 1.5 * torch.randn(shape, dtype=F64, device=device)
    x.view(-1)[0] = 2.5  # a tail entry
    return tuple(t.requires_grad_() for t in (x, *params(shape, K, device, spread=1.0)))


@needs_fused
@pytest.mark.parametrize("inverse", [False, True])
def test_gradcheck_and_gradgradcheck_through_the_op(inverse, device):
    op = OP.spline_inverse if inverse else OP.spline_forward
    args = grad_inputs(device)
    fn = lambda *a: op(*a, 2.0)  # noqa: E731
    assert gradcheck(fn, args)
    assert gradgradcheck(fn, args)


@needs_fused
@pytest.mark.parametrize("inverse", [False, True])
def test_gradients_equal_autograd_through_the_reference(inverse, device):
    args = grad_inputs(device, K=6, shape=(20,))
    gy = torch.randn(20, dtype=F64, device=device)
    gl = torch.randn(20, dtype=F64, device=device)

    def grads(backend, create_graph):
        with invflow.backend(backend):
            y, lad = rq_spline(*args, 2.0, inverse=inverse)
        return torch.autograd.grad((y * gy).sum() + (lad * gl).sum(), args, create_graph=create_graph)

    for g, r in zip(grads("fused", False), grads("reference", False)):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)
    # second order: the gradient of the summed first-order gradients
    second = [torch.autograd.grad(sum(g.sum() for g in grads(b, True)), args) for b in ("fused", "reference")]
    for g, r in zip(*second):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)


@needs_fused
@pytest.mark.parametrize("inverse", [False, True])
def test_gradgradcheck_of_the_backward_op(inverse, device):
    x, w, h, d = grad_inputs(device)
    gy = torch.randn(3, dtype=F64, device=device, requires_grad=True)
    gl = torch.randn(3, dtype=F64, device=device, requires_grad=True)
    fn = lambda *a: OP.spline_backward(a[0], a[1], *a[2:], 2.0, inverse)  # noqa: E731
    assert gradcheck(fn, (gy, gl, x, w, h, d))
    if not inverse:  # third order through the op (the recorded second-order formula)
        assert gradgradcheck(fn, (gy, gl, x, w, h, d), fast_mode=True)


@needs_fused
def test_opcheck():
    x, w, h, d = grad_inputs("cpu")
    gy = torch.randn(3, dtype=F64, requires_grad=True)
    gl = torch.randn(3, dtype=F64, requires_grad=True)
    for op in (OP.spline_forward, OP.spline_inverse):
        torch.library.opcheck(op, (x, w, h, d, 2.0))
    torch.library.opcheck(OP.spline_backward, (gy, gl, x, w, h, d, 2.0, False))
    # the other variants without the AOT trace of the second-order formula (the slow part;
    # that formula is the same code for every variant)
    quick = ("test_schema", "test_autograd_registration", "test_faketensor")
    for args in (
        (gy, None, x, w, h, d, 2.0, False),
        (gy, gl, x, w, h, d, 2.0, True),
        (gy, None, x, w, h, d, 2.0, True),
    ):
        torch.library.opcheck(OP.spline_backward, args, test_utils=quick)


@needs_fused
def test_compiles_without_graph_breaks():
    x = torch.randn(8, 3)
    w, h, d = params((8, 3), 5, dtype=torch.float32)

    def fn(x, w, h, d):
        return rq_spline(x, w, h, d, 3.0)

    with invflow.backend("fused"):
        got = torch.compile(fn, fullgraph=True, backend="aot_eager")(x, w, h, d)
        want = fn(x, w, h, d)
    assert_same(got, want, tol=0)


# ------------------------------------------------------------------- low precision
@pytest.mark.parametrize("backend", ["reference", pytest.param("fused", marks=needs_fused)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_computes_in_float32(dtype, backend):
    x = (2.0 * torch.randn(40, 3)).to(dtype)
    w, h, d = (t.to(dtype) for t in params((40, 3), 6, dtype=torch.float32))
    with invflow.backend(backend):
        y, lad = rq_spline(x, w, h, d, 3.0)
    assert y.dtype == dtype and lad.dtype == torch.float32
    want_y, want_lad = rq_spline_reference(x.float(), w.float(), h.float(), d.float(), 3.0)
    torch.testing.assert_close(y, want_y.to(dtype))
    torch.testing.assert_close(lad, want_lad, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- errors
def test_argument_errors():
    x = torch.zeros(3, 2)
    w, h, d = params((3, 2), 4, dtype=torch.float32)
    cases = [
        (ValueError, "bound", dict(bound=0.0)),
        (ValueError, "bound", dict(bound=float("inf"))),
        (ValueError, "bound", dict(bound=float("nan"))),
        (TypeError, "bound", dict(bound="3")),
        (TypeError, "inverse", dict(inverse=1)),
        (ValueError, "bins", dict(widths=w[..., :1], heights=h[..., :1], derivatives=d[..., :0])),
        (ValueError, "widths", dict(widths=w[:2])),
        (ValueError, "heights", dict(heights=h[..., :3])),
        (ValueError, "derivatives", dict(derivatives=d[..., :2])),
        (TypeError, "x", dict(x=torch.zeros(3, 2, dtype=torch.int64))),
        (TypeError, "widths", dict(widths=[1.0])),
    ]
    for exc, word, change in cases:
        kw = dict(x=x, widths=w, heights=h, derivatives=d, bound=3.0, inverse=False) | change
        with pytest.raises(exc, match=word) as info:
            rq_spline(**kw)
        assert "\n" not in str(info.value)


@needs_fused
def test_raw_op_rejects_bad_arguments():
    x = torch.zeros(3, 2)
    w, h, d = params((3, 2), 4, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="bins"):
        OP.spline_forward(x, w[..., :1], h[..., :1], d[..., :0], 1.0)
    with pytest.raises(RuntimeError, match="derivatives"):
        OP.spline_forward(x, w, h, d[..., :1], 1.0)
    with pytest.raises(RuntimeError, match="dtype"):
        OP.spline_forward(x, w.double(), h, d, 1.0)
    with pytest.raises(RuntimeError, match="bound"):
        OP.spline_inverse(x, w, h, d, -1.0)
    with pytest.raises(RuntimeError, match="grad_logabsdet"):
        OP.spline_backward(x, torch.zeros(3), x, w, h, d, 1.0, False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@needs_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_cuda_kernels_equal_cpu_kernels(dtype):
    """float64: equal to the CPU kernels to 1e-10.  float32 / float16: as accurate as the CPU
    kernels against the float64 truth (twice their largest error, plus a few ulps): the CUDA
    build contracts multiply-adds, so the two round differently, and log|dy/dx| of a narrow
    bin cancels digits (6.7e-5 apart in float32 on an H200)."""
    x = 2.0 * torch.randn(257, 5, dtype=dtype)
    w, h, d = (t.to(dtype) for t in params((257, 5), 9))
    gy, gl = (
        torch.randn(257, 5, dtype=dtype),
        torch.randn(257, 5, dtype=torch.promote_types(dtype, torch.float32)),
    )
    eps = {torch.float64: 0.0, torch.float32: 1e-6, torch.float16: 2e-3}[dtype]

    def check(gpu, cpu, truth):
        for b, a, t in zip(gpu, cpu, truth):
            b = b.cpu()
            assert b.dtype == a.dtype and b.shape == a.shape
            if dtype == torch.float64:
                torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
                continue
            err, cpu_err = (b.double() - t).abs().max(), (a.double() - t).abs().max()
            assert err <= 2 * cpu_err + eps, (err, cpu_err)

    wide = [t.double() for t in (x, w, h, d)]
    for inverse in (False, True):
        op = OP.spline_inverse if inverse else OP.spline_forward
        check(op(*(t.cuda() for t in (x, w, h, d)), 3.0), op(x, w, h, d, 3.0), op(*wide, 3.0))
        cpu = OP.spline_backward(gy, gl, x, w, h, d, 3.0, inverse)
        gpu = OP.spline_backward(*(t.cuda() for t in (gy, gl, x, w, h, d)), 3.0, inverse)
        check(gpu, cpu, OP.spline_backward(gy.double(), gl.double(), *wide, 3.0, inverse))
