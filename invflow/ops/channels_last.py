"""Fused ops on channels-last tensors (channels in the last dimension): fake kernels and
autograd (first and second order) of the ``TORCH_LIBRARY(invflow)`` ops defined in
csrc/cpu/coupling_cl.cpp, and their functional surface.

``coupling_cl_forward(x, h, scale, clamp)``: x [B, ..., C], h [B, ..., 2C] with
h[..., :C] = raw and h[..., C:] = t at every position (the output of a channels-last
st-net, viewed with its channels last); y = s(raw) * x + t and log|det| = sum of log s(raw)
per sample (Glow, Kingma & Dhariwal 2018, Table 1).  Semantics: ``reference.coupling_cl_forward``.
First-order autograd is registered in C++ (csrc/cpu/coupling_cl.cpp, the Autograd key: the
Python wrapper of torch.library cost more than the kernel); its backward
``coupling_cl_backward`` is itself an op whose autograd is written below in differentiable
PyTorch, so gradients of any order are exact (the approximate-mass penalty).  When no
higher order is being recorded (grad mode off, e.g. the second backward of the penalty),
that autograd runs the closed-form kernel ``coupling_cl_double_backward`` instead of the
eager formula: the same values in one pass.
"""

from __future__ import annotations

import torch

from . import fused
from . import reference as ref


def _bwd_setup(ctx, inputs, output):
    grad_y, grad_logdet, x, h, scale, clamp = inputs
    ctx.scale, ctx.clamp = scale, clamp
    ctx.has_grad_logdet = grad_logdet is not None
    gl = grad_logdet if grad_logdet is not None else x.new_zeros(x.shape[0], dtype=ref.logdet_dtype(x.dtype))
    ctx.save_for_backward(grad_y, gl, x, h)


def _bwd_backward(ctx, u_x, u_h):
    # coupling_cl_backward: gx = gy*s, g_raw = (gy*x*s + gl)*D, g_t = gy, with
    # D = dlog s/draw and D2 = d^2 log s/draw^2 (as the channels-first coupling).
    gy, gl, x, h = ctx.saved_tensors
    C = x.shape[-1]
    u_x = torch.zeros_like(x) if u_x is None else u_x
    u_h = torch.zeros_like(h) if u_h is None else u_h
    if not torch.is_grad_enabled():
        # no third order asked for: the closed-form kernel computes the same in one pass
        d_gy, d_gl, d_x, d_h = torch.ops.invflow.coupling_cl_double_backward(
            u_x, u_h, gy, gl, x, h, ctx.scale, ctx.clamp
        )
        return d_gy, (d_gl if ctx.has_grad_logdet else None), d_x, d_h, None, None
    u_r, u_t = u_h[..., :C], u_h[..., C:]
    s, _, d1, d2 = ref.scale_terms(h[..., :C], ctx.scale, ctx.clamp)
    gl_v = gl.view((-1,) + (1,) * (x.dim() - 1))
    sd = s * d1
    d_gy = u_x * s + u_r * x * sd + u_t
    d_gl = (u_r * d1).flatten(1).sum(1) if ctx.has_grad_logdet else None
    d_x = u_r * gy * sd
    d_r = u_x * gy * sd + u_r * (gy * x * s * (d1 * d1 + d2) + gl_v * d2)
    d_h = torch.cat([d_r, torch.zeros_like(d_r)], dim=-1)
    return d_gy, d_gl, d_x, d_h, None, None


def _like(t):
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _register() -> None:
    lib = "invflow::"
    torch.library.register_fake(lib + "coupling_cl_forward")(
        lambda x, h, s, c: (_like(x), fused._batch_vector(x))
    )
    torch.library.register_fake(lib + "coupling_cl_backward")(lambda gy, gl, x, h, s, c: (_like(x), _like(h)))
    torch.library.register_fake(lib + "coupling_cl_double_backward")(
        lambda ux, uh, gy, gl, x, h, s, c: (_like(x), fused._batch_vector(x), _like(x), _like(h))
    )
    torch.library.register_autograd(lib + "coupling_cl_backward", _bwd_backward, setup_context=_bwd_setup)


if fused.AVAILABLE:
    _register()


def coupling_cl_forward(x, h, scale, clamp):
    return torch.ops.invflow.coupling_cl_forward(x, h, scale, float(clamp))
