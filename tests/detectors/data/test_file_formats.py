"""detectors.data.files and load_image_folder: IDX, CIFAR pickles, SVHN .mat, .npz and class folders."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

import detectors.data as D
from detectors.data import DatasetUnavailable


def _idx_bytes(arr: np.ndarray, code: int) -> bytes:
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(dtype).tobytes()


def _write(path, data: bytes, gz: bool = False):
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)
    return path


# ------------------------------------------------------------------------------ IDX


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_uint8(tmp_path, gz):
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = D.read_idx(_write(tmp_path / "a.idx", _idx_bytes(arr, 0x08), gz=gz))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, arr)


def test_read_idx_float32_and_int16_big_endian(tmp_path):
    f = np.array([[1.5, -2.25, 3e-3], [0.0, 7.0, -1e6]], dtype=np.float32)
    out = D.read_idx(_write(tmp_path / "f.idx.gz", _idx_bytes(f, 0x0D), gz=True))
    assert out.dtype == np.float32 and out.dtype.byteorder in "=|" and out.shape == (2, 3)
    np.testing.assert_array_equal(out, f)
    i = np.array([-300, 2, 32000], dtype=np.int16)
    out = D.read_idx(_write(tmp_path / "i.idx", _idx_bytes(i, 0x0B)))
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, i)


def test_read_idx_malformed(tmp_path):
    good = _idx_bytes(np.zeros((4, 3, 3), np.uint8), 0x08)
    with pytest.raises(ValueError, match="truncated"):
        D.read_idx(_write(tmp_path / "t.idx", good[:-5]))
    with pytest.raises(ValueError, match="truncated"):
        D.read_idx(_write(tmp_path / "t.idx.gz", good[:-5], gz=True))
    with pytest.raises(ValueError, match="truncated"):
        D.read_idx(_write(tmp_path / "h.idx", good[:9]))  # header cut inside the dims
    with pytest.raises(ValueError, match="trailing"):
        D.read_idx(_write(tmp_path / "x.idx", good + b"\0"))
    with pytest.raises(ValueError, match="magic"):
        D.read_idx(_write(tmp_path / "m.idx", b"\x01" + good[1:]))
    with pytest.raises(ValueError, match="magic"):
        D.read_idx(_write(tmp_path / "c.idx", good[:2] + b"\x0a" + good[3:]))  # 0x0A is no type
    gz = gzip.compress(good)
    with pytest.raises(ValueError, match="gzip"):
        D.read_idx(_write(tmp_path / "g.idx.gz", gz[: len(gz) // 2]))


def test_load_idx_images(tmp_path):
    imgs = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
    ip = _write(tmp_path / "i", _idx_bytes(imgs, 0x08))
    lp = _write(tmp_path / "l", _idx_bytes(np.array([7, 3], np.uint8), 0x08))
    x, y = D.load_idx_images(ip, lp)
    assert x.dtype == torch.uint8 and x.shape == (2, 1, 4, 5)
    assert torch.equal(x[:, 0], torch.from_numpy(imgs))
    assert y.dtype == torch.int64 and y.tolist() == [7, 3]
    assert D.load_idx_images(ip)[1] is None
    bad = _write(tmp_path / "b", _idx_bytes(np.array([1, 2, 3], np.uint8), 0x08))
    with pytest.raises(ValueError, match="3 labels for 2 images"):
        D.load_idx_images(ip, bad)
    with pytest.raises(ValueError, match="expected uint8"):
        D.load_idx_images(_write(tmp_path / "f", _idx_bytes(imgs.astype(np.float32), 0x0D)))


# ------------------------------------------------------------------------ CIFAR


def _cifar10_dir(tmp_path, protocol=4):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        data[0, :1024], data[0, 1024:] = 255, 0  # image 0: pure red
        with open(root / name, "wb") as f:
            pickle.dump(
                {
                    b"batch_label": b"x",
                    b"data": data,
                    b"labels": [i, 9 - i],
                    b"filenames": [b"a.png", b"b.png"],
                },
                f,
                protocol=protocol,
            )
    return tmp_path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_load_cifar10(tmp_path, protocol):
    parent = _cifar10_dir(tmp_path, protocol)
    x, y = D.load_cifar(parent, 10, "train")  # parent of cifar-10-batches-py
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert y.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5]
    assert bool((x[0, 0] == 255).all()) and bool((x[0, 1:] == 0).all())
    xt, yt = D.load_cifar(parent / "cifar-10-batches-py", 10, "test")
    assert xt.shape == (2, 3, 32, 32) and yt.tolist() == [5, 4]


def test_load_cifar100_labels(tmp_path):
    data = np.zeros((3, 3072), np.uint8)
    with open(tmp_path / "test", "wb") as f:
        pickle.dump({"data": data, "fine_labels": [99, 0, 42], "coarse_labels": [19, 4, 5]}, f)  # str keys
    assert D.load_cifar(tmp_path, 100, "test")[1].tolist() == [99, 0, 42]
    assert D.load_cifar(tmp_path, 100, "test", label="coarse")[1].tolist() == [19, 4, 5]
    with pytest.raises(ValueError, match="label"):
        D.load_cifar(tmp_path, 100, "test", label="medium")
    with pytest.raises(ValueError, match="which"):
        D.load_cifar(tmp_path, 20, "test")
    with pytest.raises(DatasetUnavailable, match="cifar-100-python.tar.gz"):
        D.load_cifar(tmp_path, 100, "train")


def test_load_cifar_malformed(tmp_path):
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"expected uint8 \[N, 3072\]"):
        D.load_cifar(tmp_path, 10, "test")
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, f)
    with pytest.raises(ValueError, match="labels"):
        D.load_cifar(tmp_path, 10, "test")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_load_cifar_refuses_code_in_pickles(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Evil(marker)]}, f)
    with pytest.raises(ValueError, match=r"not a CIFAR batch file .*refusing to unpickle global \w+\.system"):
        D.load_cifar(tmp_path, 10, "test")
    assert not marker.exists()
    with open(tmp_path / "test_batch", "wb") as f:  # a builtin with side effects
        f.write(b"cbuiltins\nexec\n(Vopen(%r, 'w')\ntR." % str(marker))
    with pytest.raises(ValueError, match="builtins.exec"):
        D.load_cifar(tmp_path, 10, "test")
    assert not marker.exists()


# ------------------------------------------------------------------------- SVHN


def test_load_svhn(tmp_path):
    import scipy.io

    x = np.random.default_rng(0).integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": x, "y": np.array([[10], [1], [2], [10]], np.uint8)})
    imgs, labels = D.load_svhn(tmp_path / "train_32x32.mat")
    assert imgs.shape == (4, 3, 32, 32) and imgs.dtype == torch.uint8
    assert labels.tolist() == [0, 1, 2, 0] and labels.dtype == torch.int64
    assert torch.equal(imgs[2, 1], torch.from_numpy(x[:, :, 1, 2]))  # [H, W, C, N] -> [N, C, H, W]
    scipy.io.savemat(tmp_path / "bad.mat", {"X": x.astype(np.float64), "y": np.ones((4, 1))})
    with pytest.raises(ValueError, match="expected uint8"):
        D.load_svhn(tmp_path / "bad.mat")
    scipy.io.savemat(tmp_path / "lab.mat", {"X": x, "y": np.array([[0], [1], [2], [3]])})
    with pytest.raises(ValueError, match="1..10"):
        D.load_svhn(tmp_path / "lab.mat")
    with pytest.raises(DatasetUnavailable, match="ufldl.stanford.edu"):
        D.load_svhn(tmp_path / "missing.mat")


# ------------------------------------------------------------------ image folders


def _save(path, arr):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_load_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    g = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    c = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    _save(tmp_path / "zebra" / "b.png", g)
    _save(tmp_path / "zebra" / "a.bmp", c)
    _save(tmp_path / "ant" / "x.PNG", g)
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    x, y, classes = D.load_image_folder(tmp_path)
    assert classes == ["ant", "zebra"] and y.tolist() == [0, 1, 1]
    assert x.shape == (3, 3, 6, 5) and x.dtype == torch.uint8  # mixed grey/RGB -> RGB
    assert torch.equal(x[0], torch.from_numpy(g)[None].expand(3, -1, -1))
    assert torch.equal(x[1], torch.from_numpy(c).permute(2, 0, 1))  # a.bmp sorts before b.png
    xg, _, _ = D.load_image_folder(tmp_path, channels=1)
    cf = c.astype(np.float64)
    grey = np.rint(0.2989 * cf[..., 0] + 0.5870 * cf[..., 1] + 0.1140 * cf[..., 2]).astype(np.uint8)
    assert xg.shape == (3, 1, 6, 5) and torch.equal(xg[1, 0], torch.from_numpy(grey))
    xs, _, _ = D.load_image_folder(tmp_path, size=4)
    assert xs.shape == (3, 3, 4, 4)
    _save(tmp_path / "zebra" / "c.png", g[:4])
    with pytest.raises(ValueError, match=r"c\.png: size 4 x 5 differs"):
        D.load_image_folder(tmp_path)
    assert D.load_image_folder(tmp_path, size=(3, 2))[0].shape == (4, 3, 3, 2)


def test_load_image_folder_grey_and_errors(tmp_path):
    _save(tmp_path / "one" / "a.png", np.full((4, 4), 7, np.uint8))
    x, y, classes = D.load_image_folder(tmp_path)
    assert x.shape == (1, 1, 4, 4) and int(x.max()) == 7 and classes == ["one"]
    with pytest.raises(ValueError, match="channels"):
        D.load_image_folder(tmp_path, channels=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        D.load_image_folder(tmp_path / "empty")
    with pytest.raises(DatasetUnavailable, match="not a directory"):
        D.load_image_folder(tmp_path / "missing")


# --------------------------------------------------------------------------- npz


def test_load_npz_layouts(tmp_path):
    rng = np.random.default_rng(0)
    chw = rng.integers(0, 256, (4, 3, 5, 6), dtype=np.uint8)
    np.savez(tmp_path / "hwc.npz", x=chw.transpose(0, 2, 3, 1), y=np.arange(4))
    x, y = D.load_npz(tmp_path / "hwc.npz")
    assert torch.equal(x, torch.from_numpy(chw)) and y.tolist() == [0, 1, 2, 3] and y.dtype == torch.int64
    np.savez(tmp_path / "chw.npz", images=chw, other=np.zeros(2))
    x, y = D.load_npz(tmp_path / "chw.npz")
    assert torch.equal(x, torch.from_numpy(chw)) and y is None
    np.savez(tmp_path / "hw.npz", data=chw[:, 0], lab=np.array([3, 1, 2, 0], np.uint8))
    x, y = D.load_npz(tmp_path / "hw.npz", labels_key="lab")
    assert x.shape == (4, 1, 5, 6) and y.tolist() == [3, 1, 2, 0]
    np.savez(tmp_path / "k.npz", pix=chw)
    assert D.load_npz(tmp_path / "k.npz", images_key="pix")[0].shape == (4, 3, 5, 6)


def test_load_npz_errors(tmp_path):
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 4, 4), np.float32))
    with pytest.raises(TypeError, match=r"float32.*convert to uint8 0\.\.255"):
        D.load_npz(tmp_path / "f.npz")
    np.savez(tmp_path / "n.npz", pix=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="images_key"):
        D.load_npz(tmp_path / "n.npz")
    with pytest.raises(ValueError, match="no key 'labels'"):
        D.load_npz(tmp_path / "n.npz", images_key="pix", labels_key="labels")
    np.savez(tmp_path / "s.npz", x=np.zeros((2, 4, 4, 5), np.uint8))
    with pytest.raises(ValueError, match=r"expected \[N, H, W\]"):
        D.load_npz(tmp_path / "s.npz")
    np.savez(tmp_path / "l.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="expected 2 integers"):
        D.load_npz(tmp_path / "l.npz")
    np.savez(tmp_path / "o.npz", x=np.array([object(), 1], dtype=object))
    with pytest.raises(ValueError):  # object arrays would need pickles: refused
        D.load_npz(tmp_path / "o.npz")
    with pytest.raises(DatasetUnavailable):
        D.load_npz(tmp_path / "missing.npz")
