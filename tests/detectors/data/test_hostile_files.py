"""Hostile inputs to detectors.data: link loops in folders, named pipes where files belong,
a text file named .npz, images of more than 8 bits per pixel, image sides beyond the limit."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import numpy as np
import pytest
import torch
from PIL import Image

from detectors.data import (
    MAX_IMAGE_SIZE,
    ImageFolder,
    ImagePolicy,
    load_cifar,
    load_image_folder,
    load_npz,
    load_source,
    load_svhn,
    open_image,
    read_idx,
)


@contextlib.contextmanager
def deadline(seconds: int):
    """Fails the test (instead of hanging it) when the block runs longer than ``seconds``."""

    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s (hangs)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _three_pngs(folder):
    os.makedirs(folder, exist_ok=True)
    for i in range(3):
        Image.fromarray(np.full((4, 4), 60 * i, np.uint8)).save(os.path.join(folder, f"{i}.png"))


@pytest.mark.parametrize("links", [1, 2])
def test_link_loops_give_each_image_once_and_finish(tmp_path, links):
    _three_pngs(tmp_path)
    os.symlink(".", tmp_path / "a")
    if links == 2:
        os.symlink(".", tmp_path / "b")
    start = time.monotonic()
    with deadline(10):
        folder = ImageFolder(tmp_path)
        src = load_source(str(tmp_path), lazy=True)
    assert len(folder) == 3 and sorted(os.path.basename(p) for p in folder.paths) == [
        "0.png",
        "1.png",
        "2.png",
    ]
    assert len(src) == 3 and time.monotonic() - start < 5


def test_link_to_an_ancestor_inside_class_folders_and_a_second_link_to_one_file(tmp_path):
    _three_pngs(tmp_path / "cats")
    _three_pngs(tmp_path / "dogs")
    os.symlink("..", tmp_path / "cats" / "up")  # back to the root: not walked again
    os.symlink("0.png", tmp_path / "dogs" / "again.png")  # the same file under a second name
    with deadline(10):
        folder = ImageFolder(tmp_path)
    assert folder.classes == ["cats", "dogs"] and len(folder) == 6
    assert [label for _, label in folder.samples] == [0, 0, 0, 1, 1, 1]


def test_a_named_pipe_in_a_folder_is_skipped_with_its_reason(tmp_path):
    _three_pngs(tmp_path)
    os.mkfifo(tmp_path / "x.png")
    with deadline(10):
        folder = ImageFolder(tmp_path)
        with pytest.warns(UserWarning, match=r"x\.png \(a named pipe \(FIFO\), not a regular file\)"):
            images, _, paths, skipped = folder.read_all()
        lazy = load_source(str(tmp_path), lazy=True)
    assert len(images) == 3 and [os.path.basename(p) for p, _ in skipped] == ["x.png"]
    assert len(lazy) == 3 and [os.path.basename(p) for p, _ in lazy.skipped] == ["x.png"]
    os.makedirs(tmp_path / "c")
    os.mkfifo(tmp_path / "c" / "y.png")
    with deadline(10), pytest.raises(ValueError, match="named pipe"):
        load_image_folder(tmp_path)  # class folders: an unreadable file is an error there


@pytest.mark.parametrize(
    "read",
    [
        lambda p: open_image(p / "pipe.png"),
        lambda p: load_source(str(p / "pipe.png")),
        lambda p: load_source(str(p / "pipe.npz")),
        lambda p: load_npz(p / "pipe.npz"),
        lambda p: read_idx(p / "pipe"),
        lambda p: load_svhn(p / "pipe"),
        lambda p: load_cifar(p, 10, "test"),
    ],
    ids=["open_image", "source-image", "source-npz", "npz", "idx", "svhn", "cifar"],
)
def test_named_pipes_where_files_belong_are_refused_in_one_line(tmp_path, read):
    for name in ("pipe.png", "pipe.npz", "pipe", "test_batch"):
        os.mkfifo(tmp_path / name)
    with deadline(10), pytest.raises(ValueError, match=r"a named pipe \(FIFO\), not a regular file") as e:
        read(tmp_path)
    assert "\n" not in str(e.value)


def test_text_file_named_npz_gives_no_advice_to_unpickle(tmp_path):
    (tmp_path / "x.npz").write_text("these are not arrays\n")
    with pytest.raises(ValueError, match=r"not a \.npz file") as e:
        load_npz(tmp_path / "x.npz")
    assert "pickle" not in str(e.value).lower() and "\n" not in str(e.value)
    # a zip that is not an archive of arrays: one line, no numpy advice either
    import zipfile

    with zipfile.ZipFile(tmp_path / "y.npz", "w") as z:
        z.writestr("images.npy", b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="not a readable .npz") as e:
        load_npz(tmp_path / "y.npz")
    assert "pickle" not in str(e.value).lower()


def test_float_tiff_in_unit_range_is_scaled_and_its_negative_differs(tmp_path):
    v = np.linspace(0, 1, 8 * 6, dtype=np.float32).reshape(8, 6)
    Image.fromarray(v, mode="F").save(tmp_path / "pos.tif")
    Image.fromarray(1 - v, mode="F").save(tmp_path / "neg.tif")
    assert Image.open(tmp_path / "pos.tif").mode == "F"
    pos, neg = np.array(open_image(tmp_path / "pos.tif")), np.array(open_image(tmp_path / "neg.tif"))
    assert np.array_equal(pos, np.rint(v * 255).astype(np.uint8))  # not all black
    assert pos.max() == 255 and np.array_equal(neg, np.rint((1 - v) * 255).astype(np.uint8))
    assert not np.array_equal(pos, neg)
    resized = ImagePolicy(6, 1).apply([Image.fromarray(v[:6], mode="F")])  # PIL F given directly
    assert torch.equal(resized[0, 0], torch.from_numpy(np.rint(v[:6] * 255).astype(np.uint8)))


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (np.array([[0.0, 255.0]], np.float32), r"values in \[0, 255\], expected \[0, 1\]"),
        (np.array([[-1.0, 0.5]], np.float32), r"values in \[-1, 0.5\], expected \[0, 1\]"),
        (np.array([[np.nan, 0.5]], np.float32), "NaN or infinite"),
    ],
)
def test_float_images_without_a_declared_range_are_refused(tmp_path, values, match):
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match=match) as e:
        open_image(tmp_path / "f.tif")
    assert "\n" not in str(e.value)
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "ok.png")
    with pytest.warns(UserWarning, match="f.tif"):  # a folder skips it and says why
        src = load_source(str(tmp_path))
    assert [os.path.basename(p) for p in src.paths] == ["ok.png"] and len(src.skipped) == 1


def test_sixteen_bit_tiff_keeps_its_top_eight_bits(tmp_path):
    a = np.array([[0, 255, 256, 65535]], np.uint16)
    Image.fromarray(a).save(tmp_path / "d.tif")
    assert Image.open(tmp_path / "d.tif").mode.startswith("I;16")
    assert np.array(open_image(tmp_path / "d.tif")).tolist() == [[0, 0, 1, 255]]


def test_image_side_is_bounded_in_the_policy_and_its_json():
    assert ImagePolicy(MAX_IMAGE_SIZE, 3).size == MAX_IMAGE_SIZE
    with pytest.raises(ValueError, match=f"above the limit of {MAX_IMAGE_SIZE} pixels"):
        ImagePolicy(100000, 3)
    with pytest.raises(ValueError, match=f"above the limit of {MAX_IMAGE_SIZE}"):
        ImagePolicy.from_json({"size": 100000, "channels": 1})
    with pytest.raises(ValueError, match="expected {'size': int"):
        ImagePolicy.from_json({"channels": 1})
    big = [torch.zeros(1, 2000, 3000, dtype=torch.uint8)]
    assert ImagePolicy.from_images(big).size == MAX_IMAGE_SIZE  # chosen from the data: capped
