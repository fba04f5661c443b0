"""Python side of the fused kernels: loads ``invflow._C`` and registers, for every op of
``TORCH_LIBRARY(invflow)`` (csrc/registration.cpp), a fake (meta) kernel and its autograd;
then the functional surface the layers call (``invflow.ops`` dispatches between this module
and ``invflow.ops.reference``).

Double backward: the backward of each forward op is itself a fused op
(``actnorm_backward``, ``channel_mix_backward``, ``coupling_backward``,
``coupling_cl_backward``) whose own autograd is written below in differentiable PyTorch, so
gradients of gradients (the approximate-mass penalty of Chali et al. 2023, Eq. 2) are exact
to any order.  The inverse ops' backward is differentiable PyTorch directly.  When no higher
order is being recorded (grad mode off, e.g. the second backward of the penalty), the
autograd of ``coupling_cl_backward`` runs the closed-form kernel
``coupling_cl_double_backward`` instead of the eager formula: the same values in one pass.
``NO_AUTOGRAD`` names the ops that need no autograd, with the reason.
"""

from __future__ import annotations

import torch

from . import reference as ref

try:
    from .. import _C  # noqa: F401  (importing registers the ops)

    AVAILABLE = True
    IMPORT_ERROR = None
except ImportError as exc:  # the extension is not built
    AVAILABLE = False
    IMPORT_ERROR = str(exc)


def _zeros_if_none(g, like):
    return torch.zeros_like(like) if g is None else g


def _sum_except_channel(t):
    return t.sum(dim=ref.reduce_dims(t))


# --------------------------------------------------------------------------- actnorm
def _actnorm_setup(ctx, inputs, output):
    x, bias, log_scale = inputs
    ctx.save_for_backward(x, bias, log_scale)


def _actnorm_backward(ctx, grad_y, grad_logdet):
    x, bias, log_scale = ctx.saved_tensors
    grad_y = _zeros_if_none(grad_y, x)
    return torch.ops.invflow.actnorm_backward(grad_y, grad_logdet, x, bias, log_scale)


def _actnorm_bwd_setup(ctx, inputs, output):
    grad_y, grad_logdet, x, bias, log_scale = inputs
    ctx.has_grad_logdet = grad_logdet is not None
    ctx.save_for_backward(grad_y, x, bias, log_scale)


def _actnorm_bwd_backward(ctx, u_x, u_b, u_ls):
    # actnorm_backward: gx = gy*s, gb = sum gy*s, gls = sum gy*(x+b)*s + N*sum gl.
    gy, x, bias, log_scale = ctx.saved_tensors
    u_x, u_b, u_ls = (_zeros_if_none(u, t) for u, t in ((u_x, x), (u_b, bias), (u_ls, log_scale)))
    s = ref.channel_view(torch.exp(log_scale), x)
    xb = x + ref.channel_view(bias, x)
    uls_v = ref.channel_view(u_ls, x)
    common = s * (u_x + ref.channel_view(u_b, x) + uls_v * xb)
    d_gy = common
    d_gl = None
    if ctx.has_grad_logdet:
        d_gl = ref.per_sample(u_ls.sum() * ref.inner_size(x), x.shape[0])
    d_x = uls_v * gy * s
    d_b = _sum_except_channel(d_x)
    d_ls = _sum_except_channel(gy * common)
    return d_gy, d_gl, d_x, d_b, d_ls


def _actnorm_inverse_setup(ctx, inputs, output):
    y, bias, log_scale = inputs
    ctx.save_for_backward(y, bias, log_scale)


def _actnorm_inverse_backward(ctx, grad_x, grad_logdet):
    # x = y * exp(-log_s) - b,  logdet = -N * sum(log_s)
    y, bias, log_scale = ctx.saved_tensors
    grad_x = _zeros_if_none(grad_x, y)
    inv_s = ref.channel_view(torch.exp(-log_scale), y)
    d_y = grad_x * inv_s
    d_b = -_sum_except_channel(grad_x)
    d_ls = -_sum_except_channel(grad_x * y * inv_s)
    if grad_logdet is not None:
        d_ls = d_ls - grad_logdet.sum() * ref.inner_size(y)
    return d_y, d_b, d_ls


# ----------------------------------------------------------------------- channel mix
def _mix_setup(ctx, inputs, output):
    x, weight = inputs
    ctx.save_for_backward(x, weight)


def _mix_backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    if not ctx.needs_input_grad[1]:  # a fixed W (FixedLinear's buffer): no dL/dW GEMM at all
        return torch.ops.invflow.channel_mix(grad_y, weight.t()), None
    return torch.ops.invflow.channel_mix_backward(grad_y, x, weight)


def _mix_bwd_setup(ctx, inputs, output):
    grad_y, x, weight = inputs
    ctx.save_for_backward(grad_y, x, weight)


