"""Pure-PyTorch reference of every fused op, with identical semantics.

These are written the way a flow library would write them in eager PyTorch; they are the
ground truth the fused kernels are tested against, and the backend used when the extension
is not built.  Conventions (shared with csrc/):

* tensors are [B, C, ...]; N is the product of the trailing dimensions;
* actnorm: y = (x + b) * exp(log_s) per channel, log|det| = N * sum(log_s) per sample
  (Glow, Kingma & Dhariwal 2018, Sec. 3.1 / Table 1);
* channel_mix: y = W x per position (the invertible 1x1 convolution, Glow Sec. 3.2);
* coupling: h = [raw, t] along channels (h is [B, 2C, ...]), y = s(raw) * x + t on the
  entries where ``mask != 0`` (all entries without a mask), y = x elsewhere, and
  log|det| = sum of log s(raw) over the transformed entries (Glow Table 1, RealNVP Eq. 7);
  the inverse is x = (y - t) * exp(-log s), with IEEE results at the ends (an s that
  underflows to 0 inverts to +-inf, as in every backend);
* precision: float16 / bfloat16 inputs are computed in float32 and rounded once at the end,
  and every log-det is returned in ``logdet_dtype`` (float32 for float16 / bfloat16 / float32
  inputs, float64 for float64), so a half-precision log-det over C*H*W terms neither
  overflows nor loses its digits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..validation import logdet_dtype  # noqa: F401  (the ops and their callers use it from here)

SCALES = ("sigmoid", "exp", "tanh")


def inner_size(x: torch.Tensor) -> int:
    """Product of the dimensions after [B, C]."""
    n = 1
    for d in x.shape[2:]:
        n *= d
    return n


def channel_view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-channel vector [C] so it broadcasts against ``like`` [B, C, ...]."""
    return t.view((1, -1) + (1,) * (like.dim() - 2))


def reduce_dims(x: torch.Tensor) -> list[int]:
    """All dimensions of [B, C, ...] except the channel dimension."""
    return [0] + list(range(2, x.dim()))


def per_sample(value: torch.Tensor, batch: int) -> torch.Tensor:
    """A scalar log-det term as a [batch] vector (differentiable; cheaper than ``repeat``)."""
    return value.expand(batch).clone()


def scale_terms(raw: torch.Tensor, scale: str, clamp: float):
    """The coupling's scale s(raw) and its derivatives, elementwise (csrc/common/scale.h).

    Returns (s, log s, d log s / d raw, d^2 log s / d raw^2), each shaped like ``raw``.
    ``scale``: "sigmoid" s = sigmoid(raw + 2) (Glow, Kingma & Dhariwal 2018), "exp"
    s = exp(raw) (RealNVP, Dinh et al. 2017), "tanh" s = exp(clamp * tanh(raw / clamp))
    (the bounded form of FrEIA).  Raises ValueError for another ``scale``.
    """
    if scale == "sigmoid":
        z = raw + 2.0
        s = torch.sigmoid(z)
        return s, F.logsigmoid(z), 1.0 - s, -s * (1.0 - s)
    if scale == "exp":
        s = torch.exp(raw)
        return s, raw, torch.ones_like(raw), torch.zeros_like(raw)
    if scale == "tanh":
        th = torch.tanh(raw / clamp)
        log_s = clamp * th
        d = 1.0 - th * th
        return torch.exp(log_s), log_s, d, -2.0 * th * d / clamp
    raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")


def _wide(t: torch.Tensor) -> torch.Tensor:
    """t in its accumulation dtype (float32 for float16 / bfloat16, else unchanged)."""
    return t.to(logdet_dtype(t.dtype)) if t.dtype in (torch.float16, torch.bfloat16) else t


def actnorm_forward(x, bias, log_scale):
    xw, ls = _wide(x), _wide(log_scale)
    y = (xw + channel_view(_wide(bias), x)) * channel_view(torch.exp(ls), x)
    logdet = per_sample(ls.sum() * inner_size(x), x.shape[0])
    return y.to(x.dtype), logdet


def actnorm_inverse(y, bias, log_scale):
    yw, ls = _wide(y), _wide(log_scale)
    x = yw * channel_view(torch.exp(-ls), y) - channel_view(_wide(bias), y)
    logdet = per_sample(-ls.sum() * inner_size(y), y.shape[0])
    return x.to(y.dtype), logdet


def channel_mix(x, weight):
    if torch.is_autocast_enabled(x.device.type):  # the flow's own maps never run in autocast's dtype
        with torch.autocast(x.device.type, enabled=False):
            return channel_mix(x, weight)
    xw, w = _wide(x), _wide(weight)
    if x.dim() == 4 and x.numel() > 0:  # conv2d refuses empty images; einsum below does not
        y = F.conv2d(xw, w[:, :, None, None])
    elif x.dim() == 2:
        y = xw @ w.t()
    else:
        y = torch.einsum("oi,bi...->bo...", w, xw)
    return y.to(x.dtype)


def _split(h, channels):
    return h[:, :channels], h[:, channels:]


def coupling_forward(x, h, mask, scale, clamp):
    raw, shift = _split(_wide(h), x.shape[1])
    s, log_s, _, _ = scale_terms(raw, scale, clamp)
    y = (s * _wide(x) + shift).to(x.dtype)
    if mask is not None:
        keep = mask != 0
        y = torch.where(keep, y, x)
        log_s = torch.where(keep, log_s, torch.zeros_like(log_s))
    return y, log_s.flatten(1).sum(1)


def coupling_inverse(y, h, mask, scale, clamp):
    raw, shift = _split(_wide(h), y.shape[1])
    _, log_s, _, _ = scale_terms(raw, scale, clamp)
    x = ((_wide(y) - shift) * torch.exp(-log_s)).to(y.dtype)
    if mask is not None:
        keep = mask != 0
        x = torch.where(keep, x, y)
        log_s = torch.where(keep, log_s, torch.zeros_like(log_s))
    return x, -log_s.flatten(1).sum(1)


def coupling_cl_forward(x, h, scale, clamp):
    """Channels-last coupling: x [B, ..., C], h [B, ..., 2C] with h[..., :C] = raw and
    h[..., C:] = t at every position; y = s(raw) * x + t, log|det| = sum of log s(raw)."""
    hw = _wide(h)
    raw, shift = hw[..., : x.shape[-1]], hw[..., x.shape[-1] :]
    s, log_s, _, _ = scale_terms(raw, scale, clamp)
    return (s * _wide(x) + shift).to(x.dtype), log_s.flatten(1).sum(1)
