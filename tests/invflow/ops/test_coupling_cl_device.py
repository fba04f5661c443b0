"""The channels-last coupling kernels on every device: CUDA against the CPU kernel, both
against the reference; in-place strided reads (no layout copies on CUDA); float32
accumulation of the second order's per-sample sum for half inputs; argument checks of the
second order shared by both devices."""

from __future__ import annotations

import pytest
import torch

from invflow.ops import reference

OP = torch.ops.invflow
SCALES = ["sigmoid", "exp", "tanh"]
CUDA = torch.cuda.is_available()
# one position, odd channel counts, 3-D and 4-D, many positions over several chunks, vectors
SHAPES = [(1, 1, 1), (2, 5, 3), (2, 3, 4, 5), (3, 700, 7), (1, 4096, 6), (4, 2)]


def cl_args(shape, device, dtype):
    x = torch.randn(shape, device=device, dtype=dtype)
    h = 0.5 * torch.randn(shape[:-1] + (2 * shape[-1],), device=device, dtype=dtype)
    return x, h


def _tol(dtype):
    return {
        torch.float16: dict(rtol=3e-3, atol=3e-3),
        torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
        torch.float32: dict(rtol=1e-5, atol=1e-5),
        torch.float64: dict(rtol=1e-10, atol=1e-10),
    }[dtype]


def _expected(name, args, device):
    """The CPU kernel's result for CUDA inputs, the reference's (forward) or the CPU kernel's
    (the rest) for CPU inputs."""
    cpu = tuple(t.cpu() if isinstance(t, torch.Tensor) else t for t in args)
    if torch.device(device).type == "cpu" and name == "coupling_cl_forward":
        return reference.coupling_cl_forward(*cpu)
    return getattr(OP, name)(*cpu)


