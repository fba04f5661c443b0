"""Flow layers; each follows the contract of ``invflow.Flow``."""

from .actnorm import ActNorm
from .base import Flow, Sequential, check_input
from .coupling import AdditiveCoupling, AffineCoupling
from .fixed import FixedLinear
from .invconv import InvConv1x1
from .squeeze import Squeeze

__all__ = [
    "Flow",
    "Sequential",
    "ActNorm",
    "InvConv1x1",
    "AffineCoupling",
    "AdditiveCoupling",
    "FixedLinear",
    "Squeeze",
    "check_input",
]
