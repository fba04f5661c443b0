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
    with pytest.raises(ValueError, match=r"array 'images': not a \.npy array header") as e:
        load_npz(tmp_path / "y.npz")
    assert "pickle" not in str(e.value).lower()


def _npy_bomb(path, shape, held=16):
    """A .npz whose images.npy header declares uint8 ``shape`` but holds ``held`` bytes."""
    import zipfile

    header = "{'descr': '|u1', 'fortran_order': False, 'shape': " + repr(tuple(shape)) + ", }"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    blob = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * held
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images.npy", blob)
    return path


def test_a_npz_header_declaring_more_than_it_holds_is_refused_before_allocating(tmp_path):
    with deadline(10), pytest.raises(ValueError) as e:
        load_npz(_npy_bomb(tmp_path / "bomb.npz", (1000, 1000, 1000, 1000)))
    msg = str(e.value)
    assert "declares shape (1000, 1000, 1000, 1000) of uint8 (1,000,000,000,000 bytes)" in msg
    assert "holds 16 bytes for it" in msg and "\n" not in msg and "pickle" not in msg
    with pytest.raises(
        ValueError, match=r"declares shape \(2, 4, 4\) of uint8 \(32 bytes\), but the archive holds 31"
    ):
        load_npz(_npy_bomb(tmp_path / "short.npz", (2, 4, 4), held=31))
    x, _ = load_npz(_npy_bomb(tmp_path / "exact.npz", (2, 4, 4), held=32))  # the same, complete
    assert x.shape == (2, 1, 4, 4) and int(x.sum()) == 0
    with pytest.raises(ValueError, match=r"declares shape"):  # through every source reader
        load_source(str(tmp_path / "bomb.npz"))


def test_a_npz_of_python_objects_is_refused_by_its_header(tmp_path):
    np.savez(tmp_path / "o.npz", images=np.array([object(), 1], dtype=object))
    with pytest.raises(ValueError, match=r"array 'images' holds Python objects; save numeric arrays") as e:
        load_npz(tmp_path / "o.npz")
    assert "pickle" not in str(e.value).lower()


def test_a_compressed_npz_is_read_and_a_forged_size_refused(tmp_path):
    import zipfile

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 5, 5), dtype=np.uint8)
    np.savez_compressed(tmp_path / "c.npz", images=np.zeros((400, 28, 28), np.uint8), labels=np.arange(400))
    assert load_npz(tmp_path / "c.npz")[0].shape == (400, 1, 28, 28)  # zeros: a high but real ratio
    np.savez(tmp_path / "s.npz", images=x)
    raw = bytearray((tmp_path / "s.npz").read_bytes())
    info = zipfile.ZipFile(tmp_path / "s.npz").getinfo("images.npy")
    # the central directory's uncompressed size (offset 24 of its entry) claims 10^9 bytes
    entry = raw.rfind(b"PK\x01\x02")
    raw[entry + 24 : entry + 28] = (10**9).to_bytes(4, "little")
    (tmp_path / "forged.npz").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"claims 1,000,000,000 bytes from {info.compress_size:,} stored"):
        load_npz(tmp_path / "forged.npz")


@pytest.mark.parametrize(
    "content, reason",
    [
        ("payload", r"refusing to unpickle global \w+\.system"),
        ("truncated", r"pickle data was truncated|EOFError"),
        ("text", r"UnpicklingError"),
    ],
)
def test_cifar_files_that_are_not_batches_are_one_line_value_errors(tmp_path, content, reason):
    import pickle

    marker = tmp_path / "pwned"
    if content == "payload":

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        blob = pickle.dumps({"data": Evil(), "labels": [0]}, protocol=2)
    elif content == "truncated":
        blob = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]})[:40]
    else:
        blob = b"these are not arrays, just some text\n" * 4
    (tmp_path / "test_batch").write_bytes(blob)
    with pytest.raises(
        ValueError, match=rf"test_batch: not a CIFAR batch file as the dataset ships it .*{reason}"
    ) as e:
        load_cifar(tmp_path, 10, "test")
    msg = str(e.value)
    assert type(e.value) is ValueError and "\n" not in msg
    assert "allow_pickle" not in msg and "pickle.load" not in msg and not marker.exists()


def test_load_image_folder_bounds_the_size_and_names_the_limit(tmp_path):
    _three_pngs(tmp_path / "a")
    with pytest.raises(
        ValueError, match=rf"size 1000000 is above the limit of {MAX_IMAGE_SIZE} pixels \(MAX_IMAGE_SIZE\)"
    ):
        load_image_folder(tmp_path, size=10**6)
    with pytest.raises(ValueError, match=r"above the limit"):
        load_image_folder(tmp_path, size=(4, MAX_IMAGE_SIZE + 1))
    with pytest.raises(TypeError, match=r"load_image_folder: size must be an integer >= 1, got 2.5"):
        load_image_folder(tmp_path, size=2.5)
    with pytest.raises(ValueError, match=r"load_image_folder: size must be an integer >= 1, got 0"):
        load_image_folder(tmp_path, size=0)
    assert load_image_folder(tmp_path, size=(MAX_IMAGE_SIZE, 2))[0].shape == (3, 1, MAX_IMAGE_SIZE, 2)


def test_data_readers_use_invflow_io_for_regular_files():
    import invflow.io
    from detectors.data import files, folders

    assert not hasattr(files, "check_regular_file") and not hasattr(files, "file_kind")
    assert files.check_regular is invflow.io.check_regular and folders.file_kind is invflow.io.file_kind


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
