"""invflow: normalizing-flow building blocks on fused, double-backward-safe C++/CUDA kernels.

    import invflow
    step = invflow.Sequential(
        invflow.ActNorm(12),
        invflow.InvConv1x1(12, lu=True),
        invflow.AffineCoupling(12, invflow.masks.Channel(0), hidden=128),
    )
    y, logdet = step(x)            # logdet: [B]
    x_back, inv_logdet = step.inverse(y)

See docs/design.md for the contract; ``invflow.backend("fused" | "reference")`` switches kernels.
"""

from . import checkpoint, data, io, layers, masks, models, nets, ops, priors, validation
from ._backend import backend, current_backend, fused_available
from .checkpoint import load, save
from .layers import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    AllInOneBlock,
    FixedLinear,
    Flow,
    InvConv1x1,
    MaskedAutoregressive,
    Sequential,
    SplineCoupling,
    Squeeze,
)
from .models import (
    ClassEmbeddingFlow,
    DenseGlow,
    FlowModel,
    FlowOutput,
    Glow,
    NormalizingFlow,
    PatchGlow,
    RealNVP,
    VectorFlow,
)

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

__all__ = [
    "Flow",
    "Sequential",
    "ActNorm",
    "InvConv1x1",
    "AffineCoupling",
    "AdditiveCoupling",
    "SplineCoupling",
    "FixedLinear",
    "Squeeze",
    "MaskedAutoregressive",
    "AllInOneBlock",
    "Glow",
    "RealNVP",
    "PatchGlow",
    "DenseGlow",
    "VectorFlow",
    "FlowModel",
    "ClassEmbeddingFlow",
    "NormalizingFlow",
    "FlowOutput",
    "save",
    "load",
    "masks",
    "nets",
    "priors",
    "data",
    "models",
    "checkpoint",
    "io",
    "layers",
    "train",
    "validation",
    "ops",
    "backend",
    "current_backend",
    "fused_available",
]


def __getattr__(name: str):
    """``invflow.train`` is imported on first use: it needs tqdm and safetensors, which a bare
    GPU machine running the kernel checks may not have."""
    if name == "train":
        import importlib

        return importlib.import_module(".train", __name__)
    raise AttributeError(f"module 'invflow' has no attribute {name!r}")
