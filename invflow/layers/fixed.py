"""A fixed random invertible linear map: the soft permutation of Schmier et al. 2022, A.1
(FrEIA's AllInOneBlock) and the fully-connected Glow of Schirrmeister et al. 2020, S2.2."""

from __future__ import annotations

import torch

from .. import ops
from ..ops.reference import inner_size, per_sample
from ..validation import check_input, check_limits, check_number, logdet_dtype
from .base import Flow


class FixedLinear(Flow):
    """y = W x per position with a fixed random rotation W (not trained): W^-1 = W^T and
    log|det W| = 0.  The "soft permutation" of FrEIA's AllInOneBlock (Schmier et al. 2022 A.1) and the
    fixed invertible linear of the fully-connected Glow (Schirrmeister et al. 2020 S2.2).  W is regenerated
    from ``seed`` at construction (a non-persistent buffer), so checkpoints do not carry
    C x C matrices; it takes C^2 floats of memory (37 MB at C = 3072)."""

    def __init__(self, num_channels: int, seed: int = 0):
        super().__init__()
        check_number(num_channels, "num_channels", "FixedLinear", low=1, integer=True)
        check_number(seed, "seed", "FixedLinear", low=0, integer=True)
        check_limits("FixedLinear", dim=num_channels)  # C^2 floats, built before any shape check
        self.num_channels = num_channels
        self.seed = seed
        self.register_buffer("weight", self._rotation(torch.float32, "cpu"), persistent=False)
        self.register_buffer("logdet", torch.zeros(()), persistent=False)  # |det| of a rotation is 1

    def _rotation(self, dtype, device) -> torch.Tensor:
        """The seed's rotation, computed in float64 and rounded once to ``dtype``."""
        g = torch.Generator().manual_seed(self.seed)
        w = torch.linalg.qr(
            torch.randn(self.num_channels, self.num_channels, generator=g, dtype=torch.float64, device="cpu")
        )[0]  # on the CPU even under torch.device("meta") (checkpoint loading's shape check)
        return w.to(device=device, dtype=dtype)

    def _apply(self, fn, recurse=True):
        # After .to(dtype) / .double() regenerate W at the new precision instead of keeping a
        # float32-rounded matrix, which would no longer be orthogonal to float64 accuracy.
        out = super()._apply(fn, recurse)
        self.weight = self._rotation(self.weight.dtype, self.weight.device)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_channels}, seed={self.seed}"

    def _logdet(self, x: torch.Tensor, sign: float) -> torch.Tensor:
        # 0 (a rotation), in float32 for low-precision inputs (docs/design.md)
        return per_sample(sign * self.logdet.to(logdet_dtype(x.dtype)) * inner_size(x), x.shape[0])

    def forward(self, x, context=None):  # context: ignored (unconditional layer)
        check_input(x, "FixedLinear", self.num_channels)
        return ops.channel_mix(x, self.weight.to(x.dtype)), self._logdet(x, 1.0)

    def inverse(self, y, context=None):
        check_input(y, "FixedLinear.inverse", self.num_channels)
        return ops.channel_mix(y, self.weight.t().to(y.dtype)), self._logdet(y, -1.0)
