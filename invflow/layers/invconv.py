"""Invertible 1x1 convolution (Glow, Kingma & Dhariwal 2018, Sec. 3.2)."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..ops.reference import inner_size, per_sample
from .base import Flow, check_input


class InvConv1x1(Flow):
    """y = W x at every position; log|det| = N * log|det W|, N = H * W.

    With ``lu=True`` (default) W is kept in the LU form of Glow Eq. (10),
    W = P L (U + diag(s)), with P a fixed permutation, L unit lower-triangular, U strictly
    upper-triangular and s = sign * exp(log|s|), so log|det W| = sum(log|s|) costs O(C).
    With ``lu=False`` W is a free matrix and log|det W| comes from ``torch.linalg.slogdet``.
    W starts as a random rotation.  Works on [B, C], [B, C, L] and [B, C, H, W].
    """

    def __init__(self, num_channels: int, lu: bool = True):
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"InvConv1x1: num_channels must be >= 1, got {num_channels}")
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
        """The C x C matrix W and log|det W| (a scalar tensor)."""
        if not self.lu:
            return self.weight, torch.linalg.slogdet(self.weight)[1]
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.t() + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper, self.log_s.sum()

    def forward(self, x):
        check_input(x, "InvConv1x1", self.num_channels)
        w, logdet = self.weight_and_logdet()
        return ops.channel_mix(x, w), per_sample(logdet * inner_size(x), x.shape[0])

    def inverse(self, y):
        check_input(y, "InvConv1x1.inverse", self.num_channels)
        w, logdet = self.weight_and_logdet()
        return ops.channel_mix(y, torch.linalg.inv(w)), per_sample(-logdet * inner_size(y), y.shape[0])
