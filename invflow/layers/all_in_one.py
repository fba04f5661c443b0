"""``AllInOneBlock``: FrEIA's all-in-one block for vector / feature flows (Ardizzone et al.,
FrEIA ``AllInOneBlock``): an affine coupling with soft clamping, a global affine map and a
fixed or learned soft permutation.  Schmier et al. 2022 (A.1) build their contrastive flow from
eight of them."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .. import nets, ops
from ..validation import check_bools, check_ints, check_limits, check_number
from .autoregressive import vector_call
from .base import Flow
from .fixed import FixedLinear

#: the global scale's activations Psi (FrEIA's ``global_affine_type``)
GLOBAL_AFFINE_TYPES = ("softplus", "sigmoid", "exp")


def _log_psi(g: torch.Tensor, kind: str) -> torch.Tensor:
    """log Psi(g): softplus 0.1 * softplus_{beta=1/2}(g), sigmoid 10 * sigmoid(g - 2), exp e^g."""
    if kind == "softplus":
        return torch.log(0.1 * F.softplus(g, beta=0.5))
    if kind == "sigmoid":
        return math.log(10.0) + F.logsigmoid(g - 2.0)
    return g


def _psi_inverse(value: float, kind: str) -> float:
    """g with Psi(g) = value (FrEIA's initial ``global_scale``), computed without overflow."""
    if kind == "softplus":  # 0.1 * 2 log(1 + e^(g/2)) = value
        y = 5.0 * value
        return 2.0 * (y + math.log(-math.expm1(-y)))
    if kind == "sigmoid":
        return 2.0 - math.log(10.0 / value - 1.0)
    return math.log(value)


class AllInOneBlock(Flow):
    """FrEIA's ``AllInOneBlock`` on vectors [B, D] (the block of Schmier et al. 2022, A.1):

        x = [x1, x2]   (x1 the first ceil(D/2) features, x2 the other floor(D/2))
        a = 0.1 * net([x1, c]),   a = [a_s, a_t]
        x2' = x2 * exp(clamp * tanh(a_s)) + a_t                   (soft-clamped affine coupling)
        y = W (Psi(g) * [x1, x2'] + b)                             (global affine, then permutation)
        log|det dy/dx| = sum clamp * tanh(a_s) + sum_d log Psi(g_d)

    W is a permutation: a random hard permutation, a random rotation (``permute_soft=True``, the
    "soft permutation"), and with ``householder=k > 0`` that matrix times k learned Householder
    reflections (I - 2 v v^T / v^T v), learned yet orthogonal; |det W| = 1 in every case.
    ``reverse_permutation=True`` also applies W^-1 before the coupling (Putzky & Welling 2019).
    Psi is the global scale's activation (``global_affine_type``): "softplus"
    0.1 * 2 log(1 + e^(g/2)) (FrEIA's default), "sigmoid" 10 sigmoid(g - 2) or "exp" e^g; g starts
    where Psi(g) = ``global_affine_init``, b at 0.  The coupling runs on ``invflow.ops.coupling``
    (scale "tanh" with raw = clamp * a_s), the global affine on ``invflow.ops.actnorm`` and a
    rotation on ``invflow.ops.channel_mix``: the same kernels as the other layers.

    ``net``: an nn.Module, a factory ``net(in_features, out_features)`` (FrEIA's
    ``subnet_constructor``: in = ceil(D/2) + K, out = 2 floor(D/2)) or None for
    ``invflow.nets.MLP(in, out, hidden, layers)`` (output layer zero-initialised: the coupling
    starts as the identity).  ``context_features=K > 0``: ``forward(x, context=c)`` with c [B, K]
    concatenated to x1 at the net's input (FrEIA's ``dims_c``).  ``seed``: the random
    permutation / rotation / initial reflections are drawn from it (None: a seed drawn from
    torch's global generator at construction, so stacked blocks differ, as in FrEIA, and the
    drawn seed is kept in ``config()``); they are rebuilt from it, not stored in checkpoints.

    Differences from FrEIA: no GIN variant (``gin_block``); vectors only ([B, D], not images);
    a factory or module given as ``net`` makes the block unsavable by config.

    Raises ValueError / TypeError for features < 2, hidden / layers < 1, clamp <= 0, an unknown
    global_affine_type, global_affine_init <= 0 (or >= 10 for "sigmoid"), householder < 0, and at
    call time for input that is not [B, D] or a context that is missing or not [B, K].  A block
    built without a context ignores one.  Log-dets are [B].
    """

    def __init__(
        self,
        features: int,
        hidden: int = 512,
        layers: int = 2,
        net: nn.Module | Callable[[int, int], nn.Module] | None = None,
        clamp: float = 2.0,
        context_features: int = 0,
        global_affine_init: float = 1.0,
        global_affine_type: str = "softplus",
        permute_soft: bool = False,
        householder: int = 0,
        reverse_permutation: bool = False,
        seed: int | None = None,
    ):
        super().__init__()
        where = type(self).__name__
        check_ints(where, low=2, features=features)
        check_ints(where, hidden=hidden, layers=layers)
        check_ints(where, low=0, context_features=context_features, householder=householder)
        check_limits(where, dim=features, hidden=hidden)
        check_bools(where, permute_soft=permute_soft, reverse_permutation=reverse_permutation)
        self.clamp = check_number(clamp, "clamp", where, low=0, low_open=True)
        if global_affine_type not in GLOBAL_AFFINE_TYPES:
            raise ValueError(
                f"{where}: global_affine_type must be one of {GLOBAL_AFFINE_TYPES}, got {global_affine_type!r}"
            )
        high = 10.0 if global_affine_type == "sigmoid" else None
        init = check_number(
            global_affine_init, "global_affine_init", where, low=0, low_open=True, high=high, high_open=True
        )
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self.seed = check_number(seed, "seed", where, low=0, integer=True)
        self.features, self.hidden, self.layers = features, hidden, layers
        self.context_features = context_features
        self.global_affine_init, self.global_affine_type = init, global_affine_type
        self.permute_soft, self.householder = permute_soft, householder
        self.reverse_permutation = reverse_permutation
        self.split = features - features // 2  # x1 = x[:, :split] conditions x2 = x[:, split:]
        n_in, n_out = self.split + context_features, 2 * (features // 2)
        self._custom_net = net is not None
        if net is None:
            net = nets.MLP(n_in, n_out, hidden=hidden, layers=layers)
        elif not isinstance(net, nn.Module):
            net = net(n_in, n_out)
            if not isinstance(net, nn.Module):
                raise TypeError(
                    f"{where}: the net factory must return an nn.Module, got {type(net).__name__}"
                )
        self.net = net
        self.global_scale = nn.Parameter(torch.full((features,), _psi_inverse(init, global_affine_type)))
        self.global_offset = nn.Parameter(torch.zeros(features))
        g = torch.Generator().manual_seed(self.seed)
        if permute_soft:  # the rotation (a non-persistent buffer rebuilt from the seed)
            self.rotation = FixedLinear(features, seed=self.seed)
        else:
            self.register_buffer("perm", torch.randperm(features, generator=g), persistent=False)
            self.register_buffer("unperm", torch.argsort(self.perm), persistent=False)
        if householder:
            self.householder_vectors = nn.Parameter(0.2 * torch.randn(householder, features, generator=g))

    def extra_repr(self) -> str:
        s = f"{self.features}, clamp={self.clamp}, permute_soft={self.permute_soft}"
        if self.householder:
            s += f", householder={self.householder}"
        if self.context_features:
            s += f", context_features={self.context_features}"
        return s + f", seed={self.seed}"

    # -- checkpoints -------------------------------------------------------------------------
    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable); TypeError for a block built with a custom
        ``net`` (a module or factory cannot be written as JSON: subclass the block and build the
        net in ``__init__`` instead)."""
        if self._custom_net:
            raise TypeError(
                "AllInOneBlock.config: a block built with a custom net cannot be saved by config; "
                "use the default MLP (hidden=, layers=) or subclass AllInOneBlock and build the net in __init__"
            )
        return dict(
            features=self.features,
            hidden=self.hidden,
            layers=self.layers,
            clamp=self.clamp,
            context_features=self.context_features,
            global_affine_init=self.global_affine_init,
            global_affine_type=self.global_affine_type,
            permute_soft=self.permute_soft,
            householder=self.householder,
            reverse_permutation=self.reverse_permutation,
            seed=self.seed,
        )

    @classmethod
    def from_config(cls, config: dict) -> AllInOneBlock:
        return cls(**config)

    # -- the map -----------------------------------------------------------------------------
    def _matrix(self, x: torch.Tensor) -> torch.Tensor | None:
        """W as a matrix of x's dtype, or None for a plain hard permutation (applied by indexing)."""
        if not self.householder:
            return self.rotation.weight.to(x.dtype) if self.permute_soft else None
        eye = torch.eye(self.features, dtype=x.dtype, device=x.device)
        w = self.rotation.weight.to(x.dtype) if self.permute_soft else eye[self.perm]
        for v in self.householder_vectors.to(x.dtype):
            w = w @ (eye - 2.0 * torch.outer(v, v) / v.dot(v))
        return w

    def _permute(self, x: torch.Tensor, w: torch.Tensor | None, inverse: bool) -> torch.Tensor:
        """W x (W^T x = W^-1 x when ``inverse``)."""
        if w is None:
            return x[:, self.unperm if inverse else self.perm]
        return ops.channel_mix(x, w.t() if inverse else w)

    def _coupling(self, x, context, inverse: bool):
        x1, x2 = x[:, : self.split], x[:, self.split :]
        a = 0.1 * self.net(x1 if context is None else torch.cat([x1, context.to(x1.dtype)], dim=1))
        n = x2.shape[1]
        if a.shape != (x.shape[0], 2 * n):
            raise ValueError(f"AllInOneBlock: the net must return [B, {2 * n}], got {list(a.shape)}")
        h = torch.cat([self.clamp * a[:, :n], a[:, n:]], dim=1)  # log s = clamp tanh(raw / clamp)
        out, logdet = ops.coupling(x2, h, None, "tanh", self.clamp, inverse=inverse)
        return torch.cat([x1, out], dim=1), logdet

    def _global(self, x: torch.Tensor):
        """(bias, log scale) of y = Psi(g) x + b written as the actnorm op's (x + b / Psi) Psi."""
        log_s = _log_psi(self.global_scale, self.global_affine_type)
        return self.global_offset * torch.exp(-log_s), log_s

    def forward(self, x, context=None):
        context = vector_call(self, x, type(self).__name__, context)
        w = self._matrix(x)
        if self.reverse_permutation:
            x = self._permute(x, w, inverse=True)
        u, logdet = self._coupling(x, context, inverse=False)
        y, ld = ops.actnorm(u, *self._global(u))
        return self._permute(y, w, inverse=False), logdet + ld

    def inverse(self, y, context=None):
        context = vector_call(self, y, f"{type(self).__name__}.inverse", context)
        w = self._matrix(y)
        u, ld = ops.actnorm(self._permute(y, w, inverse=True), *self._global(y), inverse=True)
        x, logdet = self._coupling(u, context, inverse=True)
        if self.reverse_permutation:
            x = self._permute(x, w, inverse=False)
        return x, logdet + ld
