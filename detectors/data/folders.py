"""Images the way users have them: folders of files of any size, ``.npz`` files, named sets.

    ds = ImageFolder("photos/")            # flat or nested; items (PIL image, label)
    src = load_source("photos/")           # every readable image, its path and label
    policy = ImagePolicy.from_images(src.images)          # size and colour from the data
    x = policy.apply(src.images)           # uint8 [N, C, S, S], the same at fit and score time

``ImageFolder`` follows torchvision's: images are the files with an extension in
:data:`IMAGE_EXTENSIONS` (case-insensitive), sorted; when every image lies inside a
first-level sub-folder those sub-folders are the classes (sorted names, searched
recursively) and labels are kept; a flat folder (or one with images at its top level) has
no labels (label -1).  Unreadable files are skipped and reported by name (a
``UnreadableImagesWarning`` and ``Source.skipped``), never silently; a source without any
readable image is a ``ValueError``.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import warnings

import numpy as np
import torch

from . import named
from .files import GREY_MODES, IMAGE_EXTENSIONS, DatasetUnavailable, load_npz, rgb_to_grey
from .files import open_image as _open


class UnreadableImagesWarning(UserWarning):
    """Some image files could not be read and were skipped; the message names them."""


def _scan(root: str, extensions) -> tuple[list[tuple[str, int]], list[str] | None]:
    """(sorted (path, label) pairs, class names or None) of the image files under ``root``."""

    def images_under(folder: str) -> list[str]:
        found = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [
                os.path.join(dirpath, f)
                for f in sorted(filenames)
                if f.lower().endswith(extensions) and not f.startswith(".")
            ]
        return found

    top = sorted(
        e.name
        for e in os.scandir(root)
        if e.is_file() and e.name.lower().endswith(extensions) and not e.name.startswith(".")
    )
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if top or not classes:
        return [(p, -1) for p in images_under(root)], None
    samples, kept = [], []
    for name in classes:
        files = images_under(os.path.join(root, name))
        if files:
            samples += [(p, len(kept)) for p in files]
            kept.append(name)
    return samples, kept


class ImageFolder(torch.utils.data.Dataset):
    """A folder of image files as a ``torch.utils.data.Dataset`` of ``(image, label)`` items.

    Args:
        root: the folder (flat or nested; see the module docstring).
        transform: applied to each PIL image (mode "L" or "RGB") when given.
        extensions: file name endings counted as images.

    Attributes: ``samples`` [(path, label)], ``classes`` (class names or None), ``paths``.
    Raises ``FileNotFoundError`` for a missing folder, ``NotADirectoryError`` for a file and
    ``ValueError`` when it holds no image file.  Reading an unreadable file in ``__getitem__``
    raises ``ValueError`` naming it; :meth:`read_all` skips and reports such files instead.
    """

    def __init__(self, root, transform=None, extensions=IMAGE_EXTENSIONS):
        root = os.fspath(root)
        if not os.path.exists(root):
            raise FileNotFoundError(f"{root}: no such folder")
        if not os.path.isdir(root):
            raise NotADirectoryError(f"{root} is a file; expected a folder of image files")
        self.root, self.transform, self.extensions = root, transform, tuple(e.lower() for e in extensions)
        self.samples, self.classes = _scan(root, self.extensions)
        if not self.samples:
            raise ValueError(
                f"{root}: no image files ({', '.join(self.extensions)}) in the folder or its sub-folders"
            )

    @property
    def paths(self) -> list[str]:
        return [p for p, _ in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            image = _open(path)
        except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
            raise ValueError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
        return (self.transform(image) if self.transform else image), label

    def read_all(self, progress: bool = False):
        """(PIL images, labels [N] or None, paths, skipped [(path, reason)]) of every readable file;
        unreadable ones are skipped and reported with an ``UnreadableImagesWarning``."""
        from tqdm import tqdm

        images, labels, paths, skipped = [], [], [], []
        for path, label in tqdm(
            self.samples,
            desc=f"reading {self.root}",
            unit="img",
            disable=not progress,
            leave=False,
            mininterval=0.5,
        ):
            try:
                images.append(_open(path))
            except Exception as e:
                skipped.append((path, f"{type(e).__name__}: {e}"))
                continue
            labels.append(label)
            paths.append(path)
        if skipped:
            warnings.warn(describe_skipped(skipped), UnreadableImagesWarning, stacklevel=2)
        if not images:
            raise ValueError(
                f"{self.root}: none of its {len(self.samples)} image files could be read "
                f"(first: {skipped[0][0]}: {skipped[0][1]})"
            )
        lab = torch.tensor(labels, dtype=torch.int64) if self.classes is not None else None
        return images, lab, paths, skipped


def describe_skipped(skipped, shown: int = 5) -> str:
    """One line naming the skipped files (the first ``shown``) and why."""
    names = "; ".join(f"{p} ({why.splitlines()[0] if why else 'unreadable'})" for p, why in skipped[:shown])
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"skipped {len(skipped)} unreadable image file(s): {names}{more}"


@dataclasses.dataclass
class Source:
    """Images of one data source, as read (before any resizing).

    ``images``: a list of PIL images (folders, single files) or uint8 [N, C, H, W] (``.npz``,
    named sets); ``paths``: one name per image (the file path, or ``SPEC[i]``);
    ``labels``: int64 [N] or None; ``skipped``: [(path, reason)] of unreadable files."""

    name: str
    images: object
    paths: list
    labels: torch.Tensor | None = None
    classes: list | None = None
    skipped: list = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def load_source(
    spec, progress: bool = False, n: int | None = None, seed: int = 0, split: str = "test"
) -> Source:
    """Reads the source ``spec`` names: a folder of image files (:class:`ImageFolder`), one
    image file, a ``.npz`` (``detectors.data.load_npz``) or a named offline set
    (``detectors.data.load_named``: fashion-mnist, mnist, patches, ...).

    ``n``: a seeded random subset of that size (named sets only). Raises ``FileNotFoundError``
    for a path that does not exist, ``ValueError`` for an empty or unreadable source.
    """
    spec = os.fspath(spec)
    if os.path.isdir(spec):
        folder = ImageFolder(spec)
        images, labels, paths, skipped = folder.read_all(progress)
        return Source(spec, images, paths, labels, folder.classes, skipped)
    if os.path.isfile(spec):
        if spec.lower().endswith(".npz"):
            x, y = load_npz(spec)
            if len(x) == 0:
                raise ValueError(f"{spec}: holds no images")
            return Source(spec, x, [f"{os.path.basename(spec)}[{i}]" for i in range(len(x))], y)
        if spec.lower().endswith(IMAGE_EXTENSIONS):
            try:
                image = _open(spec)
            except Exception as e:
                raise ValueError(f"{spec}: unreadable image ({type(e).__name__}: {e})") from None
            return Source(spec, [image], [spec])
        raise ValueError(f"{spec}: not a folder, an image file ({', '.join(IMAGE_EXTENSIONS)}) or a .npz")
    looks_like_path = (
        os.sep in spec or spec.lower().endswith((".npz",) + IMAGE_EXTENSIONS) or spec.startswith(".")
    )
    if looks_like_path:
        raise FileNotFoundError(f"{spec}: no such file or folder")
    if n is not None and (int(n) != n or n < 1):
        raise ValueError(f"n must be a positive integer, got {n!r}")
    try:
        x = named.load_named(spec, n=n if spec == "patches" else None, seed=seed, split=split)
    except ValueError as e:
        raise ValueError(f"{spec}: no such file or folder, and {e}") from None
    index = torch.arange(len(x))
    if n is not None and n < len(x):  # a seeded subset, named by the indices in the whole set
        index = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        x = x[index]
    return Source(spec, x, [f"{spec}[{i}]" for i in index.tolist()])


def load_image_folder(
    root, size=None, channels: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Class sub-folders of images as one array: (uint8 [N, C, H, W], int64 [N], class names).

    The files and classes of :class:`ImageFolder` (sorted class sub-folders, searched
    recursively; files with an extension in :data:`IMAGE_EXTENSIONS`, sorted), decoded by
    :func:`~detectors.data.files.open_image`.  ``size`` (int or (H, W)) resizes every image
    (Pillow LANCZOS); without it all images must share one size. ``channels``: 1 (grey, 0.2989
    r + 0.5870 g + 0.1140 b, Schirrmeister et al. 2020 S5.1), 3 (RGB), or None: 1 when every
    image is greyscale, else 3.  Raises ``DatasetUnavailable`` when ``root`` is not a folder and
    ``ValueError`` when it holds no class sub-folder of images.  Unlike
    :meth:`ImageFolder.read_all`, an unreadable file raises ``ValueError`` naming it.
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
    files, classes = _scan(root, IMAGE_EXTENSIONS)
    if not files or classes is None:
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in class sub-folders")
    arrays, first = [], None
    for path, _ in files:
        try:
            im = _open(path)
        except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, ...
            raise ValueError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
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
            out[i, 0] = a if a.ndim == 2 else rgb_to_grey(a)
        else:
            out[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    labels = torch.tensor([c for _, c in files], dtype=torch.int64)
    return torch.from_numpy(out), labels, classes


# ---------------------------------------------------------------------------- policy
def _pil(image, i: int = 0):
    """A PIL image from a PIL image or a uint8 tensor [C, H, W]."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if (
        isinstance(image, torch.Tensor)
        and image.dtype == torch.uint8
        and image.dim() == 3
        and image.shape[0] in (1, 3)
    ):
        arr = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        return Image.fromarray(
            arr[..., 0] if arr.shape[2] == 1 else arr, mode="L" if arr.shape[2] == 1 else "RGB"
        )
    raise TypeError(
        f"image {i}: expected a PIL image or uint8 [C, H, W] with C in {{1, 3}}, got "
        f"{type(image).__name__} {getattr(image, 'dtype', '')} {list(getattr(image, 'shape', []))}"
    )


