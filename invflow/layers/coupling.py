"""Affine coupling (RealNVP, Dinh et al. 2017, Eq. 7-9; Glow, Kingma & Dhariwal 2018, Table 1)
and additive coupling (NICE, Dinh et al. 2015, Eq. 5)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import nets, ops
from ..conditioning import check_context, concat_context
from ..masks import Mask
from ..ops.reference import SCALES
from ..validation import check_input, check_number
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

    Conditional coupling (``context_channels=K > 0``; Winkler et al. 2019, Sec. 3):
    ``forward(x, context=c)`` / ``inverse(y, context=c)`` with c [B, K], or for image inputs
    also [B, K, H', W'] with H', W' integer multiples of x's H, W; the st-net sees
    h = net([x_cond, c]) with c broadcast over space or average-pooled to x's size
    (``invflow.conditioning``; CFLOW-AD, Gudovskiy et al. 2022, concatenates its positional
    encoding the same way).  A factory is called as ``net(in_channels + K, out_channels)``
    and its module gets the concatenation (FrEIA's ``subnet_constructor`` convention); the
    default net and a module with ``context_channels`` / ``context_features`` equal to K
    (the nets of ``invflow.nets``) are called ``net(x_cond, context=c)`` and concatenate
    inside.  A missing context, or one of the wrong shape or batch size, raises ValueError.
    An unconditional coupling (K = 0) ignores a context.
    """

    def __init__(
        self,
        num_channels: int,
        mask: Mask,
        net: nn.Module | Callable[[int, int], nn.Module] | None = None,
        hidden: int = 512,
        scale: str = "sigmoid",
        clamp: float = 2.0,
        context_channels: int = 0,
    ):
        super().__init__()
        context_channels = check_number(
            context_channels, "context_channels", type(self).__name__, low=0, integer=True
        )
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
        self.context_channels = context_channels
        k = context_channels
        if net is None:
            net = nets.GlowNet(in_ch, self.out_channels, hidden, context_channels=k)
        elif not isinstance(net, nn.Module):
            net = net(in_ch + k, self.out_channels)
            if not isinstance(net, nn.Module):
                raise TypeError(
                    f"{type(self).__name__}: the st-net factory must return an nn.Module, got {type(net).__name__}"
                )
        # built-in nets built for the context concatenate it themselves; others get [x_cond, c]
        own = getattr(net, "context_channels", getattr(net, "context_features", None))
        self._net_takes_context = k > 0 and own == k
        self.net = net
        self._mask_cache: dict = {}

    params_per_entry = 2  # the st-net predicts [raw scale, shift] per transformed entry

    def extra_repr(self) -> str:
        ctx = f", context_channels={self.context_channels}" if self.context_channels else ""
        return f"{self.num_channels}, mask={self.mask!r}, scale={self.scale!r}{ctx}"

    def _transform(self, x, h, mask, inverse: bool):
        """The elementwise part: the fused / reference coupling op."""
        return ops.coupling(x, h, mask, self.scale, self.clamp, inverse=inverse)

    def _params(self, cond: torch.Tensor, batch: int, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.context_channels == 0:
            h = self.net(cond)
        elif self._net_takes_context:
            h = self.net(cond, context=context)
        else:
            h = self.net(concat_context(cond, context))
        if h.shape[0] != batch or h.shape[1] != self.out_channels or h.shape[2:] != cond.shape[2:]:
            raise ValueError(
                f"{type(self).__name__}: the st-net must return [B, {self.out_channels}, ...] matching "
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

    def _check(self, x, where, context=None):
        check_input(x, where, self.num_channels, ranks=(2, 3, 4) if self.split else (4,))
        if self.context_channels:
            spatial = tuple(x.shape[2:]) if x.dim() == 4 else None
            check_context(context, where, self.context_channels, x.shape[0], spatial)

    def _run(self, x: torch.Tensor, inverse: bool, context: torch.Tensor | None = None):
        if self.split is None:
            trans, cond = self._spatial_masks(x)
            h = self._params(x * cond, x.shape[0], context)
            return self._transform(x, h, trans, inverse)
        cond_idx, trans_idx = self.split
        cond, trans = x[:, cond_idx], x[:, trans_idx]
        h = self._params(cond, x.shape[0], context)
        out, logdet = self._transform(trans, h, None, inverse)
        parts = (cond, out) if cond_idx.start == 0 else (out, cond)
        return torch.cat(parts, dim=1), logdet

    def forward(self, x, context=None):
        self._check(x, type(self).__name__, context)
        return self._run(x, inverse=False, context=context if self.context_channels else None)

    def inverse(self, y, context=None):
        self._check(y, f"{type(self).__name__}.inverse", context)
        return self._run(y, inverse=True, context=context if self.context_channels else None)


class AdditiveCoupling(AffineCoupling):
    """Additive coupling (NICE, Dinh et al. 2015, Eq. 5): y_trans = x_trans + t(x_cond), a
    volume-preserving map (log|det| = 0).  Same masks and st-net options as
    ``AffineCoupling``; the st-net outputs one shift per transformed entry."""

    params_per_entry = 1

    def __init__(self, num_channels: int, mask: Mask, net=None, hidden: int = 512, context_channels: int = 0):
        super().__init__(num_channels, mask, net=net, hidden=hidden, context_channels=context_channels)

    def extra_repr(self) -> str:
        ctx = f", context_channels={self.context_channels}" if self.context_channels else ""
        return f"{self.num_channels}, mask={self.mask!r}{ctx}"

    def _transform(self, x, t, mask, inverse: bool):
        if mask is not None:
            t = t * mask
        return (x - t if inverse else x + t), x.new_zeros(x.shape[0])
