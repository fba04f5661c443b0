"""invflow.data: preprocessing into [-0.5, 0.5) and bits/dim (Schirrmeister et al. 2020 S4.5 conventions)."""

from __future__ import annotations

import math

import pytest
import torch

from invflow.data import bits_per_dim, preprocess, standard_normal_log_prob


def test_noise_free_preprocessing_is_the_bin_centre():
    k = torch.tensor([0, 1, 128, 255], dtype=torch.uint8).view(1, 1, 2, 2)
    x = preprocess(k, dequantize=False, dtype=torch.float64)
    torch.testing.assert_close(
        x.flatten(), (torch.tensor([0, 1, 128, 255.0], dtype=torch.float64) + 0.5) / 256 - 0.5
    )


def test_dequantised_values_stay_in_their_bin():
    k = torch.randint(0, 256, (64, 3, 4, 4), dtype=torch.uint8)
    x = preprocess(k, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lo = k.double() / 256 - 0.5
    assert ((x >= lo) & (x < lo + 1 / 256)).all()
    assert x.min() >= -0.5 and x.max() < 0.5
    assert x.std() > 0  # noise was added
    assert (x - lo).std() > 0.5 / 256 / 2  # uniform over the bin, not a constant offset


def test_greyscale_without_channel_dimension():
    assert preprocess(torch.zeros(5, 28, 28, dtype=torch.uint8)).shape == (5, 1, 28, 28)


def test_bad_inputs():
    with pytest.raises(TypeError, match="uint8"):
        preprocess(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="images"):
        preprocess(torch.zeros(2, 1, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(TypeError):
        preprocess([[0]])


def test_bits_per_dim_of_the_uniform_density_is_eight():
    """p(x) = 1 on the unit cube gives every 8-bit image probability 256^-D: 8 bits/dim."""
    d = 3 * 4 * 4
    torch.testing.assert_close(
        bits_per_dim(torch.zeros(2, dtype=torch.float64), d), torch.full((2,), 8.0, dtype=torch.float64)
    )


def test_standard_normal_log_prob():
    z = torch.randn(3, 2, 5, dtype=torch.float64)
    want = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(dim=(1, 2))
    torch.testing.assert_close(standard_normal_log_prob(z), want)
    assert math.isclose(
        standard_normal_log_prob(torch.zeros(1, 1, dtype=torch.float64)).item(), -0.5 * math.log(2 * math.pi)
    )
