"""The broad offline photo set of the general distribution: 40 real photographs, grey patches,
train and test *photos* disjoint.

The offline stand-in for grey 80 Million Tiny Images (Schirrmeister et al. 2020,
S5.1).  Sources, all installed offline (``make data``), photographs only -- the drawings,
logos and renderings these packages also hold were looked at and left out:

=========================  ==========================================  ==========================
source                     photos                                      licence
=========================  ==========================================  ==========================
scikit-image, scikit-learn  the 15 of ``detectors.data.NATURAL_PHOTOS``      BSD / CC0 / public domain
, matplotlib
Debian mate-backgrounds    the 12 of ``nature/`` (Aqua ... YellowFlower)  GPL-2+
Debian lomiri-wallpapers-  13 of ``16.04/`` (not analogpattern, umang:  CC-BY-4.0 / CC-BY-SA-4.0 /
16.04                      abstract)                                    CC0-1.0 (per file, see
                                                                        /usr/share/doc/<pkg>/copyright)
=========================  ==========================================  ==========================

Not used: ukui-wallpapers, gnome-backgrounds (drawings), lomiri-wallpapers-20.04 (renderings),
plasma-workspace-wallpapers, sway-backgrounds (abstract).

Split: the photos of :data:`TEST_PHOTOS` (8 of 40, from every source) give ``split="test"``
patches, all others ``split="train"``; no photo contributes to both.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import torch

from .files import DatasetUnavailable
from .named import NATURAL_PHOTOS, natural_photos

BACKGROUNDS = "/usr/share/backgrounds"
#: (Debian package, path under /usr/share/backgrounds) of the wallpaper photographs
WALLPAPER_PHOTOS = tuple(
    ("mate-backgrounds", f"mate/nature/{n}.jpg")
    for n in (
        "Aqua",
        "Blinds",
        "Dune",
        "FreshFlower",
        "Garden",
        "GreenMeadow",
        "LadyBird",
        "RainDrops",
        "Storm",
        "TwoWings",
        "Wood",
        "YellowFlower",
    )
) + tuple(
    ("lomiri-wallpapers-16.04", f"{n}.jpg")
    for n in (
        "Bridge_by_Sander_Klootwijk",
        "Dragonfly_by_Bolly",
        "Picture_0B_by_freespace",
        "Picture_1A_by_freespace",
        "Wine_by_Jakkub_Mede",
        "aitzgorri_by_Aitzol_Berasategi",
        "free_by_Peter_Nerlich",
        "friends_by_Aitzol_Berasategi",
        "greentock_by_Peter_Nerlich",
        "life_by_Aitzol_Berasategi",
        "picosdeeuropa_by_Aitzol_Berasategi",
        "seeding_by_Clements_Engelhardt",
        "sunset_by_Aitzol_Berasategi",
    )
)
PACKAGES = ("mate-backgrounds", "lomiri-wallpapers-16.04")
#: photo names (file name without extension) held out for split="test"
TEST_PHOTOS = (
    "coffee",
    "grass",
    "flower",
    "LadyBird",
    "Storm",
    "Wine_by_Jakkub_Mede",
    "picosdeeuropa_by_Aitzol_Berasategi",
    "Dragonfly_by_Bolly",
)
_MAX_SIDE = 1024  # wallpapers are up to 5k wide: read them at about 1024 px (Pillow draft + box filter)


def _name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _read_wallpaper(rel: str) -> np.ndarray:
    """The wallpaper ``rel`` (under BACKGROUNDS) as uint8 RGB [H, W, 3], at most 1024 px on its
    long side (Pillow draft + box filter).  DatasetUnavailable names the package to install."""
    from PIL import Image

    path = os.path.join(BACKGROUNDS, rel)
    if not os.path.isfile(path):
        raise DatasetUnavailable(f"{path} is missing: make data (apt-get install -y {' '.join(PACKAGES)})")
    with Image.open(path) as im:
        im.draft("RGB", (_MAX_SIDE, _MAX_SIDE))
        im = im.convert("RGB")
        scale = _MAX_SIDE / max(im.size)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BOX)
        return np.array(im, dtype=np.uint8)


@functools.lru_cache(maxsize=1)
def grey_photos() -> tuple[tuple[str, np.ndarray], ...]:
    """All 40 photos as (name, read-only uint8 [H, W]) in a fixed order; wallpapers reduced to
    at most 1024 px on their long side.  DatasetUnavailable names the package to install."""
    out = [(_name(name), arr) for (_, name), arr in zip(NATURAL_PHOTOS, natural_photos(grey=True))]
    for _package, rel in WALLPAPER_PHOTOS:
        rgb = _read_wallpaper(rel).astype(np.float64)
        grey = np.rint(rgb @ np.array([0.2989, 0.5870, 0.1140])).clip(0, 255).astype(np.uint8)
        grey.setflags(write=False)
        out.append((_name(rel), grey))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def rgb_photos() -> tuple[tuple[str, np.ndarray], ...]:
    """The photos of :func:`grey_photos`, same order, in colour: (name, read-only uint8
    [H, W, 3]); the grey scikit-image photos replicated."""
    out = [(_name(name), arr) for (_, name), arr in zip(NATURAL_PHOTOS, natural_photos(grey=False))]
    for _package, rel in WALLPAPER_PHOTOS:
        rgb = _read_wallpaper(rel)
        rgb.setflags(write=False)
        out.append((_name(rel), rgb))
    return tuple(out)


def split_photos(split: str, channels: int = 1) -> list[tuple[str, np.ndarray]]:
    """The photos of ``split`` ("train": 32, "test": the 8 of TEST_PHOTOS): grey [H, W] for
    ``channels=1``, RGB [H, W, 3] for ``channels=3``."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}, expected 'train' or 'test'")
    if channels not in (1, 3):
        raise ValueError(f"channels={channels!r}, expected 1 (grey) or 3 (RGB)")
    photos = grey_photos() if channels == 1 else rgb_photos()
    return [(n, a) for n, a in photos if (n in TEST_PHOTOS) == (split == "test")]


