"""The elementwise rational-quadratic spline (Durkan et al. 2019, *Neural Spline Flows*, Sec. 3):
its pure-PyTorch reference, the fused op's autograd and fake kernel, and the dispatching
``rq_spline``.

Semantics (shared by the reference and the kernels of csrc/common/rq_spline.h):

* On [-bound, bound] every entry of x is mapped by a monotone rational-quadratic spline of K
  bins; outside, the map is the identity (linear tails, log|dy/dx| = 0).  An entry exactly at
  +-bound is inside.
* Per entry, ``widths`` and ``heights`` hold K UNNORMALISED values and ``derivatives`` K - 1
  (the inner knots).  As in the paper's reference code (nflows' ``rational_quadratic_spline``):
  w = 1e-3 + (1 - 1e-3 K) softmax(widths), knots x_k = -bound + 2 bound (w_0 + ... + w_{k-1})
  for k = 1 .. K-1, x_0 = -bound, x_K = bound (the same for heights); inner derivatives
  d_k = 1e-3 + softplus(derivatives_{k-1}); the boundary derivatives are d_0 = d_K = 1, so the
  tails join continuously with slope 1.
* Bin search: x lies in bin k when x_k <= x < x_{k+1} (a value on an inner knot belongs to the
  upper bin, +bound to the last).  With theta = (x - x_k) / (x_{k+1} - x_k),
  s = (y_{k+1} - y_k) / (x_{k+1} - x_k) and T = theta (1 - theta) (Eq. 4-5):

      y = y_k + (y_{k+1} - y_k) (s theta^2 + d_k T) / (s + (d_k + d_{k+1} - 2 s) T)
      dy/dx = s^2 (d_{k+1} theta^2 + 2 s T + d_k (1 - theta)^2) / (s + (d_k + d_{k+1} - 2 s) T)^2

* The inverse solves the quadratic of Eq. 6-8 with the stable root 2c / (-b - sqrt(b^2 - 4ac)).
* Precision: float16 / bfloat16 are computed in float32; y has x's dtype and the elementwise
  log|dy/dx| (log|dx/dy| for ``inverse=True``) is float32 for them, else x's dtype.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from .._backend import backend_for
from ..validation import logdet_dtype

#: Minimum bin width and height (as a fraction of the interval) and minimum inner derivative,
#: the defaults of the paper's code (Durkan et al. 2019; nflows ``DEFAULT_MIN_BIN_WIDTH`` ...).
MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3
#: The most bins the minimum width allows (K * MIN_BIN_WIDTH < 1).
MAX_BINS = 999

__all__ = [
    "rq_spline",
    "rq_spline_reference",
    "MIN_BIN_WIDTH",
    "MIN_BIN_HEIGHT",
    "MIN_DERIVATIVE",
    "MAX_BINS",
]


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _knots(unnormalized: torch.Tensor, bound: float, min_size: float) -> torch.Tensor:
    """The K + 1 knots [-bound, ..., bound] of K unnormalised bin sizes (nflows' cumwidths)."""
    K = unnormalized.shape[-1]
    p = min_size + (1.0 - min_size * K) * torch.softmax(unnormalized, dim=-1)
    inner = 2.0 * bound * torch.cumsum(p[..., :-1], dim=-1) - bound
    edge = inner.new_full(inner.shape[:-1] + (1,), bound)
    return torch.cat([-edge, inner, edge], dim=-1)


def _pick(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.gather(-1, idx).squeeze(-1)


def rq_spline_reference(x, widths, heights, derivatives, bound: float, inverse: bool = False):
    """The rational-quadratic spline of Durkan et al. 2019 in plain differentiable PyTorch (the
    specification of the fused op; see the module docstring for the exact semantics).

    x: any shape S; widths, heights: S + (K,) unnormalised; derivatives: S + (K - 1,)
    unnormalised; bound: the half-width of the spline's interval.  Returns (y of shape S and
    x's dtype, logabsdet of shape S: the elementwise log|dy/dx|, or log|dx/dy| when
    ``inverse``, float32 for float16 / bfloat16 inputs).  No argument checks (``rq_spline``
    has them).
    """
    bound = float(bound)
    xw, uw, uh, ud = _wide(x), _wide(widths), _wide(heights), _wide(derivatives)
    xk = _knots(uw, bound, MIN_BIN_WIDTH)
    yk = _knots(uh, bound, MIN_BIN_HEIGHT)
    one = ud.new_ones(ud.shape[:-1] + (1,))
    dk = torch.cat([one, MIN_DERIVATIVE + F.softplus(ud), one], dim=-1)

    inside = (xw >= -bound) & (xw <= bound)
    v = torch.where(inside, xw, torch.zeros_like(xw))  # a finite stand-in in the tails
    search = yk if inverse else xk
    idx = (v.unsqueeze(-1) >= search[..., 1:-1]).sum(-1, keepdim=True)
    x0, x1 = _pick(xk, idx), _pick(xk, idx + 1)
    y0, y1 = _pick(yk, idx), _pick(yk, idx + 1)
    d0, d1 = _pick(dk, idx), _pick(dk, idx + 1)
    w, h = x1 - x0, y1 - y0
    s = h / w
    curv = d0 + d1 - 2.0 * s
    if inverse:
        dy = v - y0
        a = dy * curv + h * (s - d0)
        b = h * d0 - dy * curv
        c = -s * dy
        disc = (b * b - 4.0 * a * c).clamp_min(0.0)  # >= 0 in exact arithmetic (monotone spline)
        theta = (2.0 * c) / (-b - torch.sqrt(disc))
        out = theta * w + x0
    else:
        theta = (v - x0) / w
    t1 = theta * (1.0 - theta)
    den = s + curv * t1
    if not inverse:
        out = y0 + h * (s * theta * theta + d0 * t1) / den
    dnum = s * s * (d1 * theta * theta + 2.0 * s * t1 + d0 * (1.0 - theta) * (1.0 - theta))
    lad = torch.log(dnum) - 2.0 * torch.log(den)
    if inverse:
        lad = -lad
    y = torch.where(inside, out, xw).to(x.dtype)
    lad = torch.where(inside, lad, torch.zeros_like(lad)).to(logdet_dtype(x.dtype))
    return y, lad


# ------------------------------------------------------------------------ the fused op
# torch.ops.invflow.spline_forward / spline_inverse (csrc/cpu/spline.cpp, csrc/cuda/spline.cu)
# and spline_backward, the gradient of either with respect to (input, widths, heights,
# derivatives).  The backward op's own autograd is the second derivative of the reference
# (differentiable PyTorch, recorded when a higher order is asked for, so every order is exact):
# the approximate-mass penalty of Chali et al. 2023 differentiates through the log-det's
# gradient.
def _fused_registered() -> bool:
    from . import fused

    return fused.AVAILABLE and hasattr(torch.ops.invflow, "spline_forward")


def _apply_setup(ctx, inputs, output):
    x, widths, heights, derivatives, bound = inputs
    ctx.bound = bound
    ctx.save_for_backward(x, widths, heights, derivatives)


def _apply_backward(inverse: bool):
    def backward(ctx, grad_out, grad_logabsdet):
        x, widths, heights, derivatives = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(x)
        grads = torch.ops.invflow.spline_backward(
            grad_out, grad_logabsdet, x, widths, heights, derivatives, ctx.bound, inverse
        )
        return (*grads, None)

    return backward


def _backward_setup(ctx, inputs, output):
    grad_out, grad_logabsdet, x, widths, heights, derivatives, bound, inverse = inputs
    ctx.bound, ctx.inverse = bound, inverse
    ctx.has_grad_logabsdet = grad_logabsdet is not None
    if grad_logabsdet is None:
        grad_logabsdet = x.new_zeros(x.shape, dtype=logdet_dtype(x.dtype))
    ctx.save_for_backward(grad_out, grad_logabsdet, x, widths, heights, derivatives)


def _reference_vjp(bound: float, inverse: bool):
    """(grad_out, grad_logabsdet, x, widths, heights, derivatives) -> the reference's vjp."""

    def vjp(grad_out, grad_logabsdet, *inputs):
        _, pullback = torch.func.vjp(lambda *a: rq_spline_reference(*a, bound, inverse), *inputs)
        return pullback((grad_out, grad_logabsdet))

    return vjp


def _backward_backward(ctx, *cotangents):
    # The vjp of the first-order vjp (Hessian-vector products of the reference), with every
    # saved tensor an independent variable (grad_out itself may depend on widths, e.g. in the
    # approximate-mass penalty).  When a higher order is recorded, torch.func composes with the
    # outer graph; else detached leaves and two autograd.grad calls give the same values faster.
    saved = ctx.saved_tensors
    cotangents = tuple(torch.zeros_like(t) if u is None else u for u, t in zip(cotangents, saved[2:]))
    if torch.is_grad_enabled():
        _, pullback = torch.func.vjp(_reference_vjp(ctx.bound, ctx.inverse), *saved)
        second = pullback(cotangents)
    else:
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in saved]
            grad_out, grad_logabsdet, *inputs = leaves
            outputs = rq_spline_reference(*inputs, ctx.bound, ctx.inverse)
            first = torch.autograd.grad(
                outputs, inputs, (grad_out, grad_logabsdet), create_graph=True, materialize_grads=True
            )
            pairs = [(g, u) for g, u in zip(first, cotangents) if g.requires_grad]
            second = (
                torch.autograd.grad(
                    [g for g, _ in pairs],
                    leaves,
                    [u for _, u in pairs],
                    allow_unused=True,
                    materialize_grads=True,
                )
                if pairs
                else [torch.zeros_like(t) for t in leaves]
            )
    d_gout, d_gl, d_x, d_w, d_h, d_d = second
    return d_gout, (d_gl if ctx.has_grad_logabsdet else None), d_x, d_w, d_h, d_d, None, None


def _contiguous_like(t):
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _register() -> None:
    lib = "invflow::"

    def fake_apply(x, widths, heights, derivatives, bound):
        return _contiguous_like(x), x.new_empty(x.shape, dtype=logdet_dtype(x.dtype))

    def fake_backward(grad_out, grad_logabsdet, x, widths, heights, derivatives, bound, inverse):
        return tuple(_contiguous_like(t) for t in (x, widths, heights, derivatives))

    torch.library.register_fake(lib + "spline_forward")(fake_apply)
    torch.library.register_fake(lib + "spline_inverse")(fake_apply)
    torch.library.register_fake(lib + "spline_backward")(fake_backward)
    autograd = torch.library.register_autograd
    autograd(lib + "spline_forward", _apply_backward(False), setup_context=_apply_setup)
    autograd(lib + "spline_inverse", _apply_backward(True), setup_context=_apply_setup)
    autograd(lib + "spline_backward", _backward_backward, setup_context=_backward_setup)


if _fused_registered():
    _register()


def _check(x, widths, heights, derivatives, bound, inverse) -> None:
    where = "invflow.ops.rq_spline"
    for name, t in (("x", x), ("widths", widths), ("heights", heights), ("derivatives", derivatives)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{where}: {name} must be a floating tensor, got dtype {t.dtype}")
        if t.device != x.device:
            raise ValueError(
                f"{where}: {name} is on {t.device} but x is on {x.device}; move both to one device"
            )
    S = tuple(x.shape)
    if widths.dim() != x.dim() + 1 or tuple(widths.shape[:-1]) != S:
        raise ValueError(
            f"{where}: widths must have shape x.shape + (bins,) = {list(S)} + [K], got {list(widths.shape)}"
        )
    K = widths.shape[-1]
    if not 2 <= K <= MAX_BINS:
        raise ValueError(
            f"{where}: the number of bins (widths.shape[-1]) must be in [2, {MAX_BINS}], got {K}"
        )
    if tuple(heights.shape) != tuple(widths.shape):
        raise ValueError(
            f"{where}: heights must have the shape of widths {list(widths.shape)}, got {list(heights.shape)}"
        )
    if tuple(derivatives.shape) != S + (K - 1,):
        raise ValueError(
            f"{where}: derivatives must have shape x.shape + (bins - 1,) = {list(S + (K - 1,))} (the inner "
            f"knots), got {list(derivatives.shape)}"
        )
    if isinstance(bound, bool) or not isinstance(bound, numbers.Real):
        raise TypeError(f"{where}: bound must be a real number, got {type(bound).__name__}")
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"{where}: bound must be positive and finite, got {bound}")
    if not isinstance(inverse, bool):
        raise TypeError(f"{where}: inverse must be True or False, got {type(inverse).__name__}")


def rq_spline(x, widths, heights, derivatives, bound: float, inverse: bool = False):
    """Elementwise rational-quadratic spline with linear tails (Durkan et al. 2019, Sec. 3.1).

    x: any shape S (the entries to transform); widths, heights: S + (K,) UNNORMALISED bin
    widths and heights (softmax inside, minimum 1e-3 of the interval); derivatives: S + (K-1,)
    UNNORMALISED inner-knot derivatives (softplus + 1e-3 inside; the boundary derivatives are
    1); bound > 0: the spline acts on [-bound, bound], the identity outside.  ``inverse=True``
    applies the inverse map.  Returns (y: shape S, x's dtype; logabsdet: shape S, the
    elementwise log|dy/dx| (log|dx/dy| for the inverse), float32 for float16 / bfloat16
    inputs); sum it over the transformed entries for a layer's log-det.  Runs the fused op or
    the reference (``rq_spline_reference``) by ``invflow.backend``; arguments are promoted to
    one dtype.  Raises TypeError / ValueError for tensors of the wrong kind or shape, fewer than
    2 (or more than 999) bins, or a bound that is not positive and finite.
    """
    _check(x, widths, heights, derivatives, bound, inverse)
    dtype = torch.promote_types(
        torch.promote_types(x.dtype, widths.dtype), torch.promote_types(heights.dtype, derivatives.dtype)
    )
    x, widths, heights, derivatives = (t.to(dtype) for t in (x, widths, heights, derivatives))
    if backend_for(x) == "fused" and _fused_registered():
        op = torch.ops.invflow.spline_inverse if inverse else torch.ops.invflow.spline_forward
        return op(x, widths, heights, derivatives, float(bound))
    return rq_spline_reference(x, widths, heights, derivatives, float(bound), inverse)
