"""Coupling masks: which entries an affine coupling transforms and which condition it.

A mask answers ``transformed(shape)``: a bool tensor of the input's per-sample shape
[C, ...], True where the coupling transforms the entry and False where the entry is passed
through unchanged and fed to the st-net.  Channel masks also give ``channel_split``, which
lets the coupling run its st-net on the conditioning channels only (no wasted compute).
"""

from __future__ import annotations

import abc
from typing import Sequence

import torch


class Mask(abc.ABC):
    """Base class of coupling masks."""

    @abc.abstractmethod
    def transformed(self, shape: Sequence[int], device=None) -> torch.Tensor:
        """Bool tensor of ``shape`` ([C, ...], no batch) that is True on transformed entries."""

    def channel_split(self, channels: int) -> tuple[slice, slice] | None:
        """(conditioning, transformed) channel slices for channel-wise masks, else None."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.parity})"


def _check_parity(parity: int) -> int:
    if parity not in (0, 1):
        raise ValueError(f"mask parity must be 0 or 1, got {parity!r}")
    return parity


class Channel(Mask):
    """Channel-wise mask (RealNVP, Dinh et al. 2017, Sec. 3.4; Glow's split in half).

    The channels are cut into a first part of ceil(C/2) and a second part of floor(C/2)
    channels.  Parity 0 transforms the second part conditioned on the first, parity 1 the
    first part conditioned on the second, so alternating parities touch every channel, odd
    C included.  Works for any rank ([B, C], [B, C, H, W], ...).
    """

    def __init__(self, parity: int = 0):
        self.parity = _check_parity(parity)

    def channel_split(self, channels: int) -> tuple[slice, slice]:
        if channels < 2:
            raise ValueError(f"Channel mask needs at least 2 channels, got {channels}")
        first = channels - channels // 2
        a, b = slice(0, first), slice(first, channels)
        return (a, b) if self.parity == 0 else (b, a)

    def transformed(self, shape, device=None):
        m = torch.zeros(tuple(shape), dtype=torch.bool, device=device)
        m[self.channel_split(shape[0])[1]] = True
        return m


class Checkerboard(Mask):
    """Spatial checkerboard (RealNVP Sec. 3.4): transforms pixels with (i + j) % 2 == parity
    in every channel.  Needs [C, H, W] inputs."""

    def __init__(self, parity: int = 0):
        self.parity = _check_parity(parity)

    def transformed(self, shape, device=None):
        if len(shape) != 3:
            raise ValueError(f"Checkerboard mask needs [C, H, W] inputs, got per-sample shape {list(shape)}")
        c, h, w = shape
        i = torch.arange(h, device=device).view(h, 1)
        j = torch.arange(w, device=device).view(1, w)
        return ((i + j) % 2 == self.parity).expand(c, h, w).clone()
