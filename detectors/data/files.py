"""Reading files: one image file (any format Pillow reads) and the array files users already
have (IDX, CIFAR-10/100 pickles, SVHN ``.mat``, ``.npz``).

Conventions: images are ``torch.uint8 [N, C, H, W]``, labels ``torch.int64 [N]``. Missing
files or packages raise :class:`DatasetUnavailable` (with the install command), malformed
files or arguments raise ``ValueError`` naming what was expected.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np
import torch

from invflow.io import check_regular, open_regular

#: file name endings (lower case) read as images, by folders and single-file sources
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: Pillow modes read as greyscale (one channel); every other mode is read as RGB
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


class DatasetUnavailable(RuntimeError):
    """A dataset's files are not installed; the message says how to install them."""


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> uint8 [...]: 0.2989 r + 0.5870 g + 0.1140 b, rounded (Schirrmeister et al. 2020 S5.1)."""
    rgb = rgb.astype(np.float32)
    grey = 0.2989 * rgb[..., 0] + 0.5870 * rgb[..., 1] + 0.1140 * rgb[..., 2]
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def printable(path) -> str:
    """``path`` as text that prints anywhere: a name the file system gave as bytes that are not
    UTF-8 (decoded by Python with surrogate escapes) shows its odd bytes as ``\\xe9``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def to_8bit(im, name: str = "image"):
    """A PIL image of more than 8 bits per pixel -> mode "L", scaled by its declared range.

    16-bit integers (modes I;16*, and mode I with values above 255) keep their top 8 bits
    (value >> 8: 0..65535 -> 0..255); mode I with values in 0..255 is taken as it is; 32-bit
    floats (mode F) must lie in [0, 1] and become round(255 v).  ``ValueError`` naming ``name``
    for a float image with values outside [0, 1] or not finite, and for a mode I image with
    values outside 0..65535 (neither has a range to scale by; clipping them would read an
    image and its negative alike).  Images in other modes are returned unchanged."""
    from PIL import Image

    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ValueError(
                f"{name}: 32-bit float image with NaN or infinite values; save it with values in [0, 1]"
            )
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < 0 or hi > 1:
            raise ValueError(
                f"{name}: 32-bit float image with values in [{lo:.4g}, {hi:.4g}], expected [0, 1]; "
                "scale it to [0, 1] or save it as 8-bit"
            )
        return Image.fromarray(np.rint(arr * 255).astype(np.uint8), mode="L")
    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im).astype(np.int64)
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ValueError(
                f"{name}: 32-bit integer image with values in [{lo}, {hi}], expected 0..255 or "
                "0..65535; save it as 8-bit or 16-bit"
            )
        return Image.fromarray((arr if im.mode == "I" and hi <= 255 else arr >> 8).astype(np.uint8), mode="L")
    return im


def open_image(path):
    """The image at ``path``, fully decoded and turned upright (EXIF orientation), as a PIL
    image in mode "L" (greyscale files) or "RGB" (everything else; alpha dropped).  Images of
    more than 8 bits per pixel are scaled by their declared range (:func:`to_8bit`: 16-bit
    keeps its top 8 bits, 32-bit float in [0, 1] is multiplied by 255).  Only regular files
    are opened (``invflow.io.check_regular``: ``ValueError`` for a named pipe).  Raises what
    Pillow raises for an unreadable file (``OSError``, ``ValueError``, ...)."""
    from PIL import Image, ImageOps

    check_regular(path, "an image file")
    with Image.open(path) as im:
        im.seek(0)
        im.load()
        im = to_8bit(ImageOps.exif_transpose(im), os.fspath(path))
        return im.convert("L") if im.mode in GREY_MODES else im.convert("RGB")


def image_header(path) -> tuple[tuple[int, int], bool]:
    """((H, W), is_colour) of the image :func:`open_image` returns, from the file's header
    without decoding the pixels (EXIF orientations 5-8 swap H and W).  Only regular files;
    raises what Pillow raises for an unreadable header.  An orientation Pillow finds only by
    decoding (a PNG eXIf chunk after the pixel data) is not seen here: callers that need the
    exact size check it on the decoded image."""
    from PIL import Image

    check_regular(path, "an image file")
    with Image.open(path) as im:
        (w, h), mode = im.size, im.mode
        orientation = Image.Image.getexif(im).get(0x0112, 1)  # the base class's: never decodes
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return (h, w), mode not in GREY_MODES


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
    with open_regular(path, "an IDX file") as f:
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


#: what a damaged or forged pickle makes the unpickler raise (besides refusing a global)
_UNPICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
    MemoryError,
    RecursionError,
    UnicodeDecodeError,
    struct.error,
)