def _size_mode(image) -> tuple[tuple[int, int], bool]:
    """((H, W), is_colour) of a PIL image or uint8 tensor [C, H, W]."""
    if isinstance(image, torch.Tensor):
        return (int(image.shape[-2]), int(image.shape[-1])), image.dim() == 3 and image.shape[0] == 3
    return (image.height, image.width), image.mode not in GREY_MODES


@dataclasses.dataclass(frozen=True)
class ImagePolicy:
    """How images of any size become a batch: resize the shorter side to ``size`` (Pillow
    LANCZOS; skipped when it already is), centre-crop ``size`` x ``size``, and convert to
    ``channels`` (1: Pillow's L = 0.299 R + 0.587 G + 0.114 B; 3: grey replicated).
    Stored in detector bundles so fit and score treat images identically."""

    size: int
    channels: int
    resize: str = "shorter-side+center-crop"

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels!r}")
        if self.resize != "shorter-side+center-crop":
            raise ValueError(f"resize must be 'shorter-side+center-crop', got {self.resize!r}")

    @classmethod
    def from_images(
        cls,
        images,
        size: int | None = None,
        channels: int | None = None,
        multiple: int = 1,
        max_size: int | None = None,
    ) -> ImagePolicy:
        """The policy the data suggest: ``size`` = the smaller side of the most common image size
        (capped at ``max_size``, rounded down to a multiple of ``multiple``), ``channels`` = 3
        when any image is in colour, else 1.  Given values are kept (``size`` must then be a
        multiple of ``multiple``)."""
        if len(images) == 0:
            raise ValueError("no images to derive a size and colour mode from")
        stats = [_size_mode(im) for im in images]
        if size is None:
            (h, w), _ = collections.Counter(s for s, _ in stats).most_common(1)[0]
            size = min(h, w)
            if max_size is not None:
                size = min(size, max_size)
            size -= size % multiple
            if size < max(1, multiple):
                raise ValueError(
                    f"the most common image size is {h}x{w}, smaller than the {multiple} pixels "
                    f"the model needs; pass a larger --size"
                )
        elif size % multiple:
            raise ValueError(
                f"size {size} is not a multiple of {multiple} (needed by the model's scales); "
                f"use e.g. {max(multiple, size - size % multiple)}"
            )
        if channels is None:
            channels = 3 if any(c for _, c in stats) else 1
        return cls(int(size), int(channels))

    def apply(self, images, progress: bool = False) -> torch.Tensor:
        """PIL images or uint8 [N, C, H, W] -> uint8 [N, channels, size, size]."""
        from PIL import Image
        from tqdm import tqdm

        s = self.size
        if isinstance(images, torch.Tensor):
            if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
                raise TypeError(
                    f"expected uint8 images [N, 1 or 3, H, W], got {images.dtype} {list(images.shape)}"
                )
            if images.shape[1] == self.channels and images.shape[2:] == (s, s):
                return images
        out = torch.empty((len(images), self.channels, s, s), dtype=torch.uint8)
        mode = "L" if self.channels == 1 else "RGB"
        for i in tqdm(
            range(len(images)),
            desc="resizing",
            unit="img",
            disable=not progress,
            leave=False,
            mininterval=0.5,
        ):
            im = _pil(images[i], i)
            if im.mode != mode:
                im = im.convert(mode)
            w, h = im.size
            if (h, w) != (s, s):
                scale = s / min(h, w)
                nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
                if (nw, nh) != (w, h):
                    im = im.resize((nw, nh), Image.LANCZOS)
                left, top = (nw - s) // 2, (nh - s) // 2
                im = im.crop((left, top, left + s, top + s))
            arr = np.array(im)
            out[i] = torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        return out

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ImagePolicy:
        return cls(int(d["size"]), int(d["channels"]), str(d.get("resize", "shorter-side+center-crop")))
