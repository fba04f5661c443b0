"""The vectorised CUDA elementwise kernels (csrc/cuda/actnorm.cu, coupling.cu) against the
CPU kernels, on the shapes and layouts that pick each of their paths.

The kernels move 16-byte vectors (4 floats, 2 doubles, 8 halfs) only when every pointer is
16-byte aligned and the row lengths keep vectors inside rows, else a scalar path; their 2-D
grids cut samples into channel-aligned column blocks (actnorm) or chunks (coupling).  Each
case below is chosen to land on one of: the vector path, a scalar tail (odd N), a contiguous
view whose data pointer is one element past an aligned address (``.contiguous()`` keeps it,
so the kernel sees a misaligned pointer), N = 1 vectors ([B, 3072] as in DenseGlow, and tiny
[3, 5]), C = 1, B = 1 with many pixels (several column blocks per channel), many samples per
block, more than 65535 samples (gridDim.y wraps).  Log-dets and parameter gradients are
held to the CPU's within a bound on their summation error, and two calls must be bitwise
equal (fixed reduction order).  CUDA only: every test skips without a GPU.
"""

from __future__ import annotations

import pytest
import torch

import invflow  # noqa: F401  (registers torch.ops.invflow)

OP = torch.ops.invflow
CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SCALES = ["sigmoid", "exp", "tanh"]
CLAMP = 2.0

# x shapes [B, C, ...] for actnorm, with the path they exercise (float32 W = 4, 2048 columns
# per block pass; float64 W = 2, 1024; half W = 8, 2048).
ACTNORM_SHAPES = [
    (4, 8, 16, 16),  # N = 256: vector path, 8 channels per column block (shared-memory sums)
    (3, 5, 7),  # N = 7, L = 35: scalar path with tails
    (8, 12, 3),  # N = 3, L = 36: vectors straddle channels (float, double); half scalar
    (64, 3072),  # N = 1: DenseGlow's [B, 3072], vector path, several column blocks
    (3, 5),  # N = 1, tiny: scalar, 32-thread blocks
    (16, 4099),  # N = 1, odd C over several column blocks: scalar
    (2, 1, 37, 41),  # C = 1, N = 1517 odd: one channel per block, block_sum path
    (1, 3, 64, 80),  # B = 1, N = 5120: several column blocks per channel, a short last one
    (2, 4, 40, 40),  # N = 1600: one whole channel per block (float), 2 blocks per channel (double)
    (300, 7, 2),  # many samples per block (the sample loop)
    (5, 6, 1, 1),  # N = 1 through trailing ones
]

# x shapes for the coupling (h is [B, 2C, ...], the mask [C, ...]).
COUPLING_SHAPES = [
    (4, 6, 16, 16),  # M = 1536: vector path
    (3, 5, 7),  # M = 35: scalar path with a tail
    (2, 12, 3),  # M = 36: vector path (float, double) with a partial last vector group
    (1, 4, 64, 80),  # B = 1, M = 20480: many chunks per sample, several blocks per sample
    (64, 1536),  # N = 1 vectors
    (3, 5),  # tiny
    (2, 1, 37, 41),  # C = 1, M = 1517 odd
    (300, 3, 2),  # many samples
]


def _tol(dtype):
    """Elementwise tolerances (as tests/invflow/ops/test_kernel_edge_cases.py)."""
    return {
        torch.float16: dict(rtol=3e-3, atol=3e-3),
        torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
        torch.float32: dict(rtol=1e-5, atol=1e-5),
        torch.float64: dict(rtol=1e-10, atol=1e-10),
    }[dtype]


def _ulp(dtype):
    """Relative spacing of dtype: the rounding of one output."""
    return {
        torch.float16: 2.0**-10,
        torch.bfloat16: 2.0**-7,
        torch.float32: 2.0**-23,
        torch.float64: 2.0**-52,
    }[dtype]


def _logdet_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _acc_eps(dtype):
    """Relative error allowed per unit of sum |terms| of an accumulation (float32 accumulators
    for every dtype but float64): different summation orders only."""
    return 1e-13 if dtype == torch.float64 else 2e-6


def assert_sum_close(got, want, bound, dtype, what):
    """|got - want| <= 2 ulp(dtype) |want| + eps_acc * bound, elementwise (bound >= sum |terms|)."""
    got, want, bound = got.cpu().double(), want.cpu().double(), bound.cpu().double()
    assert got.shape == want.shape, what
    err = (got - want).abs()
    allowed = 2 * _ulp(dtype) * want.abs() + _acc_eps(dtype) * (bound + 1.0)
    bad = ~(err <= allowed)
    assert not bad.any(), (
        f"{what}: max error {err.max().item():.3g}, first bad at {bad.nonzero()[0].tolist()}"
    )


