"""Fully-connected flows: the vector flow for features / tabular data (Schmier et al.
2022, A.1) and the fully-connected ("dense") Glow of Schirrmeister et al. 2020, S2.2."""

from __future__ import annotations

import torch
from torch import nn

from .. import masks, nets
from ..layers import ActNorm, AffineCoupling, FixedLinear, Sequential
from ..validation import as_size, check_bools, check_ints, check_limits, check_number
from .base import MultiScaleModel, check_context_size
from .memory import run_memory_free


def dense_step(
    dim: int, k: int, hidden: int, scale: str, clamp: float, seed: int, context_dim: int = 0
) -> Sequential:
    """actnorm -> fixed random rotation -> affine coupling with an MLP st-net, on [B, dim]; the
    coupling conditional on a context [B, context_dim] (concatenated to the MLP's input) when
    context_dim > 0."""
    return Sequential(
        ActNorm(dim),
        FixedLinear(dim, seed=seed),
        AffineCoupling(
            dim,
            masks.Channel(k % 2),
            net=lambda i, o: nets.MLP(i, o, hidden=hidden),
            scale=scale,
            clamp=clamp,
            context_channels=context_dim,
        ),
    )


class VectorFlow(MultiScaleModel):
    """Flow on vectors [B, dim] (Schmier et al. 2022 A.1): ``blocks`` coupling blocks, each actnorm, a
    fixed soft permutation and an affine coupling with an MLP st-net of width ``hidden``
    and soft-clamped scales (s = exp(clamp * tanh(raw / clamp)), clamp 3).  One scale:
    per_scale is [B, 1].

    ``context_dim=K > 0`` makes it a conditional flow p(x | c) (Winkler et al. 2019, Sec. 3):
    every coupling's MLP sees [x_cond, c] with c [B, K]; ``model(x, context=c)``,
    ``model.log_prob(x, context=c)``, ``model.sample(n, context=c)`` (c of batch n or 1)."""

    def __init__(
        self,
        dim: int,
        blocks: int = 8,
        hidden: int = 512,
        clamp: float = 3.0,
        scale: str = "tanh",
        memory_free: bool = False,
        seed: int = 0,
        context_dim: int = 0,
    ):
        super().__init__()
        self.context_size = check_context_size(context_dim, "context_dim", "VectorFlow")
        check_ints("VectorFlow", blocks=blocks, hidden=hidden)
        check_ints("VectorFlow", low=2, dim=dim)
        check_ints("VectorFlow", low=0, seed=seed)
        check_limits("VectorFlow", dim=dim, steps=blocks, hidden=hidden)
        check_bools("VectorFlow", memory_free=memory_free)
        clamp = check_number(clamp, "clamp", "VectorFlow", low=0, low_open=True)
        if dim < 2 or blocks < 1:
            raise ValueError(f"VectorFlow: needs dim >= 2 and blocks >= 1, got dim={dim}, blocks={blocks}")
        self._config = dict(
            dim=dim,
            blocks=blocks,
            hidden=hidden,
            clamp=clamp,
            scale=scale,
            memory_free=memory_free,
            seed=seed,
            context_dim=self.context_size,
        )
        self.input_shape = (dim,)
        self.memory_free = memory_free
        self.flow = Sequential(
            *[
                dense_step(dim, k, hidden, scale, clamp, seed * 1000 + k, self.context_size)
                for k in range(blocks)
            ]
        )

    def latent_shapes(self):
        return [self.input_shape]

    def _run_scale(self, i: int, h: torch.Tensor, free: bool, context=None):
        return run_memory_free(self.flow.flows, h, context) if free else self.flow(h, context)

    def _invert_scale(self, i: int, h: torch.Tensor, context=None):
        return self.flow.inverse(h, context)


class DenseGlow(MultiScaleModel):
    """Fully-connected Glow (Schirrmeister et al. 2020 S2.2): the image is flattened; each of ``levels`` scales
    is ``steps`` steps of actnorm, a fixed random invertible linear map and an affine
    coupling whose MLP st-net maps half of the dimensions through two hidden layers of width
    ``hidden`` (1536 -> 512 -> 512 -> 3072 for 3 x 32 x 32 images); after every scale but the
    last, half of the dimensions leave as z_i."""

    def __init__(
        self,
        in_channels: int,
        image_size,
        levels: int = 3,
        steps: int = 8,
        hidden: int = 512,
        scale: str = "sigmoid",
        memory_free: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        h, w = as_size(image_size, "DenseGlow")
        check_ints("DenseGlow", in_channels=in_channels, levels=levels, steps=steps, hidden=hidden)
        check_ints("DenseGlow", low=0, seed=seed)
        check_limits("DenseGlow", in_channels=in_channels, image_size=max(h, w), levels=levels, steps=steps)
        check_limits("DenseGlow", hidden=hidden)
        check_bools("DenseGlow", memory_free=memory_free)
        dim = in_channels * h * w
        check_limits("DenseGlow", dim=dim)  # C * H * W: each step holds a dim x dim rotation
        if levels < 1 or steps < 1 or dim >> (levels - 1) < 2:
            raise ValueError(
                f"DenseGlow: {levels} levels need at least 2**levels input dimensions, got {dim}"
            )
        self._config = dict(
            in_channels=in_channels,
            image_size=[h, w],
            levels=levels,
            steps=steps,
            hidden=hidden,
            scale=scale,
            memory_free=memory_free,
            seed=seed,
        )
        self.input_shape = (in_channels, h, w)
        self.memory_free = memory_free
        self.scales = nn.ModuleList()
        self._latent_shapes = []
        for i in range(levels):
            self.scales.append(
                Sequential(
                    *[dense_step(dim, k, hidden, scale, 2.0, seed * 1000 + 100 * i + k) for k in range(steps)]
                )
            )
            if i < levels - 1:
                self._latent_shapes.append((dim - dim // 2,))
                dim //= 2
            else:
                self._latent_shapes.append((dim,))

    def latent_shapes(self):
        return list(self._latent_shapes)

    def _enter(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def _leave(self, h: torch.Tensor) -> torch.Tensor:
        return h.view(h.shape[0], *self.input_shape)

    def _run_scale(self, i: int, h: torch.Tensor, free: bool, context=None):
        seq = self.scales[i]
        return run_memory_free(seq.flows, h) if free else seq(h)

    def _invert_scale(self, i: int, h: torch.Tensor, context=None):
        return self.scales[i].inverse(h)
