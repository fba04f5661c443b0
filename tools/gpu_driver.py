"""Calls every kernel of invflow._C once per dtype and shape class, for compute-sanitizer.

    python tools/gpu_driver.py --device cuda     # under compute-sanitizer in `make gpu-check`
    python tools/gpu_driver.py --device cpu      # `make gpu-check DRY_RUN=1` (and make test)
    python tools/gpu_driver.py --check-registration --device cuda   # after the build stage

`--check-registration` calls nothing: it asserts that every op schema of
csrc/registration.cpp has a kernel registered for the device's dispatch key (CUDA, or CPU in
the dry run), so a .cu file left out of the build, or a registration block that never ran,
fails the build stage instead of surfacing later as a "no kernel" error in one test.

Every op schema in csrc/registration.cpp must be called here: the driver parses the
schemas and fails if a new op was added without a call, so the sanitizer stage can't
silently skip a kernel.  Shapes cover each launch path: the 1x1-conv buckets (C <= 4, 8,
16, 32) and the GEMM path (C > 32, vectors and images), masked and unmasked couplings of
every scale, single samples split over many blocks, odd sizes and empty tensors.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import invflow  # noqa: E402
from invflow.ops import reference  # noqa: E402

OP = torch.ops.invflow
SCALES = ("sigmoid", "exp", "tanh")


REGISTRATION = os.path.join(ROOT, "csrc", "registration.cpp")


def registered_ops() -> set[str]:
    """The op names of every schema ``m.def("name(...)")`` in csrc/registration.cpp (the
    one TORCH_LIBRARY block of invflow; tests/invflow/ops/test_registration.py keeps every
    schema there)."""
    names: set[str] = set()
    with open(REGISTRATION) as f:
        for block in re.findall(r"m\.def\(\s*((?:\"[^\"]*\"\s*)+)\)", f.read()):
            names.update(re.findall(r'^\s*"\s*([a-z_0-9]+)\(', block))
    return names


def dispatch_key(device: str) -> str:
    """The dispatch key the device's kernels register under."""
    return {"cuda": "CUDA", "cpu": "CPU"}[device]


def missing_kernels(device: str) -> tuple[list[str], list[str]]:
    """(ops of registered_ops() with no schema loaded, ops with no kernel for the device's
    dispatch key), both sorted."""
    key = dispatch_key(device)
    no_schema, no_kernel = [], []
    for name in sorted(registered_ops()):
        qualified = f"invflow::{name}"
        if not _has_schema(name):
            no_schema.append(name)
        elif not torch._C._dispatch_has_kernel_for_dispatch_key(qualified, key):
            no_kernel.append(name)
    return no_schema, no_kernel


