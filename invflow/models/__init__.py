"""Multi-scale models (the contract is in invflow.models.base)."""

from ..checkpoint import register
from .base import FlowModel, FlowOutput
from .dense import DenseGlow, VectorFlow
from .glow import Glow
from .patch import PatchGlow
from .realnvp import RealNVP

for _cls in (Glow, RealNVP, PatchGlow, DenseGlow, VectorFlow):
    register(_cls)

__all__ = ["FlowModel", "FlowOutput", "Glow", "RealNVP", "PatchGlow", "DenseGlow", "VectorFlow"]