def _mix_bwd_backward(ctx, u_x, u_w):
    # channel_mix_backward: gx = W^T gy, gW = sum gy x^T (both bilinear).
    gy, x, weight = ctx.saved_tensors
    mix = torch.ops.invflow.channel_mix
    d_gy = d_x = d_w = None
    if u_x is not None:
        d_gy = mix(u_x, weight)
        d_w = torch.ops.invflow.channel_mix_backward(gy, u_x, weight)[1]
    if u_w is not None:
        extra = mix(x, u_w)
        d_gy = extra if d_gy is None else d_gy + extra
        d_x = mix(gy, u_w.t())
    return d_gy, d_x, d_w


# -------------------------------------------------------------------------- coupling
def _coupling_setup(ctx, inputs, output):
    x, h, mask, scale, clamp = inputs
    ctx.scale, ctx.clamp = scale, clamp
    ctx.save_for_backward(x, h, mask)


def _coupling_backward(ctx, grad_y, grad_logdet):
    x, h, mask = ctx.saved_tensors
    grad_y = _zeros_if_none(grad_y, x)
    gx, gh = torch.ops.invflow.coupling_backward(grad_y, grad_logdet, x, h, mask, ctx.scale, ctx.clamp)
    return gx, gh, None, None, None


def _coupling_bwd_setup(ctx, inputs, output):
    grad_y, grad_logdet, x, h, mask, scale, clamp = inputs
    ctx.scale, ctx.clamp = scale, clamp
    ctx.has_grad_logdet = grad_logdet is not None
    gl = grad_logdet if grad_logdet is not None else x.new_zeros(x.shape[0])
    ctx.save_for_backward(grad_y, gl, x, h, mask)


def _where_keep(mask, a, b):
    return a if mask is None else torch.where(mask != 0, a, b)


def _coupling_bwd_backward(ctx, u_x, u_h):
    # coupling_backward: gx = gy*s, g_raw = (gy*x*s + gl)*D, g_t = gy on transformed entries
    # (gx = gy elsewhere), with D = dlog s/draw and D2 = d^2 log s/draw^2.
    gy, gl, x, h, mask = ctx.saved_tensors
    C = x.shape[1]
    u_x = _zeros_if_none(u_x, x)
    u_h = _zeros_if_none(u_h, h)
    u_r, u_t = u_h[:, :C], u_h[:, C:]
    s, _, d1, d2 = ref.scale_terms(h[:, :C], ctx.scale, ctx.clamp)
    gl_v = gl.view((-1,) + (1,) * (x.dim() - 1))
    zero = torch.zeros_like(x)
    sd = s * d1
    d_gy = _where_keep(mask, u_x * s + u_r * x * sd + u_t, u_x)
    d_gl = _where_keep(mask, u_r * d1, zero).flatten(1).sum(1) if ctx.has_grad_logdet else None
    d_x = _where_keep(mask, u_r * gy * sd, zero)
    d_r = _where_keep(mask, u_x * gy * sd + u_r * (gy * x * s * (d1 * d1 + d2) + gl_v * d2), zero)
    d_h = torch.cat([d_r, torch.zeros_like(d_r)], dim=1)
    return d_gy, d_gl, d_x, d_h, None, None, None


def _coupling_inverse_setup(ctx, inputs, output):
    y, h, mask, scale, clamp = inputs
    ctx.scale, ctx.clamp = scale, clamp
    ctx.save_for_backward(y, h, mask)


def _coupling_inverse_backward(ctx, grad_x, grad_logdet):
    # x = (y - t) / s on transformed entries, logdet = -sum log s.
    y, h, mask = ctx.saved_tensors
    C = y.shape[1]
    grad_x = _zeros_if_none(grad_x, y)
    raw, shift = h[:, :C], h[:, C:]
    _, log_s, d1, _ = ref.scale_terms(raw, ctx.scale, ctx.clamp)
    inv_s = torch.exp(-log_s)
    x = (y - shift) * inv_s
    zero = torch.zeros_like(y)
    gl_term = 0.0 if grad_logdet is None else grad_logdet.view((-1,) + (1,) * (y.dim() - 1))
    d_y = _where_keep(mask, grad_x * inv_s, grad_x)
    d_t = _where_keep(mask, -grad_x * inv_s, zero)
    d_r = _where_keep(mask, -(grad_x * x + gl_term) * d1, zero)
    return d_y, torch.cat([d_r, d_t], dim=1), None, None, None


# ----------------------------------------------------------------------- coupling_cl
# Channels last: x [B, ..., C], h [B, ..., 2C] = [raw, t] along the last dimension.
def _coupling_cl_setup(ctx, inputs, output):
    x, h, scale, clamp = inputs
    ctx.scale, ctx.clamp = scale, clamp
    ctx.save_for_backward(x, h)


def _coupling_cl_backward(ctx, grad_y, grad_logdet):
    x, h = ctx.saved_tensors
    grad_y = _zeros_if_none(grad_y, x)
    gx, gh = torch.ops.invflow.coupling_cl_backward(grad_y, grad_logdet, x, h, ctx.scale, ctx.clamp)
    return gx, gh, None, None


