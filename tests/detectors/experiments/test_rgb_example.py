"""The RGB in-distribution example (detectors.experiments.rgb_example): its patches and OOD sets
are what their names say, and a small end-to-end run writes a colour bundle and its table."""

import json
import os

import pytest
import torch

from detectors.experiments import rgb_example as ex


def test_patches_are_deterministic_and_train_test_disjoint():
    tissue = ex.read_image("tissue")
    assert tissue.shape[2] == 3 and tissue.dtype.name == "uint8"
    a = ex.patches(tissue, 12, "train", seed=3)
    assert a.shape == (12, 3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, ex.patches(tissue, 12, "train", seed=3))
    assert not torch.equal(a, ex.patches(tissue, 12, "train", seed=4))
    # the test split reads only the right quarter: blank the rest and nothing changes
    right = tissue.copy()
    right[:, : int(round(0.75 * tissue.shape[1]))] = 0
    assert torch.equal(ex.patches(tissue, 12, "test"), ex.patches(right, 12, "test"))
    left = tissue.copy()
    left[:, int(round(0.75 * tissue.shape[1])) :] = 0
    assert torch.equal(ex.patches(tissue, 12, "train"), ex.patches(left, 12, "train"))
    with pytest.raises(ValueError, match="split"):
        ex.patches(tissue, 2, "val")
    with pytest.raises(ValueError, match="smaller than one"):
        ex.patches(tissue[:20], 2, "train")
    with pytest.raises(ValueError, match="unknown image"):
        ex.read_image("cat")
    with pytest.raises(ValueError, match=r"uint8 RGB array \[H, W, 3\], got uint8 \(512, 512\)"):
        ex.patches(tissue[..., 0], 2, "train")
    with pytest.raises(ValueError, match="n=-1"):
        ex.patches(tissue, -1, "train")


def test_write_pngs_leaves_exactly_the_images_given(tmp_path):
    x = ex.patches(ex.read_image("tissue"), 6, "train")
    folder = str(tmp_path / "train")
    assert ex.write_pngs(x, folder) == 6
    (tmp_path / "train" / "notes.txt").write_text("kept")
    assert ex.write_pngs(x[:4], folder) == 4  # a smaller run: the PNGs past 4 go
    assert sorted(os.listdir(folder)) == ["00000.png", "00001.png", "00002.png", "00003.png", "notes.txt"]


def test_ood_sets_are_the_named_changes():
    sets = ex.ood_sets(10, seed=0)
    assert list(sets) == list(ex.KINDS)
    for name, x in sets.items():
        assert x.shape == (10, 3, 32, 32) and x.dtype == torch.uint8, name
    base = ex.patches(ex.read_image("tissue"), 10, "test", 1)
    assert torch.equal(sets["stain channels swapped"], base[:, [2, 1, 0]])
    assert torch.equal(sets["tissue colours inverted"], 255 - base)
    grey = sets["tissue in grey"]
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    assert torch.equal(sets["Fashion-MNIST"][:, 0], sets["Fashion-MNIST"][:, 2])
    blurred = sets["tissue out of focus"].float()
    # blur lowers the high-frequency energy (horizontal differences) of every patch
    tv = lambda x: (x[..., 1:] - x[..., :-1]).abs().flatten(1).mean(1)  # noqa: E731
    assert bool((tv(blurred) < tv(base.float())).all())


def test_small_run_writes_an_rgb_bundle_and_its_table(tmp_path):
    out = str(tmp_path / "rgb")
    cfg = {"detectors": ("png",), "steps": 2, "progress": False, "zoo": False}
    results = ex.run(out, n=24, n_eval=8, config=cfg, progress=False, say=lambda *a: None)
    assert set(results) == {"png"}
    assert set(results["png"]["per_set"]) == set(ex.KINDS)
    assert len(os.listdir(os.path.join(out, "train"))) == 24
    with open(os.path.join(out, "det", "bundle.json")) as f:
        assert json.load(f)["preprocessing"]["channels"] == 3
    with open(os.path.join(out, "auroc.json")) as f:
        assert json.load(f)["png"]["worst_set"] in ex.KINDS
    table = open(os.path.join(out, "table.md")).read()
    assert table.startswith("`fit` on 24 tissue patches (steps 2, ") and "| png |" in table
