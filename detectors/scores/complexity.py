"""Input complexity (Serra et al. 2020, as replicated in Schirrmeister et al. 2020 Sec. 5.1 / S6): the PNG
code length as the general-distribution model.

    S(x) = -log2 P_model(x) - L_png(x)         (bits; higher = more anomalous)

where P_model(x) = p(x) / 256^D is the model's probability of the 8-bit image (invflow.data)
and L_png(x) is the length in bits of the image compressed as a PNG (Pillow, maximum
compression).  It is the log-likelihood ratio of Schirrmeister et al. 2020 Eq. 1 with PNG as p_g.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

from invflow.validation import check_number

from .base import Detector, as_model_input, check_model, describe_model, floor_log_likelihood, log_prob


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Preprocessed floats in [-0.5, 0.5] -> the 8-bit images they came from; uint8 as is."""
    if x.dtype == torch.uint8:
        return x
    return torch.floor((x.detach().float() + 0.5) * 256).clamp(0, 255).to(torch.uint8)


def png_bits(images: torch.Tensor, compress_level: int = 9) -> torch.Tensor:
    """PNG code length in bits of each image [B, C, H, W] (C in {1, 3}), float64 [B]."""
    images = to_uint8(images).cpu()
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"png_bits: expected images [B, 1 or 3, H, W], got {list(images.shape)}")
    arr = images.permute(0, 2, 3, 1).numpy()
    out = np.empty(len(arr), dtype=np.float64)
    for i, a in enumerate(arr):
        img = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a, mode="L" if a.shape[-1] == 1 else "RGB")
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True, compress_level=compress_level)
        out[i] = 8 * buf.tell()
    return torch.from_numpy(out)


class InputComplexity(Detector):
    """S(x) = -log2 P_model(x) - L_png(x) bits (Serra et al.; Schirrmeister et al. 2020 Tab. 1 "PNG")."""

    uses = "-"

    def __init__(self, model, compress_level: int = 9, **kw):
        super().__init__(**kw)
        self.model = check_model(model, "InputComplexity")
        self.compress_level = check_number(
            compress_level, "compress_level", "InputComplexity", low=0, high=9, integer=True
        )
        shape = getattr(model, "input_shape", None)
        if shape is not None and (len(shape) != 3 or shape[0] not in (1, 3)):
            raise ValueError(
                f"InputComplexity: needs a model of grey or RGB images [1 or 3, H, W] (the PNG code "
                f"length is of images), got {describe_model('model', model)}"
            )

    def _score_batch(self, x):
        xin = as_model_input(x, self.model)
        d = math.prod(xin.shape[1:])
        lp = floor_log_likelihood(log_prob(self.model, xin)).double().cpu()
        model_bits = (-lp + d * math.log(256)) / math.log(2)
        return model_bits - png_bits(x, self.compress_level)
