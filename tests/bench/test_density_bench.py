"""bench/density.py end to end in its --smoke mode on invflow alone (no peer needed): every
dataset x architecture has a row with a finite test NLL or the reason it has none, the
conditional rows carry a KL, the spline-op rows their ratios, --resume runs nothing twice; and
the pieces it rests on: the data splits, the conditional toy's exact density, the
parameter-count target."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import invflow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "density.py"
sys.path.insert(0, str(REPO / "bench"))

import density_data  # noqa: E402
import density_models  # noqa: E402

LAYER = {"nsf": "SplineCoupling", "maf": "MaskedAutoregressive", "realnvp": "AffineCoupling"}


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--libraries", "invflow", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, log
    assert "Traceback" not in proc.stdout + proc.stderr, log
    return proc


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    path = tmp_path_factory.mktemp("density") / "smoke.json"
    proc = run("--json", str(path))
    return path, proc.stdout, json.loads(path.read_text())


def test_every_row_has_a_number_or_a_reason(smoke):
    _, out, data = smoke
    assert data["config"]["mode"] == "smoke" and data["meta"]["versions"]["torch"]
    rows = {(r["dataset"], r["arch"]): r for r in data["records"] if r["case"] == "density"}
    assert set(rows) == {(d, a) for d in ("moons", "wine") for a in density_models.ARCHS}
    for (_, arch), r in rows.items():
        assert r["library"] == "invflow" and r["seed"] == 0
        if hasattr(invflow, LAYER[arch]):  # the layer exists: the row must be a trained number
            assert math.isfinite(r["test_nll"]) and math.isfinite(r["val_nll"]), r
            assert r["s_per_epoch"] > 0 and r["params"] > 0 and r["hidden"] >= 2, r
            assert 0 <= r["best_epoch"] < r["epochs"]
        else:
            assert r.get("test_nll") is None and f"invflow.{LAYER[arch]}" in r["note"], r
    assert "### Test NLL" in out and "| moons | realnvp |" in out


def test_conditional_and_kernel_rows(smoke):
    _, out, data = smoke
    cond = [r for r in data["records"] if r["case"] == "conditional"]
    assert {r["arch"] for r in cond} == set(density_models.ARCHS)
    realnvp = next(r for r in cond if r["arch"] == "realnvp")
    assert math.isfinite(realnvp["kl"]) and realnvp["kl_se"] > 0, realnvp
    kern = [r for r in data["records"] if r["case"] == "kernels"]
    ref = [r for r in kern if r["library"] == "invflow-reference"]
    assert len(ref) == 4  # two shapes x (forward, forward+backward)
    for r in ref:
        assert r["median_s"] > 0 and r["vs_reference"] == pytest.approx(1.0) and r["gbps"] > 0
    fused = [r for r in kern if r["library"] == "invflow-fused"]
    assert all(r.get("median_s") or r["note"] for r in fused)
    assert "### Spline op" in out


def test_resume_runs_only_missing_rows(smoke, tmp_path, capsys):
    import density  # in-process: the rows are all there, so nothing trains

    path, _, data = smoke
    copy = tmp_path / "resume.json"
    copy.write_text(path.read_text())
    threads = torch.get_num_threads()
    try:
        args = ["--smoke", "--libraries", "invflow", "--cases", "density", "--json", str(copy), "--resume"]
        assert density.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    assert f"resuming: {len(data['records'])} records" in capsys.readouterr().out
    assert json.loads(copy.read_text())["records"] == data["records"]


def test_splits_fixed_and_standardised():
    a, b = density_data.load("wine"), density_data.load("wine")
    assert torch.equal(a.test, b.test) and a.dim == 13
    assert len(a.train) + len(a.val) + len(a.test) == 178
    assert torch.allclose(a.train.mean(0), torch.zeros(13), atol=1e-5)
    assert torch.allclose(a.train.std(0, unbiased=False), torch.ones(13), atol=1e-5)
    board = density_data.checkerboard(2000, __import__("numpy").random.default_rng(0))
    cells = (board // 2).astype(int)  # the black squares of a 4 x 4 board on [-4, 4]^2
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all() and abs(board).max() <= 4


def test_conditional_toy_density_is_exact():
    toy = density_data.ConditionalGaussian()
    x, c = toy.dataset(64, seed=3)
    mu, sigma = toy.mean_std(c)
    want = torch.distributions.Normal(mu, sigma).log_prob(x).sum(1)
    assert torch.allclose(toy.log_prob(x, c), want, atol=1e-5)


def test_target_count_is_the_dense_conditioners():
    # invflow's affine couplings with invflow.nets.MLP are exactly the dense target
    model = density_models.build("invflow", "realnvp", 5, 16, 4)
    assert model.params() == density_models.target_params("realnvp", 5, 16, 4)
    assert density_models.matched_width("invflow", "realnvp", 5, 16, 4) == 16
    with pytest.raises(density_models.Unavailable, match="no conditional row"):
        density_models.build("nflows", "maf", 5, 16, 4, context=1)
