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
import collections.abc
import dataclasses
import os
import stat
import warnings

import numpy as np
import torch

from invflow.io import check_regular, file_kind
from invflow.validation import check_number

from . import named
from .files import (
    GREY_MODES,
    IMAGE_EXTENSIONS,
    DatasetUnavailable,
    image_header,
    load_npz,
    printable,
    rgb_to_grey,
    to_8bit,
)
from .files import open_image as _open


class UnreadableImagesWarning(UserWarning):
    """Some image files could not be read and were skipped; the message names them."""


def _walk(folder: str, extensions, seen_dirs: set, seen_files: set, skipped: list) -> list[str]:
    """The image files under ``folder`` in ``os.walk`` order (a folder's files, sorted, then
    each sub-folder's, sorted by name; hidden names skipped), following links but entering
    each real folder once (``seen_dirs``: (st_dev, st_ino) of the folders entered) and taking
    each real file once (``seen_files``), so a link to a folder above cannot loop.  Names
    that are not regular files (a named pipe, a broken link) go to ``skipped`` with the reason."""
    found, stack = [], [folder]
    while stack:
        here = stack.pop()
        try:
            st = os.stat(here)
            if (st.st_dev, st.st_ino) in seen_dirs:
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError:  # unreadable folders are passed over, as os.walk does
            continue
        dirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                dirs.append(e.path)
                continue
            if not e.name.lower().endswith(extensions):
                continue
            try:
                fst = os.stat(e.path)
            except OSError as err:
                skipped.append((e.path, f"a broken link ({err.strerror})"))
                continue
            if not stat.S_ISREG(fst.st_mode):
                skipped.append((e.path, f"{file_kind(fst.st_mode)}, not a regular file"))
            elif (fst.st_dev, fst.st_ino) not in seen_files:
                seen_files.add((fst.st_dev, fst.st_ino))
                found.append(e.path)
        stack.extend(reversed(dirs))
    return found


def _scan(root: str, extensions) -> tuple[list[tuple[str, int]], list[str] | None, list]:
    """(sorted (path, label) pairs, class names or None, skipped [(path, reason)]) of the image
    files under ``root`` (:func:`_walk`: each real folder and file once, regular files only)."""
    entries = [e for e in os.scandir(root) if not e.name.startswith(".")]

    def is_dir(e) -> bool:
        try:
            return e.is_dir()
        except OSError:
            return False

    top = [e for e in entries if not is_dir(e) and e.name.lower().endswith(extensions)]
    classes = sorted(e.name for e in entries if is_dir(e))
    seen_dirs, seen_files, skipped = set(), set(), []
    if top or not classes:
        return [(p, -1) for p in _walk(root, extensions, seen_dirs, seen_files, skipped)], None, skipped
    st = os.stat(root)
    seen_dirs.add((st.st_dev, st.st_ino))  # a class folder linking back to the root is not entered
    samples, kept = [], []
    for name in classes:
        files = _walk(os.path.join(root, name), extensions, seen_dirs, seen_files, skipped)
        if files:
            samples += [(p, len(kept)) for p in files]
            kept.append(name)
    return samples, kept, skipped


