"""The model contract (docs/design.md), ``FlowModel``, and the multi-scale loop every model
shares, ``MultiScaleModel`` (Dinh et al. 2017, Sec. 3.6; Schirrmeister et al. 2020, Eq. 3).

    out = model(x)                  # x preprocessed into [-0.5, 0.5] (invflow.data)
    out.log_prob                    # [B]
    out.per_scale                   # [B, L]: c_i(x) of Schirrmeister et al. 2020, Eq. 3
    out.latents                     # [z_1, ..., z_L]
    model.log_prob(x)               # == model(x).log_prob
    x = model.inverse(out.latents)  # reconstructs x
    x = model.sample(n, temperature=1.0)
    x = model.rsample(n)            # differentiable samples (reverse-KL training, VI)
    x, log_p = model.sample_and_log_prob(n)

Conditional models (built with ``context_dim`` / ``context_channels`` = K) take a context in
every call: ``model(x, context=c)``, ``model.log_prob(x, context=c)``,
``model.sample(n, context=c)``, ``model.inverse(latents, context=c)`` (see
``FlowModel.check_context``).

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

from .. import validation
from ..conditioning import resize_context
from ..data import standard_normal_log_prob
from ..layers import warn_if_uninitialized
from ..validation import check_generator, check_model_input, check_number
from .memory import memory_free_applies

#: The most elements one ``sample`` call may allocate (n times the elements per sample):
#: torch's 32-bit indexing limit; larger requests are refused with a hint to sample in batches.
MAX_SAMPLE_ELEMENTS = 2**31

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


def check_context_size(value, name: str, where: str) -> int:
    """A context size argument (``context_dim``, ``context_channels``): an int in
    [0, invflow.validation.MAX_DIM]; ValueError / TypeError otherwise."""
    value = check_number(value, name, where, low=0, integer=True)
    if value > validation.MAX_DIM:
        raise ValueError(
            f"{where}: {name}={value} is above invflow.validation.MAX_DIM = {validation.MAX_DIM}; "
            f"set invflow.validation.MAX_DIM = {value} first if you really want it"
        )
    return value


class FlowModel(nn.Module, metaclass=abc.ABCMeta):
    """Base class of invflow models: input validation, ``log_prob``, ``sample``, config.

    Subclasses set ``self.input_shape`` (per-sample shape, e.g. (C, H, W) or (D,)) and
    ``self._config`` (JSON-serialisable constructor arguments), and implement
    ``_forward(x) -> FlowOutput``, ``_inverse(latents) -> x`` and ``latent_shapes()``.
    A conditional model sets ``context_size`` = K > 0 (and ``_context_arg``, the constructor
    argument that sets it); its ``_forward(x, context)`` / ``_inverse(latents, context)`` then
    get the checked context (they are called without one when it is None, so subclasses of
    unconditional models may keep the one-argument forms).
    """

    input_shape: tuple[int, ...]
    _config: dict
    _all_initialized: bool = False
    _values_checked: bool = False  # CUDA training: the first batch's values were checked
    #: K of a conditional model (0: unconditional), and the constructor argument that set it
    context_size: int = 0
    _context_arg: str = "context_dim"

    @property
    def is_conditional(self) -> bool:
        """Whether the model takes a context (``invflow.train.Trainer`` then reads its data as
        ``(examples, context)``)."""
        return self.context_size > 0

    # -- contract --------------------------------------------------------------------
    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> FlowOutput:
        """FlowOutput of x (given ``context`` for a conditional model; see ``check_context``).
        In eval mode, warns (``invflow.layers.actnorm.UninitializedWarning``) when the model's
        ActNorm layers were never initialised: it is untrained."""
        # CUDA training reads the values of the first batch only (no host sync per step)
        values = not (isinstance(x, torch.Tensor) and x.is_cuda and self.training and self._values_checked)
        self.check_input(x)
        context = self.check_context(context, x.shape[0], f"{self._name}.forward", values=values)
        if not self.training and not self._all_initialized:
            self._all_initialized = not warn_if_uninitialized(self, f"{self._name}.forward")
        return self._call_forward(x, context)

    def _call_forward(self, x: torch.Tensor, context) -> FlowOutput:
        return self._forward(x) if context is None else self._forward(x, context)

    def _call_inverse(self, latents: list[torch.Tensor], context) -> torch.Tensor:
        return self._inverse(latents) if context is None else self._inverse(latents, context)

    def check_context(self, context, batch: int, where: str, broadcast: bool = False, values: bool = True):
        """Validates the ``context`` of a call with ``batch`` samples and returns it (expanded
        from batch 1 to ``batch`` when ``broadcast``: sampling and inverse take one context
        for all samples).  A conditional model (context_size K > 0) takes a floating tensor of
        the model's dtype and device, [batch, K], or for image models also [batch, K, H, W]
        at the input's H, W (pooled to each scale's size).  Raises ValueError for a missing
        context, a context given to a model built without one, a wrong shape or batch size,
        another device, NaN / Inf values (read only when ``values``); TypeError for a non-tensor
        or another dtype."""
        k, arg = self.context_size, self._context_arg
        if k == 0:
            if context is not None:
                raise ValueError(
                    f"{where}: got a context but {self._name} was built without one ({arg}=0); "
                    f"drop context= or build the model with {arg}=K"
                )
            return None
        spatial = tuple(self.input_shape[1:]) if self.is_image_model else None
        kinds = f"[{batch}, {k}]" + (f" or [{batch}, {k}, {spatial[0]}, {spatial[1]}]" if spatial else "")
        if context is None:
            raise ValueError(
                f"{where}: {self._name} is conditional ({arg}={k}): pass context= of shape {kinds}"
            )
        if not isinstance(context, torch.Tensor):
            raise TypeError(
                f"{where}: context must be a torch.Tensor of shape {kinds}, got {type(context).__name__}"
            )
        p = self._any_param()
        if not context.is_floating_point() or context.dtype != p.dtype:
            raise TypeError(
                f"{where}: context dtype {context.dtype} differs from the model's {p.dtype}; "
                f"convert it (context.to({p.dtype}))"
            )
        if context.device != p.device:
            raise ValueError(f"{where}: context on {context.device} but the model is on {p.device}")
        ok = context.dim() == 2 or (
            spatial is not None and context.dim() == 4 and tuple(context.shape[2:]) == spatial
        )
        if not ok or context.shape[1] != k:
            raise ValueError(
                f"{where}: context must have shape {kinds} ({arg}={k}), got {list(context.shape)}"
            )
        if context.shape[0] != batch:
            if not (broadcast and context.shape[0] == 1):
                one = " or 1" if broadcast else ""
                raise ValueError(f"{where}: context batch size {context.shape[0]} must be {batch}{one}")
            context = context.expand(batch, *context.shape[1:])
        if values:
            self._check_finite(context, where, "context")
        return context

    @staticmethod
    def _check_finite(t: torch.Tensor, where: str, what: str) -> None:
        """ValueError for NaN / Inf in ``t`` (one host sync; traced by torch.compile without a
        graph break: ``invflow.validation.assert_values``)."""
        validation.assert_values(torch.isfinite(t).all(), f"{where}: {what} contains NaN or Inf")

    def _load_from_state_dict(self, *args, **kwargs):
        self._all_initialized = False
        super()._load_from_state_dict(*args, **kwargs)

    @property
    def is_image_model(self) -> bool:
        """Whether the model takes images [B, C, H, W] preprocessed into [-0.5, 0.5]."""
        return len(self.input_shape) == 3

    def log_prob(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) [B] (log p(x | context) for a conditional model) == model(x, context).log_prob."""
        return self(x, context=context).log_prob

    def inverse(self, latents: Sequence[torch.Tensor], context: torch.Tensor | None = None) -> torch.Tensor:
        """x = f^{-1}(z_1, ..., z_L) from a list of latents shaped like ``out.latents``
        ([B, *latent_shapes()[i]] each, one batch size B >= 1), given ``context`` (batch B or
        1) for a conditional model.  The latents must have the
        model's dtype and device (TypeError / ValueError saying how to convert them: a float64
        latent is not silently rounded into a float32 model) and be finite (ValueError: a NaN
        latent would become a NaN image)."""
        where = f"{self._name}.inverse"
        self._check_latents(latents, where)
        context = self.check_context(context, latents[0].shape[0], where, broadcast=True)
        return self._call_inverse(list(latents), context)

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
        self,
        n: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """n samples x = f^{-1}(z) with z_i ~ N(0, temperature^2 I) (Glow Sec. 5 'temperature'),
        [n, *input_shape] in the model's dtype and device, without a graph (``rsample`` keeps
        one).  A conditional model takes ``context`` of batch n, or 1 (the same context for
        every sample).  Raises ValueError unless n is an integer >= 1 with n times the
        elements per sample at most ``MAX_SAMPLE_ELEMENTS`` (2**31; sample in batches beyond)
        and temperature a finite number >= 0, TypeError / ValueError for a ``generator`` that
        is not a torch.Generator on the model's device type, and the context errors of
        ``check_context``."""
        return self._sampled(n, temperature, generator, context, "sample", log_prob=False)[0]

    def rsample(
        self,
        n: int,
        context: torch.Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``sample`` with the autograd graph kept: x = f^{-1}(temperature * eps), eps ~ N(0, I),
        is a differentiable function of the parameters (and of the context), the
        reparameterisation of Kingma & Welling 2014, Sec. 2.4, as in torch.distributions'
        ``rsample``.  For reverse-KL training and variational inference (Rezende & Mohamed
        2015, Sec. 4): loss = (log q(x) - log p*(x)).mean() with (x, log q) from
        ``sample_and_log_prob``.  Same arguments and errors as ``sample``."""
        return self._sampled(n, temperature, generator, context, "rsample", log_prob=False)[0]

    def sample_and_log_prob(
        self,
        n: int,
        context: torch.Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x [n, *input_shape], log p(x) [n]) with x as ``rsample`` draws it and log p(x) the
        model's density at x (== ``model.log_prob(x, context)`` up to rounding; at any
        temperature it is the density of the model, not of the tempered sampler), both in one
        inverse pass: log p(x) = log p(z) - log|det dx/dz|.  Differentiable like ``rsample``
        (wrap in torch.no_grad() when no gradient is needed).  Same arguments and errors as
        ``sample``."""
        x, log_p = self._sampled(n, temperature, generator, context, "sample_and_log_prob", log_prob=True)
        return x, log_p

    def _sampled(self, n, temperature, generator, context, name: str, log_prob: bool):
        where = f"{self._name}.{name}"
        n, temperature = self._check_sample_args(n, temperature, generator, where)
        context = self.check_context(context, n, where, broadcast=True)
        return self._sample(n, temperature, generator, context, log_prob)

    def _sample(self, n: int, temperature: float, generator, context, log_prob: bool):
        """(x, log p(x) [n] or None) from latents z_i ~ N(0, temperature^2 I), on checked
        arguments.  Models with a learned prior override it."""
        p = self._any_param()
        latents = [
            temperature * torch.randn((n, *s), generator=generator, device=p.device, dtype=p.dtype)
            for s in self.latent_shapes()
        ]
        if log_prob:
            return self._inverse_and_log_prob(latents, context)
        return self._call_inverse(latents, context), None

    def _inverse_and_log_prob(self, latents: list[torch.Tensor], context):
        """(x, log p(x)) from latents; this default runs the inverse, then the forward pass on
        x (two passes); multi-scale models do it in the inverse pass alone."""
        x = self._call_inverse(latents, context)
        return x, self._call_forward(x, context).log_prob

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

    def _check_sample_args(
        self, n, temperature, generator=None, where: str | None = None
    ) -> tuple[int, float]:
        where = where or f"{self._name}.sample"
        check_generator(generator, self._any_param().device, where)
        n = check_number(n, "n", where, low=1, integer=True)
        per = math.prod(self.input_shape)
        if n * per > MAX_SAMPLE_ELEMENTS:
            raise ValueError(
                f"{where}: n={n} samples of {per} elements each exceed 2**31 elements in one tensor "
                f"(invflow.models.base.MAX_SAMPLE_ELEMENTS); sample in batches of at most "
                f"{MAX_SAMPLE_ELEMENTS // per}"
            )
        return n, check_number(temperature, "temperature", where, low=0)

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
    h = scale_i^{-1}(cat([h, z_i])) (no cat at i = L), x = leave(h); the inverse log-dets
    collected on the way give log p(x) of a sample in the same pass
    (``sample_and_log_prob``).

    Subclasses implement ``_run_scale(i, h, free, context) -> (h, logdet [B])`` (everything
    scale i does before its split: squeeze, steps; ``free``: run memory-free, see
    invflow.models.memory) and ``_invert_scale(i, h, context) -> (h, logdet [B])`` with the
    inverse's log|det dh_{i-1} / dh_i| (a bare h is accepted too; ``sample_and_log_prob``
    then takes a second, forward pass); ``context`` (the checked context, or None) is passed
    only when given, so unconditional subclasses may leave it out.  They may override
    ``_latent_log_prob(i, z, h)`` (default: standard normal; h is the continuing part, None
    at the last scale) and ``_enter`` / ``_leave`` (default: identity; DenseGlow flattens).
    The number of scales is ``len(self.latent_shapes())``.  ``scale_context(context, h)``
    pools an image context to a scale's resolution.
    """

    @abc.abstractmethod
    def _run_scale(
        self, i: int, h: torch.Tensor, free: bool, context=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale i up to its split: (h_i, logdet_i [B])."""

    @abc.abstractmethod
    def _invert_scale(self, i: int, h: torch.Tensor, context=None):
        """The inverse of ``_run_scale(i, ...)``: (h_{i-1}, log|det dh_{i-1} / dh_i| [B])."""

    @staticmethod
    def scale_context(context, h: torch.Tensor):
        """The context for layers running on h: an image context [B, K, H, W] average-pooled to
        h's spatial size (``invflow.conditioning.resize_context``); a vector context or None as
        it is."""
        if context is None or context.dim() != 4 or h.dim() != 4:
            return context
        return resize_context(context, tuple(h.shape[2:]))

    def _latent_log_prob(self, i: int, z: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        """log p(z_i | h_i) per sample [B]; standard normal by default."""
        return standard_normal_log_prob(z)

    def _enter(self, x: torch.Tensor) -> torch.Tensor:
        """h_0 from the validated input x."""
        return x

    def _leave(self, h: torch.Tensor) -> torch.Tensor:
        """x from h_0 (the inverse of ``_enter``)."""
        return h

    def _forward(self, x, context=None):
        free = memory_free_applies(self, x)
        h, per_scale, latents = self._enter(x), [], []
        last = len(self.latent_shapes()) - 1
        for i in range(last + 1):
            if context is None:
                h, logdet = self._run_scale(i, h, free)
            else:
                h, logdet = self._run_scale(i, h, free, context)
            if i < last:
                h, z = split_latent(h)
                log_pz = self._latent_log_prob(i, z, h)
            else:
                z, log_pz = h, self._latent_log_prob(i, h, None)
            latents.append(z)
            per_scale.append(log_pz + logdet)
        return flow_output(per_scale, latents)

    def _inverse(self, latents, context=None):
        return self._unwind(latents[-1], lambda i, h: latents[i], context)[0]

    def _inverse_and_log_prob(self, latents, context):
        return self._unwind(latents[-1], lambda i, h: latents[i], context, log_prob=True)

    def _unwind(self, h: torch.Tensor, latent, context=None, log_prob: bool = False):
        """(x, log p(x) or None) from h = z_L, with z_i = ``latent(i, h)`` for i = L - 1 .. 1
        (h: the continuing part at scale i, which a learned prior conditions on when sampling).
        With ``log_prob`` the latents' log densities and the inverse log-dets are summed on the
        way: log p(x) = sum_i log p(z_i | h_i) - sum_i log|det dh_{i-1} / dh_i|."""
        last = len(self.latent_shapes()) - 1
        total = self._latent_log_prob(last, h, None) if log_prob else None
        for i in reversed(range(last + 1)):
            if i < last:
                z = latent(i, h)
                if total is not None:
                    total = total + self._latent_log_prob(i, z, h)
                h = torch.cat([h, z], dim=1)
            out = self._invert_scale(i, h) if context is None else self._invert_scale(i, h, context)
            if isinstance(out, torch.Tensor):  # a subclass whose inverse gives h alone
                h, total = out, None
            else:
                h, ld = out
                total = None if total is None else total - ld
        x = self._leave(h)
        if log_prob and total is None:  # no inverse log-dets: one forward pass
            total = self._call_forward(x, context).log_prob
        return x, total
