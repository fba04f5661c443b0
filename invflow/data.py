"""Image preprocessing and bits/dim (the conventions of Schirrmeister et al. 2020, S4.5).

8-bit images k in {0, ..., 255} map to x = (k + u) / 256 - 0.5 in [-0.5, 0.5):
u ~ U[0, 1) (uniform dequantisation) for training, u = 1/2 (the bin centre, no noise) for
evaluation.  A density p(x) on that cube gives each 8-bit image the probability
P(k) ~= p(x) / 256^D, so bits/dim = (-log p(x) + D log 256) / (D log 2).
"""

from __future__ import annotations

import math

import torch

from .validation import check_float_dtype, check_generator, check_number

BINS = 256


def preprocess(
    images: torch.Tensor,
    dequantize: bool = True,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 images [B, C, H, W] (or [B, H, W] greyscale) -> floats in [-0.5, 0.5) of ``dtype``
    ([B, C, H, W]), with uniform dequantisation noise drawn from ``generator`` (a
    torch.Generator on the images' device, or None) when ``dequantize``, else the bin centres.

    TypeError for non-tensors, a dtype other than uint8, a ``dtype`` that is not a floating
    torch.dtype, a ``dequantize`` that is not a bool and a ``generator`` that is not a
    torch.Generator; ValueError for another rank or a generator on another device type."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"preprocess: expected a torch.Tensor of uint8 images, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"preprocess: expected dtype torch.uint8 (raw 8-bit images), got {images.dtype}")
    check_float_dtype(dtype, "dtype", "preprocess")
    if not isinstance(dequantize, bool):
        raise TypeError(f"preprocess: dequantize must be True or False, got {dequantize!r}")
    check_generator(generator, images.device, "preprocess")
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
    """bits/dim of 8-bit data from the continuous log-density (nats, any shape) of preprocessed
    inputs with ``num_dims`` dimensions each: (-log p + D log 256) / (D log 2), same shape.
    TypeError for a non-tensor, ValueError / TypeError unless num_dims is an integer >= 1."""
    if not isinstance(log_prob, torch.Tensor):
        raise TypeError(f"bits_per_dim: log_prob must be a torch.Tensor, got {type(log_prob).__name__}")
    check_number(num_dims, "num_dims", "bits_per_dim", low=1, integer=True)
    return (-log_prob + num_dims * math.log(BINS)) / (num_dims * math.log(2.0))


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over all but the batch dimension -> [B] (float32 for float16 /
    bfloat16 z: a half-precision sum of D squares overflows or loses the per-sample differences).
    TypeError for a non-floating tensor, ValueError for fewer than 2 dimensions [B, ...]."""
    if not isinstance(z, torch.Tensor) or not z.is_floating_point():
        got = z.dtype if isinstance(z, torch.Tensor) else type(z).__name__
        raise TypeError(f"standard_normal_log_prob: expected a floating tensor [B, ...], got {got}")
    if z.dim() < 2:
        raise ValueError(
            f"standard_normal_log_prob: expected a batch [B, ...] of rank >= 2, got {list(z.shape)}"
        )
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
    x: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: int = 255, scale: int = 1
) -> torch.Tensor:
    """Images (see :func:`to_images`) tiled row by row into one uint8 image [C, H', W'];
    ``nrow`` images per row (default ceil(sqrt(B))), each image enlarged ``scale`` times by
    nearest neighbour (every pixel a scale x scale block), ``padding`` pixels of ``pad_value``
    between and around them.  TypeError / ValueError for non-integer or out-of-range
    ``nrow`` (>= 1), ``padding`` (>= 0), ``pad_value`` (0..255) and ``scale`` (1..64)."""
    nrow = check_number(nrow, "nrow", "image_grid", low=1, integer=True, optional=True)
    padding = check_number(padding, "padding", "image_grid", low=0, integer=True)
    pad_value = check_number(pad_value, "pad_value", "image_grid", low=0, high=255, integer=True)
    scale = check_number(scale, "scale", "image_grid", low=1, high=64, integer=True)
    images = to_images(x)
    b = images.shape[0]
    if b == 0:
        raise ValueError("image_grid: no images")
    if scale > 1:
        images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    _, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    grid = torch.full(
        (c, rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value, dtype=torch.uint8
    )
    for i in range(b):
        r, k = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


#: ``save_grid``'s default: each image is enlarged to at least this many pixels on its shorter side
MIN_CELL = 64


def save_grid(
    x: torch.Tensor, path, nrow: int | None = None, padding: int = 2, scale: int | None = None
) -> None:
    """Writes :func:`image_grid` of ``x`` (samples, preprocessed floats or uint8 images with
    1 or 3 channels, [B, C, H, W]) as a PNG file at ``path``, atomically (Pillow).

    Small images are enlarged by nearest neighbour so that they can be seen: ``scale=None``
    (default) takes the smallest integer factor that makes each image at least ``MIN_CELL`` =
    64 pixels on its shorter side (16 x 16 samples: 4x, 28 x 28: 3x, 64 x 64 and larger: 1x);
    ``scale=1`` writes them 1:1.  TypeError / ValueError for bad arguments (see image_grid)."""
    import io

    from PIL import Image

    from .io import atomic_write

    if scale is None:
        side = min(x.shape[-2:]) if isinstance(x, torch.Tensor) and x.dim() >= 2 else MIN_CELL
        scale = max(1, min(64, math.ceil(MIN_CELL / max(1, side))))
    grid = image_grid(x, nrow, padding, scale=scale)
    if grid.shape[0] not in (1, 3):
        raise ValueError(f"save_grid: expected 1 or 3 channels, got {grid.shape[0]}")
    arr = grid[0].numpy() if grid.shape[0] == 1 else grid.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write(path, buf.getvalue())
