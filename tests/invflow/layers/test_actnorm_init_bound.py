"""ActNorm's data-dependent initialisation bounds the scale of near-constant channels
(invflow.nets.MIN_INIT_STD), in the flow layer, in the st-nets' ActNorm2d and in the fused and
channels-last paths that run after it."""

from __future__ import annotations

import math

import pytest
import torch

import invflow
from invflow import nets
from invflow.nets import CONSTANT_STD, MIN_INIT_STD

BOUND = -math.log(MIN_INIT_STD + 1e-6)  # the largest initial log-scale, 6.9


def _channels(std_small: float, b: int = 64, seed: int = 0) -> torch.Tensor:
    """[b, 3]: a channel of std ``std_small`` around 0.2, a normal one, a constant one."""
    g = torch.Generator().manual_seed(seed)
    near = 0.2 + std_small * torch.randn(b, generator=g, dtype=torch.float64)
    near = 0.2 + (near - near.mean()) / near.std(unbiased=False) * std_small  # exactly std_small
    return torch.stack([near, torch.randn(b, generator=g, dtype=torch.float64), torch.full((b,), 0.7)], 1)


def test_the_bound_constants():
    assert MIN_INIT_STD == 1e-3 and BOUND == pytest.approx(6.9067, abs=1e-3)
    assert CONSTANT_STD * (1 + 1) < MIN_INIT_STD < 1 / (256 * math.sqrt(12))  # below dequantisation noise


@pytest.mark.parametrize("layer", ["ActNorm", "ActNorm2d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_near_constant_channel_scale_is_bounded(layer, dtype):
    x = _channels(2e-5).to(dtype)[:, :, None, None]  # [64, 3, 1, 1]
    m = (invflow.ActNorm(3) if layer == "ActNorm" else nets.ActNorm2d(3)).to(dtype).train()
    m(x)
    log_s = (m.log_scale if layer == "ActNorm" else m.logs).detach().double()
    assert log_s[0].item() == pytest.approx(BOUND, rel=1e-5)  # was -log(2e-5) = 10.8 (scale 5e4)
    assert math.exp(log_s[0].item()) == pytest.approx(1000, rel=1e-3)
    std1 = x[:, 1].double().std(unbiased=False).item()
    assert log_s[1].item() == pytest.approx(-math.log(std1 + 1e-6), rel=1e-5)  # normal: exact
    assert log_s[2].item() == 0.0  # constant: scale 1
    # a fresh input deviating by 0.01 from the near-constant channel's mean maps to 10, not 500
    fresh = torch.tensor([[0.21, 0.0, 0.7]], dtype=dtype)[:, :, None, None]
    y = m.eval()(fresh)
    y = y[0] if isinstance(y, tuple) else y
    assert y[0, 0].item() == pytest.approx(10.0, rel=1e-2)


@pytest.mark.parametrize("std", [1e-3, 5e-3, 0.1])
def test_spreads_from_the_bound_up_are_normalised_exactly(std):
    a = invflow.ActNorm(3).double().train()
    a(_channels(std))
    assert a.log_scale[0].item() == pytest.approx(-math.log(std + 1e-6), rel=1e-9)


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_glow_on_a_near_constant_image_channel(backend):
    """Glow (fused channels-last scale and folded GlowNet after the init) and DenseGlow on images
    whose second channel barely varies: no initial scale above the bound, finite log p of fresh
    images that differ there."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 2, 4, 4, generator=g, dtype=torch.float64) - 0.5
    x[:, 1] = 0.1 + 2e-5 * torch.randn(32, 4, 4, generator=g, dtype=torch.float64)
    for model in (
        invflow.Glow(2, 4, levels=1, steps=2, hidden=8).double(),
        invflow.DenseGlow(2, 4, levels=1, steps=2, hidden=8).double(),
    ):
        with invflow.backend(backend):
            model.train()(x)
            scales = [
                p.detach().max().item()
                for name, p in model.named_parameters()
                if name.endswith(("log_scale", ".logs"))
            ]
            assert max(scales) <= BOUND + 1e-9, type(model).__name__
            fresh = x[:4].clone()
            fresh[:, 1] += 0.05
            assert torch.isfinite(model.eval().log_prob(fresh)).all()
