"""Detector bundles end to end: folders of mixed-size PNG / JPEG files cut from offline
photos -> ``detectors fit`` -> bundle -> ``score`` -> scores.csv and a report; thresholds on
the held-out part, resuming, ensembles and their members, the feature flow, labels from class
folders, one-line user errors with exit code 2."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import detectors
import detectors.features
import invflow
from detectors import bundle as bundle_mod
from detectors.cli import main
from detectors.data import UnreadableImagesWarning, load_source

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """One BLAS thread, like the one torch thread of tests/detectors/conftest.py: on a busy
    2-core machine OpenBLAS's second thread made the 1280 x 1280 eigh of Mahalanobis' precision
    20x slower (35 s instead of 1.8 s)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


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


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("own")
    photos = [skimage_data.astronaut(), skimage_data.chelsea(), skimage_data.coffee()]
    rng = np.random.default_rng(1)
    noise = [(rng.random((120, 120, 3)) * 255).astype(np.uint8)]
    train_sizes = [24] * 30 + [20] * 8 + [30] * 8  # majority 24x24
    _patches(base / "train", photos, train_sizes, 0)
    with open(base / "train" / "broken.png", "wb") as f:  # unreadable: reported and skipped
        f.write(b"not a png at all")
    _patches(base / "test", photos, [24, 28, 20, 24, 36, 24], 2)
    _patches(base / "ood", noise, [24, 24, 32, 24, 20, 24], 3)
    return base


def _fit_argv(data, out, *extra):
    return [
        "fit",
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        "3",
        "--depth",
        "1",
        "--hidden",
        "8",
        "--batch",
        "16",
        "--feature-size",
        "32",
        "--no-progress",
        "--detectors",
        "last-scale",
        "png",
        "knn",
        "typicality",
        *extra,
    ]


def _tree(path):
    return sorted(
        (os.path.relpath(os.path.join(d, f), path), os.stat(os.path.join(d, f)).st_mtime_ns)
        for d, _, files in os.walk(path)
        for f in files
    )


