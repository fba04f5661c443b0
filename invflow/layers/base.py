"""The flow contract (docs/design.md): ``Flow``, the base of every layer and model, and
``Sequential``, their composition (Kingma & Dhariwal 2018, Sec. 2: the log-determinants of a
composition add up).

    y, logdet = flow(x)          # logdet: [B], log|det dy/dx| per sample
    x, logdet = flow.inverse(y)  # logdet: log|det dx/dy| = -(forward logdet)
    y, logdet = flow(x, context=c)   # a conditional flow: c [B, K] (or [B, K, H, W] for images)

No log-determinant is ever stored on a module.  Layers that need no context ignore it;
``check_context`` is the shape check the conditional layers share.
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Callable

import torch
from torch import nn

from ..conditioning import check_context  # noqa: F401  (the shared check of conditional layers)
from ..validation import logdet_dtype

#: What a fast path returns: (y, logdet [B]) or None where it does not apply.
FastPath = Callable[["Sequential", torch.Tensor], "tuple[torch.Tensor, torch.Tensor] | None"]

# the fast paths ``Sequential.forward`` tries, in registration order (see register_fast_path)
_FAST_PATHS: list[FastPath] = []

# the checks this module re-exported before invflow.validation was public (one release)
_MOVED = ("LOW_PRECISION", "check_input", "check_number")


def __getattr__(name: str):
    if name in _MOVED:
        warnings.warn(
            f"invflow.layers.base.{name} is deprecated; import it from invflow.validation",
            DeprecationWarning,
            stacklevel=2,
        )
        from .. import validation

        return getattr(validation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Flow(nn.Module, metaclass=abc.ABCMeta):
    """An invertible map with a tractable log-determinant (see the module docstring).

    ``context`` (a tensor of per-sample conditioning values, or None) is passed to every layer;
    layers that need none ignore it."""

    @abc.abstractmethod
    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (y, log|det dy/dx|) with the log-det of shape [B]."""

    @abc.abstractmethod
    def inverse(
        self, y: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (x, log|det dx/dy|) with the log-det of shape [B]."""


class Sequential(Flow):
    """Composition of flows; log-determinants add up, the inverse runs in reverse order.

    ``forward`` first offers the whole composition to the registered fast paths (see
    ``register_fast_path``; only without a context); when none applies it runs the flows one
    by one.  A context is passed to every flow (``f(x, context=c)``); without one each flow
    is called as ``f(x)``, so a user layer written as ``forward(self, x)`` still composes.
    """

    def __init__(self, *flows: Flow):
        super().__init__()
        for i, f in enumerate(flows):
            if not isinstance(f, Flow):
                raise TypeError(
                    f"invflow.Sequential: argument {i} is {type(f).__name__}, not an invflow.Flow"
                )
        self.flows = nn.ModuleList(flows)

    @staticmethod
    def register_fast_path(fn: FastPath) -> FastPath:
        """Registers ``fn(seq, x)``, tried by every ``Sequential.forward`` (in registration
        order, before the layer-by-layer loop): it returns (y, logdet [B]) computing the same
        function as the flows of ``seq``, or None where it does not apply (then the next one is
        tried, and finally the layers run and raise their errors).  Registering the same
        function twice is a no-op.  Returns ``fn`` (usable as a decorator).

        ``invflow.models.fused_scale`` registers the channels-last Glow step at import."""
        if fn not in _FAST_PATHS:
            _FAST_PATHS.append(fn)
        return fn

    @staticmethod
    def fast_paths() -> tuple[FastPath, ...]:
        """The registered fast paths, in the order ``forward`` tries them."""
        return tuple(_FAST_PATHS)

    def __len__(self) -> int:
        return len(self.flows)

    def __getitem__(self, i):
        return self.flows[i]

    def forward(self, x, context=None):
        if context is None:
            for fast in _FAST_PATHS:
                out = fast(self, x)
                if out is not None:
                    return out
        logdet = x.new_zeros(x.shape[0], dtype=logdet_dtype(x.dtype))
        for f in self.flows:
            x, ld = f(x) if context is None else f(x, context=context)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y, context=None):
        logdet = y.new_zeros(y.shape[0], dtype=logdet_dtype(y.dtype))
        for f in reversed(self.flows):
            y, ld = f.inverse(y) if context is None else f.inverse(y, context=context)
            logdet = logdet + ld
        return y, logdet
