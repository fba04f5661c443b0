"""invflow: normalizing-flow building blocks on fused, double-backward-safe C++/CUDA kernels.

    import invflow
    step = invflow.Sequential(
        invflow.ActNorm(12),
        invflow.InvConv1x1(12, lu=True),
        invflow.AffineCoupling(12, invflow.masks.Channel(0), hidden=128),
    )
    y, logdet = step(x)            # logdet: [B]
    x_back, inv_logdet = step.inverse(y)

See DESIGN.md for the contract; ``invflow.backend("fused" | "reference")`` switches kernels.
"""

from . import masks, nets, ops
from ._backend import backend, current_backend, fused_available
from .layers import ActNorm, AffineCoupling, Flow, InvConv1x1, Sequential, Squeeze

__version__ = "0.1.0"

__all__ = [
    "Flow",
    "Sequential",
    "ActNorm",
    "InvConv1x1",
    "AffineCoupling",
    "Squeeze",
    "masks",
    "nets",
    "ops",
    "backend",
    "current_backend",
    "fused_available",
]
