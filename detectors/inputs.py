"""Every input kind a detector takes, turned into one batch tensor (docs/design.md, "Detectors").

    images = as_batch(x)                       # torch.Tensor [B, ...]
    images, labels = as_batch_with_labels(x)   # labels int64 [B] or None

Accepted kinds (pytorch-ood / PyOD / torchvision conventions):

* a ``torch.Tensor`` [B, ...] (returned as it is);
* a numpy array: uint8 images [B, H, W], [B, H, W, C] (channels-last, C in {1, 3}) or
  [B, C, H, W]; any other dtype is taken as it is (preprocessed floats, feature vectors);
* a list / tuple of PIL images, numpy arrays or tensors (one image each), or of
  ``(image, label)`` pairs;
* a ``torch.utils.data.Dataset`` whose items are images or ``(image, label)`` pairs
  (torchvision style), read item by item with a progress bar;
* a ``torch.utils.data.DataLoader`` yielding image batches or ``(images, labels, ...)``
  batches, read batch by batch with a progress bar.

PIL images become uint8 [C, H, W]: greyscale modes (1, L, I, F, ...) one channel, every other
mode RGB (an alpha channel is dropped).  A list mixing greyscale and RGB images is returned
as RGB (grey replicated).  Images of different sizes raise ``ValueError``: resize them first,
or pass ``resize=True`` to the detector (``detectors.bundle`` does it with a stored policy).  Values are never rescaled: floats must
already be preprocessed (``invflow.data.preprocess``) and the detectors check their range.

Detector bundles take images of any sizes: :func:`as_images_with_labels` turns every kind into
uint8 images (one batch, or a list of PIL images / uint8 [C, H, W] tensors of any sizes) in one
pass, mapping preprocessed floats back to uint8 once (:func:`floats_to_uint8`), ready for the
bundle's resize policy (``detectors.data.ImagePolicy``).
"""

from __future__ import annotations

import functools
import inspect

import numpy as np
import torch
from tqdm import tqdm

from .data.files import GREY_MODES as _GREY_MODES
from .data.files import to_8bit


def _is_pil(x) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(x, Image.Image)


def pil_to_tensor(image) -> torch.Tensor:
    """A PIL image -> uint8 [C, H, W]: C = 1 for greyscale modes, else 3 (RGB, alpha dropped).
    Images of more than 8 bits per pixel are scaled by their declared range
    (``detectors.data.to_8bit``: 16-bit keeps its top 8 bits, 32-bit float in [0, 1] is
    multiplied by 255); ``ValueError`` for a float image outside [0, 1] or not finite."""
    image = to_8bit(image, "PIL image")
    if image.mode in _GREY_MODES:
        arr = np.array(image if image.mode == "L" else image.convert("L"))[None]
    else:
        arr = np.array(image if image.mode == "RGB" else image.convert("RGB")).transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _numpy_batch(a: np.ndarray) -> torch.Tensor:
    """numpy -> tensor; uint8 images [B, H, W] / [B, H, W, C] go to [B, C, H, W]."""
    if a.dtype == object:
        raise TypeError("expected a numeric numpy array, got dtype object (a list of images? pass a list)")
    if a.dtype == np.uint8:
        if a.ndim == 3:
            a = a[:, None]
        elif a.ndim == 4 and a.shape[1] not in (1, 3) and a.shape[3] in (1, 3):
            a = a.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(a))


def _one_image(item, where: str, index: int) -> torch.Tensor:
    """One image (PIL, numpy [H, W] / [H, W, C] / [C, H, W], tensor [C, H, W] / [H, W]) -> [C, H, W]."""
    if _is_pil(item):
        return pil_to_tensor(item)
    if isinstance(item, np.ndarray):
        if item.ndim == 2:
            return torch.from_numpy(np.ascontiguousarray(item))[None]
        if item.ndim == 3 and item.shape[0] not in (1, 3) and item.shape[2] in (1, 3, 4):
            return torch.from_numpy(np.ascontiguousarray(item[..., :3].transpose(2, 0, 1)))
        return torch.from_numpy(np.ascontiguousarray(item))
    if isinstance(item, torch.Tensor):
        return item[None] if item.dim() == 2 else item
    if isinstance(item, (int, float, np.number)):  # one feature vector given as a list of numbers
        raise TypeError(
            f"{where}: item {index} is a number; pass feature vectors as a tensor or numpy array [B, D]"
        )
    raise TypeError(
        f"{where}: item {index} is a {type(item).__name__}; expected a PIL image, a numpy "
        "array or a tensor (optionally in an (image, label) pair)"
    )


