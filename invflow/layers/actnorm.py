"""Activation normalisation, the flow layer ``ActNorm`` (Glow, Kingma & Dhariwal 2018, Sec. 3.1),
and the check that warns when a model's data-dependent initialisation never ran.  The
initialisation itself (``data_init``) lives in ``invflow.nets``, shared with ``ActNorm2d``."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .. import ops
from ..nets import DataInitFlag, data_init
from ..validation import LOW_PRECISION, check_input, check_number
from .base import Flow


def __getattr__(name: str):
    if name == "CONSTANT_STD":  # moved with data_init (one release)
        warnings.warn(
            "invflow.layers.actnorm.CONSTANT_STD is deprecated; import it from invflow.nets",
            DeprecationWarning,
            stacklevel=2,
        )
        from .. import nets

        return nets.CONSTANT_STD
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class UninitializedWarning(UserWarning):
    """A model whose data-dependent initialisation (ActNorm) never ran is being evaluated."""


def uninitialized_layers(module: nn.Module) -> list[str]:
    """Names of the sub-modules of ``module`` (itself included) whose data-dependent
    initialisation never ran (ActNorm, nets.ActNorm2d)."""
    return [
        name or type(module).__name__
        for name, m in module.named_modules()
        if isinstance(m, DataInitFlag) and m.needs_init()
    ]


def warn_if_uninitialized(module: nn.Module, where: str, stacklevel: int = 3) -> bool:
    """Warns (UninitializedWarning) when ``module`` has uninitialised ActNorm layers: an untrained
    model's log-likelihoods are meaningless.  Returns whether it warned."""
    missing = uninitialized_layers(module)
    if missing:
        warnings.warn(
            f"{where}: {len(missing)} ActNorm layer(s) of {type(module).__name__} were never initialised "
            f"(e.g. {missing[0]}): the model is untrained, so its log-likelihoods and scores are meaningless. "
            f"Train it, load trained weights (invflow.load), or run one training-mode forward on data first.",
            UninitializedWarning,
            stacklevel=stacklevel,
        )
    return bool(missing)


class ActNorm(DataInitFlag, Flow):
    """y = (x + b) * exp(log_s) per channel; log|det| = N * sum(log_s), N = H * W.

    Data-dependent initialisation: on the first forward in training mode (or an explicit
    ``initialize(x)``) b and log_s are set so that the output has zero mean and unit
    variance per channel on that batch (``data_init``: statistics of the global batch under
    torch.distributed; ValueError for a batch with one value per channel; constant channels
    keep log_s = 0; the scale is bounded: log_s = -log(max(std, MIN_INIT_STD) + eps) <= 6.9,
    i.e. a near-constant channel (std below ``invflow.nets.MIN_INIT_STD`` = 1e-3) gets the
    scale 1000, not 1 / std).  Works on [B, C], [B, C, L] and [B, C, H, W].
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.num_channels = check_number(num_channels, "num_channels", "ActNorm", low=1, integer=True)
        self.eps = check_number(eps, "eps", "ActNorm", low=0)
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))

    def extra_repr(self) -> str:
        return f"{self.num_channels}"

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Sets b = -mean(x) and log_s = -log(max(std(x), 1e-3) + eps) per channel (see ``data_init``)."""
        check_input(x, "ActNorm.initialize", self.num_channels)
        bias, log_scale = data_init(x, self.eps, "ActNorm.initialize")
        self.bias.copy_(bias)
        self.log_scale.copy_(log_scale)
        self.initialized.fill_(True)
        self._ready = True

    def forward(self, x, context=None):  # context: ignored (unconditional layer)
        check_input(x, "ActNorm", self.num_channels)
        if self.training and self.needs_init():
            self.initialize(x)
        return ops.actnorm(x, *self._params(x))

    def inverse(self, y, context=None):
        check_input(y, "ActNorm.inverse", self.num_channels)
        return ops.actnorm(y, *self._params(y), inverse=True)

    def _params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # float16 / bfloat16 activations of float32 parameters (torch.autocast): compute in the
        # activations' dtype, as autocast does; the op returns the log-det in float32
        if x.dtype != self.bias.dtype and x.dtype in LOW_PRECISION:
            return self.bias.to(x.dtype), self.log_scale.to(x.dtype)
        return self.bias, self.log_scale
