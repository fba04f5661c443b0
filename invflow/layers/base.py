"""The flow contract (docs/design.md): every layer and model is an ``invflow.Flow``.

    y, logdet = flow(x)          # logdet: [B], log|det dy/dx| per sample
    x, logdet = flow.inverse(y)  # logdet: log|det dx/dy| = -(forward logdet)

No log-determinant is ever stored on a module.
"""

from __future__ import annotations

import abc
import math
import numbers

import torch
from torch import nn

#: dtypes whose log-determinants (and small linear algebra) are computed in float32
LOW_PRECISION = (torch.float16, torch.bfloat16)


def logdet_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of log-determinants for inputs of ``dtype``: float32 for float16 / bfloat16
    (docs/design.md: a sum of N * C log-scales loses all precision in half), else ``dtype``."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


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


def check_number(
    value,
    name: str,
    where: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    optional: bool = False,
):
    """Validates a public numeric argument and returns it (as int or float).

    ``value`` must be a real number (Python, numpy, or a one-element tensor; not a bool), finite,
    an integer when ``integer``, and within ``low`` / ``high`` (inclusive unless ``low_open`` /
    ``high_open``); ``None`` passes when ``optional``.  Raises TypeError for a non-number and
    ValueError otherwise, both as "``where``: ``name`` must be <what>, got <value>".
    """
    if optional and value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype == torch.bool:
        value = value.item()
    kind = "an integer" if integer else "a finite number"
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    what = kind + (" " + " and ".join(bounds) if bounds else "") + (" (or None)" if optional else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be {what}, got {value!r} ({type(value).__name__})")
    if integer and not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {name} must be {what}, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{where}: {name} must be {what}, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ValueError(f"{where}: {name} must be {what}, got {value!r}")
    return int(value) if integer else float(value)
