"""Space-to-channel squeeze (RealNVP, Dinh et al. 2017, Sec. 3.6; Glow Fig. 2)."""

from __future__ import annotations

from ..validation import check_input
from .base import Flow


class Squeeze(Flow):
    """[B, C, H, W] -> [B, 4C, H/2, W/2], each 2x2 block becoming 4 channels; log|det| = 0.

    Output channel c * 4 + 2 * i + j holds input channel c at offset (i, j) of each block.
    """

    def forward(self, x, context=None):  # context: ignored (unconditional layer)
        check_input(x, "Squeeze", ranks=(4,))
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze: height and width must be even, got {list(x.shape)}")
        y = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(b, c * 4, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, y, context=None):
        check_input(y, "Squeeze.inverse", ranks=(4,))
        b, c, h, w = y.shape
        if c % 4:
            raise ValueError(f"Squeeze.inverse: channels must be a multiple of 4, got {list(y.shape)}")
        x = y.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c // 4, h * 2, w * 2), y.new_zeros(b)
