"""Every detector takes every input kind (docs/design.md, "Detectors"): tensors, numpy
arrays, lists of PIL images, Datasets of (image, label) items and DataLoaders give exactly
the scores of the tensor; decision_function and __call__ are score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import detectors
import invflow
from detectors.inputs import as_batch, as_batch_with_labels


class PILDataset(torch.utils.data.Dataset):
    """torchvision style: (PIL image, label) items."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        a = self.images[i].permute(1, 2, 0).numpy()
        return Image.fromarray(a[..., 0] if a.shape[2] == 1 else a), int(self.labels[i])


def _kinds(x, y):
    """The same images in every accepted kind."""
    nhwc = x.permute(0, 2, 3, 1).numpy()
    pil = [Image.fromarray(a[..., 0] if a.shape[2] == 1 else a) for a in nhwc]
    tds = torch.utils.data.TensorDataset(x, y)
    return {
        "tensor": x,
        "numpy NCHW": x.numpy(),
        "numpy NHWC": nhwc,
        "list of PIL": pil,
        "list of numpy": list(nhwc),
        "list of (image, label)": list(zip(pil, y.tolist())),
        "Dataset of (PIL, label)": PILDataset(x, y),
        "TensorDataset": tds,
        "DataLoader": torch.utils.data.DataLoader(tds, batch_size=3),
    }


@pytest.mark.parametrize("channels", [1, 3])
def test_as_batch_every_kind(channels):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (7, channels, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(7) % 3
    for kind, value in _kinds(x, y).items():
        xb, yb = as_batch_with_labels(value)
        assert xb.dtype == torch.uint8 and torch.equal(xb, x), kind
        if kind in ("list of (image, label)", "Dataset of (PIL, label)", "TensorDataset", "DataLoader"):
            assert torch.equal(yb, y), kind
        else:
            assert yb is None, kind


def test_as_batch_rejects_clearly():
    with pytest.raises(ValueError, match="empty"):
        as_batch([])
    with pytest.raises(ValueError, match="item 1 has shape"):
        as_batch([np.zeros((4, 4), np.uint8), np.zeros((5, 4), np.uint8)])
    with pytest.raises(TypeError, match="got a path"):
        as_batch("some/folder")
    with pytest.raises(TypeError, match="expected a torch.Tensor, numpy array"):
        as_batch(3.5)
    grey, rgb = Image.new("L", (4, 4), 7), Image.new("RGB", (4, 4), (1, 2, 3))
    mixed = as_batch([grey, rgb])  # mixed modes: grey replicated into RGB
    assert mixed.shape == (2, 3, 4, 4) and mixed[0].eq(7).all() and mixed[1, 2].eq(3).all()
    rgba = as_batch([Image.new("RGBA", (4, 4), (9, 8, 7, 0))])  # alpha dropped
    assert rgba.shape == (1, 3, 4, 4) and rgba[0, :, 0, 0].tolist() == [9, 8, 7]


@pytest.fixture(scope="module")
def glow():
    torch.manual_seed(0)
    model = invflow.Glow(1, 8, levels=2, steps=1, hidden=8).double()
    data = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    model.train()
    with torch.no_grad():
        model(invflow.data.preprocess(data, dtype=torch.float64))  # ActNorm data-dependent init
    return model.eval()


@pytest.mark.parametrize(
    "make",
    [
        lambda m: detectors.Likelihood(m),
        lambda m: detectors.LastScale(m),
        lambda m: detectors.InputComplexity(m),
        lambda m: detectors.Typicality(m),
        lambda m: detectors.ApproximateMass(m),
    ],
)
def test_detectors_take_every_kind(glow, make):
    g = torch.Generator().manual_seed(1)
    x_fit = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8, generator=g)
    x = torch.randint(0, 256, (7, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.zeros(7, dtype=torch.int64)
    det = make(glow).fit(x_fit)
    ref = det.score(x)
    assert torch.equal(det.decision_function(x), ref) and torch.equal(det(x), ref)
    for kind, value in _kinds(x, y).items():
        assert torch.equal(det.score(value), ref), kind
        assert torch.equal(det.predict(value), ref > det.threshold), kind
    # fit and calibrate take them too, with the same result as the tensor
    kinds = _kinds(x_fit, torch.zeros(12, dtype=torch.int64))
    for kind in ("list of PIL", "DataLoader"):
        other = make(glow).fit(kinds[kind])
        assert other.threshold == det.threshold, kind
        assert make(glow).fit(x_fit).calibrate(kinds[kind]).threshold == det.threshold, kind


def test_feature_detectors_take_images_and_vectors():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (14, 3, 16, 16), dtype=torch.uint8, generator=g)
    from detectors.features import image_features

    feats = image_features(x, input_size=32)
    assert feats.shape == (14, 1280) and torch.allclose(feats.norm(dim=1), torch.ones(14), atol=1e-5)
    on_images = detectors.KNN(k=3, feature_size=32).fit(x[:10])
    on_vectors = detectors.KNN(k=3).fit(feats[:10])
    assert on_images.threshold == on_vectors.threshold
    assert torch.allclose(on_images.score(x[10:]), on_vectors.score(feats[10:]), atol=1e-6)
    pil = [Image.fromarray(a) for a in x[10:].permute(0, 2, 3, 1).numpy()]
    assert torch.allclose(on_images.score(pil), on_vectors.score(feats[10:]), atol=1e-6)
    assert torch.equal(on_images(pil), on_images.score(pil))


def test_labels_of_a_dataset_reach_the_supervised_detector():
    from detectors.baselines import ResNetClassifier

    torch.manual_seed(0)
    model = ResNetClassifier(in_channels=1, num_classes=3, image_size=8, width=4)
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(30) % 3
    ref = detectors.Mahalanobis(model).fit(x, y=y)
    via_dataset = detectors.Mahalanobis(model).fit(
        PILDataset(x, y)
    )  # labels taken from the (image, label) items
    assert via_dataset.threshold == ref.threshold
    assert torch.equal(via_dataset.means_, ref.means_)
    with pytest.raises(ValueError, match="labels are required"):
        detectors.Mahalanobis(model).fit([Image.fromarray(a[0]) for a in x.numpy()])  # PIL list: no labels


def test_float_pil_images_are_scaled_by_their_range_and_non_finite_floats_refused():
    from PIL import Image

    from detectors.inputs import as_images_with_labels, pil_to_tensor

    v = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    t = pil_to_tensor(Image.fromarray(v, mode="F"))
    assert t.dtype == torch.uint8 and t.shape == (1, 3, 4)
    assert torch.equal(t[0], torch.from_numpy(np.rint(v * 255).astype(np.uint8)))  # not all black
    assert not torch.equal(t, pil_to_tensor(Image.fromarray(1 - v, mode="F")))  # nor equal to its negative
    with pytest.raises(ValueError, match=r"values in \[0, 200\], expected \[0, 1\]"):
        as_images_with_labels([Image.fromarray(v * 200, mode="F")])
    bad = torch.zeros(2, 1, 4, 4)
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        as_images_with_labels(bad)
    with pytest.raises(ValueError, match="NaN or infinite"):
        as_images_with_labels([bad[1]])