def _split_item(item):
    """(image, label or None) of a dataset / list item; a 1-tuple (a ``TensorDataset`` of
    images only) is its image."""
    if isinstance(item, tuple) and len(item) == 1:
        return item[0], None
    if isinstance(item, (tuple, list)) and len(item) >= 2 and not _is_pil(item):
        label = item[1]
        if isinstance(label, torch.Tensor) and label.numel() == 1:
            label = int(label)
        return item[0], (int(label) if isinstance(label, (int, np.integer)) else None)
    return item, None


def _stack(images: list[torch.Tensor], where: str) -> torch.Tensor:
    if not images:
        raise ValueError(f"{where}: no inputs (empty list / dataset)")
    first = images[0]
    for i, im in enumerate(images):
        if (
            im.dim() != first.dim()
            or (im.dim() == 3 and im.shape[1:] != first.shape[1:])
            or (im.dim() != 3 and im.shape != first.shape)
        ):
            raise ValueError(
                f"{where}: item {i} has shape {list(im.shape)} but item 0 has "
                f"{list(first.shape)}; resize the images to one size first, or pass resize=True to "
                "the detector (or score them with a detector bundle: both resize as its policy does)"
            )
        if im.dtype != first.dtype:
            raise TypeError(f"{where}: item {i} has dtype {im.dtype} but item 0 has {first.dtype}")
    if first.dim() == 3 and len({im.shape[0] for im in images}) > 1:
        if {im.shape[0] for im in images} != {1, 3}:
            raise ValueError(
                f"{where}: images with {sorted({im.shape[0] for im in images})} channels; "
                "expected 1 (grey) or 3 (RGB)"
            )
        images = [im.expand(3, -1, -1) if im.shape[0] == 1 else im for im in images]
    return torch.stack(images)


def _is_dataloader(x) -> bool:
    return isinstance(x, torch.utils.data.DataLoader)


def _is_dataset(x) -> bool:
    return isinstance(x, torch.utils.data.Dataset) or (
        hasattr(x, "__getitem__") and hasattr(x, "__len__") and not isinstance(x, (list, tuple, str, dict))
    )


def as_batch_with_labels(x, where: str = "input", progress: bool = False):
    """(batch tensor [B, ...], labels int64 [B] or None) from any accepted kind (module docstring).

    Raises ``TypeError`` for an unsupported kind and ``ValueError`` for an empty input or
    images of different sizes / channel counts, naming ``where`` and the offending item.
    """
    if isinstance(x, torch.Tensor):
        return x, None
    if isinstance(x, np.ndarray):
        return _numpy_batch(x), None
    if _is_pil(x):
        return pil_to_tensor(x)[None], None
    if isinstance(x, (str, bytes)) or hasattr(x, "__fspath__"):
        raise TypeError(
            f"{where}: got a path {x!r}; load the images first (detectors.data.load_source "
            "or ImageFolder) or score files with a bundle: python -m detectors score DET --data PATH"
        )
    if _is_dataloader(x):
        images, labels = [], []
        for batch in tqdm(
            x, desc=f"{where}: reading batches", unit="batch", disable=not progress, leave=False
        ):
            if isinstance(batch, (tuple, list)):
                imgs = batch[0]
                lab = batch[1] if len(batch) > 1 else None
            else:
                imgs, lab = batch, None
            imgs = imgs if isinstance(imgs, torch.Tensor) else as_batch(imgs, where)
            images.append(imgs)
            labels.append(
                torch.as_tensor(lab).reshape(-1).long()
                if lab is not None and torch.as_tensor(lab).numel() == len(imgs)
                else None
            )
        if not images:
            raise ValueError(f"{where}: the DataLoader yielded no batches")
        out = torch.cat(images)
        lab = torch.cat(labels) if all(v is not None for v in labels) else None
        return out, lab
    if isinstance(x, (list, tuple)) or _is_dataset(x):
        n = len(x)
        if n == 0:
            raise ValueError(f"{where}: no inputs (empty {type(x).__name__})")
        images, labels = [], []
        kind = "items" if isinstance(x, (list, tuple)) else "dataset"
        for i in tqdm(
            range(n), desc=f"{where}: reading {kind}", unit="img", disable=not progress, leave=False
        ):
            image, label = _split_item(x[i])
            images.append(_one_image(image, where, i))
            labels.append(label)
        lab = torch.tensor(labels, dtype=torch.int64) if all(v is not None for v in labels) else None
        return _stack(images, where), lab
    raise TypeError(
        f"{where}: expected a torch.Tensor, numpy array, list of PIL images, "
        f"torch.utils.data.Dataset or DataLoader, got {type(x).__name__}"
    )


def as_batch(x, where: str = "input", progress: bool = False) -> torch.Tensor:
    """The batch tensor of :func:`as_batch_with_labels` (labels dropped)."""
    return as_batch_with_labels(x, where, progress)[0]


