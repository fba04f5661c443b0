"""The flow contract (DESIGN.md): every layer and model is an ``invflow.Flow``.

    y, logdet = flow(x)          # logdet: [B], log|det dy/dx| per sample
    x, logdet = flow.inverse(y)  # logdet: log|det dx/dy| = -(forward logdet)

No log-determinant is ever stored on a module.
"""

from __future__ import annotations

import abc

import torch
from torch import nn


class Flow(nn.Module, metaclass=abc.ABCMeta):
    """An invertible map with a tractable log-determinant (see the module docstring)."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (y, log|det dy/dx|) with the log-det of shape [B]."""

    @abc.abstractmethod
    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (x, log|det dx/dy|) with the log-det of shape [B]."""


class Sequential(Flow):
    """Composition of flows; log-determinants add up, the inverse runs in reverse order."""

    def __init__(self, *flows: Flow):
        super().__init__()
        for i, f in enumerate(flows):
            if not isinstance(f, Flow):
                raise TypeError(f"invflow.Sequential: argument {i} is {type(f).__name__}, not an invflow.Flow")
        self.flows = nn.ModuleList(flows)

    def __len__(self) -> int:
        return len(self.flows)

    def __getitem__(self, i):
        return self.flows[i]

    def forward(self, x):
        logdet = x.new_zeros(x.shape[0])
        for f in self.flows:
            x, ld = f(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y):
        logdet = y.new_zeros(y.shape[0])
        for f in reversed(self.flows):
            y, ld = f.inverse(y)
            logdet = logdet + ld
        return y, logdet


def check_input(x, layer: str, channels: int | None = None, ranks: tuple[int, ...] = (2, 3, 4)) -> None:
    """Validates a layer input: a floating tensor of an allowed rank with ``channels`` channels.

    Raises TypeError for non-tensors and non-floating dtypes, ValueError for shapes, with a
    message that says what was expected.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{layer}: expected a floating tensor, got dtype {x.dtype} "
            "(convert images with invflow.data preprocessing first)"
        )
    if x.dim() not in ranks:
        shapes = " or ".join({2: "[B, C]", 3: "[B, C, L]", 4: "[B, C, H, W]"}[r] for r in ranks)
        raise ValueError(f"{layer}: expected input of shape {shapes}, got {list(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{layer}: expected {channels} channels (input of shape [B, {channels}, ...]), "
            f"got {list(x.shape)}"
        )
