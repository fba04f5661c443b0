"""A detector bundle read back from a hostile or damaged directory: paths in ``bundle.json``
that leave the bundle (absolute, ``..``, links, another bundle's model), named pipes where
files belong, non-finite or out-of-range values, and malformed JSON each give one
``ValueError`` line naming the file, the detector and the field, never a hang, a traceback
from deep inside, or a bundle whose detectors silently never flag."""

from __future__ import annotations

import json
import os
import shutil
import threading

import numpy as np
import pytest
import torch

import detectors
from detectors.bundle import FitConfig, fit_bundle, store
from detectors.cli import main

DETECTORS = ("likelihood", "typicality", "last-scale+pca", "knn", "feature-flow")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny bundle (8x8 grey noise, a 1-step-per-scale Glow, features at 32x32) with every
    kind of fitted state: thresholds, typicality's entropy, an ensemble's standardisation,
    feature arrays and a PCA projection in state.safetensors, a Trainer run directory."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy((rng.random((24, 1, 8, 8)) * 255).astype(np.uint8))
    out = tmp_path_factory.mktemp("fitted") / "det"
    cfg = FitConfig(
        detectors=DETECTORS, steps=2, depth=1, hidden=4, batch_size=8, feature_size=32, progress=False
    )
    fit_bundle(x, str(out), cfg, say=lambda *a: None)
    return out, x[:4]


@pytest.fixture
def bundle(fitted, tmp_path):
    """A fresh copy of the fitted bundle to damage."""
    out = tmp_path / "det"
    shutil.copytree(fitted[0], out, symlinks=True)
    return out


def _edit(path, change):
    """Rewrites DET/bundle.json after ``change(meta)`` (which edits it in place)."""
    meta_path = path / "bundle.json"
    meta = json.loads(meta_path.read_text())
    change(meta)
    meta_path.write_text(json.dumps(meta))


def _entry(meta, name):
    return next(e for e in meta["detectors"] if e["name"] == name)


