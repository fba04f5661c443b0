"""Local patch Glow (Schirrmeister et al. 2020, Sec. 2 / S2.1): the image is cut
into non-overlapping patch_size x patch_size patches (16 patches of 8 x 8 for 32 x 32
images), every patch goes through the same small Glow, and the image's log-likelihood is the
sum of its patches' (the patches are modelled as independent), so the model can only learn
local, low-level structure."""

from __future__ import annotations

import torch

from ..validation import as_size, check_bools, check_ints, check_limits
from .base import FlowModel, FlowOutput
from .glow import Glow


class PatchGlow(FlowModel):
    """See the module docstring.  ``levels``, ``steps``, ``hidden`` configure the shared
    patch Glow (single-scale by default).  per_scale is the patch Glow's per-scale
    contributions summed over patches ([B, levels]); each latent holds all patches:
    [B, num_patches, *patch latent shape]."""

    def __init__(
        self,
        in_channels: int,
        image_size,
        patch_size: int = 8,
        levels: int = 1,
        steps: int = 8,
        hidden: int = 256,
        scale: str = "sigmoid",
        memory_free: bool = False,
    ):
        super().__init__()
        h, w = as_size(image_size, "PatchGlow")
        check_ints("PatchGlow", in_channels=in_channels, levels=levels, steps=steps, hidden=hidden)
        check_ints("PatchGlow", low=2, patch_size=patch_size)
        check_limits("PatchGlow", in_channels=in_channels, image_size=max(h, w), levels=levels, steps=steps)
        check_limits("PatchGlow", hidden=hidden, patch_size=patch_size)
        check_bools("PatchGlow", memory_free=memory_free)
        if patch_size < 2 or h % patch_size or w % patch_size:
            raise ValueError(f"PatchGlow: image size {h}x{w} must be divisible by patch_size {patch_size}")
        self._config = dict(
            in_channels=in_channels,
            image_size=[h, w],
            patch_size=patch_size,
            levels=levels,
            steps=steps,
            hidden=hidden,
            scale=scale,
            memory_free=memory_free,
        )
        self.input_shape = (in_channels, h, w)
        self.patch_size = patch_size
        self.grid = (h // patch_size, w // patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.glow = Glow(
            in_channels,
            patch_size,
            levels=levels,
            steps=steps,
            hidden=hidden,
            scale=scale,
            memory_free=memory_free,
        )

    def latent_shapes(self):
        return [(self.num_patches, *s) for s in self.glow.latent_shapes()]

    def to_patches(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B * P, C, p, p], patches in row-major order."""
        b, c = x.shape[:2]
        (gh, gw), p = self.grid, self.patch_size
        return x.view(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b * gh * gw, c, p, p)

    def from_patches(self, patches: torch.Tensor) -> torch.Tensor:
        (gh, gw), p = self.grid, self.patch_size
        b, c = patches.shape[0] // (gh * gw), patches.shape[1]
        return patches.view(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, gh * p, gw * p)

    def _forward(self, x):
        b = x.shape[0]
        out = self.glow._forward(self.to_patches(x))
        per_scale = out.per_scale.view(b, self.num_patches, -1).sum(1)
        latents = [z.view(b, self.num_patches, *z.shape[1:]) for z in out.latents]
        return FlowOutput(log_prob=per_scale.sum(1), per_scale=per_scale, latents=latents)

    def _inverse(self, latents):
        flat = [z.reshape(-1, *z.shape[2:]) for z in latents]
        return self.from_patches(self.glow._inverse(flat))
