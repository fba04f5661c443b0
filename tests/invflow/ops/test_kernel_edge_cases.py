"""Regression tests for the defects a review of csrc/ found, one kind per test.

Each test runs on every device: on CPU the fused kernel is held to the reference, on CUDA
the CUDA kernel is held to the CPU kernel (``expected``), so the CPU half guards the
semantics in CI and the CUDA half runs in ``make gpu-check``.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import invflow
from invflow import masks
from invflow.ops import fused, reference

OP = torch.ops.invflow
CUDA = torch.cuda.is_available()
LOW = [torch.float16, torch.bfloat16]
ALL_DTYPES = [torch.float32, torch.float64, *LOW]


def on_cpu(args):
    return tuple(t.cpu() if isinstance(t, torch.Tensor) else t for t in args)


def expected(name: str, args, device):
    """What the fused op ``name`` must return: the CPU kernel's result for CUDA inputs, the
    reference's for CPU inputs (both on CPU)."""
    if torch.device(device).type == "cuda":
        out = getattr(OP, name)(*on_cpu(args))
    else:
        out = getattr(reference, name)(*args)
    return out if isinstance(out, tuple) else (out,)


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def rand_weight(c, dtype, device):
    return (
        torch.linalg.qr(torch.randn(c, c, dtype=torch.float64))[0]
        + 0.1 * torch.randn(c, c, dtype=torch.float64)
    ).to(device=device, dtype=dtype)


