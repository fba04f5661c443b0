"""Invertible 1x1 convolution (Glow, Kingma & Dhariwal 2018, Sec. 3.2)."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..ops.reference import inner_size, per_sample
from ..validation import LOW_PRECISION, check_input, check_number, logdet_dtype
from .base import Flow


class InvConv1x1(Flow):
    """y = W x at every position; log|det| = N * log|det W|, N = H * W.

    With ``lu=True`` (default) W is kept in the LU form of Glow Eq. (10),
    W = P L (U + diag(s)), with P a fixed permutation, L unit lower-triangular, U strictly
    upper-triangular and s = sign * exp(log|s|), so log|det W| = sum(log|s|) costs O(C).
    With ``lu=False`` W is a free matrix and log|det W| comes from ``torch.linalg.slogdet``.
    W starts as a random rotation.  Works on [B, C], [B, C, L] and [B, C, H, W].

    Low precision: for float16 / bfloat16 parameters or inputs, and under ``torch.autocast``,
    the LU assembly, ``slogdet`` and the inverse are computed in float32 (torch has no
    low-precision ``linalg.inv_ex`` / ``slogdet``, and a half-precision LU product loses W's
    invertibility); W is then cast to the input's dtype and log|det| is returned in float32.
    """

    def __init__(self, num_channels: int, lu: bool = True):
        super().__init__()
        check_number(num_channels, "num_channels", "InvConv1x1", low=1, integer=True)
        self.num_channels = num_channels
        self.lu = lu
        w = torch.linalg.qr(torch.randn(num_channels, num_channels))[0]
        if not lu:
            self.weight = nn.Parameter(w)
            return
        p, lower, upper = torch.linalg.lu(w)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones_like(w), -1))
        self.register_buffer("eye", torch.eye(num_channels))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))

    def extra_repr(self) -> str:
        return f"{self.num_channels}, lu={self.lu}"

    def weight_and_logdet(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The C x C matrix W and log|det W| (a scalar tensor), in the parameters' dtype,
        or float32 when that is float16 / bfloat16 (see the class docstring)."""
        p = self.weight if not self.lu else self.log_s
        work = torch.float32 if p.dtype in LOW_PRECISION else p.dtype
        with torch.autocast(p.device.type, enabled=False):
            if not self.lu:
                w = self.weight.to(work)
                return w, torch.linalg.slogdet(w)[1]
            lower = self.lower.to(work) * self.lower_mask.to(work) + self.eye.to(work)
            upper = self.upper.to(work) * self.lower_mask.t().to(work) + torch.diag(
                self.sign_s.to(work) * torch.exp(self.log_s.to(work))
            )
            return self.perm.to(work) @ lower @ upper, self.log_s.to(work).sum()

    def _mix(self, x: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        w, logdet = self.weight_and_logdet()
        if inverse:
            with torch.autocast(w.device.type, enabled=False):
                # inv_ex: no error check, so no host sync on CUDA (W is invertible by
                # construction in the LU form; a singular free W gives non-finite outputs)
                w, logdet = torch.linalg.inv_ex(w).inverse, -logdet
        ld = per_sample(logdet.to(logdet_dtype(x.dtype)) * inner_size(x), x.shape[0])
        return ops.channel_mix(x, w.to(x.dtype)), ld

    def forward(self, x, context=None):  # context: ignored (unconditional layer)
        check_input(x, "InvConv1x1", self.num_channels)
        return self._mix(x, inverse=False)

    def inverse(self, y, context=None):
        check_input(y, "InvConv1x1.inverse", self.num_channels)
        return self._mix(y, inverse=True)
