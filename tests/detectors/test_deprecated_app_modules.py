"""The old module paths of the application side (data, command line) still import for one
release, warn DeprecationWarning and hold the names they had."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

OLD = [
    ("detectors.datasets", "load_named", "detectors.data"),
    ("detectors.folders", "load_source", "detectors.data"),
    ("detectors.photos", "photo_patches", "detectors.data.photos"),
    ("detectors.cli_common", "run_guarded", "detectors.cli.common"),
    ("detectors.cli_fit", "run_fit", "detectors.cli.fit"),
    ("detectors.cli_score", "run_score", "detectors.cli.score"),
    ("detectors.cli_train", "run_train", "detectors.cli.train"),
    ("detectors.cli_evaluate", "pad_to_model", "detectors.cli.evaluate"),
]


@pytest.mark.parametrize("old,name,new", OLD)
def test_old_path_warns_and_keeps_its_names(old, name, new, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated; import {new}"):
        mod = importlib.import_module(old)
    assert getattr(mod, name) is getattr(importlib.import_module(new), name)


def test_private_names_tests_used_stay_reachable(monkeypatch):
    monkeypatch.delitem(sys.modules, "detectors.datasets", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        datasets = importlib.import_module("detectors.datasets")
    from detectors.data import named

    assert (
        datasets._natural_photos is named._natural_photos and datasets._patch_windows is named._patch_windows
    )


def test_new_paths_import_without_deprecated_modules():
    import subprocess

    code = (
        "import detectors, detectors.data, detectors.data.photos, detectors.bundle, detectors.cli, "
        "detectors.inputs, detectors.report; from detectors.cli import build_parser; build_parser()"
    )
    r = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
