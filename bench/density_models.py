"""The flows of the density benchmark (bench/density.py), one builder per library and
architecture, all the same design:

  nsf      ``layers`` rational-quadratic spline couplings (Durkan et al. 2019, Sec. 3.1),
           ``bins`` bins on [-bound, bound], linear tails; the transformed half alternates
  maf      ``layers`` masked affine autoregressive layers (Papamakarios et al. 2017, Sec. 3.1)
           with a MADE conditioner (Germain et al. 2015); the order is reversed between layers
  realnvp  ``layers`` affine couplings (Dinh et al. 2017, Eq. 7); the transformed half alternates

Every conditioner has two hidden ReLU layers of width ``hidden`` (for MADE: masked ones), a
context (conditional rows) is concatenated to its input, and the base is N(0, I). The
elementwise maps are each library's own: the spline normalisation of its spline code (the
paper's: softmax widths / heights with a 1e-3 minimum; zuko's own soft clamp) and its affine
scale (invflow coupling and MAF "tanh": exp(2 tanh(s / 2)); zuko: its soft-clamped exp; nflows / normflows
MAF: sigmoid(s + 2) + 1e-3; normflows coupling: exp; FrEIA: exp(2 * 0.636 atan(s / 2))).

``build(library, arch, dim, hidden, ...)`` returns a :class:`Density` (``log_prob(x, c)`` in
nats, [B]) or raises :class:`Unavailable` with the one-line reason a row prints (package not
installed, invflow layer not there yet, architecture the library does not have).
:func:`matched_hidden` picks, per library, the width whose parameter count is closest to the
shared target (:func:`target_params`: the count of plain dense conditioners at ``hidden``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from importlib import import_module

import torch
from torch import nn

import invflow
from invflow.data import standard_normal_log_prob

LIBRARIES = ("invflow", "zuko", "nflows", "normflows", "FrEIA")
ARCHS = ("nsf", "maf", "realnvp")
BINS, BOUND = 8, 3.0
CONTEXT_LIBRARIES = ("invflow", "zuko")  # the conditional rows


class Unavailable(Exception):
    """Why a (library, architecture) row has no number: printed in its place."""


class Density(nn.Module):
    """A flow from one library with ``log_prob(x, c=None) -> [B]`` (nats)."""

    def __init__(self, module: nn.Module, log_prob: Callable):
        super().__init__()
        self.module = module
        self._log_prob = log_prob

    def log_prob(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self._log_prob(x, c)

    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)


def need(package: str):
    """Imports ``package`` or raises :class:`Unavailable` saying how to install it."""
    try:
        return import_module(package)
    except ImportError as e:
        raise Unavailable(f"not installed ({e.name}: pip install -e .[bench])") from None


def halves(dim: int, k: int) -> torch.Tensor:
    """The bool mask [dim] of the entries coupling layer ``k`` transforms: the second half
    (floor(dim / 2) entries) for even k, the first half for odd k (``invflow.masks.Channel``)."""
    second = torch.arange(dim) >= dim - dim // 2
    return second if k % 2 == 0 else ~second


class MLP(nn.Module):
    """in -> hidden -> hidden -> out with ReLU; a context [B, K] is concatenated to the input.
    ``zero_last``: the output layer starts at zero (an identity flow at initialisation)."""

    def __init__(self, n_in: int, n_out: int, hidden: int, context: int = 0, zero_last: bool = True):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_in + context, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_out),
        )
        if zero_last:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, x, context=None):
        return self.net(x if context is None else torch.cat([x, context], dim=1))


# ------------------------------------------------------------------------- parameter counts
def per_entry(arch: str, bins: int = BINS) -> int:
    """Conditioner outputs per transformed entry: 3K - 1 for a spline (K widths, K heights,
    K - 1 inner derivatives), 2 for an affine map."""
    return 3 * bins - 1 if arch == "nsf" else 2


def target_params(arch: str, dim: int, hidden: int, layers: int, context: int = 0, bins: int = BINS) -> int:
    """The parameter count every library is matched to: ``layers`` dense two-hidden-layer
    conditioners of width ``hidden`` (a coupling sees the conditioning half, MADE all ``dim``
    entries, both plus the context), weights and biases."""
    p = per_entry(arch, bins)
    total = 0
    for k in range(layers):
        n_t = int(halves(dim, k).sum()) if arch != "maf" else dim
        n_c = dim - n_t if arch != "maf" else dim
        total += (n_c + context + 1) * hidden + (hidden + 1) * hidden + (hidden + 1) * p * n_t
    return total


def matched_hidden(build_fn: Callable[[int], Density], target: int, start: int) -> tuple[int, Density]:
    """(width, model) whose parameter count is closest to ``target``, searching widths in
    [2, 4 start] by bisection (counts grow with the width). A width the builder refuses with
    ValueError (a MADE narrower than its features) counts as too small."""

    def count(h: int) -> int:
        try:
            return build_fn(h).params()
        except ValueError:
            return -1

    lo, hi = 2, max(4 * start, 8)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(mid) < target:
            lo = mid
        else:
            hi = mid
    best = min((h for h in (lo, hi) if count(h) >= 0), key=lambda h: abs(count(h) - target))
    return best, build_fn(best)


# -------------------------------------------------------------------------------- invflow
def _invflow(arch: str, dim: int, hidden: int, layers: int, context: int) -> Density:
    flows: list[invflow.Flow] = []
    for k in range(layers):
        if arch == "nsf":
            if not hasattr(invflow, "SplineCoupling"):
                raise Unavailable("invflow.SplineCoupling not in this checkout yet")
            flows.append(
                invflow.SplineCoupling(
                    dim,
                    invflow.masks.Channel(k % 2),
                    net=partial(_net, hidden=hidden),
                    bins=BINS,
                    bound=BOUND,
                    context_channels=context,
                )
            )
        elif arch == "maf":
            if not hasattr(invflow, "MaskedAutoregressive"):
                raise Unavailable("invflow.MaskedAutoregressive not in this checkout yet")
            flows.append(
                invflow.MaskedAutoregressive(
                    dim,
                    hidden=hidden,
                    transform="affine",
                    context_features=context,
                    scale="tanh",
                    clamp=2.0,
                    order="reverse" if k % 2 else None,
                )
            )
        else:
            kw = {"context_channels": context} if context else {}
            flows.append(
                invflow.AffineCoupling(
                    dim,
                    invflow.masks.Channel(k % 2),
                    net=partial(_net, hidden=hidden),
                    scale="tanh",
                    clamp=2.0,
                    **kw,
                )
            )
    seq = invflow.Sequential(*flows)

    def log_prob(x, c):
        z, logdet = seq(x) if c is None else seq(x, context=c)
        return standard_normal_log_prob(z) + logdet

    return Density(seq, log_prob)


def _net(n_in: int, n_out: int, *args, hidden: int, **kwargs) -> nn.Module:
    """invflow's st-net factory: ``invflow.nets.MLP`` (two hidden layers, zero-initialised
    output). A conditional coupling passes the widened input size itself."""
    return invflow.nets.MLP(n_in, n_out, hidden=hidden)


# ----------------------------------------------------------------------------------- zuko
def _zuko(arch: str, dim: int, hidden: int, layers: int, context: int) -> Density:
    zuko = need("zuko")
    from zuko.flows import (
        Flow,
        GeneralCouplingTransform,
        MaskedAutoregressiveTransform,
        UnconditionalDistribution,
    )
    from zuko.transforms import MonotonicRQSTransform

    kw = dict(hidden_features=(hidden, hidden))
    if arch == "maf":
        transforms = [
            MaskedAutoregressiveTransform(
                dim, context, order=torch.arange(dim) if k % 2 == 0 else torch.arange(dim).flip(0), **kw
            )
            for k in range(layers)
        ]
    else:
        if arch == "nsf":
            kw.update(
                univariate=partial(MonotonicRQSTransform, bound=BOUND),
                shapes=[(BINS,), (BINS,), (BINS - 1,)],
            )
        # zuko's mask marks the conditioning entries
        transforms = [GeneralCouplingTransform(dim, context, ~halves(dim, k), **kw) for k in range(layers)]
    base = UnconditionalDistribution(
        zuko.distributions.DiagNormal, torch.zeros(dim), torch.ones(dim), buffer=True
    )
    flow = Flow(transforms, base)
    return Density(flow, lambda x, c: flow(c).log_prob(x))


# --------------------------------------------------------------------------------- nflows
def _nflows(arch: str, dim: int, hidden: int, layers: int, context: int) -> Density:
    need("nflows")
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import (
        AffineCouplingTransform,
        CompositeTransform,
        MaskedAffineAutoregressiveTransform,
        PiecewiseRationalQuadraticCouplingTransform,
        ReversePermutation,
    )

    def net(n_in, n_out):
        return MLP(n_in, n_out, hidden, context)

    ts = []
    for k in range(layers):
        mask = halves(dim, k).int()  # nflows: > 0 marks a transformed entry
        if arch == "nsf":
            ts.append(
                PiecewiseRationalQuadraticCouplingTransform(
                    mask, net, num_bins=BINS, tails="linear", tail_bound=BOUND
                )
            )
        elif arch == "maf":
            if k:
                ts.append(ReversePermutation(dim))
            ts.append(
                MaskedAffineAutoregressiveTransform(
                    dim, hidden, context_features=context or None, num_blocks=1, use_residual_blocks=False
                )
            )
        else:
            ts.append(AffineCouplingTransform(mask, net))
    flow = Flow(CompositeTransform(ts), StandardNormal([dim]))
    return Density(flow, lambda x, c: flow.log_prob(x, context=c))


# ------------------------------------------------------------------------------ normflows
def _normflows(arch: str, dim: int, hidden: int, layers: int, context: int) -> Density:
    nf = need("normflows")
    from normflows.flows.neural_spline.coupling import PiecewiseRationalQuadraticCoupling

    class Flip(nf.flows.Flow):
        def forward(self, z, context=None):
            return z.flip(1), z.new_zeros(z.shape[0])

        inverse = forward

    def net(n_in, n_out):
        return MLP(n_in, n_out, hidden, context)

    flows = []
    for k in range(layers):
        if arch == "nsf":
            # normflows' spline coupling maps data -> latent in its forward: Reverse makes it
            # the density direction of a NormalizingFlow (as normflows' own wrappers do)
            mask = halves(dim, k).int()
            flows.append(
                nf.flows.Reverse(
                    PiecewiseRationalQuadraticCoupling(
                        mask, net, num_bins=BINS, tails="linear", tail_bound=BOUND
                    )
                )
            )
        elif arch == "maf":
            if k:
                flows.append(Flip())
            flows.append(
                nf.flows.Reverse(
                    nf.flows.MaskedAffineAutoregressive(dim, hidden, num_blocks=1, use_residual_blocks=False)
                )
            )
        else:
            # AffineCouplingBlock transforms the second channel half; Flip alternates the halves
            n_c = dim - dim // 2
            if k:
                flows.append(Flip())
            mlp = nf.nets.MLP([n_c, hidden, hidden, 2 * (dim - n_c)], init_zeros=True)
            flows.append(nf.flows.AffineCouplingBlock(mlp, scale_map="exp"))
    q0 = nf.distributions.DiagGaussian(dim, trainable=False)
    # NormalizingFlow's flows run latent -> data: the density direction is their inverse
    model = nf.NormalizingFlow(q0, flows[::-1])
    return Density(model, lambda x, c: model.log_prob(x))


# ---------------------------------------------------------------------------------- FrEIA
def _freia(arch: str, dim: int, hidden: int, layers: int, context: int) -> Density:
    need("FrEIA")
    if arch != "realnvp":
        raise Unavailable(f"FrEIA 0.2 has no {'spline coupling' if arch == 'nsf' else 'MAF'}")
    if layers % 2:
        raise Unavailable("FrEIA's GLOWCouplingBlock holds two couplings: needs an even layer count")
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    def net(n_in, n_out):
        return MLP(n_in, n_out, hidden)

    # a GLOWCouplingBlock is two affine couplings: the second half given the first, then the
    # first given the new second half
    inn = Ff.SequenceINN(dim)
    for _ in range(layers // 2):
        inn.append(Fm.GLOWCouplingBlock, subnet_constructor=net, clamp=2.0)

    def log_prob(x, c):
        z, logdet = inn(x)
        return standard_normal_log_prob(z) + logdet

    return Density(inn, log_prob)


BUILDERS = {"invflow": _invflow, "zuko": _zuko, "nflows": _nflows, "normflows": _normflows, "FrEIA": _freia}


def build(library: str, arch: str, dim: int, hidden: int, layers: int, context: int = 0) -> Density:
    """The ``arch`` flow of ``library`` on ``dim`` features (``context`` conditioning features),
    or :class:`Unavailable`."""
    if context and library not in CONTEXT_LIBRARIES:
        raise Unavailable(f"{library}: no conditional row in this benchmark")
    return BUILDERS[library](arch, dim, hidden, layers, context)


_WIDTHS: dict = {}


def matched_width(library: str, arch: str, dim: int, hidden: int, layers: int, context: int = 0) -> int:
    """``library``'s width for ``arch`` whose parameter count is closest to
    :func:`target_params` (``hidden``); cached. Raises :class:`Unavailable` like :func:`build`."""
    key = (library, arch, dim, hidden, layers, context)
    if key not in _WIDTHS:
        target = target_params(arch, dim, hidden, layers, context)
        state = torch.random.get_rng_state()
        try:
            _WIDTHS[key] = matched_hidden(
                lambda h: build(library, arch, dim, h, layers, context), target, hidden
            )[0]
        finally:
            torch.random.set_rng_state(state)  # the search draws initialisations: leave no trace
    return _WIDTHS[key]


def gaussian_nll_floor(dim: int) -> float:
    """NLL (nats) of N(0, I) on its own samples, 0.5 dim (1 + log 2 pi): a sanity scale."""
    return 0.5 * dim * (1 + math.log(2 * math.pi))