def _all_calls(shape, device, dtype, scale):
    x, h = cl_args(shape, device, dtype)
    gy, ux, uh = torch.randn_like(x), torch.randn_like(x), torch.randn_like(h)
    gl = torch.randn(shape[0], device=device, dtype=reference.logdet_dtype(dtype))
    return {
        "coupling_cl_forward": (x, h, scale, 2.0),
        "coupling_cl_backward": (gy, gl, x, h, scale, 2.0),
        "coupling_cl_double_backward": (ux, uh, gy, gl, x, h, scale, 2.0),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", SCALES)
def test_coupling_cl_kernels_match(shape, dtype, scale, device):
    for name, args in _all_calls(shape, device, dtype, scale).items():
        got = getattr(OP, name)(*args)
        for i, (g, w) in enumerate(zip(got, _expected(name, args, device))):
            assert g.dtype == w.dtype and g.shape == w.shape, f"{name} output {i}: {g.dtype} {g.shape}"
            assert g.is_contiguous(), f"{name} output {i} is not contiguous"
            torch.testing.assert_close(
                g.cpu().double(), w.double(), **_tol(dtype), msg=lambda m: f"{name} output {i}: {m}"
            )
        again = getattr(OP, name)(*args)  # per-sample sums in a fixed order: bitwise repeatable
        for a, b in zip(got, again):
            assert torch.equal(a, b), f"{name} is not deterministic"


def _column_blocks(device, dtype):
    """x and h as column blocks of wider row-major matrices (as_rows reads them in place) and
    as transposed (truly strided) views that need a copy."""
    wide = torch.randn(3, 5, 4, 11, device=device, dtype=dtype)
    hwide = torch.randn(3, 5, 4, 13, device=device, dtype=dtype)
    yield wide[..., 2:5], hwide[..., 1:7]
    yield wide[..., :3].transpose(1, 2), hwide[..., :6].transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_coupling_cl_strided_inputs(dtype, device):
    for x, h in _column_blocks(device, dtype):
        # directions and gradients as column blocks too
        gy, ux = (
            torch.randn(x.shape[:-1] + (x.shape[-1] + 2,), device=device, dtype=dtype)[..., 1:-1]
            for _ in range(2)
        )
        uh = torch.randn(h.shape[:-1] + (h.shape[-1] + 1,), device=device, dtype=dtype)[..., 1:]
        gl = torch.randn(x.shape[0], device=device, dtype=dtype)
        calls = {
            "coupling_cl_forward": (x, h, "sigmoid", 2.0),
            "coupling_cl_backward": (gy, gl, x, h, "tanh", 2.0),
            "coupling_cl_double_backward": (ux, uh, gy, gl, x, h, "exp", 2.0),
        }
        for name, args in calls.items():
            contiguous = tuple(t.contiguous() if isinstance(t, torch.Tensor) else t for t in args)
            for g, w in zip(getattr(OP, name)(*args), getattr(OP, name)(*contiguous)):
                torch.testing.assert_close(g, w, **_tol(dtype), msg=lambda m: f"{name}: {m}")
            for g, w in zip(getattr(OP, name)(*args), _expected(name, contiguous, device)):
                torch.testing.assert_close(g.cpu(), w, **_tol(dtype), msg=lambda m: f"{name} vs CPU: {m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_coupling_cl_half_sums_accumulate_in_float32(dtype, device):
    """A per-sample sum above 65504 (half's largest value) stays finite and exact to float32:
    forward log-det = sum of raw (exp scale), second-order d_gl = sum of u_r."""
    B, P, C = 2, 4096, 8  # 32768 entries per sample, each 3.0 -> 98304 > 65504
    x = torch.zeros(B, P, C, device=device, dtype=dtype)
    h = torch.zeros(B, P, 2 * C, device=device, dtype=dtype)
    h[..., :C] = 3.0
    _, ld = OP.coupling_cl_forward(x, h, "exp", 2.0)
    assert ld.dtype == torch.float32
    torch.testing.assert_close(ld.cpu(), torch.full((B,), 3.0 * P * C), rtol=1e-6, atol=0)
    u_h = torch.zeros_like(h)
    u_h[..., :C] = 3.0
    gl = torch.zeros(B, device=device, dtype=torch.float32)
    _, d_gl, _, _ = OP.coupling_cl_double_backward(
        torch.zeros_like(x), u_h, torch.zeros_like(x), gl, x, h, "exp", 2.0
    )
    assert d_gl.dtype == torch.float32
    torch.testing.assert_close(d_gl.cpu(), torch.full((B,), 3.0 * P * C), rtol=1e-6, atol=0)


def test_coupling_cl_double_backward_checks_every_argument(device):
    x, h = cl_args((2, 3, 4), device, torch.float64)
    gy, ux, uh, gl = (
        torch.randn_like(x),
        torch.randn_like(x),
        torch.randn_like(h),
        torch.randn(2, device=device, dtype=x.dtype),
    )
    call = lambda **kw: OP.coupling_cl_double_backward(  # noqa: E731
        kw.get("ux", ux), kw.get("uh", uh), kw.get("gy", gy), kw.get("gl", gl), x, h, "sigmoid", 2.0
    )
    call()
    bad = {
        "u_x must have the input x's shape": dict(ux=torch.randn(2, 3, 1, device=device, dtype=x.dtype)),
        "u_h must have the parameters h's shape": dict(uh=torch.randn(2, 3, 4, device=device, dtype=x.dtype)),
        "u_h has dtype": dict(uh=uh.float()),
        "grad_y must have the input's shape": dict(gy=torch.randn(2, 1, 4, device=device, dtype=x.dtype)),
        "grad_logdet must have shape": dict(gl=torch.randn(3, device=device, dtype=x.dtype)),
        "grad_logdet has dtype": dict(gl=gl.float()),
    }
    for message, kwargs in bad.items():
        with pytest.raises(RuntimeError, match=message):
            call(**kwargs)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_coupling_cl_reads_in_place():
    """No layout copies: the forward and the double backward are one kernel plus the
    per-sample sum, the backward one kernel (the former transposed-copy path launched 4-8)."""
    from torch.profiler import ProfilerActivity, profile

    calls = _all_calls((8, 256, 12), "cuda", torch.float32, "sigmoid")
    want = {"coupling_cl_forward": 2, "coupling_cl_backward": 1, "coupling_cl_double_backward": 2}
    for name, args in calls.items():
        getattr(OP, name)(*args)  # warm-up
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            getattr(OP, name)(*args)
            torch.cuda.synchronize()
        kernels = [e.name for e in prof.events() if e.device_type.name == "CUDA"]
        assert len(kernels) == want[name], (name, kernels)
