"""RealNVP (Dinh et al. 2017) in the configuration of Kirichenko et al. 2020,
App. C: every scale but the last is 3 couplings with a spatial mask, a squeeze, 3 couplings
with a channel-wise mask, and a split that factors half of the channels out as z_i; the last
scale is 4 spatial-mask couplings.  st-nets are residual networks ("resnet", 8 blocks of 64
feature maps; 6 blocks for greyscale images in the paper), or the bottleneck st-nets of
Kirichenko et al. 2020, Sec. 7 (``net="bottleneck"``, ``bottleneck_dim`` = l), or Glow's.  ``mask`` selects the
spatial mask: "checkerboard" (standard), "horizontal" (Sec. 6.2) or "cycle" (App. I.1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import masks, nets
from ..layers import AffineCoupling, Sequential, Squeeze
from ..validation import as_size, check_bools, check_ints, check_limits, check_number
from .base import MultiScaleModel, check_context_size
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
        net: "resnet" | "bottleneck" | "glow", or a callable (in_channels, out_channels) ->
            nn.Module (FrEIA's ``subnet_constructor``; such a model saves its weights but not
            the callable: ``config()`` raises TypeError).  bottleneck_dim: l of Kirichenko et
            al. 2020 Sec. 7.
        mask: "checkerboard" | "horizontal" | "cycle" for the spatial couplings.
        scale: coupling scale function ("tanh": exp(clamp * tanh(raw / clamp)), bounded as in
            flows_ood; "exp" is Dinh et al.'s unbounded form).
        context_channels: K > 0 makes the flow conditional (as ``invflow.Glow``): every
            coupling's st-net sees a vector context [B, K] broadcast over space or an image
            context [B, K, H, W] average-pooled to the coupling's size.
    """

    def __init__(
        self,
        in_channels: int,
        image_size,
        levels: int = 2,
        blocks: int = 8,
        hidden: int = 64,
        net: str | Callable[[int, int], nn.Module] = "resnet",
        bottleneck_dim: int = 50,
        mask: str = "checkerboard",
        scale: str = "tanh",
        clamp: float = 2.0,
        memory_free: bool = False,
        context_channels: int = 0,
    ):
        super().__init__()
        self.context_size = check_context_size(context_channels, "context_channels", "RealNVP")
        self._context_arg = "context_channels"
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
        if not callable(net) and net not in ("resnet", "bottleneck", "glow"):
            raise ValueError(
                f"RealNVP: net must be 'resnet', 'bottleneck', 'glow' or a callable (in, out) -> nn.Module, "
                f"got {net!r}"
            )
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
            context_channels=self.context_size,
        )
        self.input_shape = (in_channels, h, w)
        self.memory_free = memory_free

        def factory(size):
            if callable(net):
                return net
            if net == "resnet":
                return lambda i, o: nets.ResNet(i, o, hidden=hidden, blocks=blocks)
            if net == "bottleneck":
                return lambda i, o: nets.Bottleneck(
                    i, o, image_size=size, hidden=hidden, latent_dim=bottleneck_dim
                )
            return lambda i, o: nets.GlowNet(i, o, hidden)

        def coupling(c, m, size):
            return AffineCoupling(
                c, m, net=factory(size), scale=scale, clamp=clamp, context_channels=self.context_size
            )

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

    def config(self) -> dict:
        if callable(self._config["net"]):
            raise TypeError(
                "RealNVP: a model built with net=<callable> cannot be saved (the callable is code, not data); "
                "rebuild it with the same net and load_state_dict(), or build it with a named net"
            )
        return super().config()

    def _run(self, seq: Sequential, h, free: bool, context):
        context = self.scale_context(context, h)
        return run_memory_free(seq.flows, h, context) if free else seq(h, context)

    def _run_scale(self, i: int, h: torch.Tensor, free: bool, context=None):
        # spatial couplings, then (all but the last scale) squeeze and channel couplings
        h, logdet = self._run(self.pre[i], h, free, context)
        if i < len(self.post):
            h, _ = self.squeeze(h)
            h, ld = self._run(self.post[i], h, free, context)
            logdet = logdet + ld
        return h, logdet

    def _invert_scale(self, i: int, h: torch.Tensor, context=None):
        logdet = 0
        if i < len(self.post):
            h, logdet = self.post[i].inverse(h, self.scale_context(context, h))
            h, _ = self.squeeze.inverse(h)
        h, ld = self.pre[i].inverse(h, self.scale_context(context, h))
        return h, ld + logdet
