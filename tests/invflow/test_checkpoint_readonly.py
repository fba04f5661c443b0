"""Loading never trains or writes: ``invflow.load`` returns eval mode and takes a
run directory (its latest checkpoint) or a checkpoint directory; ``invflow.data.to_images``
and ``save_grid``."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import invflow
from invflow.checkpoint import load, load_run, resolve
from invflow.train import Trainer


def _tree(path):
    return sorted(
        (os.path.relpath(os.path.join(d, f), path), os.stat(os.path.join(d, f)).st_mtime_ns)
        for d, _, files in os.walk(path)
        for f in files
    )


@pytest.fixture
def run_dir(tmp_path):
    torch.manual_seed(0)
    model = invflow.Glow(1, 4, levels=1, steps=1, hidden=4)
    data = torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8)
    trainer = Trainer(
        model,
        data,
        out_dir=str(tmp_path / "run"),
        steps=3,
        batch_size=4,
        checkpoint_every=1,
        keep_checkpoints=2,
        progress=False,
    )
    trainer.fit()
    return tmp_path / "run", model


def test_run_directory_loads_latest_read_only(run_dir):
    path, trained = run_dir
    before = _tree(path)
    assert resolve(path) == os.path.join(str(path), "step-0000003", "model.safetensors")
    for loaded in (load(path), load_run(path), invflow.load(str(path / "step-0000003"))):
        assert not loaded.training and all(not m.training for m in loaded.modules())
        for key, value in trained.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
    older = load(path / "step-0000002")  # an older checkpoint directory: different weights
    assert any(not torch.equal(older.state_dict()[k], v) for k, v in trained.state_dict().items())
    assert _tree(path) == before, "loading must not write (no log, no checkpoint)"


def test_run_directory_errors(run_dir, tmp_path):
    path, _ = run_dir
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without a 'latest' file"):
        load(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load(tmp_path / "absent")
    (path / "latest").write_text("step-0000009")
    with pytest.raises(FileNotFoundError, match="step-0000009"):
        load(path)
    os.remove(path / "latest")
    with pytest.raises(FileNotFoundError, match="found step-0000003"):
        load(path)


def test_to_images_inverts_preprocess():
    k = torch.randint(0, 256, (5, 3, 6, 7), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        assert torch.equal(
            invflow.data.to_images(invflow.data.preprocess(k, dequantize=False, dtype=dtype)), k
        )
        assert torch.equal(invflow.data.to_images(invflow.data.preprocess(k, generator=g, dtype=dtype)), k)
    assert invflow.data.to_images(torch.tensor([[[[-0.9, 0.7]]]])).tolist() == [[[[0, 255]]]]  # clamped
    assert torch.equal(invflow.data.to_images(k), k)
    with pytest.raises(TypeError, match="uint8 images or floats"):
        invflow.data.to_images(k.int())
    with pytest.raises(ValueError, match="NaN or Inf"):
        invflow.data.to_images(torch.full((1, 1, 2, 2), float("nan")))


def test_save_grid(tmp_path):
    k = torch.arange(5 * 3 * 4 * 4, dtype=torch.int64).reshape(5, 3, 4, 4).remainder(256).to(torch.uint8)
    invflow.data.save_grid(k, tmp_path / "g.png", nrow=3, padding=1, scale=1)  # 1:1
    arr = np.array(Image.open(tmp_path / "g.png"))
    assert arr.shape == (2 * 5 + 1, 3 * 5 + 1, 3)  # 2 rows x 3 columns of 4x4 with 1-pixel padding
    assert np.array_equal(arr[1:5, 1:5], k[0].permute(1, 2, 0).numpy())
    assert np.array_equal(arr[6:10, 1:5], k[3].permute(1, 2, 0).numpy())
    assert np.array_equal(arr[6:10, 6:10], k[4].permute(1, 2, 0).numpy())
    assert (arr[0] == 255).all() and (arr[6:10, 11:] == 255).all()  # padding, empty last cell


@pytest.mark.parametrize("side, factor", [(16, 4), (28, 3), (32, 2), (64, 1), (100, 1)])
def test_save_grid_enlarges_small_images_by_nearest_neighbour(tmp_path, side, factor):
    k = torch.randint(
        0, 256, (4, 1, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    invflow.data.save_grid(k, tmp_path / "g.png", padding=2)
    arr = np.array(Image.open(tmp_path / "g.png"))
    cell = side * factor
    assert cell >= min(side, invflow.data.MIN_CELL) and arr.shape == (2 * cell + 3 * 2, 2 * cell + 3 * 2)
    first = arr[2 : 2 + cell, 2 : 2 + cell]
    want = k[0, 0].repeat_interleave(factor, 0).repeat_interleave(factor, 1).numpy()
    assert np.array_equal(first, want)  # every pixel a factor x factor block


def test_save_grid_scale_argument(tmp_path):
    k = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    invflow.data.save_grid(k, tmp_path / "g.png", padding=0, scale=5)
    assert np.array(Image.open(tmp_path / "g.png")).shape == (80, 80, 3)
    for bad, err in ((0, ValueError), (2.5, TypeError), (65, ValueError)):
        with pytest.raises(err, match="scale must be an integer"):
            invflow.data.save_grid(k, tmp_path / "h.png", scale=bad)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        invflow.data.save_grid(k, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["g.png"]
