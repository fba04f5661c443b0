"""Functional flow ops, dispatched to the active backend (see ``invflow.backend``).

Every function returns the transformed tensor and, where the op has one, the per-sample
log|det| of its Jacobian (shape [B]).  Semantics are documented in
``invflow.ops.reference``; ``invflow.ops.fused`` holds the kernel registrations.
"""

from __future__ import annotations

from .._backend import current_backend
from . import channels_last, fused, reference

__all__ = ["actnorm", "channel_mix", "coupling", "coupling_cl", "fused", "reference", "implementation"]


def implementation():
    """The module (``fused`` or ``reference``) serving the active backend."""
    return fused if current_backend() == "fused" else reference


def actnorm(x, bias, log_scale, inverse: bool = False):
    """y = (x + b) * exp(log_s) per channel, or its inverse; returns (y, logdet [B])."""
    impl = implementation()
    return (impl.actnorm_inverse if inverse else impl.actnorm_forward)(x, bias, log_scale)


def channel_mix(x, weight):
    """y = W x at every position of [B, C, ...] (invertible 1x1 convolution without log-det)."""
    return implementation().channel_mix(x, weight)


def coupling(x, h, mask=None, scale: str = "sigmoid", clamp: float = 2.0, inverse: bool = False):
    """Affine coupling y = s(raw) * x + t with h = [raw, t]; returns (y, logdet [B])."""
    impl = implementation()
    return (impl.coupling_inverse if inverse else impl.coupling_forward)(x, h, mask, scale, clamp)


def coupling_cl(x, h, scale: str = "sigmoid", clamp: float = 2.0):
    """Channels-last affine coupling: x [B, ..., C], h [B, ..., 2C] = [raw, t] along the last
    dimension; returns (s(raw) * x + t, logdet [B]).  See ``invflow.ops.channels_last``."""
    if current_backend() == "fused":
        return channels_last.coupling_cl_forward(x, h, scale, clamp)
    return reference.coupling_cl_forward(x, h, scale, clamp)
