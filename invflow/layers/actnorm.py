"""Activation normalisation (Glow, Kingma & Dhariwal 2018, Sec. 3.1)."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from .base import Flow, check_input


@torch.no_grad()
def data_init(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Glow's data-dependent initialisation (Sec. 3.1) from a batch [B, C, ...]:
    (bias, log_scale) = (-mean, -log(std + eps)) per channel, so that
    (x + bias) * exp(log_scale) has zero mean and unit variance per channel."""
    dims = [0] + list(range(2, x.dim()))
    return -x.mean(dim=dims), -torch.log(x.std(dim=dims, unbiased=False) + eps)


class DataInitFlag:
    """Mixin for layers with a data-dependent initialisation flagged by the buffer
    ``initialized``: once the flag is seen set, a Python mirror answers, so a training-mode
    forward costs no host sync per layer (CUDA) and no graph break (torch.compile).  Loading
    a state dict resets the mirror; call ``initialize`` rather than writing the buffer."""

    _ready: bool = False

    def needs_init(self) -> bool:
        if self._ready:
            return False
        self._ready = bool(self.initialized)
        return not self._ready

    def _load_from_state_dict(self, *args, **kwargs):
        self._ready = False
        super()._load_from_state_dict(*args, **kwargs)


class ActNorm(DataInitFlag, Flow):
    """y = (x + b) * exp(log_s) per channel; log|det| = N * sum(log_s), N = H * W.

    Data-dependent initialisation: on the first forward in training mode (or an explicit
    ``initialize(x)``) b and log_s are set so that the output has zero mean and unit
    variance per channel on that batch.  Works on [B, C], [B, C, L] and [B, C, H, W].
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"ActNorm: num_channels must be >= 1, got {num_channels}")
        self.num_channels = num_channels
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))

    def extra_repr(self) -> str:
        return f"{self.num_channels}"

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Sets b = -mean(x) and log_s = -log(std(x) + eps) per channel."""
        check_input(x, "ActNorm.initialize", self.num_channels)
        bias, log_scale = data_init(x, self.eps)
        self.bias.copy_(bias)
        self.log_scale.copy_(log_scale)
        self.initialized.fill_(True)
        self._ready = True

    def forward(self, x):
        check_input(x, "ActNorm", self.num_channels)
        if self.training and self.needs_init():
            self.initialize(x)
        return ops.actnorm(x, self.bias, self.log_scale)

    def inverse(self, y):
        check_input(y, "ActNorm.inverse", self.num_channels)
        return ops.actnorm(y, self.bias, self.log_scale, inverse=True)