def accepts_any_input(method):
    """Decorator for a detector method ``(self, x, ...)``: converts ``x`` with
    :func:`as_batch_with_labels` (progress bar when ``self.progress``); when the method has
    a ``y`` parameter left unset and the input carries labels (a Dataset / DataLoader of
    ``(image, label)`` items), passes them as ``y``."""
    if getattr(method, "_accepts_any_input", False):
        return method
    takes_y = "y" in inspect.signature(method).parameters

    @functools.wraps(method)
    def wrapper(self, x, *args, **kwargs):
        if not isinstance(x, torch.Tensor):
            where = f"{getattr(self, 'name', type(self).__name__)}.{method.__name__}"
            x, labels = as_batch_with_labels(x, where, progress=bool(getattr(self, "progress", False)))
            if takes_y and labels is not None and kwargs.get("y") is None:
                kwargs["y"] = labels
        return method(self, x, *args, **kwargs)

    wrapper._accepts_any_input = True
    return wrapper


def _check_finite_floats(x: torch.Tensor, where: str) -> None:
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"{where}: floating images hold NaN or infinite values; pass uint8 images, or finite "
            f"floats preprocessed with invflow.data.preprocess"
        )


def floats_to_uint8(x: torch.Tensor, where: str = "images") -> torch.Tensor:
    """Preprocessed float images [B, C, H, W] back to uint8 with ``invflow.data.to_images``
    (k = floor((x + 0.5) * 256) clamped to 0..255: a model's samples, which leave [-0.5, 0.5],
    become the 8-bit images they stand for).  ``ValueError`` naming ``where`` for NaN / Inf
    and for a batch that looks unpreprocessed (no negative value and a maximum above 0.5:
    0..255 or torchvision's 0..1; ``invflow.validation.check_preprocessed``, the rule every
    image model applies)."""
    from invflow.data import to_images
    from invflow.validation import check_preprocessed

    _check_finite_floats(x, where)
    check_preprocessed(x, where)
    return to_images(x)


def as_images_with_labels(x, where: str = "images", progress: bool = False):
    """(uint8 images, labels int64 [N] or None) of any accepted kind but a path, in one pass.

    Lists, tuples and Datasets are read item by item and may hold images of any sizes: the
    images are then a list of PIL images and uint8 [C, H, W] tensors (numpy images as
    :func:`as_batch` reads them, preprocessed float tensors mapped back to uint8).  Every
    other kind (tensors, numpy arrays, DataLoaders, one PIL image) becomes one uint8 batch
    [N, C, H, W].  Floats that look unpreprocessed (:func:`floats_to_uint8`, judged over all
    float images together) or hold NaN / Inf raise ``ValueError``, an empty input
    ``ValueError``, anything that is not images ``TypeError``.
    """
    if (isinstance(x, (list, tuple)) or _is_dataset(x)) and not (
        _is_dataloader(x) or isinstance(x, (torch.Tensor, np.ndarray))
    ):
        items, labels, floats = [], [], []
        for i in tqdm(range(len(x)), desc=f"{where}: reading", unit="img", disable=not progress, leave=False):
            im, label = _split_item(x[i])
            if _is_pil(im):
                im = to_8bit(im, f"{where}: item {i}")  # more than 8 bits: by its declared range
            if isinstance(im, np.ndarray):
                im = _numpy_batch(im[None])[0]
            if isinstance(im, torch.Tensor) and im.is_floating_point():
                floats.append(i)
            items.append(im)
            labels.append(label)
        if not items:
            raise ValueError(f"{where}: no images (empty {type(x).__name__})")
        if floats:  # the one rule over all float images together, as for one batch
            from invflow.validation import check_preprocessed

            for i in floats:
                _check_finite_floats(items[i], f"{where}: item {i}")
            shown = [items[i] for i in floats if items[i].numel()]
            if shown:
                lo, hi = min(float(t.min()) for t in shown), max(float(t.max()) for t in shown)
                check_preprocessed(torch.tensor([lo, hi], dtype=torch.float64), where)  # raw pixels
            from invflow.data import to_images

            for i in floats:
                items[i] = to_images(items[i][None])[0]
        lab = torch.tensor(labels, dtype=torch.int64) if all(v is not None for v in labels) else None
        return items, lab
    batch, labels = as_batch_with_labels(x, where, progress)
    if batch.is_floating_point():
        batch = floats_to_uint8(batch, where)
    if batch.dtype != torch.uint8 or batch.dim() != 4:
        raise TypeError(
            f"expected images (uint8 [N, C, H, W] or floats in [-0.5, 0.5]), got {batch.dtype} "
            f"{list(batch.shape)}"
        )
    return batch, labels
