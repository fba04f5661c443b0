"""bench/profile_step.py end to end in its --smoke mode (batch 4, one profiled step,
torch.compile with backend aot_eager so the test does not wait for inductor): every impl has a
record, its categories partition the step, and the st-net convolutions are found in each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "profile_step.py"
IMPLS = {"invflow-fused", "invflow-eager", "torch.compile(reference)"}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "smoke.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--threads", "1", "--json", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, log
    assert "Traceback" not in proc.stdout + proc.stderr, log
    return json.loads(out.read_text())


def test_three_impls(records):
    import invflow

    expected = IMPLS if invflow.fused_available() else IMPLS - {"invflow-fused"}
    assert {r["impl"] for r in records} == expected
    for r in records:
        assert r["mode"] == "smoke" and r["batch"] == 4 and r["steps"] == 1
        assert r["total_ms"] > 0 and r["unprofiled_ms"] > 0


def test_compile_backend_recorded(records):
    comp = next(r for r in records if r["impl"] == "torch.compile(reference)")
    assert comp["backend"] == comp["compile_backend"] == "aot_eager"


def test_categories_sum_to_total(records):
    for r in records:
        cats = r["categories"]
        assert all(v >= 0 for v in cats.values()), cats
        assert sum(cats.values()) == pytest.approx(r["total_ms"], rel=0.05), (r["impl"], cats, r["total_ms"])
        assert r["conv_ms"] + r["non_conv_ms"] == pytest.approx(r["total_ms"], rel=1e-6)


def test_conv_found_in_every_impl(records):
    for r in records:
        assert r["categories"]["stnet_conv"] > 0, r
        assert r["conv_ms"] == r["categories"]["stnet_conv"]


def test_categories_match_the_impl(records):
    by = {r["impl"]: r["categories"] for r in records}
    assert by["invflow-eager"]["flow_fused"] == 0 and by["invflow-eager"]["flow_eager"] > 0
    assert by["torch.compile(reference)"]["compiled_kernels"] > 0
    assert by["torch.compile(reference)"]["flow_fused"] == 0
    if "invflow-fused" in by:
        assert by["invflow-fused"]["flow_fused"] > 0
        assert by["invflow-fused"]["compiled_kernels"] == 0