def _coupling_cl_bwd_setup(ctx, inputs, output):
    grad_y, grad_logdet, x, h, scale, clamp = inputs
    ctx.scale, ctx.clamp = scale, clamp
    ctx.has_grad_logdet = grad_logdet is not None
    gl = grad_logdet if grad_logdet is not None else x.new_zeros(x.shape[0], dtype=ref.logdet_dtype(x.dtype))
    ctx.save_for_backward(grad_y, gl, x, h)


def _coupling_cl_bwd_backward(ctx, u_x, u_h):
    # coupling_cl_backward: gx = gy*s, g_raw = (gy*x*s + gl)*D, g_t = gy, with
    # D = dlog s/draw and D2 = d^2 log s/draw^2 (as the channels-first coupling).
    gy, gl, x, h = ctx.saved_tensors
    C = x.shape[-1]
    u_x = _zeros_if_none(u_x, x)
    u_h = _zeros_if_none(u_h, h)
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


# ---------------------------------------------------------------------- registration
#: Ops registered without autograd, and why (tests/invflow/ops/test_registration.py checks
#: that every other op has one).
NO_AUTOGRAD = {
    "coupling_cl_double_backward": "called only with grad mode off, by the autograd of "
    "coupling_cl_backward; higher orders go through its eager formula instead",
}


def _like(t):
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _batch_vector(t):
    return t.new_empty(t.shape[0], dtype=ref.logdet_dtype(t.dtype))


def _register() -> None:
    lib = "invflow::"
    fake = torch.library.register_fake
    fake(lib + "actnorm_forward")(lambda x, b, ls: (_like(x), _batch_vector(x)))
    fake(lib + "actnorm_inverse")(lambda y, b, ls: (_like(y), _batch_vector(y)))
    fake(lib + "actnorm_backward")(lambda gy, gl, x, b, ls: (_like(x), _like(b), _like(ls)))
    fake(lib + "channel_mix")(lambda x, w: _like(x))
    fake(lib + "channel_mix_backward")(lambda gy, x, w: (_like(x), _like(w)))
    fake(lib + "coupling_forward")(lambda x, h, m, s, c: (_like(x), _batch_vector(x)))
    fake(lib + "coupling_inverse")(lambda y, h, m, s, c: (_like(y), _batch_vector(y)))
    fake(lib + "coupling_backward")(lambda gy, gl, x, h, m, s, c: (_like(x), _like(h)))
    fake(lib + "coupling_cl_forward")(lambda x, h, s, c: (_like(x), _batch_vector(x)))
    fake(lib + "coupling_cl_backward")(lambda gy, gl, x, h, s, c: (_like(x), _like(h)))
    fake(lib + "coupling_cl_double_backward")(
        lambda ux, uh, gy, gl, x, h, s, c: (_like(x), _batch_vector(x), _like(x), _like(h))
    )

    autograd = torch.library.register_autograd
    autograd(lib + "actnorm_forward", _actnorm_backward, setup_context=_actnorm_setup)
    autograd(lib + "actnorm_backward", _actnorm_bwd_backward, setup_context=_actnorm_bwd_setup)
    autograd(lib + "actnorm_inverse", _actnorm_inverse_backward, setup_context=_actnorm_inverse_setup)
    autograd(lib + "channel_mix", _mix_backward, setup_context=_mix_setup)
    autograd(lib + "channel_mix_backward", _mix_bwd_backward, setup_context=_mix_bwd_setup)
    autograd(lib + "coupling_forward", _coupling_backward, setup_context=_coupling_setup)
    autograd(lib + "coupling_backward", _coupling_bwd_backward, setup_context=_coupling_bwd_setup)
    autograd(lib + "coupling_inverse", _coupling_inverse_backward, setup_context=_coupling_inverse_setup)
    autograd(lib + "coupling_cl_forward", _coupling_cl_backward, setup_context=_coupling_cl_setup)
    autograd(lib + "coupling_cl_backward", _coupling_cl_bwd_backward, setup_context=_coupling_cl_bwd_setup)


if AVAILABLE:
    _register()


# ------------------------------------------------------------ the functional surface
def actnorm_forward(x, bias, log_scale):
    return torch.ops.invflow.actnorm_forward(x, bias, log_scale)


def actnorm_inverse(y, bias, log_scale):
    return torch.ops.invflow.actnorm_inverse(y, bias, log_scale)


def channel_mix(x, weight):
    return torch.ops.invflow.channel_mix(x, weight)


def coupling_forward(x, h, mask, scale, clamp):
    return torch.ops.invflow.coupling_forward(x, h, mask, scale, float(clamp))


def coupling_inverse(y, h, mask, scale, clamp):
    return torch.ops.invflow.coupling_inverse(y, h, mask, scale, float(clamp))


def coupling_cl_forward(x, h, scale, clamp):
    """Channels-last coupling: x [B, ..., C], h [B, ..., 2C] with h[..., :C] = raw and
    h[..., C:] = t at every position (the output of a channels-last st-net); returns
    (y = s(raw) * x + t, log|det| [B] = the sum of log s(raw) per sample), Glow (Kingma &
    Dhariwal 2018, Table 1).  Semantics: ``reference.coupling_cl_forward``."""
    return torch.ops.invflow.coupling_cl_forward(x, h, scale, float(clamp))
