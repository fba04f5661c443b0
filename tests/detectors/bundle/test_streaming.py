"""Folders are streamed: fit reads headers, then decodes, resizes and drops one image at a
time; score works chunk by chunk.  Results equal those of the same images held in memory.
Calibration images equal to a flow's training images are warned about."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from detectors import bundle as bundle_mod
from detectors.bundle.fit import CalibrationOnTrainingDataWarning
from detectors.data import ImageFiles, load_source, open_image

TINY = dict(detectors=("likelihood",), steps=2, depth=1, hidden=8, levels=1, max_size=8, progress=False)


def _mixed_folder(root, n=14, seed=0):
    """``n`` images of three sizes and both colour modes (majority 10 x 12 RGB)."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        h, w = [(10, 12), (10, 12), (16, 9), (7, 7)][i % 4]
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        im = Image.fromarray(rgb) if i % 3 else Image.fromarray(rgb[..., 0])
        im.save(os.path.join(root, f"im{i:02d}.{'png' if i % 2 else 'jpg'}"))
    return root


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    base = tmp_path_factory.mktemp("stream")
    folder = _mixed_folder(str(base / "train"))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        streamed = bundle_mod.fit_bundle(
            folder, base / "a", bundle_mod.FitConfig(**TINY), say=lambda *_: None
        )
        decoded = [open_image(p) for p in sorted(load_source(folder, lazy=True).paths)]
        in_memory = bundle_mod.fit_bundle(
            decoded, base / "b", bundle_mod.FitConfig(**TINY), say=lambda *_: None
        )
    return base, folder, streamed, in_memory


def test_fit_from_a_folder_equals_fit_from_the_decoded_images(fitted):
    _, _, streamed, in_memory = fitted
    assert streamed.policy == in_memory.policy and streamed.policy.size == 8 and streamed.policy.channels == 3
    assert streamed.thresholds == in_memory.thresholds
    assert streamed.config["data"]["n_images"] == in_memory.config["data"]["n_images"] == 14


def test_scores_streamed_in_chunks_equal_one_in_memory_batch(fitted):
    base, _, bundle, _ = fitted
    folder = _mixed_folder(str(base / "test"), n=11, seed=1)
    src = load_source(folder, lazy=True)
    assert isinstance(src.images, ImageFiles)
    bundle["likelihood"].batch_size = 2  # chunks of 4 then hold whole batches, as 256 does by default
    chunks = list(bundle.score_chunks(src, chunk=4))
    assert [len(names) for names, _, _ in chunks] == [4, 4, 3]
    streamed = torch.cat([s["likelihood"] for _, s, _ in chunks])
    at_once = bundle.score([open_image(p) for p in src.paths])["likelihood"]
    assert torch.equal(streamed, at_once) and torch.equal(bundle.score(folder)["likelihood"], at_once)
    assert [n for names, _, _ in chunks for n in names] == src.paths


def test_a_file_that_fails_to_decode_is_skipped_in_its_chunk(fitted):
    base, _, bundle, _ = fitted
    folder = _mixed_folder(str(base / "broken"), n=5, seed=2)
    with open(os.path.join(folder, "im02.jpg"), "r+b") as f:  # header intact, pixels cut off
        f.truncate(40)
    chunks = list(bundle.score_chunks(load_source(folder, lazy=True), chunk=256))
    names, scores, skipped = chunks[0]
    assert len(names) == 4 and len(scores["likelihood"]) == 4
    assert [os.path.basename(p) for p, _ in skipped] == ["im02.jpg"]


def test_warns_when_calibration_images_are_the_flows_training_images(tmp_path):
    rng = np.random.default_rng(3)
    distinct = torch.from_numpy(rng.integers(0, 256, (10, 1, 8, 8), dtype=np.uint8))
    twice = torch.cat([distinct, distinct])  # every image twice: copies land in both parts
    with pytest.warns(
        CalibrationOnTrainingDataWarning, match=r"calibration images equal images the flow model"
    ):
        bundle_mod.fit_bundle(twice, tmp_path / "dup", bundle_mod.FitConfig(**TINY), say=lambda *_: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationOnTrainingDataWarning)
        bundle_mod.fit_bundle(distinct, tmp_path / "ok", bundle_mod.FitConfig(**TINY), say=lambda *_: None)
    assert os.path.isfile(tmp_path / "ok" / "models" / "flow" / "trained-on.json")


def test_fit_size_beyond_the_limit_is_refused_before_reading(tmp_path):
    with pytest.raises(ValueError, match=r"size 100000 is above the limit of 256 \(MAX_IMAGE_SIZE"):
        bundle_mod.fit_bundle(str(tmp_path / "missing"), tmp_path / "d", bundle_mod.FitConfig(size=100000))
