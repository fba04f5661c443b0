"""Coupling masks: which entries an affine coupling transforms and which condition it
(checkerboard and channel masks: Dinh et al. 2017, Sec. 3.4; horizontal and cycle masks:
Kirichenko et al. 2020, Sec. 6.2 and App. I.1).

A mask answers ``transformed(shape)``: a bool tensor of the input's per-sample shape
[C, ...], True where the coupling transforms the entry; and ``conditioning(shape)``: True
where the entry is fed to the st-net.  The two sets are disjoint; entries in neither pass
through unchanged and unseen (the cycle-mask).  By default the conditioning set is the
complement of the transformed one.  Channel masks also give ``channel_split``, which lets
the coupling run its st-net on the conditioning channels only (no wasted compute).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch


class Mask(abc.ABC):
    """Base class of coupling masks."""

    @abc.abstractmethod
    def transformed(self, shape: Sequence[int], device=None) -> torch.Tensor:
        """Bool tensor of ``shape`` ([C, ...], no batch) that is True on transformed entries."""

    def conditioning(self, shape: Sequence[int], device=None) -> torch.Tensor:
        """Bool tensor of ``shape`` that is True on the entries the st-net sees."""
        return ~self.transformed(shape, device)

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


def _spatial_shape(shape, name: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"{name} mask needs [C, H, W] inputs, got per-sample shape {list(shape)}")
    return tuple(shape)


class Horizontal(Mask):
    """Horizontal mask (Kirichenko et al. 2020, Sec. 6.2): parity 0 transforms the bottom half
    of the image conditioned on the top half, parity 1 the top half conditioned on the bottom
    (rows [0, H // 2) are the top half)."""

    def __init__(self, parity: int = 0):
        self.parity = _check_parity(parity)

    def transformed(self, shape, device=None):
        c, h, w = _spatial_shape(shape, "Horizontal")
        if h < 2:
            raise ValueError(f"Horizontal mask needs height >= 2, got {h}")
        bottom = (torch.arange(h, device=device) >= h // 2).view(1, h, 1)
        m = bottom if self.parity == 0 else ~bottom
        return m.expand(c, h, w).clone()


class Cycle(Mask):
    """Cycle-mask (Kirichenko et al. 2020, App. I.1, Fig. 13): the image is cut into four
    quadrants, numbered clockwise 0 = top-left, 1 = top-right, 2 = bottom-right,
    3 = bottom-left (the top / left halves are rows / columns below H // 2 / W // 2).  Step k
    transforms quadrant (k + 1) mod 4 conditioned on quadrant k mod 4 only, so information
    from a quadrant passes through four couplings before it reaches that quadrant again.
    The other two quadrants pass through unchanged."""

    def __init__(self, step: int = 0):
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"Cycle mask step must be a non-negative int, got {step!r}")
        self.step = step

    def __repr__(self) -> str:
        return f"Cycle({self.step})"

    @staticmethod
    def quadrants(shape, device=None) -> torch.Tensor:
        """Long tensor [H, W] holding each pixel's quadrant number."""
        _, h, w = _spatial_shape(shape, "Cycle")
        if h < 2 or w < 2:
            raise ValueError(f"Cycle mask needs height and width >= 2, got {h} x {w}")
        bottom = (torch.arange(h, device=device) >= h // 2).view(h, 1)
        right = (torch.arange(w, device=device) >= w // 2).view(1, w)
        # TL 0, TR 1, BR 2, BL 3
        return torch.where(bottom, torch.where(right, 2, 3), torch.where(right, 1, 0))

    def _quadrant_mask(self, shape, q, device):
        c = shape[0]
        return (self.quadrants(shape, device) == q).expand(c, *shape[1:]).clone()

    def transformed(self, shape, device=None):
        return self._quadrant_mask(shape, (self.step + 1) % 4, device)

    def conditioning(self, shape, device=None):
        return self._quadrant_mask(shape, self.step % 4, device)