# ------------------------------------------------------------- 1. rows of W stay independent
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("c", [1, 2, 3, 5, 7, 12, 24, 31, 40])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_channel_mix_nonfinite_row_stays_in_its_row(c, dtype, bad, device):
    """A NaN / Inf in row k of W reaches output channel k only (0 * NaN must never happen),
    in y = W x, in the backward's grad_x = W^T g, and after a kernel that left NaNs behind."""
    # pollute whatever scratch memory the kernels use with NaN first
    OP.channel_mix(
        torch.randn(4, 32, 3, 3, device=device, dtype=dtype),
        torch.full((32, 32), float("nan"), device=device, dtype=dtype),
    )
    x = torch.randn(2, c, 3, 5, device=device, dtype=dtype)
    gy = torch.randn_like(x)
    for k in {0, c // 2, c - 1}:
        w = rand_weight(c, dtype, device)
        w[k, c // 3] = bad
        y = OP.channel_mix(x, w)
        want = expected("channel_mix", (x, w), device)[0].to(y.device)
        torch.testing.assert_close(y.float(), want.float(), equal_nan=True, **_tol(dtype))
        others = [o for o in range(c) if o != k]
        assert torch.isfinite(y[:, others]).all(), f"row {k}'s {bad} leaked into other outputs (C={c})"
        gx, _ = OP.channel_mix_backward(gy, x, w)
        cols = [i for i in range(c) if i != c // 3]
        assert torch.isfinite(gx[:, cols]).all(), f"column {c // 3}'s {bad} leaked into grad_x (C={c})"


def _tol(dtype):
    return {
        torch.float16: dict(rtol=3e-3, atol=3e-3),
        torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
        torch.float32: dict(rtol=1e-5, atol=1e-5),
        torch.float64: dict(rtol=1e-10, atol=1e-10),
    }[dtype]


# -------------------------------------------------------------------------- 2. TF32 is off
def test_tf32_is_off_for_exactness_tests():
    assert not torch.backends.cuda.matmul.allow_tf32
    assert not torch.backends.cudnn.allow_tf32


# ---------------------------------------------------- 3. backward ops check their gradients
def _backward_cases(device, dtype=torch.float64):
    x = torch.randn(2, 3, 4, 4, device=device, dtype=dtype)
    b, ls = torch.randn(3, device=device, dtype=dtype), torch.randn(3, device=device, dtype=dtype)
    w = rand_weight(3, dtype, device)
    h = torch.randn(2, 6, 4, 4, device=device, dtype=dtype)
    return {
        "actnorm_backward": lambda gy, gl: OP.actnorm_backward(gy, gl, x, b, ls),
        "coupling_backward": lambda gy, gl: OP.coupling_backward(gy, gl, x, h, None, "sigmoid", 2.0),
        "channel_mix_backward": lambda gy, gl: OP.channel_mix_backward(gy, x, w),
    }, x


@pytest.mark.parametrize("op", ["actnorm_backward", "coupling_backward", "channel_mix_backward"])
def test_backward_ops_reject_bad_gradients(op, device):
    cases, x = _backward_cases(device)
    call = cases[op]
    gl = torch.randn(2, device=device, dtype=x.dtype)
    call(torch.randn_like(x), gl)  # the good call works
    with pytest.raises(RuntimeError, match="grad_y must have the input's shape"):
        call(torch.randn(2, 3, 4, 5, device=device, dtype=x.dtype), gl)
    with pytest.raises(RuntimeError, match="grad_y has dtype"):
        call(torch.randn_like(x, dtype=torch.float32), gl)
    if op != "channel_mix_backward":
        with pytest.raises(RuntimeError, match="grad_logdet must have shape"):
            call(torch.randn_like(x), torch.randn(3, device=device, dtype=x.dtype))
        with pytest.raises(RuntimeError, match="grad_logdet has dtype"):
            call(torch.randn_like(x), gl.float())


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("op", ["actnorm_backward", "coupling_backward", "channel_mix_backward"])
def test_cuda_backward_ops_reject_host_gradients(op):
    """A CPU grad_y / grad_logdet handed to a CUDA op is refused, never read as a device pointer."""
    cases, x = _backward_cases("cuda")
    call = cases[op]
    gl = torch.randn(2, device="cuda", dtype=x.dtype)
    with pytest.raises(RuntimeError, match="grad_y is on"):
        call(torch.randn_like(x).cpu(), gl)
    if op != "channel_mix_backward":
        with pytest.raises(RuntimeError, match="grad_logdet is on"):
            call(torch.randn_like(x), gl.cpu())


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_forward_ops_reject_host_parameters():
    x = torch.randn(2, 3, 4, 4, device="cuda")
    with pytest.raises(RuntimeError, match="bias is on"):
        OP.actnorm_forward(x, torch.zeros(3), torch.zeros(3, device="cuda"))
    with pytest.raises(RuntimeError, match="different devices"):
        OP.channel_mix(x, torch.eye(3))
    with pytest.raises(RuntimeError, match="different devices"):
        OP.coupling_forward(x, torch.zeros(2, 6, 4, 4), None, "exp", 2.0)


# ---------------------------------------------------------------- 4. mixed precision (autocast)
def _autocast_dtype(device):
    return torch.bfloat16


class _LinearNet(torch.nn.Module):
    """An st-net ending in nn.Linear (as in DenseGlow / VectorFlow): bfloat16 under autocast."""

    def __init__(self, cin, cout):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(cin, 16), torch.nn.ReLU(), torch.nn.Linear(16, cout))
        torch.nn.init.normal_(self.net[-1].weight, std=0.1)

    def forward(self, x):
        return self.net(x)


def _layers(device):
    torch.manual_seed(0)
    conv = invflow.Sequential(
        invflow.ActNorm(4),
        invflow.InvConv1x1(4),
        invflow.AffineCoupling(4, masks.Channel(0), hidden=8),
        invflow.AffineCoupling(4, masks.Checkerboard(0), hidden=8, scale="exp"),
    )
    vec = invflow.Sequential(
        invflow.ActNorm(6),
        invflow.InvConv1x1(6),
        invflow.AffineCoupling(6, masks.Channel(1), net=_LinearNet, scale="tanh"),
    )
    for m in (conv, vec):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return [
        (conv.to(device).eval(), torch.randn(3, 4, 6, 6, device=device)),
        (vec.to(device).eval(), torch.randn(5, 6, device=device)),
    ]


def test_layers_run_under_autocast_on_both_backends(device):
    """Under autocast the st-nets run in bfloat16 while the flow's maps stay float32: fused and
    reference agree, forward and inverse, and round trips stay exact to float32 precision."""
    dev = torch.device(device).type
    for flow, x in _layers(device):
        results = {}
        for name in ("reference", "fused"):
            with invflow.backend(name), torch.autocast(dev, dtype=_autocast_dtype(dev)):
                y, ld = flow(x)
                x_back, ld_inv = flow.inverse(y)
            assert y.dtype == torch.float32 and ld.dtype == torch.float32, name
            torch.testing.assert_close(x_back, x, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(ld_inv, -ld, rtol=1e-4, atol=1e-4)
            results[name] = (y, ld)
        torch.testing.assert_close(results["fused"], results["reference"], rtol=1e-5, atol=1e-5)


def test_ops_promote_mixed_dtypes(device):
    """ops.coupling with a float32 x and bfloat16 h (an autocast st-net's output) runs in
    float32 on both backends, like eager type promotion."""
    x = torch.randn(2, 3, 4, 4, device=device)
    h = torch.randn(2, 6, 4, 4, device=device).bfloat16()
    outs = {}
    for name in ("reference", "fused"):
        with invflow.backend(name):
            outs[name] = invflow.ops.coupling(x, h, None, "sigmoid", 2.0)
            assert outs[name][0].dtype == torch.float32
    torch.testing.assert_close(outs["fused"], outs["reference"])


# ------------------------------------------------------- 5. low-precision log-dets are float32
@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_logdets_are_float32_and_finite(dtype, device):
    """A half actnorm log-det over [1, 48, 64, 64] with log_scale = 1 is 196608: inf in half."""
    x = torch.randn(1, 48, 64, 64, device=device, dtype=dtype)
    ones = torch.ones(48, device=device, dtype=dtype)
    for impl in (fused, reference):
        _, ld = impl.actnorm_forward(x, 0 * ones, ones)
        assert ld.dtype == torch.float32
        assert ld.item() == 48 * 64 * 64
    h = torch.zeros(1, 96, 64, 64, device=device, dtype=dtype)
    h[:, :48] = 30.0  # exp scale: log s = 30 per entry, total 5.9e6 (half's max is 65504)
    for impl in (fused, reference):
        _, ld = impl.coupling_forward(x, h, None, "exp", 2.0)
        assert ld.dtype == torch.float32
        torch.testing.assert_close(ld, torch.full_like(ld, 30.0 * 48 * 64 * 64))


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_backward_accepts_float32_logdet_gradients(dtype, device):
    """Autograd through half-precision layers: grad_logdet arrives in float32."""
    x = torch.randn(2, 3, 4, 4, device=device, dtype=dtype, requires_grad=True)
    b = torch.zeros(3, device=device, dtype=dtype, requires_grad=True)
    ls = torch.zeros(3, device=device, dtype=dtype, requires_grad=True)
    h = torch.randn(2, 6, 4, 4, device=device, dtype=dtype, requires_grad=True)
    grads = {}
    for impl in (fused, reference):
        y, ld1 = impl.actnorm_forward(x, b, ls)
        y, ld2 = impl.coupling_forward(y, h, None, "sigmoid", 2.0)
        (y.float().square().sum() + (ld1 + ld2).sum()).backward()
        grads[impl.__name__] = [t.grad.clone() for t in (x, b, ls, h)]
        for t in (x, b, ls, h):
            t.grad = None
    for got, want in zip(grads[fused.__name__], grads[reference.__name__]):
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want.float(), rtol=5e-2, atol=5e-2)


# ------------------------------------------------ 6. one behaviour at the ends of exp (IEEE)
@pytest.mark.parametrize("scale", ["exp", "sigmoid", "tanh"])
@pytest.mark.parametrize("raw", [-100.0, -88.0, -87.5, 88.5, 100.0])
def test_extreme_raw_values_match_reference_ieee(scale, raw, device):
    """Float32 couplings at raw values where exp over- or underflows: the kernels give the
    reference's IEEE results (1 / s = inf, not a clamped 8.5e37), forward and inverse."""
    x = torch.tensor([[[-2.0, -0.5, 0.0, 0.5, 3.0]]], device=device)
    h = torch.cat([torch.full_like(x, raw), torch.full_like(x, 0.25)], dim=1)
    for name in ("coupling_forward", "coupling_inverse"):
        got = getattr(OP, name)(x, h, None, scale, 2.0)
        want = getattr(reference, name)(x.cpu(), h.cpu(), None, scale, 2.0)
        for g, w in zip(got, want):
            # atol: entries below FLT_MIN flush to zero in the vectorised CPU exp (no denormals)
            torch.testing.assert_close(
                g.cpu(),
                w,
                equal_nan=True,
                rtol=1e-5,
                atol=1.2e-38,
                msg=lambda m: f"{name} {scale} raw={raw}: {m}",
            )


# ------------------------------------------------------------------ 7. performance defects
class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_fixed_weight_gets_no_weight_gradient(device):
    """A W without requires_grad (FixedLinear's buffer) costs no dL/dW GEMM in backward."""
    x = torch.randn(4, 6, 5, 5, device=device, dtype=torch.float64, requires_grad=True)
    w = rand_weight(6, torch.float64, device)
    y = fused.channel_mix(x, w)
    g = torch.randn_like(y)
    with _CountOps() as mode:
        (gx,) = torch.autograd.grad(y, x, g)
    assert any(n.startswith("invflow.channel_mix.") for n in mode.names), mode.names  # grad_x = W^T g ran
    assert not any("channel_mix_backward" in n for n in mode.names), mode.names
    (want,) = torch.autograd.grad(reference.channel_mix(x, w), x, g)
    torch.testing.assert_close(gx, want)


@pytest.mark.parametrize("shape", [(5, 70), (1, 3072), (2, 70, 2, 2), (2, 66, 9, 9), (3, 40, 1, 1)])
def test_wide_channel_mix_gemm_paths(shape, device):
    """Channel counts above the direct kernels: vectors (one GEMM), C > N and C <= N weight
    gradients all equal autograd through the reference."""
    x = torch.randn(shape, device=device, dtype=torch.float64, requires_grad=True)
    w = rand_weight(shape[1], torch.float64, device).requires_grad_()
    g = torch.randn(shape, device=device, dtype=torch.float64)
    got = torch.autograd.grad(fused.channel_mix(x, w), (x, w), g)
    want = torch.autograd.grad(reference.channel_mix(x, w), (x, w), g)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("b", [1, 3])
def test_coupling_single_sample_many_chunks(b, device):
    """One image split over many blocks (sampling / scoring a single input) sums its log-det
    exactly once per entry."""
    a_x = torch.randn(b, 24, 48, 40, device=device, dtype=torch.float64)
    h = torch.randn(b, 48, 48, 40, device=device, dtype=torch.float64)
    m = (torch.rand(24, 48, 40, device=device) > 0.5).double()
    for name in ("coupling_forward", "coupling_inverse"):
        got = getattr(OP, name)(a_x, h, m, "sigmoid", 2.0)
        for g, w in zip(got, expected(name, (a_x, h, m, "sigmoid", 2.0), device)):
            torch.testing.assert_close(g.cpu(), w.cpu())


# ------------------------------------------------------ shapes: empty, strided, channels_last
SHAPES = [(0, 3, 4, 4), (2, 3, 0, 4), (1, 1, 1, 1), (3, 5)]


@pytest.mark.parametrize("shape", SHAPES)
def test_empty_and_tiny_shapes(shape, device):
    x = torch.randn(shape, device=device, dtype=torch.float64)
    c = shape[1]
    b, ls = (
        torch.randn(c, device=device, dtype=torch.float64),
        torch.randn(c, device=device, dtype=torch.float64),
    )
    w = rand_weight(c, torch.float64, device)
    h = torch.randn((shape[0], 2 * c, *shape[2:]), device=device, dtype=torch.float64)
    gy = torch.randn_like(x)
    gl = torch.randn(shape[0], device=device, dtype=torch.float64)
    calls = {
        "actnorm_forward": (x, b, ls),
        "actnorm_inverse": (x, b, ls),
        "channel_mix": (x, w),
        "coupling_forward": (x, h, None, "tanh", 2.0),
        "coupling_inverse": (x, h, None, "exp", 2.0),
    }
    for name, args in calls.items():
        for g, want in zip(as_tuple(getattr(OP, name)(*args)), expected(name, args, device)):
            torch.testing.assert_close(g.cpu(), want.cpu(), msg=lambda m: f"{name} {shape}: {m}")
    # backward ops against autograd of the reference
    xr = x.clone().requires_grad_()
    br, lsr, hr = (t.clone().requires_grad_() for t in (b, ls, h))
    y, ld = reference.actnorm_forward(xr, br, lsr)
    want = torch.autograd.grad((y, ld), (xr, br, lsr), (gy, gl), allow_unused=True, materialize_grads=True)
    for g, w_ in zip(OP.actnorm_backward(gy, gl, x, b, ls), want):
        torch.testing.assert_close(g.cpu(), w_.cpu())
    y, ld = reference.coupling_forward(xr, hr, None, "sigmoid", 2.0)
    want = torch.autograd.grad((y, ld), (xr, hr), (gy, gl), allow_unused=True, materialize_grads=True)
    for g, w_ in zip(OP.coupling_backward(gy, gl, x, h, None, "sigmoid", 2.0), want):
        torch.testing.assert_close(g.cpu(), w_.cpu())


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_non_contiguous_inputs(layout, device):
    base = torch.randn(2, 5, 6, 7, device=device, dtype=torch.float64)
    hb = torch.randn(2, 10, 6, 7, device=device, dtype=torch.float64)
    if layout == "channels_last":
        x, h = base.to(memory_format=torch.channels_last), hb.to(memory_format=torch.channels_last)
    else:
        x, h = base.transpose(2, 3), hb.transpose(2, 3)
    b, ls = (
        torch.randn(5, device=device, dtype=torch.float64),
        torch.randn(5, device=device, dtype=torch.float64),
    )
    w = rand_weight(5, torch.float64, device)
    m = (torch.rand(x.shape[1:], device=device) > 0.5).double()
    calls = {
        "actnorm_forward": (x, b, ls),
        "channel_mix": (x, w),
        "coupling_forward": (x, h, m, "sigmoid", 2.0),
        "coupling_inverse": (x, h, m, "exp", 2.0),
    }
    for name, args in calls.items():
        for g, want in zip(as_tuple(getattr(OP, name)(*args)), expected(name, args, device)):
            torch.testing.assert_close(g.cpu(), want.cpu(), msg=lambda m_: f"{name} {layout}: {m_}")


# ------------------------------------------------------------- CUDA launch counts, huge tensors
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_actnorm_launches_two_kernels_each_way():
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(8, 12, 16, 16, device="cuda", requires_grad=True)
    b = torch.zeros(12, device="cuda", requires_grad=True)
    ls = torch.zeros(12, device="cuda", requires_grad=True)
    y, ld = OP.actnorm_forward(x, b, ls)  # warm-up
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        OP.actnorm_forward(x.detach(), b.detach(), ls.detach())
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    assert len(kernels) <= 2, [e.name for e in kernels]
    gy, gl = torch.randn_like(x), torch.randn(8, device="cuda")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        OP.actnorm_backward(gy, gl, x.detach(), b.detach(), ls.detach())
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    assert len(kernels) <= 2, [e.name for e in kernels]


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_more_than_2_31_elements():
    """64-bit indexing: an actnorm and a coupling over > 2^31 entries (half, ~13 GB in all)."""
    free, _ = torch.cuda.mem_get_info()
    if free < 40 * 2**30:
        pytest.skip(f"needs 40 GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    B, C, H, W = 2, 4, 16384, 16400  # 2.1e9 entries
    x = torch.randn(B, C, H, W, device="cuda", dtype=torch.float16)
    assert x.numel() > 2**31
    ls = torch.full((C,), 0.5, device="cuda", dtype=torch.float16)
    y, ld = OP.actnorm_forward(x, torch.zeros_like(ls), ls)
    tail = (slice(None), slice(None), slice(H - 2, H), slice(W - 3, W))
    torch.testing.assert_close(
        y[tail].float(), (x[tail].float() * torch.exp(torch.tensor(0.5))), rtol=2e-3, atol=2e-3
    )
    assert ld[0].item() == pytest.approx(0.5 * C * H * W, rel=1e-6)
    del y
    h = torch.zeros(B, 2 * C, H, W, device="cuda", dtype=torch.float16)
    y, ld = OP.coupling_forward(x, h, None, "exp", 2.0)
    torch.testing.assert_close(y[tail], x[tail])
    assert ld.abs().max().item() == 0.0


# ------------------------------------------- low-precision weight gradient of the GEMM path
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("shape", [(129, 80, 128), (16, 80, 96), (64, 96, 1), (4, 80, 16)])
def test_channel_mix_gemm_weight_grad_rounds_once(shape, dtype, device):
    """dL/dW = sum_b g_b x_b^T for C above the direct kernels (the GEMM path on every device):
    in half / bfloat16 it is accumulated in float32 and rounded once, so its error stays within
    about one epsilon of the exact sum of the rounded inputs (a batched GEMM rounded each
    sample's product first: up to 60 epsilons)."""
    x = torch.randn(shape, dtype=torch.float64)
    g = torch.randn_like(x)
    c = shape[1]
    w = rand_weight(c, torch.float64, "cpu")
    xl, gl, wl = (t.to(device=device, dtype=dtype) for t in (x, g, w))
    _, gw = OP.channel_mix_backward(gl, xl, wl)
    assert gw.dtype == dtype
    exact = torch.einsum("bcn,bdn->cd", gl.cpu().double(), xl.cpu().double())
    err = ((gw.cpu().double() - exact).abs() / (exact.abs() + 1)).max().item()
    assert err < 2 * torch.finfo(dtype).eps, (
        f"relative error {err:.2e} ({err / torch.finfo(dtype).eps:.1f} eps)"
    )
