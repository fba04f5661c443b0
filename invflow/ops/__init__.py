"""Functional flow ops, dispatched to the active backend (see ``invflow.backend``).

Every function returns the transformed tensor and, where the op has one, the per-sample
log|det| of its Jacobian (shape [B], in ``reference.logdet_dtype``: float32 for float16 /
bfloat16 inputs).  Semantics are documented in ``invflow.ops.reference`` (the pure-PyTorch
spec of every op); ``invflow.ops.fused`` holds the kernel registrations (fake kernels and
autograd of every op of csrc/registration.cpp, docs/kernels.md).  ``scale_terms`` (the
coupling's scale function and its derivatives) is re-exported here for other packages.

Mixed precision: the arguments of an op are promoted to one dtype first (under
``torch.autocast`` an st-net may return bfloat16 parameters for a float32 x: the op runs in
float32), and the flow's own maps never run in autocast's low precision, so the invertible
path and its log-dets stay exact; only the st-nets run in autocast's dtype.
"""

from __future__ import annotations

import torch

from .._backend import backend_for, current_backend
from . import fused, reference
from .reference import scale_terms
from .spline import rq_spline, rq_spline_reference

__all__ = [
    "actnorm",
    "channel_mix",
    "coupling",
    "coupling_cl",
    "fused",
    "reference",
    "implementation",
    "rq_spline",
    "rq_spline_reference",
    "scale_terms",
]


def implementation(x: torch.Tensor | None = None):
    """The module (``fused`` or ``reference``) serving ops on ``x`` (the CPU default without x)."""
    name = current_backend() if x is None else backend_for(x)
    return fused if name == "fused" else reference


def _common(x: torch.Tensor, *others: torch.Tensor | None) -> tuple:
    """x and ``others`` cast to their promoted dtype (unchanged when they already agree)."""
    dtype = x.dtype
    for t in others:
        if t is not None and t.dtype != dtype:
            dtype = torch.promote_types(dtype, t.dtype)
    return tuple(None if t is None else t.to(dtype) for t in (x, *others))


def actnorm(x, bias, log_scale, inverse: bool = False):
    """y = (x + b) * exp(log_s) per channel, or its inverse; returns (y, logdet [B])."""
    x, bias, log_scale = _common(x, bias, log_scale)
    impl = implementation(x)
    return (impl.actnorm_inverse if inverse else impl.actnorm_forward)(x, bias, log_scale)


def channel_mix(x, weight):
    """y = W x at every position of [B, C, ...] (invertible 1x1 convolution without log-det)."""
    x, weight = _common(x, weight)
    return implementation(x).channel_mix(x, weight)


def coupling(x, h, mask=None, scale: str = "sigmoid", clamp: float = 2.0, inverse: bool = False):
    """Affine coupling y = s(raw) * x + t with h = [raw, t]; returns (y, logdet [B])."""
    x, h, mask = _common(x, h, mask)
    impl = implementation(x)
    return (impl.coupling_inverse if inverse else impl.coupling_forward)(x, h, mask, scale, clamp)


def coupling_cl(x, h, scale: str = "sigmoid", clamp: float = 2.0):
    """Channels-last affine coupling: x [B, ..., C], h [B, ..., 2C] = [raw, t] along the last
    dimension; returns (s(raw) * x + t, logdet [B]).  See ``fused.coupling_cl_forward``."""
    x, h = _common(x, h)
    if backend_for(x) == "fused":
        return fused.coupling_cl_forward(x, h, scale, clamp)
    return reference.coupling_cl_forward(x, h, scale, clamp)
