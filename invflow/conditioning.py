"""Conditioning values ("contexts") of conditional flows: the shape check every conditional
layer and st-net shares, and how a context reaches an st-net's input.

A context is a floating tensor per sample: a vector [B, K], or for image layers an image
[B, K, H', W'].  A conditioner sees it concatenated to its input (Winkler et al. 2019,
"Learning Likelihoods with Conditional Normalizing Flows", Sec. 3; CFLOW-AD, Gudovskiy et al.
2022, Sec. 4, concatenates a positional encoding to the coupling input the same way): a
vector context is broadcast over the input's positions, an image context is average-pooled
to the input's spatial size (an integer factor per side) and concatenated as it is.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def check_context(
    context, where: str, channels: int, batch: int, spatial: tuple[int, ...] | None = None
) -> None:
    """Shape check of a conditional layer's context (no value read, so no host sync: models
    check the values once, see ``invflow.models.base``).  ``channels`` = K > 0 is the context
    size the layer was built for; a layer built with K = 0 gets ``channels=0`` and refuses any
    context.  Accepted: a floating tensor [batch, K], or, when ``spatial`` (the layer's H, W)
    is given, also [batch, K, H', W'] with H', W' integer multiples of H, W (pooled to H, W by
    ``invflow.nets.broadcast_context``).  Raises ValueError (TypeError for a non-floating
    tensor) naming what was expected."""
    if channels == 0:
        if context is not None:
            raise ValueError(
                f"{where}: got a context but the layer was built without one (context size 0); "
                f"drop context= or build it with a context size"
            )
        return
    kinds = f"[{batch}, {channels}]" + (f" or [{batch}, {channels}, H, W]" if spatial else "")
    if context is None:
        raise ValueError(f"{where}: a context of shape {kinds} is required (the layer is conditional)")
    if not isinstance(context, torch.Tensor):
        raise TypeError(
            f"{where}: context must be a torch.Tensor of shape {kinds}, got {type(context).__name__}"
        )
    if not context.is_floating_point():
        raise TypeError(f"{where}: context must be a floating tensor, got dtype {context.dtype}")
    ok_rank = context.dim() == 2 or (spatial is not None and context.dim() == 4)
    if not ok_rank or context.shape[1] != channels:
        raise ValueError(f"{where}: context must have shape {kinds}, got {list(context.shape)}")
    if context.shape[0] != batch:
        raise ValueError(f"{where}: context batch size {context.shape[0]} differs from the input's {batch}")
    if context.dim() == 4 and any(c % s or c < s for c, s in zip(context.shape[2:], spatial)):
        raise ValueError(
            f"{where}: an image context's size {tuple(context.shape[2:])} must be an integer multiple "
            f"of the layer's {tuple(spatial)}"
        )


def broadcast_context(context: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The context as extra channels for ``h`` ([B, C], [B, C, L] or [B, C, H, W]): a vector
    context [B, K] repeated over every position of h, an image context [B, K, H', W']
    average-pooled by (H' / H, W' / W) to h's spatial size.  Raises ValueError for a batch size
    other than h's or an image context whose size is not an integer multiple of h's."""
    if context.shape[0] != h.shape[0]:
        raise ValueError(f"context batch size {context.shape[0]} differs from the input's {h.shape[0]}")
    if context.dim() == 2:
        return context.view(*context.shape, *[1] * (h.dim() - 2)).expand(-1, -1, *h.shape[2:])
    if context.dim() != 4 or h.dim() != 4:
        raise ValueError(
            f"a context of shape {list(context.shape)} cannot condition an input of shape {list(h.shape)}: "
            f"expected [B, K] (or [B, K, H, W] for image inputs)"
        )
    return resize_context(context, tuple(h.shape[2:]))


def resize_context(context: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An image context [B, K, H', W'] average-pooled to ``size`` = (H, W), which must divide
    (H', W') (ValueError otherwise); a vector context [B, K] is returned as it is."""
    if context.dim() != 4 or tuple(context.shape[2:]) == tuple(size):
        return context
    (hc, wc), (hh, ww) = context.shape[2:], size
    if hc % hh or wc % ww:
        raise ValueError(
            f"an image context of size {(hc, wc)} cannot be pooled to {(hh, ww)}: "
            f"its size must be an integer multiple of the layer's"
        )
    return F.avg_pool2d(context, (hc // hh, wc // ww))


def concat_context(h: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """[h, broadcast_context(context, h)] along dim 1; h itself when context is None."""
    if context is None:
        return h
    return torch.cat([h, broadcast_context(context.to(h.dtype), h)], dim=1)