def photo_patches(
    n: int,
    size: int = 28,
    split: str = "train",
    seed: int = 0,
    min_side: int | None = None,
    channels: int = 1,
) -> torch.Tensor:
    """``n`` patches uint8 [n, channels, size, size] of the photos of ``split``: grey for
    ``channels=1``, RGB for ``channels=3``.

    Each patch picks a photo uniformly, a square window with side log-uniform between
    ``min_side`` (default ``size``) and the photo's smaller side (fine textures up to whole-photo
    thumbnails), box-filters it to ``size`` with Pillow and flips it horizontally with
    probability 1/2.  Deterministic in (n, size, split, seed, min_side); the windows do not
    depend on ``channels`` (an RGB patch is the colour version of the grey one)."""
    from PIL import Image

    if int(n) != n or n < 1:
        raise ValueError(f"n={n}, expected a positive integer")
    if int(size) != size or size < 1:
        raise ValueError(f"size={size}, expected a positive integer")
    photos = split_photos(split, channels)
    lo = int(min_side or size)
    rng = np.random.default_rng([seed, size, 0 if split == "train" else 1])
    pil = [Image.fromarray(a) for _, a in photos]
    out = np.empty((int(n), size, size, channels), dtype=np.uint8)
    for k in range(int(n)):
        i = int(rng.integers(len(photos)))
        h, w = photos[i][1].shape[:2]
        hi = min(h, w)
        s = int(round(math.exp(rng.uniform(math.log(min(lo, hi)), math.log(hi)))))
        x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        patch = np.asarray(pil[i].resize((size, size), Image.BOX, box=(x, y, x + s, y + s)))
        patch = patch.reshape(size, size, channels)
        out[k] = patch[:, ::-1] if rng.random() < 0.5 else patch
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
