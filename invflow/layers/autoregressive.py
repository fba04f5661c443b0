"""Masked autoregressive flows: the MADE conditioner (Germain et al. 2015) and the layer
``MaskedAutoregressive`` (MAF, Papamakarios et al. 2017; IAF, Kingma et al. 2016, as its
inverse direction) with an affine or a rational-quadratic spline transform (Durkan et al. 2019).

The elementwise transforms are the shared ops: ``invflow.ops.coupling`` (the affine coupling's
kernel) and ``invflow.ops.rq_spline`` (the spline coupling's), so there is one kernel per
transform, whatever the layer kind.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .. import ops
from ..conditioning import check_context
from ..ops.reference import SCALES
from ..ops.spline import MAX_BINS, MIN_DERIVATIVE
from ..validation import check_bools, check_input, check_ints, check_limits, check_number
from .base import Flow

TRANSFORMS = ("affine", "spline")

#: softplus^-1(1 - MIN_DERIVATIVE): the bias that makes a spline's inner derivatives 1, so a
#: freshly built spline layer (zero output weights, equal bins) is the identity
_UNIT_DERIVATIVE = math.log(math.expm1(1.0 - MIN_DERIVATIVE))


class MaskedLinear(nn.Linear):
    """y = x (W * M)^T + b with a fixed 0/1 connectivity mask M [out, in] (Germain et al. 2015,
    Eq. 10).  The mask is a non-persistent buffer (rebuilt from the layer's configuration), so
    perturbing or training W never creates a forbidden connection."""

    def __init__(self, mask: torch.Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(torch.get_default_dtype()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def vector_call(layer: Flow, x, where: str, context):
    """The checks of a vector layer's call (``layer.features`` D, ``layer.context_features`` K):
    x must be a floating [B, D] tensor and, for K > 0, the context a floating [B, K] tensor
    (ValueError / TypeError naming ``where``).  Returns the context the layer uses: None for an
    unconditional layer, which ignores any context (docs/design.md)."""
    check_input(x, where, layer.features, ranks=(2,))
    if not layer.context_features:
        return None
    check_context(context, where, layer.context_features, x.shape[0])
    return context


def _degrees(order: list[int]) -> torch.Tensor:
    """Degree (1-based rank in the autoregressive order) of every input dimension."""
    deg = torch.empty(len(order), dtype=torch.long)
    deg[torch.tensor(order, dtype=torch.long)] = torch.arange(1, len(order) + 1)
    return deg


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al. 2015, Sec. 4): an MLP on
    x [B, D] (and a context [B, K]) whose output block for dimension i depends only on the
    dimensions before i in ``order`` (and on the context).

    Degrees (Germain et al. 2015, Eq. 12-13): input i has degree m(i) = its 1-based rank in
    ``order``; hidden unit j of every layer has degree lo + (j mod (D - lo)), lo = 1 without a
    context and 0 with one; a hidden unit of degree m sees the inputs of degree <= m and every
    context feature (context features have degree 0, so degree-0 units see the context only and
    the first dimension's outputs still depend on it); output unit p * D + i has degree m(i) and
    sees the hidden units of degree < m(i).  ``hidden >= D - lo`` so every degree occurs (else
    some conditionals could not see all their predecessors: ValueError naming ``where``).

    forward(x [B, D], context [B, K] or None) -> [B, params * D], laid out parameter-major
    (unit p * D + i is parameter p of dimension i).  ReLU hidden layers; the output layer's
    weights start at zero (the flow starts at a fixed elementwise map)."""

    def __init__(
        self,
        features: int,
        params: int,
        hidden: int,
        layers: int,
        order: Sequence[int],
        context_features: int = 0,
        where: str = "MADE",
    ):
        super().__init__()
        D, K = features, context_features
        lo = 0 if K else 1
        if hidden < D - lo:
            raise ValueError(
                f"{where}: hidden must be >= {D - lo} for {D} features"
                f"{' with a context' if K else ''} (Germain et al. 2015: one hidden unit per degree), got {hidden}"
            )
        d_in = _degrees(list(order))
        d_hidden = lo + torch.arange(hidden) % (D - lo)
        ctx = torch.zeros(K, dtype=torch.long)  # context features: degree 0, seen by every hidden unit
        mods: list[nn.Module] = []
        d_prev = torch.cat([d_in, ctx])
        for _ in range(layers):
            mods += [MaskedLinear(d_hidden[:, None] >= d_prev[None, :]), nn.ReLU()]
            d_prev = d_hidden
        out = MaskedLinear(d_in.repeat(params)[:, None] > d_prev[None, :])
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        mods.append(out)
        self.net = nn.Sequential(*mods)
        self.features, self.params, self.context_features = D, params, K
        self.register_buffer("degrees", d_in, persistent=False)

    @property
    def output(self) -> MaskedLinear:
        """The last (output) masked layer."""
        return self.net[-1]

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.context_features:
            x = torch.cat([x, context.to(x.dtype)], dim=1)
        return self.net(x)


def _order(order, features: int) -> list[int]:
    where = "MaskedAutoregressive"
    if order is None:
        return list(range(features))
    if isinstance(order, str):
        if order != "reverse":
            raise ValueError(
                f"{where}: order must be None, 'reverse' or a permutation of 0..{features - 1}, got {order!r}"
            )
        return list(range(features - 1, -1, -1))
    if isinstance(order, torch.Tensor):
        order = order.tolist()
    try:
        out = [int(i) for i in order]
    except (TypeError, ValueError):
        raise TypeError(
            f"{where}: order must be None, 'reverse' or a sequence of ints, got {type(order).__name__}"
        ) from None
    if sorted(out) != list(range(features)) or any(isinstance(i, bool) for i in order):
        raise ValueError(f"{where}: order must be a permutation of 0..{features - 1}, got {out}")
    return out


class MaskedAutoregressive(Flow):
    """Masked autoregressive flow layer on vectors [B, D] (MAF, Papamakarios et al. 2017,
    Sec. 3; conditioner MADE, Germain et al. 2015):

        z_i = tau(x_i; h_i(x_{<i}, c)),   log|det dz/dx| = sum_i log|tau'(x_i; h_i)|

    where x_{<i} are the dimensions before i in ``order`` and h = MADE(x, c).  The Jacobian is
    triangular in that order.  ``forward`` (density, x -> z) is one pass; ``inverse``
    (sampling, z -> x) takes D passes, each fixing one more dimension (Papamakarios et al.
    2017, Sec. 3.1).

    ``transform``:
    * "affine": tau(x; raw, t) = s(raw) x + t through ``invflow.ops.coupling`` with ``scale``
      (default "tanh": s = exp(clamp * tanh(raw / clamp)), a soft-clamped log-scale in
      [-clamp, clamp]: the density pass and the D-pass sampling are both stable, because no
      layer can stretch or shrink a dimension by more than e^clamp in either direction, and a
      fresh layer (raw = 0) is the identity; "sigmoid" (s = sigmoid(raw + 2), which only
      contracts x -> z) and "exp" (unbounded) are accepted).  2 parameters per dimension.
    * "spline": the rational-quadratic spline of Durkan et al. 2019 (Sec. 3.1) with ``bins``
      bins on [-bound, bound] and the identity outside, through ``invflow.ops.rq_spline``
      (3 bins - 1 parameters per dimension).  A fresh layer is the identity (equal bins, unit
      derivatives).

    ``inverse_direction=True`` gives the inverse autoregressive flow (IAF, Kingma et al. 2016,
    Sec. 4): the same map run backwards, the conditioner reading the layer's *output* z, so
    ``inverse`` (sampling) is one pass and ``forward`` (density) D passes.

    Stacking: each layer's autoregressive order is its own; alternate ``order=None`` and
    ``order="reverse"`` (or pass a random permutation of 0..D-1) between stacked layers, or put
    an ``invflow.FixedLinear`` (a random rotation) in between, so every dimension gets
    conditioned on the others.

    Arguments: features D >= 2; hidden (>= D - 1, >= D with a context) and layers >= 1: the
    MADE's hidden width and depth; context_features K >= 0 (a context c [B, K] feeds every hidden
    unit: ``forward(x, context=c)``); order: None (0..D-1), "reverse" or a permutation.
    Raises ValueError / TypeError for any other value (bins < 2 or > 999, bound <= 0, an unknown
    transform or scale), and at call time for input that is not [B, D] or a context that is
    missing or not [B, K].  A layer built without a context ignores one.  Log-dets are [B]
    (float32 for float16 / bfloat16 inputs).
    """

    def __init__(
        self,
        features: int,
        hidden: int = 128,
        layers: int = 2,
        transform: str = "affine",
        context_features: int = 0,
        bins: int = 8,
        bound: float = 3.0,
        scale: str = "tanh",
        clamp: float = 3.0,
        order: Sequence[int] | str | None = None,
        inverse_direction: bool = False,
    ):
        super().__init__()
        where = type(self).__name__
        check_ints(where, low=2, features=features)
        check_ints(where, hidden=hidden, layers=layers)
        check_ints(where, low=0, context_features=context_features)
        check_limits(where, dim=features, hidden=hidden)
        check_bools(where, inverse_direction=inverse_direction)
        if transform not in TRANSFORMS:
            raise ValueError(f"{where}: transform must be one of {TRANSFORMS}, got {transform!r}")
        if scale not in SCALES:
            raise ValueError(f"{where}: scale must be one of {SCALES}, got {scale!r}")
        bins = check_number(bins, "bins", where, low=2, high=MAX_BINS, integer=True)
        bound = check_number(bound, "bound", where, low=0, low_open=True)
        clamp = check_number(clamp, "clamp", where, low=0, low_open=True)
        self.features, self.hidden, self.layers = features, hidden, layers
        self.transform, self.context_features = transform, context_features
        self.bins, self.bound, self.scale, self.clamp = bins, bound, scale, clamp
        self.order = _order(order, features)
        self.inverse_direction = inverse_direction
        params = 2 if transform == "affine" else 3 * bins - 1
        self.made = MADE(features, params, hidden, layers, self.order, context_features, where)
        if transform == "spline":  # unit inner derivatives: the identity map at initialisation
            with torch.no_grad():
                self.made.output.bias[2 * bins * features :] = _UNIT_DERIVATIVE

    def extra_repr(self) -> str:
        s = f"{self.features}, hidden={self.hidden}, layers={self.layers}, transform={self.transform!r}"
        if self.transform == "spline":
            s += f", bins={self.bins}, bound={self.bound}"
        else:
            s += f", scale={self.scale!r}, clamp={self.clamp}"
        if self.context_features:
            s += f", context_features={self.context_features}"
        if self.order != list(range(self.features)):
            s += f", order={self.order}"
        return s + (", inverse_direction=True" if self.inverse_direction else "")

    # -- checkpoints -------------------------------------------------------------------------
    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable); ``from_config(config())`` rebuilds the layer."""
        return dict(
            features=self.features,
            hidden=self.hidden,
            layers=self.layers,
            transform=self.transform,
            context_features=self.context_features,
            bins=self.bins,
            bound=self.bound,
            scale=self.scale,
            clamp=self.clamp,
            order=list(self.order),
            inverse_direction=self.inverse_direction,
        )

    @classmethod
    def from_config(cls, config: dict) -> MaskedAutoregressive:
        return cls(**config)

    # -- the map -----------------------------------------------------------------------------
    def _elementwise(self, u: torch.Tensor, out: torch.Tensor, inverse: bool):
        """tau (or tau^-1) of u [B, D] with the MADE output ``out`` [B, P * D]; (v, logdet [B])."""
        if self.transform == "affine":  # out = [raw (D), t (D)]: the coupling op's h
            return ops.coupling(u, out, None, self.scale, self.clamp, inverse=inverse)
        K = self.bins
        p = out.view(out.shape[0], 3 * K - 1, self.features).transpose(1, 2)  # [B, D, 3K - 1]
        v, lad = ops.rq_spline(u, p[..., :K], p[..., K : 2 * K], p[..., 2 * K :], self.bound, inverse=inverse)
        return v, lad.sum(1)

    def _one_pass(self, u, context):
        """v = tau(u; MADE(u)): the conditioner reads the input (MAF density, IAF sampling)."""
        return self._elementwise(u, self.made(u, context), inverse=False)

    def _d_passes(self, v, context):
        """u with v = tau(u; MADE(u)), solved in D passes: after pass k the dimensions of degree
        <= k are exact (their conditioners read only dimensions of lower degree)."""
        u = torch.zeros_like(v)
        for _ in range(self.features):
            u, logdet = self._elementwise(v, self.made(u, context), inverse=True)
        return u, logdet

    def forward(self, x, context=None):
        context = vector_call(self, x, type(self).__name__, context)
        return self._d_passes(x, context) if self.inverse_direction else self._one_pass(x, context)

    def inverse(self, y, context=None):
        context = vector_call(self, y, f"{type(self).__name__}.inverse", context)
        return self._one_pass(y, context) if self.inverse_direction else self._d_passes(y, context)
