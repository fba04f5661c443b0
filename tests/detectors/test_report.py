"""detectors.report: results.json schema, report.md, plots, tables, atomic writes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from detectors import report as R
from detectors.metrics import METRICS, evaluate

PNG = b"\x89PNG\r\n\x1a\n"


def make_scores(seed=0):
    rng = np.random.default_rng(seed)
    s_in, s_out = rng.normal(0, 1, 200), rng.normal(1.5, 1, 150)
    floored = s_out.copy()
    floored[:5] = 3e6  # -log p floor of non-finite likelihoods (Schirrmeister et al. 2020 S4.5)
    return {
        "likelihood": (s_in, s_out),
        "ratio": (torch.from_numpy(s_in * 0.5), torch.from_numpy(s_out + 1.0)),
        "floored": (s_in, floored),
        "with_inf": (np.append(s_in, -np.inf), np.append(s_out, np.inf)),
    }


def test_write_report_schema_and_values(tmp_path):
    scores = make_scores()
    config = {"model": "glow", "levels": 2, "lr": 5e-4, "shape": (1, 28, 28)}
    res = R.write_report(
        tmp_path,
        "mnist",
        "fashion",
        scores,
        config=config,
        notes=["tiny run"],
        supervised={"ratio": "aux data"},
    )
    with open(tmp_path / "results.json") as f:
        on_disk = json.load(f)
    assert on_disk == res
    assert list(on_disk)[:4] == ["in_distribution", "ood", "config", "detectors"]
    assert on_disk["in_distribution"] == "mnist" and on_disk["ood"] == "fashion"
    assert on_disk["config"] == {"model": "glow", "levels": 2, "lr": 5e-4, "shape": [1, 28, 28]}
    assert list(on_disk["detectors"]) == list(scores)
    for name, (s_in, s_out) in scores.items():
        m = on_disk["detectors"][name]
        assert list(m) == list(METRICS)
        expected = evaluate(s_in, s_out)
        for k in METRICS:
            assert isinstance(m[k], float) and 0.0 <= m[k] <= 1.0
            assert m[k] == pytest.approx(expected[k], abs=1e-12)
    assert on_disk["uses"] == {"likelihood": "-", "ratio": "aux data", "floored": "-", "with_inf": "-"}
    assert on_disk["counts"]["with_inf"] == {"in": 201, "ood": 151}
    assert on_disk["notes"] == ["tiny run"]
    assert R.load_results(tmp_path) == res
    assert R.load_results(tmp_path / "results.json") == res


def test_report_md_and_pngs(tmp_path):
    scores = make_scores()
    res = R.write_report(
        tmp_path,
        "mnist",
        "fashion",
        scores,
        config={"model": "glow"},
        notes=["hello note"],
        supervised={"ratio": "labels"},
    )
    md = (tmp_path / "report.md").read_text()
    for name in scores:
        assert f"| {name} |" in md
    assert "mnist" in md and "fashion" in md and "hello note" in md and "| model | `glow` |" in md
    assert R.markdown_table(res) in md
    auroc = f"{100 * res['detectors']['likelihood']['auroc']:.1f}"
    assert auroc in md
    assert "](roc.png)" in md and "](histograms.png)" in md
    assert "labels" in md
    for f in ("roc.png", "histograms.png"):
        data = (tmp_path / f).read_bytes()
        assert data[:8] == PNG and len(data) > 5000
    assert sorted(os.listdir(tmp_path)) == ["histograms.png", "report.md", "results.json", "roc.png"]


def test_no_plots(tmp_path):
    R.write_report(tmp_path, "a", "b", {"likelihood": ([0.0, 1.0, 2.0], [3.0, 4.0])}, plots=False)
    assert sorted(os.listdir(tmp_path)) == ["report.md", "results.json"]
    assert "png" not in (tmp_path / "report.md").read_text()


def test_nan_scores_raise_naming_detector_and_write_nothing(tmp_path):
    scores = make_scores()
    s_in, s_out = scores["ratio"]
    s_out = s_out.clone()
    s_out[3] = float("nan")
    scores["ratio"] = (s_in, s_out)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="ratio"):
        R.write_report(out, "a", "b", scores)
    assert not out.exists() or os.listdir(out) == []
    with pytest.raises(ValueError, match="not detectors"):
        R.write_report(out, "a", "b", make_scores(), supervised={"nope": True})
    with pytest.raises(ValueError):
        R.write_report(out, "a", "b", {})


def test_robust_range_ignores_floors_but_keeps_groups():
    rng = np.random.default_rng(0)
    s_in, s_out = rng.normal(0, 1, 200), rng.normal(2, 1, 150)
    s_out[:8] = 3e6  # 5% floored: beyond the 99.5th percentile's reach
    lo, hi = R.robust_range([s_in, s_out])
    assert -6 < lo < -1 and 4 < hi < 20
    far = rng.normal(1e4, 1, 20)  # a well separated OOD group stays in view
    assert R.robust_range([s_in, far])[1] > 1e4
    assert R.robust_range([[np.inf], [-np.inf]]) is None
    assert R.robust_range([[1.0, 1.0]]) == (0.5, 1.5)


def test_format_table_and_markdown_table():
    results = {
        "in_distribution": "a",
        "ood": "b",
        "config": {},
        "detectors": {
            "likelihood": {
                "auroc": 0.12345,
                "aupr_in": 0.5,
                "aupr_out": 0.25,
                "fpr95": 0.999,
                "tnr95": 0.001,
            },
            "a_longer_name": {"auroc": 1.0, "aupr_in": 0.0, "aupr_out": 0.05, "fpr95": 0.0, "tnr95": 1.0},
        },
    }
    table = R.format_table(results)
    lines = table.splitlines()
    assert lines[0].split() == ["detector", "AUROC", "AUPR-in", "AUPR-out", "FPR95"]
    assert lines[2].split() == ["likelihood", "12.3", "50.0", "25.0", "99.9"]
    assert lines[3].split() == ["a_longer_name", "100.0", "0.0", "5.0", "0.0"]
    assert len({len(l) for l in (lines[0], lines[2], lines[3])}) == 1  # fixed width
    assert R.format_table(results["detectors"]) == table
    assert "TNR95" in R.format_table(results, columns=("auroc", "tnr95"))
    with pytest.raises(ValueError):
        R.format_table(results, columns=("accuracy",))
    md = R.markdown_table(results).splitlines()
    assert md[0] == "| detector | AUROC | AUPR-in | AUPR-out | FPR95 |"
    assert md[2] == "| likelihood | 12.3 | 50.0 | 25.0 | 99.9 |"
    results["uses"] = {"likelihood": "-", "a_longer_name": "labels"}
    assert R.format_table(results).splitlines()[3].split()[-2:] == ["supervised", "labels"]
    assert R.format_table(results).splitlines()[2].split()[-2:] == ["unsupervised", "-"]
    assert R.markdown_table(results).splitlines()[0].endswith("| FPR95 | setting | uses |")
    assert R.setting("labels, aux data") == "supervised" and R.setting("aux data") == "unsupervised"


def test_load_results_validates(tmp_path):
    good = {"in_distribution": "a", "ood": "b", "config": {}, "detectors": {"x": {k: 0.5 for k in METRICS}}}
    p = tmp_path / "results.json"
    p.write_text(json.dumps(good))
    assert R.load_results(p) == good
    for bad in (
        {k: v for k, v in good.items() if k != "ood"},
        {**good, "detectors": {"x": {"auroc": 0.5}}},
        {**good, "detectors": {"x": {**good["detectors"]["x"], "auroc": 1.5}}},
        {**good, "config": []},
        [1, 2],
    ):
        p.write_text(json.dumps(bad))
        with pytest.raises(ValueError):
            R.load_results(p)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        R.load_results(p)


def test_atomic_write_leaves_no_temp_files(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    R.atomic_write(target, "old")
    R.write_report(tmp_path, "a", "b", make_scores())
    R.write_report(tmp_path, "a", "b", make_scores(1), plots=False)  # overwrite in place
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp") or f.startswith(".")]

    # a crash during the replace keeps the previous file intact and removes the temporary one
    before = target.read_text()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(R.os, "replace", boom)
    with pytest.raises(OSError):
        R.write_report(tmp_path, "a", "b", make_scores(2), plots=False)
    monkeypatch.undo()
    assert target.read_text() == before
    assert json.loads(before)["detectors"]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp") or f.startswith(".")]


DEMO_NAMES = [  # the demo's 27 detectors, in its table order
    "likelihood",
    "typicality (batch 1)",
    "scale 1",
    "last scale",
    "Diff",
    "Diff, last scale",
    "Diff-dagger",
    "PNG complexity",
    "outlier loss: likelihood",
    "outlier loss: last scale",
    "outlier loss: Diff",
    "outlier loss: Diff-dagger",
    "approximate mass",
    "penalised: likelihood",
    "penalised: approximate mass",
    "features: MSE to mean",
    "features: MSE-ratio",
    "features: KNN (k=5)",
    "features: KDE",
    "features: PCA",
    "features: Flow",
    "features: Flow-ratio",
    "features: contrastive flow",
    "ensemble: Diff-dagger + features: PCA",
    "ensemble: outlier loss: Diff-dagger + features: PCA",
    "ensemble: PNG complexity + features: PCA",
    "ensemble: last scale + features: PCA",
]


def _demo_like_scores(names, n=300):
    rng = np.random.default_rng(1)
    arrays = {
        name: (rng.normal(0, 1, n), rng.normal(0.1 * (i % 20) - 0.5, 1, n)) for i, name in enumerate(names)
    }
    return arrays, {name: evaluate(*pair) for name, pair in arrays.items()}


def test_roc_families_group_by_name_prefix_or_by_the_given_mapping():
    groups = R.roc_families(DEMO_NAMES)
    assert list(groups) == [R.ROC_DEFAULT_FAMILY, "outlier loss", "penalised", "features", "ensemble"]
    assert [len(v) for v in groups.values()] == [9, 4, 2, 8, 4]
    assert sum(groups.values(), []) == sorted(DEMO_NAMES, key=[n for g in groups.values() for n in g].index)
    assert R.roc_families(["a", "b: c"], families={"a": "mine"}) == {"mine": ["a"], "b": ["b: c"]}


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0) * max(h, 0)


def test_roc_figure_shows_every_demo_curve_in_panels_whose_legends_cover_no_axes():
    arrays, metrics = _demo_like_scores(DEMO_NAMES)
    fig = R.roc_figure(arrays, metrics, title="demo")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == list(R.roc_families(DEMO_NAMES))
    labels = [t.get_text() for ax in axes for t in ax.get_legend().get_texts()]
    assert len(labels) == 27  # one legend entry per detector, no chance line
    assert labels[0] == f"likelihood ({100 * metrics['likelihood']['auroc']:.1f}%)"
    assert f"KDE ({100 * metrics['features: KDE']['auroc']:.1f}%)" in labels  # family prefix dropped
    legends = [ax.get_legend().get_window_extent(renderer) for ax in axes]
    for ax in axes:
        assert len(ax.get_lines()) - 1 == len(ax.get_legend().get_texts())  # curves + the diagonal
        box = ax.get_window_extent(renderer)
        for legend in legends:
            assert _overlap(box, legend) == 0  # no legend covers any panel
    for i, a in enumerate(legends):
        assert all(_overlap(a, b) == 0 for b in legends[i + 1 :])


def test_plot_roc_keeps_its_signature_and_caps_crowded_panels(tmp_path):
    arrays, metrics = _demo_like_scores([f"features: d{i}" for i in range(13)])
    R.plot_roc(arrays, metrics, str(tmp_path / "roc.png"))  # positional, as write_report calls it
    assert (tmp_path / "roc.png").read_bytes()[:8] == PNG
    fig = R.roc_figure(arrays, metrics, per_panel=4)
    (ax,) = fig.axes
    assert ax.get_title() == "features (best 4; 9 more in the table)"
    best = sorted(arrays, key=lambda n: -metrics[n]["auroc"])[:4]
    shown = [t.get_text().split(" (")[0] for t in ax.get_legend().get_texts()]
    assert shown == [n.split(": ")[1] for n in arrays if n in best]
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="per_panel must be an int >= 1"):
            R.plot_roc(arrays, metrics, str(tmp_path / "x.png"), per_panel=bad)
