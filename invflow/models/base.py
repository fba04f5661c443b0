"""The model contract (docs/design.md), ``FlowModel``, and the multi-scale loop every model
shares, ``MultiScaleModel`` (Dinh et al. 2017, Sec. 3.6; Schirrmeister et al. 2020, Eq. 3).

    out = model(x)                  # x preprocessed into [-0.5, 0.5] (invflow.data)
    out.log_prob                    # [B]
    out.per_scale                   # [B, L]: c_i(x) of Schirrmeister et al. 2020, Eq. 3
    out.latents                     # [z_1, ..., z_L]
    model.log_prob(x)               # == model(x).log_prob
    x = model.inverse(out.latents)  # reconstructs x
    x = model.sample(n, temperature=1.0)

``out.per_scale.sum(-1) == out.log_prob`` exactly (the constant of Eq. 3 is zero here):
c_i(x) = log p(z_i) + log|det dy_i / dh_{i-1}|, the latent's log density plus the
log-determinants of the layers of scale i.
"""

from __future__ import annotations

import abc
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..data import standard_normal_log_prob
from ..layers import warn_if_uninitialized
from ..validation import check_generator, check_model_input, check_number
from .memory import memory_free_applies

# the checks this module re-exported before invflow.validation was public (one release)
_MOVED = ("as_size", "check_ints")


