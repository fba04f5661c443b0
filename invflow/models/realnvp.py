"""RealNVP (Dinh et al. 2017) in the configuration of Kirichenko et al. 2020,
App. C: every scale but the last is 3 couplings with a spatial mask, a squeeze, 3 couplings
with a channel-wise mask, and a split that factors half of the channels out as z_i; the last
scale is 4 spatial-mask couplings.  st-nets are residual networks ("resnet", 8 blocks of 64
feature maps; 6 blocks for greyscale images in the paper), or the bottleneck st-nets of
Kirichenko et al. 2020, Sec. 7 (``net="bottleneck"``, ``bottleneck_dim`` = l), or Glow's.  ``mask`` selects the
spatial mask: "checkerboard" (standard), "horizontal" (Sec. 6.2) or "cycle" (App. I.1).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import masks, nets
from ..layers import AffineCoupling, Sequential, Squeeze
from ..validation import as_size, check_bools, check_ints, check_limits, check_number
from .base import MultiScaleModel
from .memory import run_memory_free

SPATIAL_MASKS = {"checkerboard": masks.Checkerboard, "horizontal": masks.Horizontal, "cycle": masks.Cycle}


def _spatial_mask(kind: str, k: int) -> masks.Mask:
    if kind == "cycle":
        return masks.Cycle(k)
    return SPATIAL_MASKS[kind](k % 2)


class RealNVP(MultiScaleModel):
    """Multi-scale RealNVP; see the module docstring.

    Args:
        in_channels, image_size: input [B, C, H, W]; H, W divisible by 2**(levels - 1).
        levels: scales (2 for greyscale, 3 for colour images in Kirichenko et al. 2020).
        blocks, hidden: residual blocks and feature maps of the "resnet" st-net.
        net: "resnet" | "bottleneck" | "glow".  bottleneck_dim: l of Kirichenko et al. 2020 Sec. 7.
        mask: "checkerboard" | "horizontal" | "cycle" for the spatial couplings.
        scale: coupling scale function ("tanh": exp(clamp * tanh(raw / clamp)), bounded as in
            flows_ood; "exp" is Dinh et al.'s unbounded form).
    """

    def __init__(
        self,
        in_channels: int,
        image_size,
        levels: int = 2,
        blocks: int = 8,
        hidden: int = 64,
        net: str = "resnet",
        bottleneck_dim: int = 50,
        mask: str = "checkerboard",
        scale: str = "tanh",
        clamp: float = 2.0,
        memory_free: bool = False,
    ):
        super().__init__()
        h, w = as_size(image_size, "RealNVP")
        check_ints(
            "RealNVP",
            in_channels=in_channels,
            levels=levels,
            blocks=blocks,
            hidden=hidden,
            bottleneck_dim=bottleneck_dim,
        )
        check_bools("RealNVP", memory_free=memory_free)
        check_limits(
            "RealNVP",
            in_channels=in_channels,
            image_size=max(h, w),
            levels=levels,
            blocks=blocks,
            hidden=hidden,
            bottleneck_dim=bottleneck_dim,
        )
        clamp = check_number(clamp, "clamp", "RealNVP", low=0, low_open=True)
        if h % 2 ** (levels - 1) or w % 2 ** (levels - 1):
            raise ValueError(
                f"RealNVP: image size {h}x{w} is not divisible by 2**(levels - 1) = {2 ** (levels - 1)}"
            )
        if mask not in SPATIAL_MASKS:
            raise ValueError(f"RealNVP: mask must be one of {sorted(SPATIAL_MASKS)}, got {mask!r}")
        if net not in ("resnet", "bottleneck", "glow"):
            raise ValueError(f"RealNVP: net must be 'resnet', 'bottleneck' or 'glow', got {net!r}")
        self._config = dict(
            in_channels=in_channels,
            image_size=[h, w],
            levels=levels,
            blocks=blocks,
            hidden=hidden,
            net=net,
            bottleneck_dim=bottleneck_dim,
            mask=mask,
            scale=scale,
            clamp=clamp,
            memory_free=memory_free,
        )
        self.input_shape = (in_channels, h, w)
        self.memory_free = memory_free

        def factory(size):
            if net == "resnet":
                return lambda i, o: nets.ResNet(i, o, hidden=hidden, blocks=blocks)
            if net == "bottleneck":
                return lambda i, o: nets.Bottleneck(
                    i, o, image_size=size, hidden=hidden, latent_dim=bottleneck_dim
                )
            return lambda i, o: nets.GlowNet(i, o, hidden)

        def coupling(c, m, size):
            return AffineCoupling(c, m, net=factory(size), scale=scale, clamp=clamp)

        self.squeeze = Squeeze()
        self.pre = nn.ModuleList()  # spatial couplings of each scale
        self.post = nn.ModuleList()  # channel couplings after the squeeze (all but the last scale)
        self._latent_shapes = []
        c = in_channels
        for i in range(levels):
            last = i == levels - 1
            n_spatial = 4 if last else 3
            self.pre.append(
                Sequential(*[coupling(c, _spatial_mask(mask, k), (h, w)) for k in range(n_spatial)])
            )
            if last:
                self._latent_shapes.append((c, h, w))
                break
            c, h, w = c * 4, h // 2, w // 2
            self.post.append(Sequential(*[coupling(c, masks.Channel(k % 2), (h, w)) for k in range(3)]))
            self._latent_shapes.append((c - c // 2, h, w))
            c = c // 2

    def latent_shapes(self):
        return list(self._latent_shapes)

    @staticmethod
    def _run(seq: Sequential, h, free: bool):
        return run_memory_free(seq.flows, h) if free else seq(h)

    def _run_scale(self, i: int, h: torch.Tensor, free: bool):
        # spatial couplings, then (all but the last scale) squeeze and channel couplings
        h, logdet = self._run(self.pre[i], h, free)
        if i < len(self.post):
            h, _ = self.squeeze(h)
            h, ld = self._run(self.post[i], h, free)
            logdet = logdet + ld
        return h, logdet

    def _invert_scale(self, i: int, h: torch.Tensor) -> torch.Tensor:
        if i < len(self.post):
            h, _ = self.post[i].inverse(h)
            h, _ = self.squeeze.inverse(h)
        h, _ = self.pre[i].inverse(h)
        return h