def _safe_unpickle(path: str):
    """The object in the CIFAR batch pickle ``path`` (a regular file), built by
    :class:`_NumpyOnlyUnpickler`; ``ValueError`` in one line for anything that is not such a
    pickle (a payload, a truncated file, text), naming the parser's reason."""
    with open_regular(path, "a CIFAR batch file") as f:
        try:
            return _NumpyOnlyUnpickler(f, encoding="bytes").load()
        except _UNPICKLE_ERRORS as e:
            reason = " ".join(str(e).split()) or "no detail"
            raise ValueError(
                f"{path}: not a CIFAR batch file as the dataset ships it ({type(e).__name__}: {reason}); "
                "extract cifar-10-python.tar.gz / cifar-100-python.tar.gz again"
            ) from None


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
    for p in paths:
        if os.path.lexists(p):
            check_regular(p, "a CIFAR batch file")
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
    if os.path.lexists(path):
        check_regular(path, "an SVHN .mat file")
    else:
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


#: deflate's largest expansion: a member cannot hold more bytes than this many per stored byte
_DEFLATE_MAX_RATIO = 1032


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX
        return None


class _NpzRefused(ValueError):
    """A ``.npz`` refused by :func:`_check_npy_header` (its message is the whole reason)."""


def _check_npy_header(zf: zipfile.ZipFile, key: str, path: str) -> None:
    """Reads the ``.npy`` header of the array ``key`` of an open ``.npz`` and refuses
    (ValueError, one line) an array that numpy would allocate from the header alone: one
    declaring more bytes than the archive holds for it (its uncompressed size, itself at most
    :data:`_DEFLATE_MAX_RATIO` times its compressed size), or more than the machine's
    memory; a header that is not a version 1 / 2 ``.npy`` header, an object dtype and a
    compression numpy does not write are refused too."""
    names = zf.namelist()
    member = key + ".npy" if key + ".npy" in names else key
    info = zf.getinfo(member)
    what = f"{path}: array {key!r}"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _NpzRefused(
            f"{what} uses zip compression method {info.compress_type}, which numpy.savez never writes"
        )
    stored_limit = info.compress_size * (
        _DEFLATE_MAX_RATIO if info.compress_type == zipfile.ZIP_DEFLATED else 1
    )
    if info.file_size > stored_limit + 64:
        raise _NpzRefused(
            f"{what}: the archive claims {info.file_size:,} bytes from {info.compress_size:,} stored; "
            "a forged .npz"
        )
    with zf.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise _NpzRefused(f"format version {version[0]}.{version[1]}, expected 1.0 or 2.0")
        except (ValueError, EOFError, SyntaxError, TypeError) as e:
            raise _NpzRefused(f"{what}: not a .npy array header ({' '.join(str(e).split())})") from None
        header = f.tell()
    if dtype.hasobject:
        raise _NpzRefused(f"{what} holds Python objects; save numeric arrays (uint8 images)")
    declared = math.prod(shape) * dtype.itemsize
    held = info.file_size - header
    if declared > held:
        raise _NpzRefused(
            f"{what} declares shape {tuple(shape)} of {dtype} ({declared:,} bytes), but the archive holds "
            f"{max(held, 0):,} bytes for it; a truncated or forged .npz"
        )
    memory = _physical_memory()
    if memory is not None and declared > memory:
        raise _NpzRefused(
            f"{what} is {declared:,} bytes, more than this machine's {memory:,} bytes of memory; "
            "split it into smaller files"
        )


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
    if not os.path.lexists(path):
        raise DatasetUnavailable(f"{path} not found")
    with open_regular(path, "a .npz file") as f:
        magic = f.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise ValueError(
            f"{path}: not a .npz file (a .npz is a zip archive of arrays, written by numpy.savez); "
            "save the images with numpy.savez(path, images=uint8_array)"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.keys())
            if images_key is None:
                images_key = next((k for k in _NPZ_IMAGE_KEYS if k in keys), None)
                if images_key is None:
                    raise KeyError(
                        f"none of the keys {_NPZ_IMAGE_KEYS} present (keys: {keys}); pass images_key"
                    )
            elif images_key not in keys:
                raise KeyError(f"no key {images_key!r} (keys: {keys})")
            if labels_key is None:
                labels_key = next((k for k in _NPZ_LABEL_KEYS if k in keys), None)
            elif labels_key not in keys:
                raise KeyError(f"no key {labels_key!r} (keys: {keys})")
            for key in (images_key, labels_key):
                if key is not None:
                    _check_npy_header(npz.zip, key, path)  # before numpy allocates the array
            x = npz[images_key]
            y = npz[labels_key] if labels_key is not None else None
    except KeyError as e:
        raise ValueError(f"{path}: {e.args[0]}") from None
    except _NpzRefused:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # numpy's own text may advise unpickling
        raise ValueError(
            f"{path}: not a readable .npz of numeric arrays ({type(e).__name__}: a corrupt archive or "
            "an array of Python objects); save the images with numpy.savez(path, images=uint8_array)"
        ) from None
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
