"""`python -m detectors reproduce` (docs/results.md) in its smoke configuration, the
summary over seeds, and the pieces it adds: the z-score Ensemble and CachedFeatures."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from detectors.experiments.reproduce import (
    EXPERIMENTS,
    OVR_FLOWS,
    SMOKE,
    ReproduceConfig,
    summarize,
    summary_markdown,
)
from detectors.experiments.runs import DEMO_ENSEMBLES, FEATURE_FLOWS, ensembles, feature_flows
from detectors.features import CachedFeatures
from detectors.metrics import evaluate
from detectors.scores import KNN, Detector, Ensemble, MSEToMean

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


class Coordinate(Detector):
    """Scores = one coordinate of a vector input (a transparent member for ensembles)."""

    def __init__(self, dim, scale=1.0, **kw):
        super().__init__(**kw)
        self.dim, self.scale = dim, scale

    def _score_batch(self, x):
        return self.scale * x[:, self.dim].double()


def test_ensemble_is_the_sum_of_standardised_member_scores():
    g = torch.Generator().manual_seed(0)
    val, x = torch.randn(500, 2, generator=g), torch.randn(7, 2, generator=g) * 3
    a, b = Coordinate(0, scale=10.0), Coordinate(1, scale=0.1)
    ens = Ensemble({"a": a, "b": b}, weights={"b": 2.0}).fit(val)
    sa, sb = 10 * val[:, 0].double(), 0.1 * val[:, 1].double()
    expected = (10 * x[:, 0].double() - sa.mean()) / sa.std() + 2 * (
        0.1 * x[:, 1].double() - sb.mean()
    ) / sb.std()
    torch.testing.assert_close(ens.score(x), expected)
    z = ens.member_z_scores(val)
    assert abs(float(z["a"].mean())) < 1e-9 and abs(float(z["a"].std()) - 1) < 1e-9
    # the threshold flags the requested share of the fitting data
    assert abs(float(ens.predict(val).double().mean()) - 0.05) < 0.01


def test_named_ensembles_are_detectors_ensembles_of_the_named_members():
    """experiments.ensembles (the demo's and the OOD suite's ensemble rows): "A + B" names
    members of the given dict; the result equals Ensemble fitted on the same data; an unknown
    name is refused with the known ones."""
    g = torch.Generator().manual_seed(2)
    val, x = torch.randn(300, 2, generator=g), torch.randn(9, 2, generator=g)
    dets = {"last scale": Coordinate(0), "features: PCA": Coordinate(1, scale=5.0)}
    got = ensembles(dets, ["last scale + features: PCA"], val)
    assert list(got) == ["ensemble: last scale + features: PCA"]
    want = Ensemble(dict(dets)).fit(val)
    torch.testing.assert_close(got["ensemble: last scale + features: PCA"].score(x), want.score(x))
    with pytest.raises(ValueError, match="unknown detector.*'KNN'.*known"):
        ensembles(dets, ["last scale + KNN"], val)
    assert all(" + " in spec for spec in DEMO_ENSEMBLES)


def test_ensemble_beats_members_that_see_different_evidence():
    g = torch.Generator().manual_seed(1)
    x_in = torch.randn(2000, 2, generator=g)
    x_out = torch.randn(2000, 2, generator=g) + torch.tensor([1.5, 1.5])  # shifted in both coordinates
    a, b = Coordinate(0), Coordinate(1)
    ens = Ensemble({"a": a, "b": b}).fit(x_in[:1000])
    auc = {
        name: evaluate(d.score(x_in[1000:]), d.score(x_out[:1000]))["auroc"]
        for name, d in (("a", a), ("b", b), ("ens", ens))
    }
    assert auc["ens"] > max(auc["a"], auc["b"]) + 0.02


def test_ensemble_errors_and_uses():
    with pytest.raises(ValueError):
        Ensemble({})
    with pytest.raises(TypeError):
        Ensemble({"x": object()})
    with pytest.raises(ValueError):
        Ensemble({"a": Coordinate(0)}, weights={"c": 1.0})
    with pytest.raises(RuntimeError):
        Ensemble({"a": Coordinate(0)}).score(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="same score"):
        Ensemble({"a": Coordinate(0)}).fit(torch.zeros(5, 2))
    mixed = Ensemble({"a": Coordinate(0), "r": MSEToMean()})
    assert mixed.uses == "-"
    mixed.members["r"].uses = "aux data"
    assert Ensemble(mixed.members).uses == "aux data"


class CountingExtractor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.w = torch.nn.Parameter(torch.randn(16, 5, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        self.calls += len(x)
        return x.float().flatten(1) @ self.w + 1.0


def test_cached_features_looks_up_by_content_and_extracts_the_rest():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8, generator=g)
    stored = torch.randn(6, 5, generator=g)
    ext = CountingExtractor()
    feats = CachedFeatures(ext).add(images[:6], stored)
    out = feats(images[[5, 0, 7, 7, 9]])
    torch.testing.assert_close(out[:2], stored[[5, 0]])
    direct = ext.w.detach()
    new = images[[7, 9]].float().flatten(1) @ direct + 1.0
    torch.testing.assert_close(out[2:], torch.nn.functional.normalize(new[[0, 0, 1]], dim=1))
    assert ext.calls == 2 and len(feats) == 8  # 7 and 9 extracted once, then cached
    feats(images[[7, 9]])
    assert ext.calls == 2
    with pytest.raises(KeyError):
        CachedFeatures()(images)
    with pytest.raises(ValueError):
        CachedFeatures().add(images, stored)
    # as a detector transform: images in, feature-space scores out
    det = KNN(k=1, transform=feats).fit(images[:6])
    torch.testing.assert_close(det.score(images[:2]), KNN(k=1).fit(stored).score(stored[:2]))


def _fake_results(root, name, seed, auroc, extra):
    d = root / name / f"seed{seed}"
    d.mkdir(parents=True)
    dets = {"likelihood": {"auroc": auroc, "aupr_in": 0.5, "aupr_out": 0.5, "fpr95": 0.9, "tnr95": 0.1}}
    (d / "results.json").write_text(
        json.dumps(
            {
                "detectors": dets,
                "uses": {"likelihood": "-"},
                "config": {"seconds": 10.0 + seed},
                "extra": extra,
            }
        )
    )


def test_summarize_mean_and_sample_std_over_seeds(tmp_path):
    for seed, auroc, rho in ((0, 0.10, 0.9), (1, 0.20, 0.7), (2, 0.30, 0.8)):
        _fake_results(tmp_path, "exp", seed, auroc, {"spearman": {"total": rho}})
    s = summarize("exp", str(tmp_path))
    assert s["seeds"] == [0, 1, 2]
    mean, std = s["detectors"]["likelihood"]["auroc"]
    assert math.isclose(mean, 20.0) and math.isclose(std, 10.0)  # percent, ddof=1
    assert np.allclose(s["extra"]["spearman"]["total"], (0.8, 0.1))
    text = (tmp_path / "exp" / "summary.md").read_text()
    assert "| likelihood | 20.0 ± 10.0 |" in text and text == summary_markdown(s)
    assert (tmp_path / "exp" / "summary.png").stat().st_size > 1000
    with pytest.raises(FileNotFoundError):
        summarize("missing", str(tmp_path / "nothing"))


def test_reproduce_smoke_end_to_end(tmp_path):
    """Every experiment runs in its tiny configuration for two seeds and is summarised."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    names = list(EXPERIMENTS)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "detectors",
            "reproduce",
            *names,
            "--seeds",
            "0",
            "1",
            "--smoke",
            "--out",
            str(tmp_path),
            "--threads",
            "1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in names:
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["seeds"] == [0, 1]
        for row in summary["detectors"].values():
            assert len(row["auroc"]) == 2 and 0 <= row["auroc"][0] <= 100
        assert (tmp_path / name / "seed1" / "results.json").exists()
        assert (tmp_path / name / "summary.png").stat().st_size > 1000
    glow = json.loads((tmp_path / "glow" / "summary.json").read_text())
    for row in (
        "likelihood",
        "Diff",
        "Diff-dagger",
        "outlier loss: Diff",
        "margin loss: likelihood",
        "penalised: approximate mass",
        "PNG complexity",
        "ensemble: PNG complexity + features PCA",
    ):
        assert row in glow["detectors"]
    assert glow["detectors"]["outlier loss: Diff"]["uses"] == "aux data"
    assert "in vs general Glow, total" in glow["extra"]["spearman"]
    # the models are shared between experiments of a seed and reused on a second run
    proc2 = subprocess.run(
        [
            sys.executable,
            "-m",
            "detectors",
            "reproduce",
            "architectures",
            "--seeds",
            "0",
            "--smoke",
            "--out",
            str(tmp_path),
            "--threads",
            "1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert "resumed from step 2" in proc2.stdout + proc2.stderr
    # one-vs-rest: Schmier et al. 2022's Flow and contrastive flow per class beside the feature baselines
    ovr = json.loads((tmp_path / "one-vs-rest" / "summary.json").read_text())["detectors"]
    assert list(ovr) == ["MSE to mean", "KNN (k=1)", "KNN (k=5)", "KDE", "PCA", "Flow", "contrastive flow"]
    for row in ovr.values():
        assert len(row["per_class_auroc"]) == 10 and all(0 <= m <= 100 for m, _ in row["per_class_auroc"])
    assert ovr["contrastive flow"]["uses"] == "aux data" and ovr["Flow"]["uses"] == "-"
    for k in range(10):  # one Flow and one contrastive flow per class, at the smoke step count
        for model in ("in", "contrastive"):
            latest = tmp_path / "seed1" / "models" / f"ovr-class{k}-flow-{model}" / "latest"
            assert latest.read_text().strip() == f"step-{SMOKE['ovr_flow_steps']:07d}"
    assert "| contrastive flow |" in (tmp_path / "one-vs-rest" / "summary.md").read_text()


def _unit_features(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def test_feature_flows_trains_only_the_flows_asked_for(tmp_path):
    cfg = ReproduceConfig(**SMOKE)
    train, aux, x = _unit_features(40, 6, 0), _unit_features(40, 6, 1), _unit_features(5, 6, 2)
    models = tmp_path / "models"

    dets = feature_flows(cfg, train, None, str(tmp_path), which=("Flow",), name="a", steps=3)
    assert list(dets) == ["Flow"] and sorted(os.listdir(models)) == ["a-in"]
    assert (models / "a-in" / "latest").read_text().strip() == "step-0000003"
    s = dets["Flow"].score(x)
    assert s.shape == (5,) and torch.isfinite(s).all()

    dets = feature_flows(cfg, train, aux, str(tmp_path), which=OVR_FLOWS, name="b")
    assert list(dets) == ["Flow", "contrastive flow"] and dets["contrastive flow"].uses == "aux data"
    assert sorted(p for p in os.listdir(models) if p.startswith("b-")) == ["b-contrastive", "b-in"]
    assert (models / "b-contrastive" / "latest").read_text().strip() == f"step-{cfg.feature_flow_steps:07d}"
    # the contrastive flow started from the Flow and moved: different scores
    assert not torch.allclose(dets["Flow"].score(x), dets["contrastive flow"].score(x))

    assert list(feature_flows(cfg, train, aux, str(tmp_path), name="c")) == list(FEATURE_FLOWS)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(which=("KDE",)), "which"),
        (dict(which=()), "which"),
        (dict(steps=0), "steps"),
        (dict(steps=2.0), "steps"),
        (dict(which=("contrastive flow",), aux=None), "aux"),
        (dict(which=("Flow-ratio",), aux=None), "aux"),
    ],
)
def test_feature_flows_rejects_bad_arguments(tmp_path, kw, match):
    args = dict(aux=_unit_features(10, 6, 1)) | kw
    with pytest.raises(ValueError, match=match):
        feature_flows(ReproduceConfig(**SMOKE), _unit_features(10, 6, 0), out=str(tmp_path), **args)
    assert not (tmp_path / "models").exists()  # nothing trained before the check