def _refused(path, *words):
    """load(path) raises one ValueError line containing every word."""
    with pytest.raises(ValueError) as err:
        detectors.load(path)
    msg = str(err.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


def _finishes(fn, seconds=60):
    """Runs fn in a thread; fails if it has not returned (or raised) within ``seconds``."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s (a named pipe opened?)"
    return box


def test_the_untouched_bundle_loads_and_scores(fitted):
    path, x = fitted
    b = detectors.load(path)
    assert list(b) == [
        "likelihood",
        "typicality",
        "last-scale+pca",
        "last-scale",
        "pca",
        "knn",
        "feature-flow",
    ]
    scores = b.score(x)
    assert all(s.shape == (4,) and bool(torch.isfinite(s).all()) for s in scores.values())


@pytest.mark.parametrize(
    "rel, words",
    [
        ("/etc/passwd", ["models.flow", "absolute path"]),
        ("../..", ["models.flow", "outside the bundle"]),
        ("models/../..", ["models.flow", "outside the bundle"]),
        ("", ["models.flow", "non-empty relative path"]),
        ("models/flow\x00x", ["models.flow", "non-empty relative path"]),
        (["models/flow"], ["models.flow", "path string"]),
    ],
)
def test_model_paths_that_leave_the_bundle_are_refused(bundle, rel, words):
    _edit(bundle, lambda m: m["models"].update(flow=rel))
    _refused(bundle, *words)


def test_another_bundles_model_is_refused_by_path_and_by_link(fitted, bundle, tmp_path):
    other = fitted[0]
    _edit(bundle, lambda m: m["models"].update(flow=os.path.relpath(other / "models" / "flow", bundle)))
    _refused(bundle, "models.flow", "outside the bundle")
    _edit(bundle, lambda m: m["models"].update(flow="models/flow"))
    shutil.rmtree(bundle / "models" / "flow")
    os.symlink(other / "models" / "flow", bundle / "models" / "flow")
    _refused(bundle, "models.flow", "outside the bundle", str(os.path.realpath(other)))


def test_the_latest_file_is_followed_only_inside_the_bundle(fitted, bundle):
    run = bundle / "models" / "flow"
    step = (run / "latest").read_text().strip()
    outside = os.path.relpath(fitted[0] / "models" / "flow" / step, run)
    (run / "latest").write_text(outside + "\n")
    _refused(bundle, "models.flow", "checkpoint", "outside the bundle")
    (run / "latest").unlink()
    os.symlink(fitted[0] / "models" / "flow" / "latest", run / "latest")
    _refused(bundle, "'latest' file", "outside the bundle")


def test_links_inside_the_bundle_are_followed(bundle):
    os.rename(bundle / "models" / "flow", bundle / "models" / "flow-real")
    os.symlink("flow-real", bundle / "models" / "flow")
    assert "likelihood" in detectors.load(bundle)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need os.mkfifo (POSIX)")
@pytest.mark.parametrize(
    "where, words",
    [
        ("models/flow/latest", ["'latest' file", "not a regular file"]),
        ("models/flow/step-0000002/model.safetensors", ["checkpoint", "not a regular file"]),
        ("state.safetensors", ["state.safetensors", "not a regular file"]),
        ("bundle.json", ["bundle.json", "not a regular file"]),
    ],
)
def test_named_pipes_are_refused_without_opening_them(bundle, where, words):
    os.remove(bundle / where)
    os.mkfifo(bundle / where)
    box = _finishes(lambda: detectors.load(bundle))
    err = box.get("error")
    assert isinstance(err, ValueError), box
    assert all(w in str(err) for w in words), str(err)


def test_state_file_linked_from_another_bundle_is_refused(fitted, bundle):
    os.remove(bundle / "state.safetensors")
    os.symlink(fitted[0] / "state.safetensors", bundle / "state.safetensors")
    _refused(bundle, "state.safetensors", "outside the bundle")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e400, "0.5", True, None])
def test_non_finite_or_non_numeric_thresholds_are_refused(bundle, value):
    _edit(bundle, lambda m: _entry(m, "likelihood").update(threshold=value))
    _refused(bundle, "detector 'likelihood'", "threshold")


@pytest.mark.parametrize("value", [0.0, 1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_fpr_outside_the_open_unit_interval_is_refused(bundle, value):
    _edit(bundle, lambda m: _entry(m, "knn").update(fpr=value))
    _refused(bundle, "detector 'knn'", "fpr")


@pytest.mark.parametrize(
    "stats, field",
    [
        ([float("nan"), 1.0], "mean"),
        ([float("inf"), 1.0], "mean"),
        ([0.0, float("nan")], "std"),
        ([0.0, float("inf")], "std"),
        ([0.0, 0.0], "std"),
        ([0.0, -1.0], "std"),
        ([0.0], "standardisation"),
        ("1, 2", "standardisation"),
    ],
)
def test_ensemble_standardisation_must_be_finite_with_positive_std(bundle, stats, field):
    _edit(bundle, lambda m: _entry(m, "last-scale+pca")["state"]["standardisation"].update(pca=stats))
    _refused(bundle, "detector 'last-scale+pca'", field)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "3.0", None])
def test_typicality_entropy_must_be_finite(bundle, value):
    _edit(bundle, lambda m: _entry(m, "typicality")["state"].update(entropy=value))
    _refused(bundle, "detector 'typicality'", "state.entropy")


@pytest.mark.parametrize("key", ["features.fit", "projection.components", "projection.scale"])
def test_non_finite_state_tensors_are_refused(bundle, key):
    tensors, meta = store.read_tensors(str(bundle / "state.safetensors"))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    store.write_tensors(str(bundle / "state.safetensors"), tensors, meta)
    _refused(bundle, "state.safetensors", repr(key), "NaN or infinite")


def test_state_tensors_of_the_wrong_shape_are_refused(bundle):
    tensors, meta = store.read_tensors(str(bundle / "state.safetensors"))
    store.write_tensors(
        str(bundle / "state.safetensors"),
        {**tensors, "projection.components": tensors["projection.components"][:, :3]},
        meta,
    )
    _refused(bundle, "detector 'feature-flow'", "inconsistent shapes")
    store.write_tensors(
        str(bundle / "state.safetensors"), {**tensors, "features.fit": tensors["features.fit"][0]}, meta
    )
    _refused(bundle, "'features.fit'", "[N >= 2, D]")


def test_deeply_nested_json_is_a_value_error(bundle):
    (bundle / "bundle.json").write_text("[" * 100_000 + "]" * 100_000)
    _refused(bundle, "bundle.json", "nested too deeply")


@pytest.mark.parametrize(
    "text, words",
    [
        (b"\xff\xfe not utf-8", ["not valid UTF-8 JSON"]),
        (b"{", ["not valid UTF-8 JSON"]),
        (b"[1, 2]", ["must be a JSON object", "array"]),
        (b'{"format": "detectors-bundle", "version": 2}', ["version 1"]),
    ],
)
def test_malformed_json_is_a_value_error(bundle, text, words):
    (bundle / "bundle.json").write_bytes(text)
    _refused(bundle, "bundle.json", *words)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda m: m.pop("detectors"), ["'detectors'", "array"]),
        (lambda m: m.update(detectors=[]), ["lists no detector"]),
        (lambda m: m.update(detectors="likelihood"), ["'detectors'", "array"]),
        (lambda m: m["detectors"].append(3), ["detectors[7]"]),
        (lambda m: _entry(m, "likelihood").pop("threshold"), ["detector 'likelihood'", "threshold"]),
        (lambda m: _entry(m, "likelihood").update(name="nope"), ["unknown detector 'nope'"]),
        (lambda m: _entry(m, "likelihood").update({"class": "KNN"}), ["unknown detector 'likelihood'"]),
        (lambda m: m["detectors"].append(m["detectors"][0]), ["'likelihood' is listed twice"]),
        (lambda m: m.update(models=["models/flow"]), ["'models'", "object"]),
        (lambda m: m.update(models={}), ["detector 'likelihood'", "needs the model", "flow"]),
        (lambda m: m["models"].update(other="models/flow"), ["models.other", "unknown model role"]),
        (lambda m: m.pop("preprocessing"), ["'preprocessing'"]),
        (lambda m: m["preprocessing"].pop("size"), ["'preprocessing'", "image policy"]),
        (lambda m: m["preprocessing"].update(size=1e400), ["'preprocessing'"]),
        (lambda m: m["preprocessing"].update(size=16), ["models.flow takes images [1, 8, 8]", "[1, 16, 16]"]),
        (lambda m: m.update(feature_size="96"), ["feature_size", "[32, 512]"]),
        (lambda m: m.update(feature_size=100_000), ["feature_size", "[32, 512]"]),
        (lambda m: m.update(data=[1]), ["'data'"]),
        (lambda m: _entry(m, "knn").update(params={"k": 10**9}), ["detector 'knn'", "params.k"]),
        (lambda m: _entry(m, "knn").update(params={"k": 2, "n_jobs": 64}), ["detector 'knn'", "params"]),
        (lambda m: _entry(m, "typicality").update(params={"batch_size": 10**9}), ["params.batch_size"]),
        (
            lambda m: _entry(m, "last-scale+pca").update(params={"members": ["likelihood", "pca"]}),
            ["detector 'last-scale+pca'", "params.members"],
        ),
        (lambda m: _entry(m, "pca").update(state=[]), ["detector 'pca'", "'state'"]),
        (lambda m: _entry(m, "pca").update(state={"features": "nope"}), ["detector 'pca'", "['nope']"]),
    ],
)
def test_malformed_fields_name_the_field(bundle, change, words):
    _edit(bundle, change)
    _refused(bundle, "bundle.json", *words)


def test_score_command_gives_one_line_and_exit_code_2(bundle, tmp_path, capsys):
    _edit(bundle, lambda m: _entry(m, "likelihood").update(threshold=float("nan")))
    data = tmp_path / "x.npz"
    np.savez(data, x=np.zeros((3, 8, 8), np.uint8))
    code = main(["score", str(bundle), "--data", str(data), "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "detector 'likelihood'" in err and "threshold" in err and "Traceback" not in err


def test_inside_resolves_links_and_checks_the_kind(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("x")
    os.symlink("f", tmp_path / "a" / "link")
    assert store.inside(str(tmp_path / "a"), "link", "field") == os.path.realpath(tmp_path / "a" / "f")
    with pytest.raises(ValueError, match="field: 'f' .* is not a directory"):
        store.inside(str(tmp_path / "a"), "f", "field", kind="dir")
    with pytest.raises(FileNotFoundError, match="field: 'g' does not exist"):
        store.inside(str(tmp_path / "a"), "g", "field")