def __getattr__(name: str):
    if name in _MOVED:
        warnings.warn(
            f"invflow.models.base.{name} is deprecated; import it from invflow.validation",
            DeprecationWarning,
            stacklevel=2,
        )
        from .. import validation

        return getattr(validation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class FlowOutput:
    """What a model's forward returns (see the module docstring)."""

    log_prob: torch.Tensor
    per_scale: torch.Tensor
    latents: list[torch.Tensor]


def split_latent(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-scale split: the first half of the channels (dim 1) continues, the rest is z_i."""
    keep = h.shape[1] // 2
    return h[:, :keep], h[:, keep:].contiguous()


def flow_output(per_scale: list[torch.Tensor], latents: list[torch.Tensor]) -> FlowOutput:
    """FlowOutput from the per-scale contributions c_i (each [B]) and the latents."""
    stacked = torch.stack(per_scale, dim=1)
    return FlowOutput(log_prob=stacked.sum(1), per_scale=stacked, latents=latents)


class FlowModel(nn.Module, metaclass=abc.ABCMeta):
    """Base class of invflow models: input validation, ``log_prob``, ``sample``, config.

    Subclasses set ``self.input_shape`` (per-sample shape, e.g. (C, H, W) or (D,)) and
    ``self._config`` (JSON-serialisable constructor arguments), and implement
    ``_forward(x) -> FlowOutput``, ``_inverse(latents) -> x`` and ``latent_shapes()``.
    """

    input_shape: tuple[int, ...]
    _config: dict
    _all_initialized: bool = False
    _values_checked: bool = False  # CUDA training: the first batch's values were checked

    # -- contract --------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> FlowOutput:
        """FlowOutput of x.  In eval mode, warns (``invflow.layers.actnorm.UninitializedWarning``)
        when the model's ActNorm layers were never initialised: it is untrained."""
        self.check_input(x)
        if not self.training and not self._all_initialized:
            self._all_initialized = not warn_if_uninitialized(self, f"{self._name}.forward")
        return self._forward(x)

    def _load_from_state_dict(self, *args, **kwargs):
        self._all_initialized = False
        super()._load_from_state_dict(*args, **kwargs)

    @property
    def is_image_model(self) -> bool:
        """Whether the model takes images [B, C, H, W] preprocessed into [-0.5, 0.5]."""
        return len(self.input_shape) == 3

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).log_prob

    def inverse(self, latents: Sequence[torch.Tensor]) -> torch.Tensor:
        """x = f^{-1}(z_1, ..., z_L) from a list of latents shaped like ``out.latents``
        ([B, *latent_shapes()[i]] each, one batch size B >= 1).  The latents must have the
        model's dtype and device (TypeError / ValueError saying how to convert them: a float64
        latent is not silently rounded into a float32 model) and be finite (ValueError: a NaN
        latent would become a NaN image)."""
        self._check_latents(latents, f"{self._name}.inverse")
        return self._inverse(list(latents))

    def _check_latents(self, latents, where: str) -> None:
        shapes = self.latent_shapes()
        if not isinstance(latents, (list, tuple)) or len(latents) != len(shapes):
            got = f"{len(latents)} items" if isinstance(latents, (list, tuple)) else type(latents).__name__
            raise ValueError(
                f"{where}: expected a list of {len(shapes)} latents with per-sample shapes {shapes}, got {got}"
            )
        p = self._any_param()
        for i, (z, s) in enumerate(zip(latents, shapes)):
            if not isinstance(z, torch.Tensor) or tuple(z.shape[1:]) != tuple(s) or z.dim() != len(s) + 1:
                got = list(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
                raise ValueError(
                    f"{where}: latent {i} must have shape [B, {', '.join(map(str, s))}], got {got}"
                )
            if z.dtype != p.dtype:
                raise TypeError(
                    f"{where}: latent {i} has dtype {z.dtype} but the model computes in {p.dtype}; convert "
                    f"the latents ([z.to({p.dtype}) for z in latents]) or the model (model.to({z.dtype}))"
                )
            if z.device != p.device:
                raise ValueError(f"{where}: latent {i} is on {z.device} but the model is on {p.device}")
            if z.shape[0] != latents[0].shape[0] or z.shape[0] == 0:
                sizes = [t.shape[0] for t in latents]
                raise ValueError(f"{where}: the latents must share one batch size B >= 1, got {sizes}")
        if p.is_cuda and torch.cuda.is_current_stream_capturing():
            return
        finite = torch.stack([torch.isfinite(z).all() for z in latents])
        if not bool(finite.all()):  # one sync for all latents
            i = int((~finite).nonzero()[0])
            raise ValueError(f"{where}: latent {i} contains NaN or Inf; latents must be finite")

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """n samples x = f^{-1}(z) with z_i ~ N(0, temperature^2 I) (Glow Sec. 5 'temperature'),
        [n, *input_shape] in the model's dtype and device.  Raises ValueError unless n is an
        integer >= 1 and temperature a finite number >= 0, TypeError / ValueError for a
        ``generator`` that is not a torch.Generator on the model's device type."""
        n, temperature = self._check_sample_args(n, temperature, generator)
        p = self._any_param()
        latents = [
            temperature * torch.randn((n, *s), generator=generator, device=p.device, dtype=p.dtype)
            for s in self.latent_shapes()
        ]
        return self._inverse(latents)

    @abc.abstractmethod
    def latent_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample shapes of the latents z_1 .. z_L."""

    @abc.abstractmethod
    def _forward(self, x: torch.Tensor) -> FlowOutput:
        """Forward pass on validated input."""

    @abc.abstractmethod
    def _inverse(self, latents: list[torch.Tensor]) -> torch.Tensor:
        """x from validated latents."""

    # -- checkpoints (invflow.save / invflow.load) ---------------------------------------
    def config(self) -> dict:
        """Constructor arguments; ``type(self).from_config(self.config())`` rebuilds the model."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    # -- helpers -----------------------------------------------------------------------
    @property
    def _name(self) -> str:
        return type(self).__name__

    def _check_sample_args(self, n, temperature, generator=None) -> tuple[int, float]:
        where = f"{self._name}.sample"
        check_generator(generator, self._any_param().device, where)
        return (
            check_number(n, "n", where, low=1, integer=True),
            check_number(temperature, "temperature", where, low=0),
        )

    def _any_param(self) -> torch.Tensor:
        for t in self.parameters():
            return t
        for t in self.buffers():
            return t
        return torch.zeros(())

    def bits_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        """bits/dim of 8-bit data for preprocessed x (invflow.data conventions)."""
        d = math.prod(self.input_shape)
        return (-self.log_prob(x) + d * math.log(256)) / (d * math.log(2))

    def check_input(self, x) -> None:
        """docs/design.md error rules: TypeError for non-tensors, integer dtypes and a dtype other
        than the parameters'; ValueError for wrong rank, channels or size, mixed devices,
        non-finite values and, for image models, images that look unpreprocessed (no negative
        value and a maximum above 0.5: 0..255 or ToTensor 0..1 floats; the rule is
        ``invflow.validation.unpreprocessed_hint``).  Any other finite values are accepted: the
        density is defined on all of R^D, and the model's own samples leave [-0.5, 0.5].
        No input is altered."""
        # CUDA training: the values of the first batch only, so that a training step has no host
        # sync (a data pipeline that forgets preprocessing fails at its first batch)
        cuda_training = isinstance(x, torch.Tensor) and x.is_cuda and self.training
        check_model_input(
            x,
            self._name,
            self.input_shape,
            self._any_param(),
            images=self.is_image_model,
            values=not (cuda_training and self._values_checked),
        )
        if cuda_training:
            self._values_checked = True


class MultiScaleModel(FlowModel):
    """The multi-scale loop, written once (Dinh et al. 2017, Sec. 3.6; the per-scale
    contributions of Schirrmeister et al. 2020, Eq. 3).  With h_0 = enter(x):

        h_i, logdet_i = scale_i(h_{i-1})                for i = 1 .. L
        h_i, z_i = split_latent(h_i)  (i < L),          z_L = h_L
        c_i(x) = log p(z_i | h_i) + logdet_i,           log p(x) = sum_i c_i(x)

    and the inverse (and sampling) unwinds it: h = z_L, then for i = L .. 1
    h = scale_i^{-1}(cat([h, z_i])) (no cat at i = L), x = leave(h).

    Subclasses implement ``_run_scale(i, h, free) -> (h, logdet [B])`` (everything scale i does
    before its split: squeeze, steps; ``free``: run memory-free, see invflow.models.memory) and
    ``_invert_scale(i, h) -> h``; they may override ``_latent_log_prob(i, z, h)`` (default:
    standard normal; h is the continuing part, None at the last scale) and ``_enter`` /
    ``_leave`` (default: identity; DenseGlow flattens).  The number of scales is
    ``len(self.latent_shapes())``.
    """

    @abc.abstractmethod
    def _run_scale(self, i: int, h: torch.Tensor, free: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale i up to its split: (h_i, logdet_i [B])."""

    @abc.abstractmethod
    def _invert_scale(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """The inverse of ``_run_scale(i, ...)``: h_{i-1} from h_i."""

    def _latent_log_prob(self, i: int, z: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        """log p(z_i | h_i) per sample [B]; standard normal by default."""
        return standard_normal_log_prob(z)

    def _enter(self, x: torch.Tensor) -> torch.Tensor:
        """h_0 from the validated input x."""
        return x

    def _leave(self, h: torch.Tensor) -> torch.Tensor:
        """x from h_0 (the inverse of ``_enter``)."""
        return h

    def _forward(self, x):
        free = memory_free_applies(self, x)
        h, per_scale, latents = self._enter(x), [], []
        last = len(self.latent_shapes()) - 1
        for i in range(last + 1):
            h, logdet = self._run_scale(i, h, free)
            if i < last:
                h, z = split_latent(h)
                log_pz = self._latent_log_prob(i, z, h)
            else:
                z, log_pz = h, self._latent_log_prob(i, h, None)
            latents.append(z)
            per_scale.append(log_pz + logdet)
        return flow_output(per_scale, latents)

    def _inverse(self, latents):
        return self._unwind(latents[-1], lambda i, h: latents[i])

    def _unwind(self, h: torch.Tensor, latent) -> torch.Tensor:
        """x from h = z_L, with z_i = ``latent(i, h)`` for i = L - 1 .. 1 (h: the continuing
        part at scale i, which a learned prior conditions on when sampling)."""
        last = len(self.latent_shapes()) - 1
        for i in reversed(range(last + 1)):
            if i < last:
                h = torch.cat([h, latent(i, h)], dim=1)
            h = self._invert_scale(i, h)
        return self._leave(h)
