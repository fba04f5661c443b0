"""``NormalizingFlow``: any stack of invflow layers as a model, multi-scale splits included
(what FrEIA's ``SequenceINN``, normflows' ``NormalizingFlow`` and zuko's ``Flow`` give).

    flow = invflow.Sequential(invflow.ActNorm(4), invflow.AffineCoupling(4, invflow.masks.Channel(0),
                              net=invflow.nets.MLP(2, 4, hidden=64)))
    model = invflow.NormalizingFlow(flow, event_shape=(4,))
    out = model(x)                        # FlowOutput: .log_prob [B], .per_scale [B, L], .latents
    x = model.inverse(out.latents)
    x = model.sample(16)
    invflow.save(model, "model.safetensors")     # when its layers are savable (invflow.checkpoint)

Change of variables (Rezende & Mohamed 2015, Eq. 1-3; Dinh et al. 2017, Eq. 3 and Sec. 3.6 for
the multi-scale factorisation): with the scales f_1 .. f_L, h_0 = x,

    h_i = f_i(h_{i-1})   (i = 1 .. L),   h_i -> (h_i, z_i) by split_latent for i < L,  z_L = h_L
    log p(x) = sum_i [ log p_i(z_i) + log|det d f_i(h_{i-1}) / d h_{i-1}| ] = sum_i c_i(x)

``per_scale`` holds the c_i (Schirrmeister et al. 2020, Eq. 3), and sums to ``log_prob``
exactly (the constant is zero).  The loop is ``MultiScaleModel``'s, shared with Glow.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .. import checkpoint
from ..data import standard_normal_log_prob
from ..layers import Flow
from ..validation import check_bools, check_ints
from .base import MultiScaleModel, check_context_size, split_latent


class NormalizingFlow(MultiScaleModel):
    """A model from any invflow layer stack: log-density, per-scale terms, sampling, inverse.

    Args:
        flow: an ``invflow.Flow`` (one scale: ``invflow.Sequential(...)`` of any layers), or a
            list of them, one per scale: after every scale but the last, the second half of the
            channels (dim 1; ``split_latent``) leaves as the latent z_i and the first half
            continues into the next scale (Dinh et al. 2017, Sec. 3.6).  Put an
            ``invflow.Squeeze()`` first in a scale to trade space for channels, as Glow does.
        event_shape: the per-sample input shape, e.g. (D,) for vectors or (C, H, W) for images
            (an int means (D,)).
        prior: the latents' density p_i(z_i): None for a standard normal N(0, I) (the default
            of every invflow model), a module with ``log_prob(z) -> [B]`` and ``sample(shape,
            temperature=, generator=, device=, dtype=)`` (``invflow.priors.StandardNormal`` or
            your own registered module, e.g. with learned parameters) used for every latent, or
            a list of such modules, one per scale.
        context_dim: K > 0 makes the model conditional: ``model(x, context=c)`` with c of shape
            [B, K] (or [B, K, H, W] for images), passed to every layer of every scale
            (``context=`` of the layers); the layers must be built for it
            (``AffineCoupling(..., context_channels=K)``).  0 (default): unconditional.
        images: whether inputs are images preprocessed into [-0.5, 0.5] (``invflow.data``), so
            that raw pixel values are refused; default: ``len(event_shape) == 3``.

    The latent shapes are found at construction by running the stack once on zeros of
    ``event_shape`` (batch 2, eval mode, no gradient; ActNorm is not initialised by it).  The
    model is saved with ``invflow.save`` when every layer, st-net, mask and prior in it is
    savable (the classes of invflow are; see ``invflow.checkpoint.register`` for your own).

    Raises TypeError for a ``flow`` that is not an invflow.Flow (or a list of them), a prior
    without ``log_prob`` / ``sample``, and non-integer sizes; ValueError for an empty list, a
    list of priors of another length, sizes < 1, a stack that does not take inputs of
    ``event_shape``, and a scale (but the last) that leaves fewer than 2 channels to split.
    """

    def __init__(
        self,
        flow: Flow | Sequence[Flow],
        event_shape: int | Sequence[int],
        prior: nn.Module | Sequence[nn.Module] | None = None,
        context_dim: int = 0,
        images: bool | None = None,
    ):
        super().__init__()
        where = type(self).__name__
        multi = isinstance(flow, (list, tuple, nn.ModuleList))
        scales = list(flow) if multi else [flow]
        if not scales:
            raise ValueError(f"{where}: flow must be an invflow.Flow or a non-empty list of them, got []")
        for i, f in enumerate(scales):
            if not isinstance(f, Flow):
                what = f"flow[{i}]" if multi else "flow"
                raise TypeError(
                    f"{where}: {what} must be an invflow.Flow (e.g. invflow.Sequential(...)), got {type(f).__name__}"
                )
        shape = (event_shape,) if isinstance(event_shape, int) else event_shape
        if not isinstance(shape, (list, tuple, torch.Size)) or not shape:
            raise TypeError(
                f"{where}: event_shape must be an int or a non-empty tuple of ints, got {event_shape!r}"
            )
        check_ints(where, **{f"event_shape[{i}]": d for i, d in enumerate(shape)})
        self.input_shape = tuple(int(d) for d in shape)
        self._images = len(self.input_shape) == 3 if images is None else images
        check_bools(where, images=self._images)
        self.context_size = check_context_size(context_dim, "context_dim", where)
        self._context_arg = "context_dim"
        self.scales = nn.ModuleList(scales)
        self.prior = self._check_prior(prior, len(scales), where)
        self.memory_free = False
        self._arguments = dict(
            flow=scales if multi else flow,
            event_shape=list(self.input_shape),
            prior=list(prior) if isinstance(prior, (list, tuple, nn.ModuleList)) else prior,
            context_dim=self.context_size,
            images=images,
        )
        self._latent_shapes: list[tuple[int, ...]] | None = None
        if self._any_param().device.type != "meta":  # not checkpoint loading's shape check
            self._latent_shapes = self._infer_latent_shapes()

    @staticmethod
    def _check_prior(prior, scales: int, where: str) -> nn.Module | None:
        if prior is None:
            return None
        many = isinstance(prior, (list, tuple, nn.ModuleList))
        priors = list(prior) if many else [prior]
        if many and len(priors) != scales:
            raise ValueError(
                f"{where}: got {len(priors)} priors for {scales} scales; give one per scale or one for all"
            )
        for p in priors:
            if not (
                isinstance(p, nn.Module)
                and callable(getattr(p, "log_prob", None))
                and callable(getattr(p, "sample", None))
            ):
                raise TypeError(
                    f"{where}: prior must be None or an nn.Module with log_prob(z) and sample(shape, ...) "
                    f"(e.g. invflow.priors.StandardNormal()), got {type(p).__name__}"
                )
        return nn.ModuleList(priors) if many else prior

    # -- checkpoints: the layers are saved by their own configs (invflow.checkpoint) ----------
    def config(self) -> dict:
        """The constructor arguments, modules encoded by ``invflow.checkpoint.encode_arguments``
        (TypeError naming a layer, st-net or prior that cannot be saved)."""
        return checkpoint.encode_arguments(self._arguments, type(self).__name__)

    @classmethod
    def from_config(cls, config: dict) -> NormalizingFlow:
        return cls(**checkpoint.decode_arguments(config, cls.__name__))

    # -- shapes ----------------------------------------------------------------------------
    @property
    def is_image_model(self) -> bool:
        return self._images

    def latent_shapes(self) -> list[tuple[int, ...]]:
        if self._latent_shapes is None:
            self._latent_shapes = self._infer_latent_shapes()
        return list(self._latent_shapes)

    def _infer_latent_shapes(self) -> list[tuple[int, ...]]:
        """The per-sample latent shapes, from one pass of zeros through the scales (eval mode,
        no gradient; every module's training flag is restored)."""
        where = type(self).__name__
        p = self._any_param()
        h = torch.zeros((2, *self.input_shape), dtype=p.dtype, device=p.device)
        context = (
            torch.zeros((2, self.context_size), dtype=p.dtype, device=p.device) if self.context_size else None
        )
        modes = [(m, m.training) for m in self.modules()]
        shapes, last = [], len(self.scales) - 1
        try:
            self.eval()
            with torch.no_grad():
                for i in range(last + 1):
                    try:
                        h, _ = self._run_scale(i, h, False, context)
                    except (TypeError, ValueError, RuntimeError) as err:
                        first = str(err).splitlines()[0] if str(err) else type(err).__name__
                        raise ValueError(
                            f"{where}: scale {i} does not take inputs of shape [B, {', '.join(map(str, h.shape[1:]))}] "
                            f"(event_shape {list(self.input_shape)}): {first}"
                        ) from None
                    if i < last:
                        if h.dim() < 2 or h.shape[1] < 2:
                            raise ValueError(
                                f"{where}: scale {i} outputs {list(h.shape[1:])} per sample: a split needs at least "
                                f"2 channels (dim 1); use fewer scales"
                            )
                        h, z = split_latent(h)
                        shapes.append(tuple(z.shape[1:]))
                shapes.append(tuple(h.shape[1:]))
        finally:
            for m, mode in modes:
                m.training = mode
        return shapes

    # -- the multi-scale loop's steps (invflow.models.base.MultiScaleModel) ------------------
    def _run_scale(self, i: int, h: torch.Tensor, free: bool, context=None):
        f = self.scales[i]
        return f(h) if context is None else f(h, context=context)

    def _invert_scale(self, i: int, h: torch.Tensor, context=None):
        f = self.scales[i]
        return f.inverse(h) if context is None else f.inverse(h, context=context)

    def _prior(self, i: int) -> nn.Module | None:
        return self.prior[i] if isinstance(self.prior, nn.ModuleList) else self.prior

    def _latent_log_prob(self, i: int, z: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        prior = self._prior(i)
        return standard_normal_log_prob(z) if prior is None else prior.log_prob(z)

    def _sample(self, n: int, temperature: float, generator, context, log_prob: bool):
        if self.prior is None:
            return super()._sample(n, temperature, generator, context, log_prob)
        p = self._any_param()
        latents = [
            self._prior(i).sample(
                (n, *s), temperature=temperature, generator=generator, device=p.device, dtype=p.dtype
            )
            for i, s in enumerate(self.latent_shapes())
        ]
        if log_prob:
            return self._inverse_and_log_prob(latents, context)
        return self._call_inverse(latents, context), None
