"""The flow contract (docs/design.md): every layer and model is an ``invflow.Flow``.

    y, logdet = flow(x)          # logdet: [B], log|det dy/dx| per sample
    x, logdet = flow.inverse(y)  # logdet: log|det dx/dy| = -(forward logdet)

No log-determinant is ever stored on a module.
"""

from __future__ import annotations

import abc

import torch
from torch import nn

from ..validation import LOW_PRECISION, check_input, check_number, logdet_dtype  # noqa: F401  (layers import them here)


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
                raise TypeError(
                    f"invflow.Sequential: argument {i} is {type(f).__name__}, not an invflow.Flow"
                )
        self.flows = nn.ModuleList(flows)

    def __len__(self) -> int:
        return len(self.flows)

    def __getitem__(self, i):
        return self.flows[i]

    def forward(self, x):
        fused = _fused_glow_steps(self, x)
        if fused is not None:
            return fused
        logdet = x.new_zeros(x.shape[0], dtype=logdet_dtype(x.dtype))
        for f in self.flows:
            x, ld = f(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y):
        logdet = y.new_zeros(y.shape[0], dtype=logdet_dtype(y.dtype))
        for f in reversed(self.flows):
            y, ld = f.inverse(y)
            logdet = logdet + ld
        return y, logdet


def _fused_glow_steps(seq: Sequential, x):
    """A Glow step (ActNorm -> InvConv1x1 -> channel AffineCoupling), or a run of them, on the
    fused backend: the channels-last path of ``invflow.models.fused_scale`` (actnorm folded into
    the 1x1 conv, the st-net and the coupling on channels-last rows); None where it does not
    apply (other layers, other backends, autocast / half precision, wrong inputs: the layers
    then run, and raise their errors)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.dtype not in (torch.float32, torch.float64):
        return None
    from .._backend import backend_for

    if backend_for(x) != "fused" or torch.is_autocast_enabled(x.device.type):
        return None
    from ..models import fused_scale

    steps = fused_scale.step_list(seq)
    return None if steps is None else fused_scale.fused_glow_steps(steps, x)
