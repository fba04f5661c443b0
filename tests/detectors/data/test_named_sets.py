"""detectors.data.named: Fashion-MNIST, MNIST, the natural photos and patches, load_named."""

from __future__ import annotations

import gzip
import sys

import numpy as np
import pytest
import torch

from detectors.data import named as D
from detectors.data.files import DatasetUnavailable


def _idx_bytes(arr: np.ndarray, code: int) -> bytes:
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(dtype).tobytes()


def _write(path, data: bytes, gz: bool = False):
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)
    return path


# ---------------------------------------------------------------------- Fashion-MNIST


def needs_fmnist(test):
    """The real Fashion-MNIST files: `make test` installs them (`make data`), so a missing
    package fails these tests instead of skipping them."""
    return test


@needs_fmnist
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_real(split, n):
    x, y = D.load_fashion_mnist(split, root=D.FASHION_MNIST_DIR)
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (n,) and y.dtype == torch.int64
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), n // 10))
    assert 60 < x.float().mean() < 90  # mean pixel ~ 72.9 (train) / 73.1 (test)
    assert len(D.FASHION_MNIST_CLASSES) == 10 and D.FASHION_MNIST_CLASSES[9] == "Ankle boot"


@needs_fmnist
def test_fashion_mnist_returns_fresh_tensors():
    x, y = D.load_fashion_mnist("test", root=D.FASHION_MNIST_DIR)
    first = x[0].clone()
    x.zero_()
    y.fill_(-1)
    x2, y2 = D.load_fashion_mnist("test", root=D.FASHION_MNIST_DIR)
    assert torch.equal(x2[0], first) and int(y2.min()) == 0


def test_fashion_mnist_missing(tmp_path, monkeypatch):
    with pytest.raises(DatasetUnavailable, match="apt-get install -y dataset-fashion-mnist") as info:
        D.load_fashion_mnist("train", root=tmp_path)
    assert "apt-get update && apt-get install -y dataset-fashion-mnist" in str(info.value)
    assert "make data" in str(info.value)
    monkeypatch.setenv("INVFLOW_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetUnavailable, match="nowhere"):
        D.load_fashion_mnist("test")
    with pytest.raises(ValueError, match="'train' or 'test'"):
        D.load_fashion_mnist("val", root=tmp_path)


def test_fashion_mnist_plain_files_and_env(tmp_path, monkeypatch):
    imgs = np.random.default_rng(1).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    _write(tmp_path / "t10k-images-idx3-ubyte", _idx_bytes(imgs, 0x08))  # un-gzipped names
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_bytes(np.array([0, 9, 4], np.uint8), 0x08))
    monkeypatch.setenv("INVFLOW_FASHION_MNIST_DIR", str(tmp_path))
    x, y = D.load_fashion_mnist("test")
    assert torch.equal(x[:, 0], torch.from_numpy(imgs)) and y.tolist() == [0, 9, 4]


# ------------------------------------------------------------------- natural photos


def test_natural_photos():
    grey, rgb = D.natural_photos(grey=True), D.natural_photos(grey=False)
    assert len(grey) == len(rgb) == len(D.NATURAL_PHOTOS) >= 12
    assert all(p.dtype == np.uint8 and p.ndim == 2 and min(p.shape) >= 256 for p in grey)
    assert all(p.ndim == 3 and p.shape[2] == 3 and p.shape[:2] == g.shape for p, g in zip(rgb, grey))
    assert not grey[0].flags.writeable  # the cache cannot be corrupted
    import skimage.data

    i = D.NATURAL_PHOTOS.index(("skimage", "camera.png"))
    np.testing.assert_array_equal(grey[i], skimage.data.camera())
    j = D.NATURAL_PHOTOS.index(("skimage", "chelsea.png"))
    c = skimage.data.chelsea().astype(np.float64)
    expected = np.rint(0.2989 * c[..., 0] + 0.5870 * c[..., 1] + 0.1140 * c[..., 2])
    np.testing.assert_array_equal(grey[j], expected.astype(np.uint8))
    np.testing.assert_array_equal(rgb[j], skimage.data.chelsea())


