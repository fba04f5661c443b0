"""The demo (`make demo`) in its tiny smoke configuration, end to end, and its pieces."""

import json
import os
import subprocess
import sys

import pytest
import torch

from detectors.data import broaden, natural_patches
from detectors.report import load_results

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_broaden_is_deterministic_and_photometric_only():
    x = natural_patches(64, seed=3)
    a, b = broaden(x, seed=1), broaden(x, seed=1)
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == x.shape
    assert not torch.equal(a, broaden(x, seed=2))
    # every transform is monotone per image (or inverts it): pixel ranks are kept or reversed,
    # so the spatial structure of each patch survives
    for src, dst in zip(x.flatten(1).float(), a.flatten(1).float()):
        c = torch.corrcoef(torch.stack([src, dst]))[0, 1]
        assert abs(c) > 0.5 or dst.std() < 1
    # it adds dark flat regions and light-on-dark structure that the photos lack
    assert (a == 0).float().mean() > (x == 0).float().mean() + 0.05
    with pytest.raises(TypeError):
        broaden(x.float())


def test_demo_smoke_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "detectors", "demo", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = load_results(out / "results.json")
    assert results["in_distribution"].startswith("Fashion-MNIST") and results["ood"] == "MNIST"
    names = list(results["detectors"])
    for expected in (
        "likelihood",
        "Diff",
        "Diff-dagger",
        "last scale",
        "PNG complexity",
        "approximate mass",
        "typicality (batch 1)",
        "outlier loss: likelihood",
        "features: KNN (k=5)",
        "features: contrastive flow",
        "PixelCNN++: Diff",
        "classifier: MSP",
        "classifier: Mahalanobis",
        "in-vs-general classifier",
        "ensemble: Diff-dagger + features: PCA",
        "ensemble: PNG complexity + features: PCA",
        "ensemble: outlier loss: Diff-dagger + features: PCA",
    ):
        assert expected in names
    assert results["uses"]["classifier: Mahalanobis"] == "labels"
    assert results["uses"]["ensemble: outlier loss: Diff-dagger + features: PCA"] == "aux data"
    assert results["uses"]["ensemble: PNG complexity + features: PCA"] == "-"
    assert results["uses"]["in-vs-general classifier"] == "aux data"
    for metrics in results["detectors"].values():
        assert set(metrics) >= {"auroc", "aupr_in", "aupr_out", "fpr95", "tnr95"}
        assert abs(metrics["fpr95"] + metrics["tnr95"] - 1) < 1e-12
    for f in (
        "report.md",
        "roc.png",
        "histograms.png",
        "analysis/per_scale_correlations.png",
        "analysis/pixel_differences.png",
        "analysis/latents.png",
    ):
        assert (out / f).stat().st_size > 0, f
    # the printed table is the report's table
    assert "likelihood" in proc.stdout and "AUROC" in proc.stdout
    assert json.loads((out / "results.json").read_text())["config"]["steps_in"] == 2
    # a second run resumes from the finished checkpoints instead of retraining
    proc2 = subprocess.run(
        [sys.executable, "-m", "detectors", "demo", "--smoke", "--out", str(out), "--no-features"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert "resumed from step 2" in proc2.stdout + proc2.stderr


def test_evaluate_cli_on_saved_flows(tmp_path):
    import invflow

    torch.manual_seed(0)
    for name in ("in", "general"):
        invflow.save(invflow.Glow(1, 28, levels=2, steps=1, hidden=8), tmp_path / f"{name}.safetensors")
    out = tmp_path / "eval"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "detectors",
            "evaluate",
            "--in-model",
            str(tmp_path / "in.safetensors"),
            "--general-model",
            str(tmp_path / "general.safetensors"),
            "--n",
            "16",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = load_results(out)
    assert list(results["detectors"]) == [
        "likelihood",
        "last scale",
        "PNG complexity",
        "approximate mass",
        "Diff",
        "Diff, last scale",
    ]
    assert results["counts"]["Diff"] == {"in": 16, "ood": 16}
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "detectors",
            "evaluate",
            "--in-model",
            str(tmp_path / "in.safetensors"),
            "--in-data",
            "nope",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "unknown dataset 'nope'" in bad.stderr


def test_demo_scores_the_zoo_models_without_training(tmp_path):
    """The default demo (no --train) uses detectors.zoo: no model is trained, the report names
    the zoo models and every flow detector of detectors.experiments is in the table."""
    from detectors.experiments import demo
    from detectors.experiments.runs import ZOO_ROLES

    torch.set_num_threads(1)
    results = demo.run(out=str(tmp_path), n_eval=24, features=False)
    assert not (tmp_path / "models").exists()
    names = set(results["detectors"])
    assert {
        "likelihood",
        "last scale",
        "Diff",
        "Diff-dagger",
        "outlier loss: Diff-dagger",
        "approximate mass",
        "penalised: approximate mass",
        "PNG complexity",
    } <= names
    assert not any(n.startswith(("PixelCNN++", "classifier")) for n in names)
    report = (tmp_path / "report.md").read_text()
    for name in ZOO_ROLES.values():
        assert name in report
    assert results["config"]["train"] is False