def test_unknown_experiment_is_refused():
    from detectors.experiments.reproduce import reproduce, run_experiment

    with pytest.raises(ValueError, match="unknown experiment"):
        reproduce(["nope"], seeds=[0], out="/nonexistent")
    with pytest.raises(ValueError, match="unknown experiment"):
        run_experiment("nope", 0, "/nonexistent")


def test_parse_overrides_types_and_errors():
    from detectors.experiments.reproduce import ReproduceConfig, parse_overrides

    o = parse_overrides(["steps_arch=250", "lr=1e-3"])
    assert o == {"steps_arch": 250, "lr": 0.001} and isinstance(o["steps_arch"], int)
    assert ReproduceConfig(**o).steps_arch == 250
    for bad in (["nope=1"], ["steps"], ["seed=3"], ["steps=ten"]):
        with pytest.raises(ValueError):
            parse_overrides(bad)


@pytest.mark.parametrize(
    "item, words",
    [
        ("hidden=1000000000", "hidden must be in [1, 1024] (1024 is the limit MAX_HIDDEN), got 1000000000"),
        ("batch_size=0", "batch_size must be in [1, 4096], got 0"),
        ("flow_steps=100000", "the limit MAX_DEPTH"),
        ("n_eval=1000000000000", "the limit MAX_IMAGES"),
        ("feature_size=8", "feature_size must be in [32, 512]"),
        ("translate=28", "the limit the 28-pixel side of the images"),
        ("lr=0", "lr must be in (0, 1], got 0"),
        ("lr=nan", "lr must be in (0, 1], got nan"),
        ("lr_finetune=inf", "lr_finetune must be in (0, 1]"),
        ("feature_noise=-1", "feature_noise must be in [0, 1]"),
        ("steps=2.5", "steps takes an int"),
    ],
)
def test_set_values_are_bounded_like_the_flags(item, words):
    from detectors.experiments.reproduce import parse_overrides

    with pytest.raises(ValueError) as err:
        parse_overrides([item])
    assert words in str(err.value) and str(err.value).startswith(f"--set {item!r}: ")


