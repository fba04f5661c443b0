"""Image preprocessing and bits/dim (the conventions of Schirrmeister et al. 2020, S4.5).

8-bit images k in {0, ..., 255} map to x = (k + u) / 256 - 0.5 in [-0.5, 0.5):
u ~ U[0, 1) (uniform dequantisation) for training, u = 1/2 (the bin centre, no noise) for
evaluation.  A density p(x) on that cube gives each 8-bit image the probability
P(k) ~= p(x) / 256^D, so bits/dim = (-log p(x) + D log 256) / (D log 2).
"""

from __future__ import annotations

import math

import torch

BINS = 256


def preprocess(images: torch.Tensor, dequantize: bool = True, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images [B, C, H, W] (or [B, H, W] greyscale) -> floats in [-0.5, 0.5)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"preprocess: expected a torch.Tensor of uint8 images, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"preprocess: expected dtype torch.uint8 (raw 8-bit images), got {images.dtype}")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise ValueError(f"preprocess: expected [B, C, H, W] or [B, H, W] images, got {list(images.shape)}")
    x = images.to(dtype)
    if dequantize:
        x = x + torch.rand(x.shape, generator=generator, dtype=dtype, device=x.device)
    else:
        x = x + 0.5
    return x / BINS - 0.5


def bits_per_dim(log_prob: torch.Tensor, num_dims: int) -> torch.Tensor:
    """bits/dim of 8-bit data from the continuous log-density of preprocessed inputs."""
    return (-log_prob + num_dims * math.log(BINS)) / (num_dims * math.log(2.0))


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over all but the batch dimension -> [B]."""
    return -0.5 * (z.flatten(1).pow(2).sum(1) + z[0].numel() * math.log(2 * math.pi))
