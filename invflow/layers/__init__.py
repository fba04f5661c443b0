"""Flow layers; each follows the contract of ``invflow.Flow``."""

from ..validation import check_input
from .actnorm import ActNorm, UninitializedWarning, warn_if_uninitialized
from .base import Flow, Sequential
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
    "UninitializedWarning",
    "warn_if_uninitialized",
]
