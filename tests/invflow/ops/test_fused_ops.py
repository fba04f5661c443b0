"""Every fused op against its pure-PyTorch reference, opcheck, gradcheck, gradgradcheck."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from invflow.ops import fused, reference

SCALES = ["sigmoid", "exp", "tanh"]
OP = torch.ops.invflow


def make_args(shape, device, dtype, masked=False, requires_grad=False):
    """Random inputs of every op for x of ``shape`` [B, C, ...]."""
    c = shape[1]
    g = dict(device=device, dtype=dtype)
    x = torch.randn(shape, **g)
    args = dict(
        x=x,
        bias=torch.randn(c, **g),
        log_scale=0.3 * torch.randn(c, **g),
        weight=torch.linalg.qr(torch.randn(c, c, **g))[0] + 0.1 * torch.randn(c, c, **g),
        h=torch.randn((shape[0], 2 * c) + tuple(shape[2:]), **g),
        mask=(torch.rand(tuple(shape[1:]), device=device) > 0.5).to(dtype) if masked else None,
    )
    if requires_grad:
        for k in ("x", "bias", "log_scale", "weight", "h"):
            args[k].requires_grad_()
    return args


def op_pairs(a, scale="sigmoid"):
    """(name, fused call, reference call) for each op family and direction."""
    x, b, ls, w, h, m = a["x"], a["bias"], a["log_scale"], a["weight"], a["h"], a["mask"]
    return [
        ("actnorm_forward", lambda M: M.actnorm_forward(x, b, ls)),
        ("actnorm_inverse", lambda M: M.actnorm_inverse(x, b, ls)),
        ("channel_mix", lambda M: (M.channel_mix(x, w),)),
        ("coupling_forward", lambda M: M.coupling_forward(x, h, m, scale, 2.0)),
        ("coupling_inverse", lambda M: M.coupling_inverse(x, h, m, scale, 2.0)),
    ]


def assert_fused_matches_reference(a, scale, dtype):
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for name, call in op_pairs(a, scale):
        for got, want in zip(call(fused), call(reference)):
            assert got.shape == want.shape, name
            torch.testing.assert_close(got, want, **tol, msg=lambda m: f"{name} ({scale}): {m}")


# B = 1, odd C, H != W, vectors and 3-D; channel counts in every bucket of the fused CUDA
# 1x1-conv kernel (<= 4, 8, 16, 32) and above it (BLAS path).
AWKWARD = [
    (1, 1, 1, 1),
    (1, 3, 5, 2),
    (2, 5, 3, 7),
    (3, 7, 1, 4),
    (4, 12, 16, 16),
    (2, 24, 5, 3),
    (2, 6),
    (5, 3, 9),
    (2, 33, 3, 3),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", AWKWARD)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("scale", SCALES)
def test_fused_equals_reference(shape, dtype, masked, scale, device):
    a = make_args(shape, device, dtype, masked=masked)
    assert_fused_matches_reference(a, scale, dtype)


@pytest.mark.parametrize("shape", [(16, 12, 32, 32), (64, 70, 4, 4), (3, 65, 5)])
def test_fused_equals_reference_large(shape, device):
    """Large tensors (several parallel tasks per op) and the BLAS path (C > 64) of channel_mix."""
    a = make_args(shape, device, torch.float64, masked=True)
    assert_fused_matches_reference(a, "sigmoid", torch.float64)


def test_fused_accepts_non_contiguous(device):
    a = make_args((3, 4, 6, 5), device, torch.float64, masked=True)
    xt = a["x"].transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    ht = a["h"][:, :, :, :].transpose(0, 1).contiguous().transpose(0, 1)
    assert not xt.is_contiguous() and not ht.is_contiguous()
    for M in (fused, reference):
        torch.testing.assert_close(
            M.coupling_forward(xt, ht, a["mask"], "exp", 2.0)[0],
            reference.coupling_forward(a["x"], a["h"], a["mask"], "exp", 2.0)[0],
        )
        torch.testing.assert_close(
            M.channel_mix(xt, a["weight"].t()), reference.channel_mix(a["x"], a["weight"].t())
        )


@pytest.mark.parametrize("masked", [False, True])
def test_opcheck_every_op(masked, device):
    """torch.library.opcheck: schema, autograd registration, fake tensors, AOT dispatch."""
    a = make_args((2, 3, 4, 5), device, torch.float64, masked=masked, requires_grad=True)
    x, b, ls, w, h, m = a["x"], a["bias"], a["log_scale"], a["weight"], a["h"], a["mask"]
    gy = torch.randn_like(x, requires_grad=True)
    gl = torch.randn(x.shape[0], dtype=x.dtype, device=device, requires_grad=True)
    cases = [
        (OP.actnorm_forward.default, (x, b, ls)),
        (OP.actnorm_inverse.default, (x, b, ls)),
        (OP.actnorm_backward.default, (gy, gl, x, b, ls)),
        (OP.actnorm_backward.default, (gy, None, x, b, ls)),
        (OP.channel_mix.default, (x, w)),
        (OP.channel_mix_backward.default, (gy, x, w)),
    ]
    for scale in SCALES:
        cases += [
            (OP.coupling_forward.default, (x, h, m, scale, 2.0)),
            (OP.coupling_inverse.default, (x, h, m, scale, 2.0)),
            (OP.coupling_backward.default, (gy, gl, x, h, m, scale, 2.0)),
            (OP.coupling_backward.default, (gy, None, x, h, m, scale, 2.0)),
        ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def gradchecks(fn, inputs):
    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 4)])
def test_grad_and_gradgrad_actnorm(shape, device):
    a = make_args(shape, device, torch.float64, requires_grad=True)
    gradchecks(fused.actnorm_forward, (a["x"], a["bias"], a["log_scale"]))
    gradchecks(fused.actnorm_inverse, (a["x"], a["bias"], a["log_scale"]))


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 4)])
def test_grad_and_gradgrad_channel_mix(shape, device):
    a = make_args(shape, device, torch.float64, requires_grad=True)
    gradchecks(fused.channel_mix, (a["x"], a["weight"]))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("masked", [False, True])
def test_grad_and_gradgrad_coupling(scale, masked, device):
    a = make_args((2, 3, 4, 3), device, torch.float64, masked=masked, requires_grad=True)
    m = a["mask"]
    gradchecks(lambda x, h: fused.coupling_forward(x, h, m, scale, 1.5), (a["x"], a["h"]))
    gradchecks(lambda x, h: fused.coupling_inverse(x, h, m, scale, 1.5), (a["x"], a["h"]))


def test_backward_ops_gradgrad_directly(device):
    """The backward ops are themselves differentiable (third order of the forward ops)."""
    a = make_args((2, 3, 3, 2), device, torch.float64, masked=True, requires_grad=True)
    x, b, ls, w, h, m = a["x"], a["bias"], a["log_scale"], a["weight"], a["h"], a["mask"]
    gy = torch.randn_like(x, requires_grad=True)
    gl = torch.randn(2, dtype=x.dtype, device=device, requires_grad=True)
    gradchecks(lambda *t: OP.actnorm_backward(*t), (gy, gl, x, b, ls))
    gradchecks(lambda *t: OP.channel_mix_backward(*t), (gy, x, w))
    for scale in SCALES:
        gradchecks(lambda gy, gl, x, h: OP.coupling_backward(gy, gl, x, h, m, scale, 2.0), (gy, gl, x, h))


def test_backward_matches_reference_autograd(device):
    """Fused first- and second-order gradients equal autograd through the reference."""
    a = make_args((3, 4, 5, 6), device, torch.float64, masked=True, requires_grad=True)
    x, b, ls, w, h, m = a["x"], a["bias"], a["log_scale"], a["weight"], a["h"], a["mask"]

    def loss(M):
        y, ld1 = M.actnorm_forward(x, b, ls)
        y = M.channel_mix(y, w)
        y, ld2 = M.coupling_forward(y, h, m, "sigmoid", 2.0)
        logp = -0.5 * y.pow(2).flatten(1).sum(1) + ld1 + ld2
        (gx,) = torch.autograd.grad(logp.sum(), x, create_graph=True)
        return logp.sum() + gx.norm()  # approximate-mass style penalty needs double backward

    for got, want in zip(
        torch.autograd.grad(loss(fused), (x, b, ls, w, h)),
        torch.autograd.grad(loss(reference), (x, b, ls, w, h)),
    ):
        torch.testing.assert_close(got, want)


def test_raw_ops_reject_bad_arguments():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="bias must have shape"):
        OP.actnorm_forward(x, torch.zeros(4), torch.zeros(3))
    with pytest.raises(RuntimeError, match="weight must be"):
        OP.channel_mix(x, torch.eye(4))
    with pytest.raises(RuntimeError, match="must be \\[B, 2C"):
        OP.coupling_forward(x, torch.zeros(2, 3, 4, 4), None, "exp", 2.0)
    with pytest.raises(RuntimeError, match="scale must be"):
        OP.coupling_forward(x, torch.zeros(2, 6, 4, 4), None, "softplus", 2.0)
    with pytest.raises(RuntimeError, match="mask must have shape"):
        OP.coupling_forward(x, torch.zeros(2, 6, 4, 4), torch.ones(4, 4), "exp", 2.0)
    with pytest.raises(RuntimeError, match="dtype"):
        OP.actnorm_forward(x, torch.zeros(3, dtype=torch.float64), torch.zeros(3))


def test_extreme_scales_stay_finite():
    """The sigmoid scale is computed stably: log s is finite for very negative raw values."""
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    h = torch.full((2, 4, 3, 3), -800.0, dtype=torch.float64)
    y, ld = fused.coupling_forward(x, h, None, "sigmoid", 2.0)
    want = reference.coupling_forward(x, h, None, "sigmoid", 2.0)
    assert torch.isfinite(ld).all()
    torch.testing.assert_close(ld, want[1])
    torch.testing.assert_close(y, want[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale", SCALES)
def test_low_precision_matches_float32_reference(dtype, scale):
    """Half types are computed in float32 internally (opmath) and rounded once at the end."""
    a = make_args((2, 5, 6, 4), "cpu", torch.float32, masked=True)
    low = {k: (v.to(dtype) if v is not None else None) for k, v in a.items()}
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=2e-3)
    exact = {k: (v.float() if v is not None else None) for k, v in low.items()}  # same rounded inputs
    for (name, call), (_, call_ref) in zip(op_pairs(low, scale), op_pairs(exact, scale)):
        outputs = call(fused)
        assert outputs[0].dtype == dtype, name
        assert all(ld.dtype == torch.float32 for ld in outputs[1:]), f"{name}: log-dets are float32"
        for got, want in zip(outputs, call_ref(reference)):
            torch.testing.assert_close(got.float(), want, **tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_batch_beyond_one_grid(dtype):
    """More than 65535 blocks' worth of elements: every kernel's grid-stride loop must wrap."""
    shape = (1100, 4, 64, 64)  # 18M entries > 65535 * 256
    a = make_args(shape, "cuda", dtype, masked=True)
    assert a["x"].numel() > 65535 * 256
    assert_fused_matches_reference(a, "sigmoid", dtype)
    gy = torch.randn_like(a["x"])
    gl = torch.randn(shape[0], device="cuda", dtype=dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    for got, want in zip(
        OP.coupling_backward(gy, gl, a["x"], a["h"], a["mask"], "exp", 2.0),
        OP.coupling_backward(gy.cpu(), gl.cpu(), a["x"].cpu(), a["h"].cpu(), a["mask"].cpu(), "exp", 2.0),
    ):
        torch.testing.assert_close(got.cpu(), want, **tol)
    for got, want in zip(
        OP.actnorm_backward(gy, gl, a["x"], a["bias"], a["log_scale"]),
        OP.actnorm_backward(gy.cpu(), gl.cpu(), a["x"].cpu(), a["bias"].cpu(), a["log_scale"].cpu()),
    ):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-3 if dtype == torch.float32 else 1e-7, atol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_ops_match_cpu_kernels():
    """The CUDA and CPU kernels (not only the reference) agree, including backward ops."""
    a = make_args((3, 6, 7, 5), "cpu", torch.float64, masked=True)
    gy = torch.randn_like(a["x"])
    gl = torch.randn(3, dtype=torch.float64)
    cases = [
        (OP.actnorm_backward, (gy, gl, a["x"], a["bias"], a["log_scale"])),
        (OP.channel_mix_backward, (gy, a["x"], a["weight"])),
        (OP.coupling_backward, (gy, gl, a["x"], a["h"], a["mask"], "tanh", 1.5)),
        (OP.coupling_inverse, (a["x"], a["h"], None, "sigmoid", 2.0)),
    ]
    for op, args in cases:
        cuda_args = tuple(t.cuda() if isinstance(t, torch.Tensor) else t for t in args)
        for got, want in zip(op(*cuda_args), op(*args)):
            torch.testing.assert_close(got.cpu(), want)
