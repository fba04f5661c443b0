"""The input-range rule of image models (invflow.validation.unpreprocessed_hint): a model accepts
its own samples at any temperature, and refuses raw pixel values (0..255, ToTensor 0..1) with a
hint that names what they look like."""

from __future__ import annotations

import inspect

import pytest
import torch

import invflow
import invflow.models
from invflow.validation import check_model_input, check_preprocessed, unpreprocessed_hint

SIZE = 8

#: a tiny instance of every image model class of invflow.models
TINY = {
    "Glow": lambda: invflow.Glow(1, SIZE, levels=2, steps=2, hidden=8),
    "RealNVP": lambda: invflow.RealNVP(1, SIZE, levels=2, blocks=1, hidden=8),
    "PatchGlow": lambda: invflow.PatchGlow(1, SIZE, patch_size=4, steps=2, hidden=8),
    "DenseGlow": lambda: invflow.DenseGlow(1, SIZE, levels=2, steps=2, hidden=8),
}


def _image_model_classes() -> set[str]:
    names = set()
    for name in invflow.models.__all__:
        cls = getattr(invflow.models, name)
        if inspect.isclass(cls) and issubclass(cls, invflow.models.FlowModel) and not inspect.isabstract(cls):
            if "image_size" in inspect.signature(cls).parameters:
                names.add(name)
    return names


def test_every_image_model_class_is_covered():
    assert _image_model_classes() == set(TINY)


def _dark_background_images(n: int, seed: int) -> torch.Tensor:
    """uint8 [n, 1, 8, 8]: a black background with a bright square (Fashion-MNIST-like)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.zeros(n, 1, SIZE, SIZE, dtype=torch.uint8)
    for i in range(n):
        top, left = torch.randint(0, 4, (2,), generator=g).tolist()
        k[i, 0, top : top + 4, left : left + 4] = torch.randint(
            150, 256, (4, 4), generator=g, dtype=torch.uint8
        )
    return k


def _trained(name: str) -> invflow.models.FlowModel:
    """The model after ActNorm's data-dependent initialisation and a few maximum-likelihood steps."""
    torch.manual_seed(0)
    model = TINY[name]()
    x = invflow.data.preprocess(_dark_background_images(64, 0), generator=torch.Generator().manual_seed(1))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        (-model.log_prob(x).mean()).backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("name", sorted(TINY))
def test_models_score_their_own_samples(name):
    torch.set_num_threads(1)
    model = _trained(name)
    outside = False
    for temperature in (0.5, 0.7, 1.0):
        for seed in range(3):
            x = model.sample(16, temperature=temperature, generator=torch.Generator().manual_seed(seed))
            outside |= bool((x.abs() > 0.5).any())
            log_p = model.log_prob(x)
            assert log_p.shape == (16,)
            assert torch.isfinite(log_p).all(), (name, temperature, seed)
    assert outside, "the samples never left [-0.5, 0.5]: the test would not catch the old check"


@pytest.mark.filterwarnings("ignore::invflow.layers.UninitializedWarning")
@pytest.mark.parametrize("name", sorted(TINY))
def test_models_refuse_raw_pixels_with_a_true_hint(name):
    model = TINY[name]().eval()
    k = _dark_background_images(4, 3)
    with pytest.raises(TypeError, match="invflow.data.preprocess"):
        model(k)  # uint8
    with pytest.raises(ValueError, match=r"look like 0\.\.255 pixel values.*invflow.data.preprocess"):
        model(k.float())
    with pytest.raises(ValueError, match=r"outside \[-0.5, 0.5\].*look like torchvision's ToTensor 0\.\.1"):
        model(k.float() / 255)
    # preprocessed images, and values far outside the cube on both sides, are accepted
    model(invflow.data.preprocess(k))
    wide = invflow.data.preprocess(k) * 6  # [-3, 3)
    assert torch.isfinite(model.log_prob(wide)).all()


def test_the_rule():
    assert unpreprocessed_hint(torch.tensor([0.0, 200.0])).startswith("values outside")
    assert "0..255" in unpreprocessed_hint(torch.tensor([0.0, 1.5]))
    assert "ToTensor" in unpreprocessed_hint(torch.tensor([0.0, 0.51]))
    assert "ToTensor" in unpreprocessed_hint(torch.tensor([0.2, 1.0]))
    for ok in ([-0.5, 0.5], [0.0, 0.5], [-0.01, 0.9], [-2.0, 3.0], [-300.0, 300.0], [0.0, 0.0]):
        assert unpreprocessed_hint(torch.tensor(ok)) is None, ok
    check_preprocessed(torch.tensor([-0.01, 250.0]), "f")
    check_preprocessed(torch.tensor([3, 250]), "f")  # integers: the dtype checks say it
    with pytest.raises(ValueError, match=r"^f: input values outside .*ToTensor"):
        check_preprocessed(torch.tensor([0.0, 0.7]), "f")


def test_check_model_input_max_abs_stays_strict():
    """Models whose inputs are bounded (the baselines pass max_abs) still refuse values outside."""
    p = torch.zeros(1)
    check_model_input(torch.full((2, 3), 0.5), "m", (3,), p, max_abs=0.5)
    with pytest.raises(ValueError, match=r"^m: input values outside \[-0.5, 0.5\] \(min -0.6, max 0.1\)"):
        check_model_input(torch.tensor([[-0.6, 0.1, 0.0]]), "m", (3,), p, max_abs=0.5)
    with pytest.raises(ValueError, match="look like torchvision's ToTensor"):
        check_model_input(torch.tensor([[0.0, 0.7, 0.0]]), "m", (3,), p, max_abs=0.5)
    with pytest.raises(ValueError, match="NaN or Inf"):
        check_model_input(torch.tensor([[0.0, float("nan"), 0.0]]), "m", (3,), p, images=True)
    with pytest.raises(ValueError, match="NaN or Inf"):
        check_model_input(torch.tensor([[0.0, float("-inf"), 0.0]]), "m", (3,), p, images=True)