def test_fit_then_score_end_to_end(folders, tmp_path, capsys):
    torch.set_num_threads(1)
    det, rep = tmp_path / "det", tmp_path / "rep"
    assert main(_fit_argv(folders / "train", det)) == 0
    out = capsys.readouterr().out
    assert "skipped 1 unreadable image file(s)" in out and "broken.png" in out
    meta = json.loads((det / "bundle.json").read_text())
    assert meta["preprocessing"] == {"size": 24, "channels": 3, "resize": "shorter-side+center-crop"}
    assert meta["data"]["n_images"] == 46 and meta["data"]["skipped"][0].endswith("broken.png")
    assert meta["command"].startswith("python -m detectors fit --data")
    assert {"torch", "invflow", "numpy"} <= set(meta["versions"])
    assert os.path.isfile(det / "models" / "flow" / "latest") and os.path.isfile(det / "state.safetensors")

    # thresholds are the (1 - fpr) quantile of the HELD-OUT part of TRAIN (not of the fit part)
    before = _tree(det)
    bundle = detectors.load(det)
    with pytest.warns(UnreadableImagesWarning):
        src = load_source(str(folders / "train"))
    x = bundle.policy.apply(src.images)
    fit_idx, cal_idx = bundle_mod.holdout_split(len(x), 0.2, 0)
    assert len(cal_idx) == 9 and not set(fit_idx.tolist()) & set(cal_idx.tolist())
    held_out = bundle.score(x[cal_idx])
    for name, s in held_out.items():
        assert bundle[name].threshold == pytest.approx(
            float(np.quantile(s.numpy(), 0.95, method="higher")), rel=1e-6
        ), name
    assert _tree(det) == before, "loading and scoring a bundle must not write"
    assert not bundle["last-scale"].model.training

    # score: scores.csv for every TEST and OOD file, the report (docs/design.md) with --ood
    assert (
        main(
            [
                "score",
                str(det),
                "--data",
                str(folders / "test"),
                "--ood",
                str(folders / "ood"),
                "--out",
                str(rep),
                "--no-progress",
            ]
        )
        == 0
    )
    with open(rep / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and [r["source"] for r in rows] == ["data"] * 6 + ["ood"] * 6
    assert rows[0]["path"].endswith("img000.png") and set(rows[0]) == {
        "path",
        "source",
        "last-scale_score",
        "last-scale_flag",
        "png_score",
        "png_flag",
        "knn_score",
        "knn_flag",
        "typicality_score",
        "typicality_flag",
    }
    test_x = bundle.prepare(str(folders / "test"))
    direct = bundle.score(test_x)
    for name in bundle:
        assert float(rows[2][f"{name}_score"]) == pytest.approx(float(direct[name][2]), rel=1e-9)
        assert int(rows[2][f"{name}_flag"]) == int(direct[name][2] > bundle[name].threshold)
    results = json.loads((rep / "results.json").read_text())
    assert list(results["detectors"]) == ["last-scale", "png", "knn", "typicality"]
    assert set(results["detectors"]["knn"]) >= {"auroc", "aupr_in", "aupr_out", "fpr95", "tnr95"}
    assert results["detectors"]["knn"]["auroc"] > 0.9  # noise patches vs photo patches
    assert os.path.isfile(rep / "report.md") and os.path.isfile(rep / "roc.png")

    # bundle.predict / score take lists of PIL images of any size, like files
    pil = [Image.open(p).convert("RGB") for p in sorted(str(p) for p in (folders / "test").iterdir())]
    assert torch.equal(bundle.score(pil)["knn"], direct["knn"])
    assert torch.equal(bundle.predict(pil)["png"], direct["png"] > bundle["png"].threshold)

    # re-running the fit resumes: the trained flow and the features are reused, same thresholds
    latest = (det / "models" / "flow" / "latest").read_text()
    assert main(_fit_argv(folders / "train", det)) == 0
    assert "reusing the trained model" in capsys.readouterr().out
    again = json.loads((det / "bundle.json").read_text())
    assert (det / "models" / "flow" / "latest").read_text() == latest
    assert [d["threshold"] for d in again["detectors"]] == [d["threshold"] for d in meta["detectors"]]
    # more steps: the interrupted / shorter training resumes from its checkpoint
    assert main(_fit_argv(folders / "train", det, "--steps", "5")) == 0
    assert "resuming at step 3" in capsys.readouterr().out
    assert (det / "models" / "flow" / "latest").read_text() == "step-0000005"
    # the bundle takes Datasets and DataLoaders of same-size images too
    ds = torch.utils.data.TensorDataset(test_x, torch.zeros(len(test_x)))
    resumed = detectors.load(det)
    ref = resumed.score(test_x)
    for kind in (ds, torch.utils.data.DataLoader(ds, batch_size=4), test_x.numpy()):
        got = resumed.score(kind)
        assert all(torch.equal(got[n], ref[n]) for n in ref), type(kind).__name__
    # a different setting in the same directory is refused with one line
    assert main(_fit_argv(folders / "train", det, "--size", "16")) == 2
    assert "other settings" in capsys.readouterr().err


def test_nested_class_folders_feed_the_supervised_detector(tmp_path, capsys):
    torch.set_num_threads(1)
    _patches(tmp_path / "train" / "astronaut", [skimage_data.astronaut()], [16] * 12, 0)
    _patches(tmp_path / "train" / "coffee", [skimage_data.coffee()], [16, 20] * 6, 1)
    _patches(tmp_path / "ood", [skimage_data.checkerboard()], [16] * 4, 2)
    det = tmp_path / "det"
    argv = [
        "fit",
        "--data",
        str(tmp_path / "train"),
        "--out",
        str(det),
        "--feature-size",
        "32",
        "--no-progress",
        "--detectors",
        "mahalanobis",
        "pca",
    ]
    assert main(argv) == 0
    bundle = detectors.load(det)
    assert bundle.uses == {"mahalanobis": "labels", "pca": "-"}
    assert "models" not in os.listdir(det)  # feature detectors need no flow
    src = load_source(str(tmp_path / "train"))
    assert src.classes == ["astronaut", "coffee"]
    x = bundle.policy.apply(src.images)
    fit_idx, cal_idx = bundle_mod.holdout_split(len(x), 0.2, 0)
    for name, s in bundle.score(x[cal_idx]).items():  # thresholds from the held-out part
        assert bundle[name].threshold == pytest.approx(
            float(np.quantile(s.numpy(), 0.95, method="higher"))
        ), name
    # the restored state is the state fitted on the fit part with its labels
    m = bundle["mahalanobis"]
    assert m.classes_.tolist() == [0, 1]
    feats = detectors.features.image_features(x[fit_idx], 32).double()
    lab = src.labels[fit_idx]
    assert torch.allclose(m.means_[1], feats[lab == 1].mean(0), atol=1e-5)
    assert (
        main(
            [
                "score",
                str(det),
                "--data",
                str(tmp_path / "train"),
                "--ood",
                str(tmp_path / "ood"),
                "--out",
                str(tmp_path / "rep"),
                "--no-progress",
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert results["uses"]["mahalanobis"] == "labels"
    capsys.readouterr()
    assert (
        main(
            [
                "fit",
                "--data",
                str(tmp_path / "ood"),
                "--out",
                str(tmp_path / "d2"),
                "--no-progress",
                "--detectors",
                "mahalanobis",
            ]
        )
        == 2
    )
    assert "need class labels" in capsys.readouterr().err


def test_feature_flow_saves_its_pca_projection(tmp_path):
    from sklearn.decomposition import PCA as SkPCA

    torch.set_num_threads(1)
    _patches(tmp_path / "train", [skimage_data.astronaut(), skimage_data.coffee()], [16, 20] * 10, 0)
    cfg = bundle_mod.FitConfig(detectors=("feature-flow",), steps=3, feature_size=32, progress=False)
    fitted = bundle_mod.fit_bundle(str(tmp_path / "train"), tmp_path / "det", cfg, say=lambda *_: None)
    loaded = detectors.load(tmp_path / "det")
    x = fitted.prepare(str(tmp_path / "train"))
    assert torch.equal(loaded.score(x)["feature-flow"], fitted.score(x)["feature-flow"])
    fit_idx, _ = bundle_mod.holdout_split(len(x), 0.2, 0)
    f = detectors.features.image_features(x[fit_idx], 32).double().numpy()
    pca = SkPCA(n_components=min(32, len(f) - 1), svd_solver="full").fit(f)
    proj = loaded["feature-flow"].transform
    assert proj.scale == pytest.approx(float(np.sqrt(pca.explained_variance_[0])), rel=1e-6)
    expected = pca.transform(f) / proj.scale
    got = proj(torch.from_numpy(f)).double().numpy()
    assert np.allclose(np.abs(got), np.abs(expected), atol=1e-4)  # component signs are arbitrary


def test_default_set_depends_on_a_shipped_general_model():
    """The default of fit is what the OOD suite recommends by the worst case (docs/results.md
    section 6): Diff-dagger + PCA + transformation classifier when the zoo has a general model
    for the data, PNG complexity + PCA otherwise."""
    import argparse

    from detectors.bundle import fit as fit_mod
    from detectors.cli import fit as cli_fit

    assert bundle_mod.DEFAULT_DETECTORS == ("png+pca",)
    assert bundle_mod.FitConfig().detectors is None
    cfg = bundle_mod.FitConfig()
    assert fit_mod.resolve_detectors(cfg, {}) == ("png+pca",)
    assert fit_mod.resolve_detectors(cfg, {"general": "photos-glow-broad"}) == (
        "diff-dagger+pca+transforms+diff+png",
    )
    assert bundle_mod.with_members(fit_mod.DEFAULT_WITH_GENERAL) == (
        "diff-dagger+pca+transforms+diff+png",
        "diff-dagger",
        "pca",
        "transforms",
        "diff",
        "png",
    )
    assert fit_mod.resolve_detectors(bundle_mod.FitConfig(detectors=("pca",)), {"general": "x"}) == ("pca",)
    assert cli_fit.DEFAULT_SETS == (fit_mod.DEFAULT_WITH_GENERAL, fit_mod.DEFAULT_DETECTORS)
    parser = argparse.ArgumentParser()
    cli_fit.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["fit", "--data", "x", "--out", "y"])
    assert args.detectors is None and args.no_zoo is False
    assert bundle_mod.CATALOGUE["png+pca"].params == {"members": ["png", "pca"]}
    assert bundle_mod.CATALOGUE["last-scale+pca"].params == {"members": ["last-scale", "pca"]}
    assert bundle_mod.CATALOGUE["diff-dagger+pca+transforms"].params == {
        "members": ["diff-dagger", "pca", "transforms"]
    }
    # every ensemble's members are catalogue detectors that score the bundle's images
    for name in bundle_mod.CATALOGUE:
        for m in bundle_mod.members(name):
            assert bundle_mod.CATALOGUE[m].needs in (
                "flow",
                "flow+general",
                "flow+dagger",
                "features",
                "features+labels",
                "images+features",
            ), (
                name,
                m,
            )
    # an ensemble listed without its members gets them, right after it
    assert bundle_mod.with_members(["knn", "last-scale+pca"]) == (
        "knn",
        "last-scale+pca",
        "last-scale",
        "pca",
    )
    assert bundle_mod.with_members(["pca", "last-scale+pca"]) == ("pca", "last-scale+pca", "last-scale")
    assert bundle_mod.with_members(["png"]) == ("png",)


def test_ensemble_in_a_bundle_is_detectors_ensemble_of_its_members(tmp_path, capsys):
    torch.set_num_threads(1)
    photos = [skimage_data.astronaut(), skimage_data.coffee()]
    _patches(tmp_path / "train", photos, [16, 20] * 10, 0)
    _patches(tmp_path / "test", photos + [skimage_data.checkerboard()], [16] * 6, 1)
    said = []
    cfg = bundle_mod.FitConfig(
        detectors=("last-scale+pca",),
        steps=2,
        depth=1,
        hidden=8,
        batch_size=16,
        feature_size=32,
        progress=False,
    )
    fitted = bundle_mod.fit_bundle(str(tmp_path / "train"), tmp_path / "det", cfg, say=said.append)
    # asked for the ensemble only: its members are fitted and reported too (and said so)
    assert list(fitted) == ["last-scale+pca", "last-scale", "pca"]
    assert "last-scale+pca combines last-scale, pca: also fitting and reporting last-scale, pca" in said
    ens = fitted["last-scale+pca"]
    assert isinstance(ens, detectors.Ensemble)
    assert ens.members["last-scale"] is fitted["last-scale"] and ens.members["pca"] is fitted["pca"]

    # standardisation and threshold from the held-out part of TRAIN (the thresholds' images)
    x = fitted.prepare(str(tmp_path / "train"))
    fit_idx, cal_idx = bundle_mod.holdout_split(len(x), 0.2, 0)
    cal = fitted.score(x[cal_idx])
    stats = {m: (float(cal[m].mean()), float(cal[m].std())) for m in ("last-scale", "pca")}
    for m in stats:
        assert ens._stats[m] == pytest.approx(stats[m], rel=1e-9), m
    assert ens.threshold == pytest.approx(
        float(np.quantile(cal["last-scale+pca"].numpy(), 0.95, method="higher")), rel=1e-9
    )
    # the ensemble's scores: the members' z-scores summed, by hand and by detectors.Ensemble itself
    test_x = fitted.prepare(str(tmp_path / "test"))
    s = fitted.score(test_x)
    by_hand = sum((s[m] - stats[m][0]) / stats[m][1] for m in stats)
    assert torch.allclose(s["last-scale+pca"], by_hand, rtol=1e-9, atol=1e-9)
    direct = detectors.Ensemble({"last-scale": fitted["last-scale"], "pca": fitted["pca"]}).fit(x[cal_idx])
    assert torch.allclose(direct.score(test_x), s["last-scale+pca"], rtol=1e-6, atol=1e-6)
    assert torch.allclose(
        ens.score(test_x), s["last-scale+pca"], rtol=1e-6, atol=1e-6
    )  # standalone on images
    assert not torch.allclose(s["last-scale+pca"], s["last-scale"])

    # save / load round trip: the same statistics, thresholds and scores, exactly
    meta = json.loads((tmp_path / "det" / "bundle.json").read_text())
    assert meta["fit"]["detectors"] == ["last-scale+pca"]
    entry = meta["detectors"][0]
    assert (entry["name"], entry["class"], entry["params"]) == (
        "last-scale+pca",
        "Ensemble",
        {"members": ["last-scale", "pca"]},
    )
    loaded = detectors.load(tmp_path / "det")
    assert list(loaded) == list(fitted) and loaded.thresholds == fitted.thresholds
    assert loaded["last-scale+pca"]._stats == ens._stats
    assert loaded["last-scale+pca"].members["pca"] is loaded["pca"]
    again = loaded.score(test_x)
    assert all(torch.equal(again[n], s[n]) for n in s)
    assert torch.equal(loaded.predict(test_x)["last-scale+pca"], s["last-scale+pca"] > ens.threshold)
    # 4 held-out images cannot calibrate a 5% threshold: fit says so
    assert any(line.startswith("warning: the thresholds rest on 4 held-out image(s)") for line in said)

    # floats: preprocessed [-0.5, 0.5] images score as their uint8 originals; 0..1 or 0..255 floats
    # (torchvision's ToTensor, raw pixel values) are refused, not clamped into garbage
    pre = invflow.data.preprocess(test_x, dequantize=False)
    assert all(torch.equal(loaded.score(pre)[n], s[n]) for n in s)
    for bad in (test_x.float() / 255, test_x.float()):
        for form in (bad, list(bad), torch.utils.data.TensorDataset(bad)):
            with pytest.raises(ValueError, match=r"look like (torchvision's ToTensor 0..1|0..255 pixel)"):
                loaded.score(form)
    # a flow's samples leave [-0.5, 0.5]: scored as the 8-bit images to_images makes of them
    samples = loaded["last-scale"].model.sample(
        4, temperature=1.0, generator=torch.Generator().manual_seed(0)
    )
    assert float(samples.min()) < -0.5 or float(samples.max()) > 0.5
    as_images = invflow.data.to_images(samples)
    assert all(torch.equal(loaded.score(samples)[n], loaded.score(as_images)[n]) for n in s)
    assert all(torch.equal(loaded.score(list(samples))[n], loaded.score(as_images)[n]) for n in s)

    # the score CLI writes the ensemble's column like any other
    assert (
        main(
            [
                "score",
                str(tmp_path / "det"),
                "--data",
                str(tmp_path / "test"),
                "--out",
                str(tmp_path / "rep"),
                "--no-progress",
            ]
        )
        == 0
    )
    with open(tmp_path / "rep" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["last-scale+pca_score"]) for r in rows] == pytest.approx(
        s["last-scale+pca"].tolist(), rel=1e-9
    )

    # a bundle whose ensemble lacks a member, or its statistics, is refused by name
    broken = dict(meta, detectors=[e for e in meta["detectors"] if e["name"] != "pca"])
    (tmp_path / "det" / "bundle.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"ensemble 'last-scale\+pca' needs its members \['pca'\]"):
        detectors.load(tmp_path / "det")
    entry["state"] = {}
    (tmp_path / "det" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"needs a \[mean, std > 0\] per member"):
        detectors.load(tmp_path / "det")


def test_bad_detector_names_and_too_few_held_out_images(tmp_path, capsys):
    with pytest.raises(
        ValueError, match=r"detectors: unknown \['last-scale\+knn'\]; choose from .*last-scale\+pca"
    ):
        bundle_mod.FitConfig(detectors=("last-scale+knn",)).check()
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--data", str(tmp_path), "--out", str(tmp_path / "d"), "--detectors", "last-scale+knn"])
    assert exit_.value.code == 2 and "invalid choice: 'last-scale+knn'" in capsys.readouterr().err
    _patches(tmp_path / "three", [skimage_data.astronaut()], [16] * 3, 0)
    cfg = bundle_mod.FitConfig(progress=False)
    with pytest.raises(ValueError, match=r"3 images with --holdout 0.2 hold out 1; give at least 8 images"):
        bundle_mod.fit_bundle(str(tmp_path / "three"), tmp_path / "d3", cfg, say=lambda *_: None)
    assert not os.path.exists(tmp_path / "d3")  # refused before anything is trained or written


def test_fit_reads_training_splits_of_named_sets(monkeypatch, tmp_path):
    """`fit --data fashion-mnist` fits on the training split (the fit path)."""
    from detectors import bundle
    from detectors.data import folders, named

    seen = []

    def fake_load_named(spec, n=None, seed=0, split="test"):
        seen.append(split)
        raise RuntimeError("stop here")

    monkeypatch.setattr(named, "load_named", fake_load_named)
    with pytest.raises(RuntimeError, match="stop here"):
        bundle.fit_bundle("fashion-mnist", tmp_path / "det")
    assert seen == ["train"]
    with pytest.raises(RuntimeError, match="stop here"):
        folders.load_source("fashion-mnist")  # scoring reads the test split
    assert seen == ["train", "test"]