def test_set_takes_the_ends_of_each_range_and_bools_as_words():
    from detectors.experiments.config import SETTING_RANGES
    from detectors.experiments.reproduce import ReproduceConfig, parse_overrides

    fields = ReproduceConfig.field_types()
    for key, (low, high, _) in SETTING_RANGES.items():
        if key in fields and key not in ("lr", "lr_finetune"):
            assert parse_overrides([f"{key}={low}", f"{key}={high}"]) == {key: high}
    assert parse_overrides(["feature_noise=0", "lr=1"]) == {"feature_noise": 0.0, "lr": 1.0}
    from detectors.experiments.config import parse_setting

    assert parse_setting("features", "False", "x") is False and parse_setting("baselines", "yes", "x") is True
    with pytest.raises(ValueError, match=r"x: features takes true or false, got .maybe."):
        parse_setting("features", "maybe", "x")


def test_feature_caches_are_read_from_regular_files_and_damaged_ones_recomputed(tmp_path):
    from detectors.experiments.runs import read_cache

    path = str(tmp_path / "features.pt")
    assert read_cache(path) is None
    torch.save({"key": "k", "features": {"train": torch.ones(2, 3)}}, path)
    assert torch.equal(read_cache(path)["features"]["train"], torch.ones(2, 3))
    for damaged in (b"", b"not a torch file", b"PK\x03\x04 cut"):
        (tmp_path / "features.pt").write_bytes(damaged)
        assert read_cache(path) is None  # computed again by the caller
    torch.save(torch.zeros(3), path)  # not a dict
    assert read_cache(path) is None
    os.remove(path)
    os.mkfifo(path)  # would hang torch.load
    with pytest.raises(ValueError, match=r"features.pt is a named pipe \(FIFO\), not a regular file"):
        read_cache(path)
