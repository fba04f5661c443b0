"""The models: Glow (Kingma & Dhariwal 2018), RealNVP (Dinh et al. 2017), patch and dense Glow
(Schirrmeister et al. 2020, S2), VectorFlow; contract and multi-scale loop in models.base."""

from ..checkpoint import register
from .base import FlowModel, FlowOutput
from .conditional import ClassEmbeddingFlow
from .dense import DenseGlow, VectorFlow
from .generic import NormalizingFlow
from .glow import Glow
from .patch import PatchGlow
from .realnvp import RealNVP

for _cls in (Glow, RealNVP, PatchGlow, DenseGlow, VectorFlow, ClassEmbeddingFlow, NormalizingFlow):
    register(_cls)

__all__ = [
    "FlowModel",
    "FlowOutput",
    "ClassEmbeddingFlow",
    "Glow",
    "RealNVP",
    "PatchGlow",
    "DenseGlow",
    "VectorFlow",
    "NormalizingFlow",
]
