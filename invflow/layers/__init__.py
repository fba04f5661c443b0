"""Flow layers, each an ``invflow.Flow`` (layers.base): actnorm, 1x1 conv, couplings, squeeze
(Glow, Kingma & Dhariwal 2018, Sec. 3; RealNVP, Dinh et al. 2017, Sec. 3)."""

from ..validation import check_input
from .actnorm import ActNorm, UninitializedWarning, warn_if_uninitialized
from .all_in_one import AllInOneBlock
from .autoregressive import MADE, MaskedAutoregressive
from .base import Flow, Sequential
from .coupling import AdditiveCoupling, AffineCoupling
from .fixed import FixedLinear
from .invconv import InvConv1x1
from .spline import SplineCoupling
from .squeeze import Squeeze

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
    "MADE",
    "AllInOneBlock",
    "check_input",
    "UninitializedWarning",
    "warn_if_uninitialized",
]
