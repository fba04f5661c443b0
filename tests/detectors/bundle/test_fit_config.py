"""``fit_bundle``'s settings: FitConfig refuses what the ``fit`` flags refuse, with the same
limits (``detectors.limits``, named in the error); a dict of settings is taken; a re-run reads
its cached features and training records only from regular files inside the bundle."""

from __future__ import annotations

import dataclasses
import os
import shutil
import warnings

import numpy as np
import pytest
import torch

from detectors import limits
from detectors.bundle import FEATURES_FILE, FitConfig, fit_bundle
from detectors.bundle.fit import TRAINED_ON_FILE, as_config
from detectors.cli import build_parser

TINY = dict(detectors=("likelihood",), steps=2, depth=1, hidden=4, levels=1, max_size=8, progress=False)


def _images(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8))


#: FitConfig setting -> (the fit flag, its highest value)
FLAGS = {
    "steps": ("--steps", limits.MAX_STEPS),
    "batch_size": ("--batch", limits.MAX_BATCH),
    "levels": ("--levels", limits.MAX_LEVELS),
    "depth": ("--depth", limits.MAX_DEPTH),
    "hidden": ("--hidden", limits.MAX_HIDDEN),
    "size": ("--size", limits.MAX_IMAGE_SIZE),
    "feature_size": ("--feature-size", limits.MAX_FEATURE_SIZE),
    "seed": ("--seed", limits.MAX_SEED),
    "max_images": ("--n", limits.MAX_IMAGES),
}


@pytest.mark.parametrize("name", list(FLAGS))
def test_fit_config_has_the_upper_limits_of_the_fit_flags(name, capsys):
    flag, high = FLAGS[name]
    parse = build_parser("detectors").parse_args
    parse(["fit", "--data", "x", "--out", "y", flag, str(high)])  # the highest value passes both
    FitConfig(**{name: high}).check()
    with pytest.raises(SystemExit):
        parse(["fit", "--data", "x", "--out", "y", flag, str(high + 1)])
    assert "limit MAX_" in capsys.readouterr().err
    with pytest.raises(
        ValueError, match=rf"FitConfig: {name} {high + 1} is above the limit of {high} \(MAX_"
    ) as err:
        FitConfig(**{name: high + 1}).check()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "settings, error, words",
    [
        (dict(hidden=0), ValueError, "hidden must be an integer >= 1"),
        (dict(hidden=True), TypeError, "hidden must be an integer"),
        (dict(steps=2.5), TypeError, "steps must be an integer"),
        (dict(max_size=10**6), ValueError, "max_size 1000000 is above the limit of 256"),
        (dict(size=12, levels=3), ValueError, "size must be a positive multiple of 8"),
        (dict(channels=2), ValueError, "channels must be 1 (grey), 3 (RGB) or None"),
        (dict(lr=float("nan")), ValueError, "lr must be a finite number > 0 and <= 1"),
        (dict(fpr=1.0), ValueError, "fpr must be a finite number > 0 and < 1"),
        (dict(holdout="0.2"), TypeError, "holdout must be a finite number"),
        (dict(progress="no"), TypeError, "progress must be True or False"),
        (dict(detectors="pca"), TypeError, "detectors must be a tuple of catalogue names"),
    ],
)
def test_fit_config_refuses_bad_settings_in_one_line(settings, error, words):
    with pytest.raises(error) as err:
        FitConfig(**settings).check()
    assert words in str(err.value) and "\n" not in str(err.value)


def test_fit_bundle_takes_a_dict_of_settings_and_refuses_other_configs(tmp_path):
    cfg = as_config({**TINY, "detectors": ["likelihood"]})
    assert cfg == FitConfig(**TINY) and cfg.detectors == ("likelihood",)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bundle = fit_bundle(_images(), tmp_path / "det", dict(TINY), say=lambda *_: None)
    assert list(bundle) == ["likelihood"] and bundle.config["fit"]["steps"] == 2
    with pytest.raises(TypeError, match=r"config has unknown settings 'hiden'; FitConfig takes detectors, "):
        fit_bundle(_images(), tmp_path / "x", {"hiden": 4})
    with pytest.raises(TypeError, match=r"config must be a FitConfig or a dict of its settings, got int"):
        fit_bundle(_images(), tmp_path / "x", 3)
    assert not os.path.exists(tmp_path / "x")
    assert as_config(None) == FitConfig() and dataclasses.asdict(as_config(FitConfig(**TINY)))["hidden"] == 4


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A bundle with cached features (knn at 32x32) and a flow run directory."""
    out = tmp_path_factory.mktemp("resume") / "det"
    cfg = FitConfig(**{**TINY, "detectors": ("likelihood", "knn"), "feature_size": 32})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_bundle(_images(), out, cfg, say=lambda *_: None)
    return out, cfg


def _refit(out, cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_bundle(_images(), out, cfg, say=lambda *_: None)


def test_resume_refuses_a_features_cache_that_links_out_of_the_bundle(fitted, tmp_path):
    src, cfg = fitted
    out = tmp_path / "det"
    shutil.copytree(src, out, symlinks=True)
    elsewhere = tmp_path / "elsewhere.safetensors"
    shutil.copy(out / FEATURES_FILE, elsewhere)
    os.remove(out / FEATURES_FILE)
    os.symlink(elsewhere, out / FEATURES_FILE)
    with pytest.raises(ValueError, match=rf"{FEATURES_FILE}: .* outside the bundle") as err:
        _refit(out, cfg)
    assert "\n" not in str(err.value)
    os.remove(out / FEATURES_FILE)
    os.mkfifo(out / FEATURES_FILE)  # a named pipe would hang the read
    with pytest.raises(ValueError, match=r"is not a regular file"):
        _refit(out, cfg)


def test_resume_replaces_a_damaged_features_cache(fitted, tmp_path):
    src, cfg = fitted
    out = tmp_path / "det"
    shutil.copytree(src, out, symlinks=True)
    before = _refit(out, cfg).thresholds
    (out / FEATURES_FILE).write_bytes(b"not safetensors")
    assert _refit(out, cfg).thresholds == before
    assert (out / FEATURES_FILE).read_bytes()[:15] != b"not safetensors"


def test_resume_refuses_a_training_record_that_links_out_or_is_malformed(fitted, tmp_path):
    src, cfg = fitted
    out = tmp_path / "det"
    shutil.copytree(src, out, symlinks=True)
    record = out / "models" / "flow" / TRAINED_ON_FILE
    assert record.is_file()
    outside = tmp_path / "record.json"
    outside.write_text('{"images": []}')
    os.remove(record)
    os.symlink(outside, record)
    with pytest.raises(ValueError, match=rf"{TRAINED_ON_FILE}: .* outside the bundle"):
        _refit(out, cfg)
    os.remove(record)
    record.write_text('{"images": [1, 2]}')
    with pytest.raises(ValueError, match=r"'images' must be a list of image digests"):
        _refit(out, cfg)
