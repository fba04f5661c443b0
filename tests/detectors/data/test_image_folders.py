"""detectors.data.folders: ImageFolder (flat and nested), load_source (folders, single
files, named sets), unreadable files reported by name, ImagePolicy, 16-bit TIFF and EXIF."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import detectors.inputs
from detectors.data import (
    IMAGE_EXTENSIONS,
    ImageFolder,
    ImagePolicy,
    UnreadableImagesWarning,
    load_mnist_5k,
    load_source,
)

skimage_data = pytest.importorskip("skimage.data")


def _patches(root, photos, sizes, seed, exts=(".png", ".jpg")):
    """Writes one random square crop per entry of ``sizes`` (cycling photos and extensions)."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    paths = []
    for i, s in enumerate(sizes):
        p = photos[i % len(photos)]
        y, x = rng.integers(0, p.shape[0] - s), rng.integers(0, p.shape[1] - s)
        path = os.path.join(root, f"img{i:03d}{exts[i % len(exts)]}")
        Image.fromarray(p[y : y + s, x : x + s]).save(path)
        paths.append(path)
    return paths


def test_image_folder_flat_and_nested(tmp_path):
    photo = skimage_data.astronaut()
    _patches(tmp_path / "flat", [photo], [16, 20, 24], 0)
    flat = ImageFolder(tmp_path / "flat")
    assert len(flat) == 3 and flat.classes is None
    image, label = flat[1]
    assert image.size == (20, 20) and image.mode == "RGB" and label == -1
    _patches(tmp_path / "nested" / "cats" / "deeper", [photo], [16, 16], 1)
    _patches(tmp_path / "nested" / "dogs", [skimage_data.camera()], [12], 2)
    nested = ImageFolder(tmp_path / "nested")
    assert nested.classes == ["cats", "dogs"]
    assert [lab for _, lab in nested.samples] == [0, 0, 1]
    assert nested[2][0].mode == "L"  # a greyscale file stays one channel
    with pytest.raises(ValueError, match="item 2 has shape"):  # sizes differ: a clear error, no silent resize
        detectors.inputs.as_batch_with_labels(nested)


def test_image_folder_nested_labels_via_policy(tmp_path):
    photo = skimage_data.astronaut()
    _patches(tmp_path / "a", [photo], [16, 16], 1)
    _patches(tmp_path / "b", [photo], [16], 2)
    src = load_source(str(tmp_path))
    assert src.classes == ["a", "b"] and src.labels.tolist() == [0, 0, 1]
    x = ImagePolicy.from_images(src.images).apply(src.images)
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.uint8
    ds = ImageFolder(tmp_path, transform=lambda im: torch.from_numpy(np.array(im)).permute(2, 0, 1))
    xb, yb = detectors.inputs.as_batch_with_labels(ds)
    assert torch.equal(xb, x) and yb.tolist() == [0, 0, 1]


def test_unreadable_files_are_named_and_skipped(tmp_path):
    _patches(tmp_path / "train", [skimage_data.astronaut()], [24] * 5, 0)
    (tmp_path / "train" / "broken.png").write_bytes(b"not a png at all")
    with pytest.warns(UnreadableImagesWarning, match="broken.png"):
        src = load_source(str(tmp_path / "train"))
    assert len(src) == 5 and [os.path.basename(p) for p, _ in src.skipped] == ["broken.png"]
    assert all("broken" not in p for p in src.paths)


def test_policy_from_mixed_sizes():
    imgs = [Image.new("L", (24, 24))] * 3 + [Image.new("RGB", (30, 20))] + [Image.new("L", (40, 40))]
    p = ImagePolicy.from_images(imgs, multiple=8)
    assert (p.size, p.channels) == (24, 3)  # most common 24x24; one colour image -> RGB
    assert ImagePolicy.from_images(imgs[:3], multiple=8).channels == 1
    x = p.apply(imgs)
    assert x.shape == (5, 3, 24, 24)
    # a 30x20 image: shorter side 20 -> 24 (36x24), centre crop 24x24
    ref = Image.new("RGB", (30, 20)).resize((36, 24), Image.LANCZOS).crop((6, 0, 30, 24))
    assert torch.equal(x[3], torch.from_numpy(np.array(ref)).permute(2, 0, 1))
    same = torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8)
    assert p.apply(same) is same  # already the policy's size and mode: untouched
    with pytest.raises(ValueError, match="multiple of 8"):
        ImagePolicy.from_images(imgs, size=30, multiple=8)


def test_named_source_subset_names_rows_of_the_whole_set():
    src = load_source("mnist", n=6, seed=3)
    whole = load_mnist_5k()[0]
    assert len(src) == 6 and src.images.shape == (6, 1, 28, 28)
    for i, p in enumerate(src.paths):
        assert torch.equal(whole[int(p[len("mnist[") : -1])], src.images[i]), p
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_source("missing/folder")
    with pytest.raises(ValueError, match="no such file or folder, and unknown dataset"):
        load_source("not-a-set")


def test_sixteen_bit_tiff_and_exif_orientation(tmp_path):
    a = (np.arange(24 * 20).reshape(24, 20) * 100).astype(np.uint16)  # values up to 47900
    Image.fromarray(a).save(tmp_path / "deep.tif")
    im = Image.new("RGB", (8, 4), (10, 20, 30))
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    im.save(tmp_path / "phone.jpg", exif=exif)
    src = load_source(str(tmp_path))
    assert src.paths == [str(tmp_path / "deep.tif"), str(tmp_path / "phone.jpg")]
    deep, phone = src.images
    assert deep.mode == "L" and np.array_equal(
        np.array(deep), (a >> 8).astype(np.uint8)
    )  # top 8 bits, not clipped
    assert phone.size == (4, 8)  # upright: width and height swapped


def test_one_image_extension_list_reads_tiff_everywhere(tmp_path):
    """One IMAGE_EXTENSIONS (TIFF included) for folders, class folders and single files."""
    import detectors.data.files as files
    from detectors.data import load_image_folder

    assert IMAGE_EXTENSIONS is files.IMAGE_EXTENSIONS and {".tif", ".tiff", ".webp"} <= set(IMAGE_EXTENSIONS)
    a = np.arange(16, dtype=np.uint8).reshape(4, 4)
    (tmp_path / "c").mkdir()
    Image.fromarray(a).save(tmp_path / "c" / "a.tiff")
    x, y, classes = load_image_folder(tmp_path)
    assert classes == ["c"] and torch.equal(x[0, 0], torch.from_numpy(a))
    assert len(load_source(str(tmp_path / "c" / "a.tiff"))) == 1


def test_data_package_has_no_import_cycle():
    """files <- named <- folders: each module imports only the ones before it."""
    import ast
    import pathlib

    import detectors.data

    root = pathlib.Path(detectors.data.__file__).parent
    order = ["files", "named", "folders", "photos"]
    for i, name in enumerate(order):
        tree = ast.parse((root / f"{name}.py").read_text())
        used = {
            (n.module or "").split(".")[0] or a.name
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.level >= 1
            for a in n.names
        }
        later = set(order[i:]) if name != "photos" else {"folders", "photos"}
        assert not used & later, (name, used)
        assert not any(isinstance(n, ast.ImportFrom) and n.level >= 2 for n in ast.walk(tree)), name
