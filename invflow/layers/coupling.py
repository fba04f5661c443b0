"""Affine coupling (RealNVP, Dinh et al. 2017, Eq. 7-9; Glow, Kingma & Dhariwal 2018, Table 1)
and additive coupling (NICE, Dinh et al. 2015, Eq. 5)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import nets, ops
from ..masks import Mask
from ..ops.reference import SCALES
from ..validation import check_input
from .base import Flow


class AffineCoupling(Flow):
    """Transforms the masked part of x conditioned on the rest:

        h = net(x_cond) = [raw, t],   y_trans = s(raw) * x_trans + t,   y_cond = x_cond
        log|det| = sum over transformed entries of log s(raw)

    ``scale`` chooses s: "sigmoid" (Glow: s = sigmoid(raw + 2)), "exp" (RealNVP:
    s = exp(raw)) or "tanh" (s = exp(clamp * tanh(raw / clamp)), the bounded form of
    flows_ood / FrEIA).  ``mask`` is an ``invflow.masks.Mask``: channel masks feed only
    the conditioning channels to the net (which outputs 2 x the transformed channels);
    spatial masks (checkerboard, horizontal, cycle) feed x * conditioning-mask and the net
    outputs 2C channels.

    ``net`` is an ``nn.Module``, a factory ``net(in_channels, out_channels)``, or None for
    ``invflow.nets.GlowNet(in, out, hidden)``.
    """

    def __init__(
        self,
        num_channels: int,
        mask: Mask,
        net: nn.Module | Callable[[int, int], nn.Module] | None = None,
        hidden: int = 512,
        scale: str = "sigmoid",
        clamp: float = 2.0,
    ):
        super().__init__()
        if not isinstance(mask, Mask):
            raise TypeError(f"AffineCoupling: mask must be an invflow.masks.Mask, got {type(mask).__name__}")
        if scale not in SCALES:
            raise ValueError(f"AffineCoupling: scale must be one of {SCALES}, got {scale!r}")
        if not clamp > 0:
            raise ValueError(f"AffineCoupling: clamp must be positive, got {clamp}")
        self.num_channels = num_channels
        self.mask = mask
        self.scale = scale
        self.clamp = float(clamp)
        self.split = mask.channel_split(num_channels)
        if self.split is not None:
            cond, trans = self.split
            in_ch, self.out_channels = (
                cond.stop - cond.start,
                self.params_per_entry * (trans.stop - trans.start),
            )
        else:
            in_ch, self.out_channels = num_channels, self.params_per_entry * num_channels
        if net is None:
            net = nets.GlowNet(in_ch, self.out_channels, hidden)
        elif not isinstance(net, nn.Module):
            net = net(in_ch, self.out_channels)
        self.net = net
        self._mask_cache: dict = {}

    params_per_entry = 2  # the st-net predicts [raw scale, shift] per transformed entry

    def extra_repr(self) -> str:
        return f"{self.num_channels}, mask={self.mask!r}, scale={self.scale!r}"

    def _transform(self, x, h, mask, inverse: bool):
        """The elementwise part: the fused / reference coupling op."""
        return ops.coupling(x, h, mask, self.scale, self.clamp, inverse=inverse)

    def _params(self, cond: torch.Tensor, batch: int) -> torch.Tensor:
        h = self.net(cond)
        if h.shape[0] != batch or h.shape[1] != self.out_channels or h.shape[2:] != cond.shape[2:]:
            raise ValueError(
                f"AffineCoupling: the st-net must return [B, {self.out_channels}, ...] matching "
                f"its input {list(cond.shape)}, got {list(h.shape)}"
            )
        return h

    def _spatial_masks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(transformed, conditioning) masks as 0/1 tensors of x's dtype, cached per shape."""
        key = (tuple(x.shape[1:]), x.device, x.dtype)
        masks = self._mask_cache.get(key)
        if masks is None:
            shape = x.shape[1:]
            masks = (
                self.mask.transformed(shape, device=x.device).to(x.dtype),
                self.mask.conditioning(shape, device=x.device).to(x.dtype),
            )
            self._mask_cache = {key: masks}
        return masks

    def _check(self, x, where):
        check_input(x, where, self.num_channels, ranks=(2, 3, 4) if self.split else (4,))

    def _run(self, x: torch.Tensor, inverse: bool):
        if self.split is None:
            trans, cond = self._spatial_masks(x)
            h = self._params(x * cond, x.shape[0])
            return self._transform(x, h, trans, inverse)
        cond_idx, trans_idx = self.split
        cond, trans = x[:, cond_idx], x[:, trans_idx]
        h = self._params(cond, x.shape[0])
        out, logdet = self._transform(trans, h, None, inverse)
        parts = (cond, out) if cond_idx.start == 0 else (out, cond)
        return torch.cat(parts, dim=1), logdet

    def forward(self, x):
        self._check(x, "AffineCoupling")
        return self._run(x, inverse=False)

    def inverse(self, y):
        self._check(y, "AffineCoupling.inverse")
        return self._run(y, inverse=True)


class AdditiveCoupling(AffineCoupling):
    """Additive coupling (NICE, Dinh et al. 2015, Eq. 5): y_trans = x_trans + t(x_cond), a
    volume-preserving map (log|det| = 0).  Same masks and st-net options as
    ``AffineCoupling``; the st-net outputs one shift per transformed entry."""

    params_per_entry = 1

    def __init__(self, num_channels: int, mask: Mask, net=None, hidden: int = 512):
        super().__init__(num_channels, mask, net=net, hidden=hidden)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, mask={self.mask!r}"

    def _transform(self, x, t, mask, inverse: bool):
        if mask is not None:
            t = t * mask
        return (x - t if inverse else x + t), x.new_zeros(x.shape[0])
