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
  log|det| = sum of log s(raw) over the transformed entries (Glow Table 1, RealNVP Eq. 7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
    """Returns (s, log s, d log s / d raw, d^2 log s / d raw^2) of csrc/common/scale.h."""
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


def actnorm_forward(x, bias, log_scale):
    y = (x + channel_view(bias, x)) * channel_view(torch.exp(log_scale), x)
    logdet = per_sample(log_scale.sum() * inner_size(x), x.shape[0])
    return y, logdet


def actnorm_inverse(y, bias, log_scale):
    x = y * channel_view(torch.exp(-log_scale), y) - channel_view(bias, y)
    logdet = per_sample(-log_scale.sum() * inner_size(y), y.shape[0])
    return x, logdet


def channel_mix(x, weight):
    if x.dim() == 4:
        return F.conv2d(x, weight[:, :, None, None])
    if x.dim() == 2:
        return x @ weight.t()
    return torch.einsum("oi,bi...->bo...", weight, x)


def _split(h, channels):
    return h[:, :channels], h[:, channels:]


def coupling_forward(x, h, mask, scale, clamp):
    raw, shift = _split(h, x.shape[1])
    s, log_s, _, _ = scale_terms(raw, scale, clamp)
    y = s * x + shift
    if mask is not None:
        keep = mask != 0
        y = torch.where(keep, y, x)
        log_s = torch.where(keep, log_s, torch.zeros_like(log_s))
    return y, log_s.flatten(1).sum(1)


def coupling_inverse(y, h, mask, scale, clamp):
    raw, shift = _split(h, y.shape[1])
    _, log_s, _, _ = scale_terms(raw, scale, clamp)
    x = (y - shift) * torch.exp(-log_s)
    if mask is not None:
        keep = mask != 0
        x = torch.where(keep, x, y)
        log_s = torch.where(keep, log_s, torch.zeros_like(log_s))
    return x, -log_s.flatten(1).sum(1)


def coupling_cl_forward(x, h, scale, clamp):
    """Channels-last coupling: x [B, ..., C], h [B, ..., 2C] with h[..., :C] = raw and
    h[..., C:] = t at every position; y = s(raw) * x + t, log|det| = sum of log s(raw)."""
    raw, shift = h[..., : x.shape[-1]], h[..., x.shape[-1]:]
    s, log_s, _, _ = scale_terms(raw, scale, clamp)
    return s * x + shift, log_s.flatten(1).sum(1)
