"""Activation normalisation (Glow, Kingma & Dhariwal 2018, Sec. 3.1)."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import nn

from .. import ops
from .base import LOW_PRECISION, Flow, check_input, check_number

#: A channel whose standard deviation on the initialisation batch is at most
#: ``CONSTANT_STD * (1 + |mean|)`` counts as constant (a dead unit, a constant image channel,
#: rounding noise of one repeated value): it is centred but keeps log_scale = 0 (scale 1),
#: instead of the -log(eps) = 13.8 (scale 1e6) that dividing by its zero spread would give.
CONSTANT_STD = 1e-5


class UninitializedWarning(UserWarning):
    """A model whose data-dependent initialisation (ActNorm) never ran is being evaluated."""


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sums ``t`` over the processes of torch.distributed when it is initialised (no-op otherwise)."""
    if _distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def data_init(x: torch.Tensor, eps: float, where: str = "ActNorm") -> tuple[torch.Tensor, torch.Tensor]:
    """Glow's data-dependent initialisation (Sec. 3.1) from a batch [B, C, ...]:
    (bias, log_scale) = (-mean, -log(std + eps)) per channel, so that
    (x + bias) * exp(log_scale) has zero mean and unit variance per channel.

    * The statistics are computed in float64 (whatever x's dtype) by the two-pass algorithm,
      and returned in x's dtype.
    * When ``torch.distributed`` is initialised, the per-channel sums (and counts) are summed
      over all processes, so every replica gets the statistics of the global batch and the
      same parameters: every process must run the initialising forward (as DDP requires).
    * Constant channels (std <= CONSTANT_STD * (1 + |mean|)) get log_scale = 0.
    * Raises ValueError when the (global) batch has fewer than 2 values per channel (B = 1
      for [B, C], or B = 1 with a 1 x 1 spatial size): no variance can be estimated, as
      BatchNorm refuses such a batch in training.
    """
    dims = [0] + list(range(2, x.dim()))
    xd = x.detach().to(torch.float64)
    count = xd.new_tensor([float(x.numel() // max(1, x.shape[1]))])
    total = _all_reduce(torch.cat([xd.sum(dim=dims), count]))
    n = float(total[-1])
    if n < 2:
        raise ValueError(
            f"{where}: data-dependent initialisation needs more than 1 value per channel to estimate a variance, "
            f"got input of shape {list(x.shape)}; initialise on a batch of >= 2 samples (e.g. "
            f"invflow.train.Trainer(init_batch=...)), or load trained weights before training"
        )
    mean = total[:-1] / n
    centred = xd - mean.view((1, -1) + (1,) * (x.dim() - 2))
    var = _all_reduce(centred.square().sum(dim=dims)) / n
    std = var.sqrt()
    log_scale = -torch.log(std + eps)
    log_scale = torch.where(std <= CONSTANT_STD * (1 + mean.abs()), torch.zeros_like(log_scale), log_scale)
    return (-mean).to(x.dtype), log_scale.to(x.dtype)


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


class DataInitFlag:
    """Mixin for layers with a data-dependent initialisation flagged by the buffer
    ``initialized``: once the flag is seen set, a Python mirror answers, so a training-mode
    forward costs no host sync per layer (CUDA) and no graph break (torch.compile).  Loading
    a state dict resets the mirror; call ``initialize`` rather than writing the buffer."""

    _ready: bool = False

    def needs_init(self) -> bool:
        if self._ready:
            return False
        self._ready = bool(self.initialized)
        return not self._ready

    def _load_from_state_dict(self, *args, **kwargs):
        self._ready = False
        super()._load_from_state_dict(*args, **kwargs)


class ActNorm(DataInitFlag, Flow):
    """y = (x + b) * exp(log_s) per channel; log|det| = N * sum(log_s), N = H * W.

    Data-dependent initialisation: on the first forward in training mode (or an explicit
    ``initialize(x)``) b and log_s are set so that the output has zero mean and unit
    variance per channel on that batch (``data_init``: statistics of the global batch under
    torch.distributed; ValueError for a batch with one value per channel; constant channels
    keep log_s = 0).  Works on [B, C], [B, C, L] and [B, C, H, W].
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
        """Sets b = -mean(x) and log_s = -log(std(x) + eps) per channel (see ``data_init``)."""
        check_input(x, "ActNorm.initialize", self.num_channels)
        bias, log_scale = data_init(x, self.eps, "ActNorm.initialize")
        self.bias.copy_(bias)
        self.log_scale.copy_(log_scale)
        self.initialized.fill_(True)
        self._ready = True

    def forward(self, x):
        check_input(x, "ActNorm", self.num_channels)
        if self.training and self.needs_init():
            self.initialize(x)
        return ops.actnorm(x, *self._params(x))

    def inverse(self, y):
        check_input(y, "ActNorm.inverse", self.num_channels)
        return ops.actnorm(y, *self._params(y), inverse=True)

    def _params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # float16 / bfloat16 activations of float32 parameters (torch.autocast): compute in the
        # activations' dtype, as autocast does; the op returns the log-det in float32
        if x.dtype != self.bias.dtype and x.dtype in LOW_PRECISION:
            return self.bias.to(x.dtype), self.log_scale.to(x.dtype)
        return self.bias, self.log_scale