class ImageFolder(torch.utils.data.Dataset):
    """A folder of image files as a ``torch.utils.data.Dataset`` of ``(image, label)`` items.

    Args:
        root: the folder (flat or nested; see the module docstring).
        transform: applied to each PIL image (mode "L" or "RGB") when given.
        extensions: file name endings counted as images.

    Links are followed, but each real folder is entered once and each real file counted once
    (a link to a folder above, ``a -> .``, adds nothing).  Only regular files are images:
    named pipes, sockets and broken links with an image extension are listed in ``skipped``
    with the reason.  Attributes: ``samples`` [(path, label)], ``classes`` (class names or
    None), ``paths``, ``skipped`` [(path, reason)].  Raises ``FileNotFoundError`` for a
    missing folder, ``NotADirectoryError`` for a file and ``ValueError`` when it holds no
    image file.  Reading an unreadable file in ``__getitem__`` raises ``ValueError`` naming
    it; :meth:`read_all` and :meth:`files` skip and report such files instead.
    """

    def __init__(self, root, transform=None, extensions=IMAGE_EXTENSIONS):
        root = os.fspath(root)
        if not os.path.exists(root):
            raise FileNotFoundError(f"{root}: no such folder")
        if not os.path.isdir(root):
            raise NotADirectoryError(f"{root} is a file; expected a folder of image files")
        self.root, self.transform, self.extensions = root, transform, tuple(e.lower() for e in extensions)
        self.samples, self.classes, self.skipped = _scan(root, self.extensions)
        if not self.samples:
            found = f" ({describe_skipped(self.skipped)})" if self.skipped else ""
            raise ValueError(
                f"{printable(root)}: no image files ({', '.join(self.extensions)}) in the folder or its "
                f"sub-folders{found}"
            )

    @property
    def paths(self) -> list[str]:
        return [p for p, _ in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        image = ImageFiles([path])[0]
        return (self.transform(image) if self.transform else image), label

    def read_all(self, progress: bool = False):
        """(PIL images, labels [N] or None, paths, skipped [(path, reason)]) of every readable file,
        all decoded and held in memory (:meth:`files` reads them one at a time instead);
        unreadable ones are skipped and reported with an ``UnreadableImagesWarning``."""
        from tqdm import tqdm

        images, labels, paths, skipped = [], [], [], list(self.skipped)
        for path, label in tqdm(
            self.samples,
            desc=f"reading {printable(self.root)}",
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
            raise ValueError(none_readable(self.root, len(self.samples) + len(self.skipped), skipped))
        lab = torch.tensor(labels, dtype=torch.int64) if self.classes is not None else None
        return images, lab, paths, skipped

    def files(self) -> ImageFiles:
        """The image files, not yet decoded: an :class:`ImageFiles` (labels -1 in a flat folder)."""
        return ImageFiles(self.paths, [label for _, label in self.samples])


def none_readable(root: str, n: int, skipped: list) -> str:
    """The message for a source of ``n`` image files none of which could be read."""
    return (
        f"{printable(root)}: none of its {n} image files could be read "
        f"(first: {printable(skipped[0][0])}: {skipped[0][1]})"
    )


def describe_skipped(skipped, shown: int = 5) -> str:
    """One line naming the skipped files (the first ``shown``) and why."""
    names = "; ".join(
        f"{printable(p)} ({why.splitlines()[0] if why else 'unreadable'})" for p, why in skipped[:shown]
    )
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"skipped {len(skipped)} unreadable image file(s): {names}{more}"


class ImageFiles(collections.abc.Sequence):
    """Image files read one at a time: ``files[i]`` decodes ``paths[i]`` with
    :func:`~detectors.data.files.open_image` (``ValueError`` naming an unreadable file), so a
    whole folder is never held decoded.  ``files[a:b]`` and :meth:`select` give the files of a
    part; :meth:`headers` reads sizes and colour modes without decoding; ``labels`` is one int
    per file (-1: none)."""

    def __init__(self, paths, labels=None, headers=None):
        self.paths = list(paths)
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)
        self._headers = list(headers) if headers is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.select(range(len(self))[i])
        path = self.paths[i]
        try:
            return _open(path)
        except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
            raise ValueError(f"{printable(path)}: unreadable image ({type(e).__name__}: {e})") from None

    def __repr__(self) -> str:
        return f"ImageFiles({len(self)} files)"

    def select(self, index) -> ImageFiles:
        """The files at the positions ``index`` (ints), in that order."""
        index = [int(i) for i in index]
        headers = [self._headers[i] for i in index] if self._headers is not None else None
        return ImageFiles([self.paths[i] for i in index], [self.labels[i] for i in index], headers)

    def headers(self, progress: bool = False) -> tuple[ImageFiles, list, list]:
        """(the files whose header reads, their [((H, W), is_colour)], skipped [(path, reason)]),
        from each file's header without decoding it (:func:`~detectors.data.files.image_header`)."""
        from tqdm import tqdm

        if self._headers is not None:
            return self, self._headers, []
        kept, stats, skipped = [], [], []
        for i in tqdm(
            range(len(self)),
            desc="reading headers",
            unit="img",
            disable=not progress,
            leave=False,
            mininterval=0.5,
        ):
            try:
                stats.append(image_header(self.paths[i]))
                kept.append(i)
            except Exception as e:
                skipped.append((self.paths[i], f"{type(e).__name__}: {e}"))
        files = self.select(kept)
        files._headers = stats
        return files, stats, skipped


@dataclasses.dataclass
class Source:
    """Images of one data source, as read (before any resizing).

    ``images``: a list of PIL images (folders, single files), an :class:`ImageFiles` (read
    one at a time: ``load_source(..., lazy=True)``) or uint8 [N, C, H, W] (``.npz``, named
    sets); ``paths``: one name per image (the file path, or ``SPEC[i]``); ``labels``: int64
    [N] or None; ``skipped``: [(path, reason)] of unreadable files."""

    name: str
    images: object
    paths: list
    labels: torch.Tensor | None = None
    classes: list | None = None
    skipped: list = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def load_source(
    spec, progress: bool = False, n: int | None = None, seed: int = 0, split: str = "test", lazy: bool = False
) -> Source:
    """Reads the source ``spec`` names: a folder of image files (:class:`ImageFolder`), one
    image file, a ``.npz`` (``detectors.data.load_npz``) or a named offline set
    (``detectors.data.load_named``: fashion-mnist, mnist, patches, ...).

    ``n``: a seeded random subset of that size (named sets only).  ``lazy``: a folder's (or an
    image file's) images are an :class:`ImageFiles`, decoded one at a time when used, so that
    memory does not grow with the folder (only files whose pixels do not decode are then found
    when they are used).  Raises ``FileNotFoundError`` for a path that does not exist,
    ``ValueError`` for an empty or unreadable source or a path that is not a regular file.
    """
    spec = os.fspath(spec)
    if os.path.isdir(spec):
        folder = ImageFolder(spec)
        if not lazy:
            images, labels, paths, skipped = folder.read_all(progress)
            return Source(spec, images, paths, labels, folder.classes, skipped)
        return _lazy_source(spec, folder.files(), folder.classes, folder.skipped)
    if os.path.exists(spec) and not os.path.isfile(spec):
        check_regular(spec, "a folder, an image file or a .npz")
    if os.path.isfile(spec):
        if spec.lower().endswith(".npz"):
            x, y = load_npz(spec)
            if len(x) == 0:
                raise ValueError(f"{spec}: holds no images")
            return Source(spec, x, [f"{os.path.basename(spec)}[{i}]" for i in range(len(x))], y)
        if spec.lower().endswith(IMAGE_EXTENSIONS):
            image = ImageFiles([spec])
            return _lazy_source(spec, image, None, []) if lazy else Source(spec, [image[0]], [spec])
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


def _lazy_source(spec: str, files: ImageFiles, classes, skipped: list) -> Source:
    labels = torch.tensor(files.labels, dtype=torch.int64) if classes is not None else None
    return Source(spec, files, list(files.paths), labels, classes, list(skipped))


def read_resized(files: ImageFiles, policy: ImagePolicy, progress: bool = False, desc: str = "reading"):
    """Decodes each file, applies ``policy`` and drops the decoded image, so memory holds only
    the result: (uint8 [K, C, S, S], kept positions [K], skipped [(path, reason)], the decoded
    images' [((H, W), is_colour)] [K]).  Files that do not decode are skipped, not raised."""
    from tqdm import tqdm

    out = torch.empty((len(files), policy.channels, policy.size, policy.size), dtype=torch.uint8)
    kept, skipped, stats = [], [], []
    for i in tqdm(
        range(len(files)), desc=desc, unit="img", disable=not progress, leave=False, mininterval=0.5
    ):
        try:
            image = _open(files.paths[i])
        except Exception as e:
            skipped.append((files.paths[i], f"{type(e).__name__}: {e}"))
            continue
        stats.append(_size_mode(image))
        out[len(kept)] = policy.one(image)
        kept.append(i)
    return out[: len(kept)], kept, skipped, stats


def load_image_folder(
    root, size=None, channels: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Class sub-folders of images as one array: (uint8 [N, C, H, W], int64 [N], class names).

    The files and classes of :class:`ImageFolder` (sorted class sub-folders, searched
    recursively; files with an extension in :data:`IMAGE_EXTENSIONS`, sorted), decoded by
    :func:`~detectors.data.files.open_image`.  ``size`` (int or (H, W), each side from 1 to
    :data:`MAX_IMAGE_SIZE`; ValueError naming the limit past it) resizes every image (Pillow
    LANCZOS); without it all images must share one size. ``channels``: 1 (grey, 0.2989
    r + 0.5870 g + 0.1140 b, Schirrmeister et al. 2020 S5.1), 3 (RGB), or None: 1 when every
    image is greyscale, else 3.  Raises ``DatasetUnavailable`` when ``root`` is not a folder and
    ``ValueError`` when it holds no class sub-folder of images.  Unlike
    :meth:`ImageFolder.read_all`, an unreadable file raises ``ValueError`` naming it.
    """
    from PIL import Image

    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DatasetUnavailable(f"{root} is not a directory; expected class sub-folders of images")
    if channels not in (None, 1, 3) or isinstance(channels, bool):
        raise ValueError(f"load_image_folder: channels={channels!r}, expected 1, 3 or None")
    if size is not None:
        sides = [size, size] if np.ndim(size) == 0 else list(size)
        if len(sides) != 2:
            raise ValueError(f"load_image_folder: size={size!r}, expected an int or (H, W)")
        size = tuple(check_number(s, "size", "load_image_folder", low=1, integer=True) for s in sides)
        if max(size) > MAX_IMAGE_SIZE:
            raise ValueError(
                f"load_image_folder: size {max(size)} is above the limit of {MAX_IMAGE_SIZE} pixels "
                f"(MAX_IMAGE_SIZE); use a smaller size"
            )
    files, classes, skipped = _scan(root, IMAGE_EXTENSIONS)
    if skipped:
        raise ValueError(f"{printable(skipped[0][0])}: {skipped[0][1]}; expected an image file")
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


#: the largest image side a policy accepts: a 1024 x 1024 x 3 image is 3 MB as uint8 and
#: 12 MB as float32, already far beyond what the flows here train on
MAX_IMAGE_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class ImagePolicy:
    """How images of any size become a batch: resize the shorter side to ``size`` (Pillow
    LANCZOS; skipped when it already is), centre-crop ``size`` x ``size``, and convert to
    ``channels`` (1: Pillow's L = 0.299 R + 0.587 G + 0.114 B; 3: grey replicated).
    Stored in detector bundles so fit and score treat images identically.  ``size`` is at
    most :data:`MAX_IMAGE_SIZE` (``ValueError`` naming the limit)."""

    size: int
    channels: int
    resize: str = "shorter-side+center-crop"

    def __post_init__(self):
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        if self.size > MAX_IMAGE_SIZE:
            raise ValueError(
                f"size {self.size} is above the limit of {MAX_IMAGE_SIZE} pixels (MAX_IMAGE_SIZE); "
                f"use a smaller size, e.g. 32 to 256"
            )
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
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
        multiple of ``multiple``).  ``images``: PIL images, uint8 [C, H, W] tensors or a batch,
        or an :class:`ImageFiles` (sizes and modes from the file headers, nothing decoded)."""
        if len(images) == 0:
            raise ValueError("no images to derive a size and colour mode from")
        if isinstance(images, ImageFiles):
            stats = images.headers()[1]
        else:
            stats = [_size_mode(im) for im in images]
        return cls.from_stats(stats, size, channels, multiple, max_size)

    @classmethod
    def from_stats(
        cls,
        stats,
        size: int | None = None,
        channels: int | None = None,
        multiple: int = 1,
        max_size: int | None = None,
    ) -> ImagePolicy:
        """:meth:`from_images` from each image's ((H, W), is_colour)."""
        if len(stats) == 0:
            raise ValueError("no images to derive a size and colour mode from")
        if size is None:
            (h, w), _ = collections.Counter(s for s, _ in stats).most_common(1)[0]
            size = min(h, w, MAX_IMAGE_SIZE)
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

    def one(self, image, i: int = 0) -> torch.Tensor:
        """One PIL image or uint8 [C, H, W] -> uint8 [channels, size, size] (PIL images of more
        than 8 bits per pixel scaled by their range: ``detectors.data.to_8bit``)."""
        from PIL import Image

        s, mode = self.size, "L" if self.channels == 1 else "RGB"
        im = to_8bit(_pil(image, i), f"image {i}")  # more than 8 bits: by its declared range
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
        return torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))

    def apply(self, images, progress: bool = False) -> torch.Tensor:
        """PIL images, uint8 [N, C, H, W] or an :class:`ImageFiles` (each file decoded, resized
        and dropped in turn; ``ValueError`` naming an unreadable one) -> uint8 [N, channels,
        size, size]."""
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
        for i in tqdm(
            range(len(images)),
            desc="resizing",
            unit="img",
            disable=not progress,
            leave=False,
            mininterval=0.5,
        ):
            out[i] = self.one(images[i], i)
        return out

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ImagePolicy:
        """The policy of a ``bundle.json``'s "preprocessing" entry; ``ValueError`` when it is not
        {"size": int, "channels": 1 or 3[, "resize": ...]} within the limits."""
        if not isinstance(d, dict) or "size" not in d or "channels" not in d:
            raise ValueError(
                f"preprocessing: expected {{'size': int, 'channels': 1 or 3}}, got {str(d)[:80]}; re-run the fit"
            )
        return cls(d["size"], d["channels"], d.get("resize", "shorter-side+center-crop"))