def _has_schema(name: str) -> bool:
    """Whether invflow::name was loaded (torch.ops raises AttributeError for unknown ops)."""
    try:
        getattr(OP, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def check_registration(device: str) -> int:
    """Prints one line; 0 when every op parsed from csrc/registration.cpp has a kernel for
    the device."""
    ops = registered_ops()
    if not ops:
        print(
            "gpu_driver: no m.def schemas found in csrc/registration.cpp (parser or tree broken)",
            file=sys.stderr,
        )
        return 1
    no_schema, no_kernel = missing_kernels(device)
    key = dispatch_key(device)
    if no_schema:
        print(
            f"gpu_driver: ops defined in csrc/ but not loaded from invflow._C: {no_schema}", file=sys.stderr
        )
    if no_kernel:
        print(f"gpu_driver: ops with no {key} kernel registered: {no_kernel}", file=sys.stderr)
    if no_schema or no_kernel:
        return 1
    print(f"gpu_driver: all {len(ops)} ops of csrc/ have a {key} kernel registered")
    return 0


def shapes(small: bool):
    yield (2, 3, 5, 7)  # odd sizes, bucket <= 4
    yield (1, 12, 16, 16)  # Glow's C = 12, one sample over many blocks
    yield (3, 24, 5, 3)  # bucket <= 32
    yield (2, 7)  # vectors
    yield (2, 40, 3, 3)  # GEMM path, images
    yield (4, 48)  # GEMM path, vectors (one GEMM)
    yield (0, 4, 3, 3)  # empty batch
    if not small:
        yield (8, 16, 32, 32)


def call_all(device: str, dtype: torch.dtype, small: bool) -> set[str]:
    called: set[str] = set()

    def run(name, *args):
        called.add(name)
        return getattr(OP, name)(*args)

    g = dict(device=device, dtype=dtype)
    gl_dtype = reference.logdet_dtype(dtype)
    for shape in shapes(small):
        b, c = shape[0], shape[1]
        x = torch.randn(shape, **g)
        bias, ls = torch.randn(c, **g), 0.1 * torch.randn(c, **g)
        w = (torch.linalg.qr(torch.randn(c, c, dtype=torch.float64))[0]).to(**g)
        h = torch.randn((b, 2 * c, *shape[2:]), **g)
        mask = (torch.rand(shape[1:], device=device) > 0.5).to(dtype)
        gy = torch.randn_like(x)
        gl = torch.randn(b, device=device, dtype=gl_dtype)
        run("actnorm_forward", x, bias, ls)
        run("actnorm_inverse", x, bias, ls)
        run("actnorm_backward", gy, gl, x, bias, ls)
        run("actnorm_backward", gy, None, x, bias, ls)
        run("channel_mix", x, w)
        run("channel_mix_backward", gy, x, w)
        # channels-last views of the same tensors: x [B, ..., C], h [B, ..., 2C]
        x_cl, h_cl, gy_cl = (t.movedim(1, -1) for t in (x, h, gy))
        uh_cl = torch.randn_like(h_cl)
        for scale in SCALES:
            for m in (None, mask):
                run("coupling_forward", x, h, m, scale, 2.0)
                run("coupling_inverse", x, h, m, scale, 2.0)
                run("coupling_backward", gy, gl, x, h, m, scale, 2.0)
                run("coupling_backward", gy, None, x, h, m, scale, 2.0)
            run("coupling_cl_forward", x_cl, h_cl, scale, 2.0)
            run("coupling_cl_backward", gy_cl, gl, x_cl, h_cl, scale, 2.0)
            run("coupling_cl_double_backward", gy_cl, uh_cl, gy_cl, gl, x_cl, h_cl, scale, 2.0)
        # the rational-quadratic spline on every entry of x (some in the tails), its K = 5 bins'
        # parameters as column blocks of one st-net-like tensor (strided rows)
        theta = torch.randn((*shape, 14), **g)
        sw, sh, sd, xs = theta[..., :5], theta[..., 5:10], theta[..., 10:], 2 * x
        gls = torch.randn(shape, device=device, dtype=gl_dtype)
        for inverse in (False, True):
            run("spline_inverse" if inverse else "spline_forward", xs, sw, sh, sd, 3.0)
            run("spline_backward", gy, gls, xs, sw, sh, sd, 3.0, inverse)
            run("spline_backward", gy, None, xs, sw, sh, sd, 3.0, inverse)
    # second order through the registered autograd (the backward ops' own backward)
    if dtype in (torch.float32, torch.float64):
        x = torch.randn(2, 6, 4, 4, **g, requires_grad=True)
        with invflow.backend("fused"):
            flow = invflow.Sequential(
                invflow.ActNorm(6),
                invflow.InvConv1x1(6),
                invflow.AffineCoupling(6, invflow.masks.Channel(0), hidden=8),
            )
            flow = flow.to(device=device, dtype=dtype).eval()
            y, ld = flow(x)
            (gx,) = torch.autograd.grad((y.square().sum() + ld.sum()), x, create_graph=True)
            gx.square().sum().backward()
    return called


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--small", action="store_true", help="skip the largest shape (sanitizers are slow)")
    parser.add_argument(
        "--check-registration",
        action="store_true",
        help="only assert that every op has a kernel for the device's dispatch key",
    )
    args = parser.parse_args(argv)
    if not invflow.fused_available():
        print("gpu_driver: invflow._C is not built", file=sys.stderr)
        return 1
    if args.check_registration:
        return check_registration(args.device)
    if args.device == "cuda":
        # the checked kernels are invflow's (the sanitizers filter on its names); cuDNN's
        # convolution backward of the second-order block made racecheck itself fail on an H200
        # ("failed to handle a hardware exception"), so its convolutions take ATen's kernels
        torch.backends.cudnn.enabled = False
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    called: set[str] = set()
    for dtype in dtypes:
        called |= call_all(args.device, dtype, args.small)
    if args.device == "cuda":
        torch.cuda.synchronize()
    missing = registered_ops() - called
    if missing:
        print(
            f"gpu_driver: ops registered in csrc/registration.cpp but never called: {sorted(missing)}",
            file=sys.stderr,
        )
        return 1
    print(f"gpu_driver: called all {len(called)} ops on {args.device} in {len(dtypes)} dtypes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
