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


def preprocess(
    images: torch.Tensor,
    dequantize: bool = True,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
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
    """log N(z; 0, I) summed over all but the batch dimension -> [B] (float32 for float16 /
    bfloat16 z: a half-precision sum of D squares overflows or loses the per-sample differences)."""
    z = z.flatten(1)
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()
    return -0.5 * (z.pow(2).sum(1) + z.shape[1] * math.log(2 * math.pi))


def to_images(x: torch.Tensor) -> torch.Tensor:
    """Samples back into 8-bit images: uint8 [B, C, H, W] on the CPU.

    Floats are read as preprocessed values x = (k + u) / 256 - 0.5 and mapped to
    k = floor((x + 0.5) * 256), clamped to 0..255 (model samples may leave the cube);
    uint8 passes through. [B, H, W] gets a channel axis. ``TypeError`` for other dtypes,
    ``ValueError`` for other ranks or non-finite values.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"to_images: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"to_images: expected [B, C, H, W] or [B, H, W], got {list(x.shape)}")
    if x.dtype == torch.uint8:
        return x.detach().cpu()
    if not x.is_floating_point():
        raise TypeError(f"to_images: expected uint8 images or floats in [-0.5, 0.5], got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("to_images: input contains NaN or Inf")
    return torch.floor((x.detach().cpu().double() + 0.5) * BINS).clamp(0, BINS - 1).to(torch.uint8)


def image_grid(
    x: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: int = 255
) -> torch.Tensor:
    """Images (see :func:`to_images`) tiled row by row into one uint8 image [C, H', W'];
    ``nrow`` images per row (default ceil(sqrt(B))), ``padding`` pixels of ``pad_value``
    between and around them."""
    images = to_images(x)
    b, c, h, w = images.shape
    if b == 0:
        raise ValueError("image_grid: no images")
    nrow = nrow or math.ceil(math.sqrt(b))
    if nrow < 1 or padding < 0 or not 0 <= pad_value <= 255:
        raise ValueError(
            f"image_grid: nrow must be >= 1, padding >= 0 and pad_value in 0..255, got "
            f"nrow={nrow}, padding={padding}, pad_value={pad_value}"
        )
    rows = math.ceil(b / nrow)
    grid = torch.full(
        (c, rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value, dtype=torch.uint8
    )
    for i in range(b):
        r, k = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def save_grid(x: torch.Tensor, path, nrow: int | None = None, padding: int = 2) -> None:
    """Writes :func:`image_grid` of ``x`` (samples, preprocessed floats or uint8 images with
    1 or 3 channels) as a PNG file at ``path``, atomically (Pillow)."""
    import io

    from PIL import Image

    from .io import atomic_write

    grid = image_grid(x, nrow, padding)
    if grid.shape[0] not in (1, 3):
        raise ValueError(f"save_grid: expected 1 or 3 channels, got {grid.shape[0]}")
    arr = grid[0].numpy() if grid.shape[0] == 1 else grid.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write(path, buf.getvalue())
