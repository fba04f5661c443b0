"""Public invflow functions answer bad arguments with one-line TypeError / ValueError that say
what was expected, never with torch's internal errors: latents of ``inverse`` (dtype, device,
batch, NaN / Inf), ``sample`` and ``preprocess`` generators and dtypes, bits/dim, flags."""

from __future__ import annotations

import pytest
import torch

import invflow
from invflow import checkpoint, data


@pytest.fixture(scope="module")
def glow():
    torch.manual_seed(0)
    model = invflow.Glow(1, 4, levels=2, steps=1, hidden=4)
    model.train()(torch.rand(8, 1, 4, 4) - 0.5)
    return model.eval()


def _latents(model, b=2):
    return model(torch.rand(b, 1, 4, 4) - 0.5).latents


def _one_line(err):
    assert "\n" not in str(err.value), str(err.value)


def test_inverse_refuses_latents_of_another_dtype(glow):
    with pytest.raises(
        TypeError, match=r"latent 0 has dtype torch.float64 but the model computes in torch.float32"
    ) as e:
        glow.inverse([z.double() for z in _latents(glow)])
    _one_line(e)
    x = torch.rand(2, 1, 4, 4) - 0.5  # converting as the message says works and is exact
    torch.testing.assert_close(
        glow.inverse([z.double().float() for z in glow(x).latents]), x, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("which", [0, 1])
def test_inverse_refuses_non_finite_latents(glow, value, which):
    latents = [z.clone() for z in _latents(glow)]
    latents[which][1, 0, 0, 0] = value
    with pytest.raises(ValueError, match=rf"latent {which} contains NaN or Inf") as e:
        glow.inverse(latents)
    _one_line(e)


def test_inverse_refuses_mixed_batches_and_shapes(glow):
    a, b = _latents(glow, 2), _latents(glow, 3)
    with pytest.raises(ValueError, match=r"one batch size B >= 1, got \[2, 3\]"):
        glow.inverse([a[0], b[1]])
    with pytest.raises(ValueError, match="expected a list of 2 latents"):
        glow.inverse(a[0])
    with pytest.raises(ValueError, match=r"latent 1 must have shape \[B, 8, 1, 1\]"):
        glow.inverse([a[0], a[0]])
    with pytest.raises(ValueError, match="one batch size B >= 1"):
        glow.inverse([z[:0] for z in a])


def test_every_image_model_checks_its_latents():
    for model in (
        invflow.RealNVP(1, 4, levels=2, blocks=1, hidden=4),
        invflow.PatchGlow(1, 4, patch_size=2, steps=1, hidden=4),
        invflow.DenseGlow(1, 4, levels=2, steps=1, hidden=4),
        invflow.VectorFlow(4, blocks=1, hidden=4),
    ):
        latents = [torch.zeros(2, *s) for s in model.latent_shapes()]
        model.inverse(latents)
        latents[-1][0].view(-1)[0] = float("nan")
        with pytest.raises(ValueError, match="contains NaN or Inf"):
            model.inverse(latents)
        with pytest.raises(TypeError, match="has dtype torch.float64"):
            model.inverse([z.double() for z in latents])


def test_sample_generator_is_checked(glow):
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        glow.sample(2, generator=5)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="generator is on cuda but the values are drawn on cpu"):
            glow.sample(2, generator=torch.Generator("cuda"))
    split = invflow.Glow(1, 4, levels=2, steps=1, hidden=4, split_prior=True)
    with pytest.raises(TypeError, match="Glow.sample: generator must be"):
        split.sample(2, generator="seed")
    a = glow.sample(3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, glow.sample(3, generator=torch.Generator().manual_seed(1)))


def test_preprocess_arguments():
    k = torch.zeros(2, 1, 2, 2, dtype=torch.uint8)
    for dtype in (torch.int32, "float32", torch.bool, None):
        with pytest.raises(TypeError, match="preprocess: dtype must be a floating torch.dtype"):
            data.preprocess(k, dtype=dtype)
    with pytest.raises(TypeError, match="preprocess: generator must be a torch.Generator or None, got int"):
        data.preprocess(k, generator=3)
    with pytest.raises(TypeError, match="dequantize must be True or False"):
        data.preprocess(k, dequantize="no")
    assert data.preprocess(k, dtype=torch.float64).dtype == torch.float64
    assert data.preprocess(k, dequantize=False, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_bits_per_dim_and_log_prob_helpers():
    with pytest.raises(ValueError, match="num_dims must be an integer >= 1, got 0"):
        data.bits_per_dim(torch.zeros(2), 0)
    with pytest.raises(TypeError, match="log_prob must be a torch.Tensor"):
        data.bits_per_dim("x", 3)
    with pytest.raises(TypeError, match="expected a floating tensor"):
        data.standard_normal_log_prob(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="rank >= 2"):
        data.standard_normal_log_prob(torch.zeros(3))


@pytest.mark.parametrize(
    "make",
    [
        lambda: invflow.Glow(1, 4, levels=1, steps=1, hidden=4, lu="no"),
        lambda: invflow.Glow(1, 4, levels=1, steps=1, hidden=4, split_prior=1),
        lambda: invflow.RealNVP(1, 4, memory_free="yes"),
        lambda: invflow.PatchGlow(1, 4, patch_size=2, memory_free=None),
        lambda: invflow.DenseGlow(1, 4, memory_free=0.5),
        lambda: invflow.VectorFlow(4, memory_free="False"),
    ],
)
def test_flags_must_be_bools(make):
    with pytest.raises(TypeError, match="must be True or False"):
        make()


def test_checkpoint_path_arguments(tmp_path, glow):
    with pytest.raises(TypeError, match="load: path must be a str or os.PathLike, got int"):
        invflow.load(5)
    with pytest.raises(IsADirectoryError, match="is a directory; expected a file path"):
        invflow.save(glow, tmp_path)
    invflow.save(glow, tmp_path / "new" / "dir" / "m.safetensors")  # parents are created
    assert isinstance(invflow.load(tmp_path / "new" / "dir" / "m.safetensors"), invflow.Glow)
    with pytest.raises(TypeError, match="config of Glow must be a dict"):
        checkpoint.model_from_config("Glow", [1])