def offset_copy(t):
    """A contiguous copy of t whose data pointer is one element past a 16-byte aligned address."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    v = buf[1:].view(t.shape)
    v.copy_(t)
    assert v.is_contiguous() and v.contiguous().data_ptr() == v.data_ptr()
    if t.numel() > 0:
        assert v.data_ptr() % 16 != 0
    return v


def layouts(tensors):
    """(name, tensors) variants: all aligned (fresh allocations), all offset, and each one
    offset alone (a host check that forgets one pointer must fail here)."""
    out = [
        ("aligned", list(tensors)),
        ("all-offset", [offset_copy(t) if t is not None else None for t in tensors]),
    ]
    for i, t in enumerate(tensors):
        if t is not None:
            out.append((f"offset-{i}", [offset_copy(u) if j == i else u for j, u in enumerate(tensors)]))
    return out


def cpu(args):
    return tuple(t.cpu() if isinstance(t, torch.Tensor) else t for t in args)


def assert_bitwise_equal(a, b, what):
    for x, y in zip(a, b):
        assert torch.equal(x, y), f"{what}: two calls differ"


# --------------------------------------------------------------------------------- actnorm
def actnorm_args(shape, dtype):
    c = shape[1]
    g = dict(device="cuda", dtype=dtype)
    x = torch.randn(shape, **g)
    b, ls = torch.randn(c, **g), 0.3 * torch.randn(c, **g)
    gy = torch.randn(shape, **g)
    gl = torch.randn(shape[0], device="cuda", dtype=_logdet_dtype(dtype))
    return x, b, ls, gy, gl


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ACTNORM_SHAPES)
def test_cuda_actnorm_vectorized_matches_cpu(shape, dtype):
    x, b, ls, gy, gl = actnorm_args(shape, dtype)
    n = x[0, 0].numel()
    for name, (xl, gyl) in layouts([x, gy]):
        for op in ("actnorm_forward", "actnorm_inverse"):
            args = (xl, b, ls)
            y, ld = getattr(OP, op)(*args)
            y_cpu, ld_cpu = getattr(OP, op)(*cpu(args))
            what = f"{op} {shape} {dtype} {name}"
            torch.testing.assert_close(y.cpu(), y_cpu, **_tol(dtype), msg=lambda m: f"{what}: {m}")
            assert ld.dtype == ld_cpu.dtype
            bound = n * ls.double().abs().sum().expand(shape[0])
            assert_sum_close(ld, ld_cpu, bound, dtype, what + " logdet")
            assert_bitwise_equal((y, ld), getattr(OP, op)(*args), what)
        for with_gl in (True, False):
            args = (gyl, gl if with_gl else None, xl, b, ls)
            got = OP.actnorm_backward(*args)
            want = OP.actnorm_backward(*cpu(args))
            what = f"actnorm_backward {shape} {dtype} {name} gl={with_gl}"
            torch.testing.assert_close(got[0].cpu(), want[0], **_tol(dtype), msg=lambda m: f"{what}: {m}")
            dims = [0] + list(range(2, x.dim()))
            s = ls.double().exp()
            gd, xd = gyl.double(), xl.double()
            bound_b = s * gd.abs().sum(dims)
            bound_ls = s * (gd * (xd + b.double().view(-1, *[1] * (x.dim() - 2)))).abs().sum(dims)
            if with_gl:
                bound_ls = bound_ls + n * gl.double().abs().sum()
            assert_sum_close(got[1], want[1], bound_b, dtype, what + " grad_bias")
            assert_sum_close(got[2], want[2], bound_ls, dtype, what + " grad_log_scale")
            assert_bitwise_equal(got, OP.actnorm_backward(*args), what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 3, 0), (2, 0, 5), (0, 4)])
def test_cuda_actnorm_vectorized_empty(shape, dtype):
    x, b, ls, gy, gl = actnorm_args(shape, dtype)
    for op in ("actnorm_forward", "actnorm_inverse"):
        for got, want in zip(getattr(OP, op)(x, b, ls), getattr(OP, op)(*cpu((x, b, ls)))):
            torch.testing.assert_close(got.cpu(), want)
    args = (gy, gl, x, b, ls)
    for got, want in zip(OP.actnorm_backward(*args), OP.actnorm_backward(*cpu(args))):
        torch.testing.assert_close(got.cpu(), want)


# -------------------------------------------------------------------------------- coupling
def coupling_args(shape, dtype):
    g = dict(device="cuda", dtype=dtype)
    x = torch.randn(shape, **g)
    h = torch.randn((shape[0], 2 * shape[1], *shape[2:]), **g)
    mask = (torch.rand(shape[1:], device="cuda") > 0.5).to(dtype)
    gy = torch.randn(shape, **g)
    gl = torch.randn(shape[0], device="cuda", dtype=_logdet_dtype(dtype))
    return x, h, mask, gy, gl


def log_s_bound(h, mask, scale):
    """sum over a sample's transformed entries of |log s(raw)| (float64), for the log-det's error bound."""
    c = h.shape[1] // 2
    raw = h[:, :c].double()
    if scale == "sigmoid":
        ls = torch.nn.functional.logsigmoid(raw + 2.0)
    elif scale == "exp":
        ls = raw
    else:
        ls = CLAMP * torch.tanh(raw / CLAMP)
    ls = ls.abs()
    if mask is not None:
        ls = ls * (mask.double() != 0)
    return ls.flatten(1).sum(1)


def check_coupling(shape, dtype, tensors, scale, what):
    x, h, mask, gy, gl = tensors
    for op in ("coupling_forward", "coupling_inverse"):
        args = (x, h, mask, scale, CLAMP)
        y, ld = getattr(OP, op)(*args)
        y_cpu, ld_cpu = getattr(OP, op)(*cpu(args))
        w = f"{op} {what}"
        torch.testing.assert_close(y.cpu(), y_cpu, **_tol(dtype), msg=lambda m: f"{w}: {m}")
        if mask is not None:  # masked-out entries pass through bit for bit
            keep = (mask == 0).expand_as(x)
            assert torch.equal(y[keep], x[keep]), f"{w}: masked-out entries changed"
        assert ld.dtype == ld_cpu.dtype
        assert_sum_close(ld, ld_cpu, log_s_bound(h, mask, scale), dtype, w + " logdet")
        assert_bitwise_equal((y, ld), getattr(OP, op)(*args), w)
    for g in (gl, None):
        args = (gy, g, x, h, mask, scale, CLAMP)
        got = OP.coupling_backward(*args)
        want = OP.coupling_backward(*cpu(args))
        w = f"coupling_backward {what} gl={g is not None}"
        for a, b_ in zip(got, want):
            torch.testing.assert_close(a.cpu(), b_, **_tol(dtype), msg=lambda m: f"{w}: {m}")
        if mask is not None:
            c = x.shape[1]
            off = (mask == 0).expand_as(x)
            assert torch.equal(got[0][off], gy[off]), f"{w}: masked-out grad_x is not grad_y"
            assert (got[1][:, :c][off] == 0).all(), f"{w}: masked-out grad_raw"
            assert (got[1][:, c:][off] == 0).all(), f"{w}: masked-out grad_shift"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", COUPLING_SHAPES)
def test_cuda_coupling_vectorized_matches_cpu(shape, dtype):
    x, h, mask, gy, gl = coupling_args(shape, dtype)
    for masked in (False, True):
        m = mask if masked else None
        for scale in SCALES:
            what = f"{shape} {dtype} {scale} masked={masked} aligned"
            check_coupling(shape, dtype, (x, h, m, gy, gl), scale, what)
        # every misaligned variant (each of x, h, mask, grad_y offset alone, then all) with one scale
        for name, (xl, hl, ml, gyl) in layouts([x, h, m, gy])[1:]:
            what = f"{shape} {dtype} masked={masked} {name}"
            check_coupling(shape, dtype, (xl, hl, ml, gyl, gl), "sigmoid", what)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_coupling_more_than_65535_samples(dtype):
    """gridDim.y is capped at 65535: the sample loop must wrap, every sample's log-det once."""
    x, h, mask, gy, gl = coupling_args((70000, 3, 2), dtype)
    check_coupling(x.shape, dtype, (x, h, mask, gy, gl), "exp", "70000 samples")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 3, 0), (2, 0, 5), (0, 4)])
def test_cuda_coupling_vectorized_empty(shape, dtype):
    x, h, mask, gy, gl = coupling_args(shape, dtype)
    for op in ("coupling_forward", "coupling_inverse"):
        args = (x, h, mask, "tanh", CLAMP)
        for got, want in zip(getattr(OP, op)(*args), getattr(OP, op)(*cpu(args))):
            torch.testing.assert_close(got.cpu(), want)
    for got, want in zip(
        OP.coupling_backward(gy, gl, x, h, mask, "exp", CLAMP),
        OP.coupling_backward(*cpu((gy, gl, x, h, mask, "exp", CLAMP))),
    ):
        torch.testing.assert_close(got.cpu(), want)