def test_natural_photos_need_no_network(monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("natural_photos used the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setitem(sys.modules, "pooch", None)  # scikit-image's downloader: unavailable
    monkeypatch.setenv("SKIMAGE_DATADIR", "/nonexistent-skimage-cache")
    D._natural_photos.cache_clear()
    try:
        assert len(D.natural_photos(grey=True)) == len(D.natural_photos(grey=False)) == len(D.NATURAL_PHOTOS)
    finally:
        D._natural_photos.cache_clear()


def test_natural_patches_shape_determinism():
    a = D.natural_patches(300, seed=0)
    assert a.shape == (300, 1, 28, 28) and a.dtype == torch.uint8
    assert torch.equal(a, D.natural_patches(300, seed=0))
    assert torch.equal(a[:50], D.natural_patches(50, seed=0))  # prefix-stable
    b = D.natural_patches(300, seed=1)
    assert (a != b).flatten(1).any(1).float().mean() > 0.95
    t = D.natural_patches(300, seed=0, split="test")
    assert (a != t).flatten(1).any(1).float().mean() > 0.95
    for x in (a, t):
        assert x.float().std() > 25  # varied brightness across patches
        assert (x.float().flatten(1).std(1) > 2).float().mean() > 0.6  # most patches are not flat
        assert x.float().flatten(1).std(1).max() > 40


def test_natural_patch_windows_respect_the_split_regions():
    widths = [p.shape[1] for p in D.natural_photos(grey=True)]
    heights = [p.shape[0] for p in D.natural_photos(grey=True)]
    for split in ("train", "test"):
        photo, x, y, side, flip = D._patch_windows(4000, 28, seed=0, split=split)
        w, h = np.array(widths)[photo], np.array(heights)[photo]
        cut = np.rint(0.75 * w).astype(np.int64)
        if split == "train":
            assert (x >= 0).all() and (x + side <= cut).all()
        else:
            assert (x >= cut).all() and (x + side <= w).all()
        assert (y >= 0).all() and (y + side <= h).all() and (side >= 28).all()
        assert len(np.unique(photo)) == len(D.NATURAL_PHOTOS)  # every region holds 28 px windows
        assert 0.4 < flip.mean() < 0.6
        # log-uniform sides: many fine-scale windows and some near the region's smaller side
        assert (side < 56).mean() > 0.2 and side.max() > (300 if split == "train" else 100)
    # the patches are these windows, box-filtered and flipped
    from PIL import Image

    photo, x, y, side, flip = D._patch_windows(5, 28, seed=7, split="test")
    patches = D.natural_patches(5, seed=7, split="test")
    for k in range(5):
        im = Image.fromarray(D.natural_photos(grey=True)[photo[k]])
        ref = np.asarray(im.resize((28, 28), Image.BOX, box=(x[k], y[k], x[k] + side[k], y[k] + side[k])))
        np.testing.assert_array_equal(patches[k, 0].numpy(), ref[:, ::-1] if flip[k] else ref)


def test_natural_patches_channels_and_edges():
    rgb = D.natural_patches(200, size=16, channels=3, seed=3)
    assert rgb.shape == (200, 3, 16, 16) and rgb.dtype == torch.uint8
    grey = D.natural_patches(200, size=16, channels=1, seed=3)  # same windows, grey photos
    r, g, b = rgb.double().unbind(1)
    diff = (0.2989 * r + 0.5870 * g + 0.1140 * b - grey[:, 0].double()).abs()
    assert diff.mean() < 1.5
    colour = (rgb[:, 0] != rgb[:, 1]).flatten(1).any(1)
    assert 0.2 < colour.float().mean() < 0.95  # colour photos and replicated grey ones
    assert D.natural_patches(0).shape == (0, 1, 28, 28)
    assert D.natural_patches(0, size=8, channels=3).shape == (0, 3, 8, 8)
    with pytest.raises(ValueError, match="channels"):
        D.natural_patches(4, channels=2)
    with pytest.raises(ValueError, match="split"):
        D.natural_patches(4, split="val")
    with pytest.raises(ValueError, match="n="):
        D.natural_patches(-1)
    with pytest.raises(ValueError, match="no photo region"):
        D.natural_patches(4, size=400, split="test")
    up = D.natural_patches(20, size=32, min_scale=0.25, seed=5)  # upsampled small windows allowed
    assert up.shape == (20, 1, 32, 32)


def test_load_mnist_5k_unchanged():
    x, y = D.load_mnist_5k()
    assert x.shape == (5000, 1, 28, 28) and x.dtype == torch.uint8 and y.shape == (5000,)
    assert set(y.unique().tolist()) == set(range(10))


def test_load_named_reads_the_split_asked_for(monkeypatch):
    from detectors.data import named as datasets

    seen = []
    monkeypatch.setattr(
        datasets,
        "load_fashion_mnist",
        lambda split: seen.append(("fm", split)) or (torch.zeros(3, 1, 28, 28, dtype=torch.uint8), None),
    )
    monkeypatch.setattr(
        datasets,
        "natural_patches",
        lambda n, size, seed, split: (
            seen.append(("patches", split)) or torch.zeros(n, 1, size, size, dtype=torch.uint8)
        ),
    )
    datasets.load_named("fashion-mnist", split="train")
    datasets.load_named("patches", n=2, split="train")
    datasets.load_named("fashion-mnist-test", split="train")  # an explicit split wins
    datasets.load_named("fashion-mnist")  # evaluation keeps the test split
    assert seen == [("fm", "train"), ("patches", "train"), ("fm", "test"), ("fm", "test")]
    with pytest.raises(ValueError, match="split"):
        datasets.load_named("fashion-mnist", split="val")
