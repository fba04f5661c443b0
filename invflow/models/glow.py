"""Multi-scale Glow (Kingma & Dhariwal 2018) in the configuration of Schirrmeister et al.
2020, S1.1 / S1.3: L scales, each a squeeze followed by K steps of
actnorm -> LU 1x1 conv -> affine coupling (scale sigmoid(raw + 2)); after every scale but
the last, half of the channels leave as the latent z_i.  By default every z_i is an
independent standard normal (Schirrmeister et al. 2020 S1.3: "we directly evaluate z_1 under a
standard-normal gaussian"), which makes the per-scale contributions c_i(x) of Eq. 3 clean;
``split_prior=True`` instead learns p(z_i | h_i) = N(mu(h_i), sigma(h_i)^2) as in the
original Glow code.

For 3 x 32 x 32 inputs with the defaults the scales process 12 x 16 x 16, 24 x 8 x 8 and
48 x 4 x 4 representations with 32 steps each and st-nets of width 512, as in Schirrmeister et al. 2020.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import masks, nets
from .._backend import backend_for
from ..data import standard_normal_log_prob
from ..layers import ActNorm, AffineCoupling, InvConv1x1, Sequential, Squeeze
from ..validation import as_size, check_bools, check_ints, check_limits
from .base import MultiScaleModel, check_context_size
from .fused_scale import fused_glow_scale
from .memory import run_memory_free


def make_st_net(kind: str | Callable, hidden: int) -> Callable[[int, int], nn.Module]:
    """st-net factory for a coupling: "glow" (GlowNet with actnorm, as in Glow's code),
    "resnet" (ResNet) or a callable (in_channels, out_channels) -> nn.Module (FrEIA's
    ``subnet_constructor``; a conditional coupling calls it with in_channels + K and feeds it
    [x_cond, context])."""
    if callable(kind):
        return kind
    if kind == "glow":
        return lambda i, o: nets.GlowNet(i, o, hidden, actnorm=True)
    if kind == "resnet":
        return lambda i, o: nets.ResNet(i, o, hidden)
    raise ValueError(f"st-net must be 'glow', 'resnet' or a callable (in, out) -> nn.Module, got {kind!r}")


def glow_step(channels: int, k: int, net, scale: str, lu: bool, context_channels: int = 0) -> Sequential:
    """One Glow step: actnorm -> invertible 1x1 conv -> affine coupling (Glow Fig. 2a); the
    coupling conditional on a context of ``context_channels`` when > 0."""
    return Sequential(
        ActNorm(channels),
        InvConv1x1(channels, lu=lu),
        AffineCoupling(
            channels, masks.Channel(k % 2), net=net, scale=scale, context_channels=context_channels
        ),
    )


class _SplitPrior(nn.Module):
    """p(z | h) = N(mu(h), exp(log_sigma(h))^2) from a zero-initialised 3x3 conv (Glow code)."""

    def __init__(self, h_channels: int, z_channels: int):
        super().__init__()
        self.conv = nets.zero_init(nn.Conv2d(h_channels, 2 * z_channels, 3, padding=1))

    def forward(self, h):
        mean, log_sigma = self.conv(h).chunk(2, dim=1)
        return mean, log_sigma

    def log_prob(self, z, h):
        mean, log_sigma = self(h)
        return standard_normal_log_prob((z - mean) * torch.exp(-log_sigma)) - log_sigma.flatten(1).sum(1)


class Glow(MultiScaleModel):
    """Multi-scale Glow; see the module docstring.

    Args:
        in_channels, image_size: input [B, C, H, W]; H and W divisible by 2**levels.
        levels: number of scales L; steps: Glow steps K per scale; hidden: st-net width.
        scale: coupling scale function ("sigmoid" as in Glow, "exp", "tanh").
        lu: LU-parameterised 1x1 convolutions.
        split_prior: learned conditional prior for the split latents instead of N(0, I).
        memory_free: recompute activations in backward instead of storing them (see
            invflow.models.memory; falls back to standard autograd when x requires grad).
        net: st-net, "glow", "resnet" or a callable (in_channels, out_channels) -> nn.Module
            (FrEIA's ``subnet_constructor``; such a model saves its weights but not the
            callable: ``config()`` raises TypeError, rebuild it and ``load_state_dict``).
        context_channels: K > 0 makes the flow conditional, log p(x | c) (Winkler et al.
            2019): every coupling's st-net sees the context c concatenated to its input, a
            vector [B, K] broadcast over space or an image [B, K, H, W] (the input's size)
            average-pooled to each scale's size (as CFLOW-AD, Gudovskiy et al. 2022, feeds its
            positional encoding); ``model(x, context=c)``, ``model.sample(n, context=c)``.

    Raises TypeError / ValueError for arguments that are not positive integers, sizes above the
    bounds of ``invflow.validation`` (MAX_HIDDEN, MAX_LEVELS, ...) and an image size not divisible
    by 2**levels.
    """

    def __init__(
        self,
        in_channels: int,
        image_size,
        levels: int = 3,
        steps: int = 32,
        hidden: int = 512,
        scale: str = "sigmoid",
        lu: bool = True,
        split_prior: bool = False,
        memory_free: bool = False,
        net: str | Callable[[int, int], nn.Module] = "glow",
        context_channels: int = 0,
    ):
        super().__init__()
        h, w = as_size(image_size, "Glow")
        self.context_size = check_context_size(context_channels, "context_channels", "Glow")
        self._context_arg = "context_channels"
        check_ints("Glow", in_channels=in_channels, levels=levels, steps=steps, hidden=hidden)
        check_bools("Glow", lu=lu, split_prior=split_prior, memory_free=memory_free)
        check_limits(
            "Glow", in_channels=in_channels, image_size=max(h, w), levels=levels, steps=steps, hidden=hidden
        )
        if h % 2**levels or w % 2**levels:
            raise ValueError(
                f"Glow: image size {h}x{w} is not divisible by 2**levels = {2**levels}; "
                f"pad the images or use fewer levels"
            )
        self._config = dict(
            in_channels=in_channels,
            image_size=[h, w],
            levels=levels,
            steps=steps,
            hidden=hidden,
            scale=scale,
            lu=lu,
            split_prior=split_prior,
            memory_free=memory_free,
            net=net,
            context_channels=self.context_size,
        )
        self.input_shape = (in_channels, h, w)
        self.memory_free = memory_free
        factory = make_st_net(net, hidden)
        self.squeeze = Squeeze()
        self.scales = nn.ModuleList()
        self.priors = nn.ModuleList()
        self._latent_shapes = []
        c = in_channels
        for i in range(levels):
            c, h, w = c * 4, h // 2, w // 2
            self.scales.append(
                Sequential(*[glow_step(c, k, factory, scale, lu, self.context_size) for k in range(steps)])
            )
            if i < levels - 1:
                self._latent_shapes.append((c - c // 2, h, w))
                if split_prior:
                    self.priors.append(_SplitPrior(c // 2, c - c // 2))
                c = c // 2
            else:
                self._latent_shapes.append((c, h, w))
        self.split_prior = split_prior

    def latent_shapes(self):
        return list(self._latent_shapes)

    def config(self) -> dict:
        if callable(self._config["net"]):
            raise TypeError(
                "Glow: a model built with net=<callable> cannot be saved (the callable is code, not data); "
                "rebuild it with the same net and load_state_dict(), or build it with net='glow' / 'resnet'"
            )
        return super().config()

    def _run_scale(self, i: int, h: torch.Tensor, free: bool, context=None):
        # the channels-last fused scale: float32/64 outside autocast (under autocast and in half
        # precision the layer path keeps the flow's maps in float32, see invflow.ops)
        if (
            context is None
            and not free
            and backend_for(h) == "fused"
            and h.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled(h.device.type)
        ):
            res = fused_glow_scale(self.scales[i].flows, h)
            if res is not None:
                h, logdet = res
                return (h.contiguous() if i == len(self.scales) - 1 else h), logdet
        h, _ = self.squeeze(h)
        context = self.scale_context(context, h)
        return run_memory_free(self.scales[i].flows, h, context) if free else self.scales[i](h, context)

    def _invert_scale(self, i: int, h: torch.Tensor, context=None):
        h, logdet = self.scales[i].inverse(h, self.scale_context(context, h))
        h, _ = self.squeeze.inverse(h)
        return h, logdet

    def _latent_log_prob(self, i: int, z: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        if self.split_prior and h is not None:
            return self.priors[i].log_prob(z, h)
        return standard_normal_log_prob(z)

    def _sample(self, n: int, temperature: float, generator, context, log_prob: bool):
        if not self.split_prior:
            return super()._sample(n, temperature, generator, context, log_prob)
        p = self._any_param()
        g = dict(generator=generator, device=p.device, dtype=p.dtype)

        def latent(i, h):  # z_i ~ N(mu(h_i), (temperature * sigma(h_i))^2)
            mean, log_sigma = self.priors[i](h)
            return mean + temperature * torch.exp(log_sigma) * torch.randn(mean.shape, **g)

        z_last = temperature * torch.randn((n, *self.latent_shapes()[-1]), **g)
        return self._unwind(z_last, latent, context, log_prob)
