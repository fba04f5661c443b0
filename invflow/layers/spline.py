"""Rational-quadratic spline coupling (Durkan et al. 2019, *Neural Spline Flows*, Sec. 3-4)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .. import nets, ops
from ..conditioning import check_context
from ..masks import Mask
from ..ops.spline import MAX_BINS, MIN_DERIVATIVE
from ..validation import check_input, check_number
from .coupling import AffineCoupling

# softplus(c) + MIN_DERIVATIVE = 1: added to the st-net's derivative outputs, so that a zero
# output (the zero-initialised last layer) is the identity map (nflows pads the boundary
# derivatives with the same constant).
_IDENTITY_DERIVATIVE = math.log(math.expm1(1.0 - MIN_DERIVATIVE))


class _VectorMask(Mask):
    """A [D] 0/1 mask of a vector coupling (internal: SplineCoupling records the tensor itself)."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask

    def transformed(self, shape, device=None):
        return self.mask.to(device)

    def channel_split(self, channels):
        return None

    def __repr__(self) -> str:
        return f"vector mask of {self.mask.numel()} ({int(self.mask.sum())} transformed)"


class SplineCoupling(AffineCoupling):
    """Transforms the masked part of x by monotone rational-quadratic splines whose knots an
    st-net computes from the rest (Durkan et al. 2019, Sec. 3.1 and Eq. 4-8):

        h = net(x_cond) = [widths (K), heights (K), derivatives (K - 1)] per transformed entry
        y_trans = RQS_h(x_trans) on [-bound, bound], identity outside;   y_cond = x_cond
        log|det| = sum over transformed entries of log|dRQS/dx|

    The elementwise map is the fused op ``invflow.ops.rq_spline`` (its docstring has the exact
    normalisation: softmax bin sizes with minimum 1e-3, softplus derivatives with minimum 1e-3,
    boundary derivatives 1, linear tails).  The st-net's derivative outputs are shifted by
    log(e^(1 - 1e-3) - 1), so the zero-initialised last layer of the default nets makes a new
    layer the identity.

    ``mask``: an ``invflow.masks.Mask`` for images [B, C, H, W] (channel masks feed the
    conditioning channels to the net, which outputs (3K - 1) x the transformed channels;
    spatial masks feed x * conditioning-mask and the net outputs (3K - 1) C channels; default
    net ``invflow.nets.GlowNet``), or for vectors [B, D] (``num_channels`` = D) a bool / 0-1
    tensor of shape [D] marking the transformed features, at least one of each kind (default
    net ``invflow.nets.MLP(D_cond, (3K - 1) D_trans, hidden)``); a channel mask also works on
    vectors, with an MLP as ``net``.  The st-net's output for a transformed entry is laid out as [B, C_trans, 3K - 1,
    ...] (vectors: [B, D_trans * (3K - 1)], entry-major).  ``net``: an ``nn.Module``, a
    factory ``net(in_channels + context_channels, out_channels)``, or None.

    ``bins`` K in [2, 999]; ``bound`` > 0 (the data's scale: inputs beyond +-bound pass
    unchanged).  ``context_channels`` K_c > 0: ``forward(x, context=c)`` / ``inverse(y,
    context=c)`` with c [B, K_c] (images also [B, K_c, H', W']), concatenated to the st-net's
    input as in ``AffineCoupling``; a missing or wrong-shaped context raises ValueError.
    Returns (y, logdet [B]); float16 / bfloat16 inputs give float32 log-dets.
    """

    def __init__(
        self,
        num_channels: int,
        mask: Mask | torch.Tensor,
        net: nn.Module | Callable[[int, int], nn.Module] | None = None,
        hidden: int = 512,
        bins: int = 8,
        bound: float = 3.0,
        context_channels: int = 0,
    ):
        where = "SplineCoupling"
        self_bins = check_number(bins, "bins", where, low=2, high=MAX_BINS, integer=True)
        self_bound = check_number(bound, "bound", where, low=0, low_open=True)
        num_channels = check_number(num_channels, "num_channels", where, low=1, integer=True)
        k = check_number(context_channels, "context_channels", where, low=0, integer=True)
        per_entry = 3 * self_bins - 1
        vector = None
        if isinstance(mask, torch.Tensor):
            vector = self._vector_split(mask, num_channels)
            cond_n, trans_n = (int(i.numel()) for i in vector)
            if net is None:
                net = nets.MLP(cond_n, per_entry * trans_n, hidden, context_features=k)
            elif not isinstance(net, nn.Module):
                net = net(cond_n + k, per_entry * trans_n)
                if not isinstance(net, nn.Module):
                    raise TypeError(
                        f"{where}: the st-net factory must return an nn.Module, got {type(net).__name__}"
                    )
            mask = _VectorMask((mask != 0).to(torch.get_default_dtype()))
        self._per_entry = per_entry  # read by AffineCoupling.__init__ (params_per_entry)
        super().__init__(num_channels, mask, net=net, hidden=hidden, context_channels=k)
        self.bins, self.bound = self_bins, self_bound
        self.vector = vector is not None
        if vector is not None:
            self.register_buffer("cond_index", vector[0], persistent=False)
            self.register_buffer("trans_index", vector[1], persistent=False)
            self.out_channels = per_entry * int(vector[1].numel())

    @property
    def params_per_entry(self) -> int:
        return self._per_entry

    @staticmethod
    def _vector_split(mask: torch.Tensor, num_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(conditioning, transformed) feature indices of a [D] 0/1 mask; ValueError otherwise."""
        where = "SplineCoupling"
        if mask.dim() != 1 or mask.numel() != num_channels:
            raise ValueError(
                f"{where}: a vector mask must have shape [num_channels] = [{num_channels}], got {list(mask.shape)}"
            )
        if mask.dtype != torch.bool:
            if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError(f"{where}: a vector mask must hold 0 / 1 (or bool) values")
            mask = mask != 0
        mask = mask.cpu()
        trans = torch.nonzero(mask).flatten()
        cond = torch.nonzero(~mask).flatten()
        if trans.numel() == 0 or cond.numel() == 0:
            raise ValueError(
                f"{where}: a vector mask must mark at least one transformed and one conditioning feature, "
                f"got {trans.numel()} transformed of {num_channels}"
            )
        return cond, trans

    def extra_repr(self) -> str:
        ctx = f", context_channels={self.context_channels}" if self.context_channels else ""
        return f"{self.num_channels}, mask={self.mask!r}, bins={self.bins}, bound={self.bound:g}{ctx}"

    def _transform(self, x, h, mask, inverse: bool):
        """The elementwise spline of x [B, C, ...] with h [B, (3K - 1) C, ...] (entry-major)."""
        K = self.bins
        B, C = x.shape[:2]
        theta = h.reshape(B, C, 3 * K - 1, *x.shape[2:]).movedim(2, -1)
        widths, heights = theta[..., :K], theta[..., K : 2 * K]
        derivatives = theta[..., 2 * K :] + _IDENTITY_DERIVATIVE
        y, lad = ops.rq_spline(x, widths, heights, derivatives, self.bound, inverse=inverse)
        if mask is not None:
            keep = mask != 0
            y = torch.where(keep, y, x)
            lad = torch.where(keep, lad, torch.zeros_like(lad))
        return y, lad.flatten(1).sum(1)

    def _check(self, x, where, context=None):
        if not self.vector:
            return super()._check(x, where, context)
        check_input(x, where, self.num_channels, ranks=(2,))
        if self.context_channels:
            check_context(context, where, self.context_channels, x.shape[0])

    def _run(self, x: torch.Tensor, inverse: bool, context: torch.Tensor | None = None):
        if not self.vector:
            return super()._run(x, inverse, context)
        cond = x.index_select(1, self.cond_index)
        h = self._params(cond, x.shape[0], context)
        out, logdet = self._transform(x.index_select(1, self.trans_index), h, None, inverse)
        return x.index_copy(1, self.trans_index, out), logdet
