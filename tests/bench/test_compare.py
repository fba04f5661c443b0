"""bench/compare.py end to end in its --smoke mode (tiny shapes, one repeat): every case
and implementation produces a record, numbers are positive, and torch.compile's
double-backward row says it is unsupported instead of carrying a number."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "compare.py"
CASES = {"step", "model", "model_paper_size", "approx_mass", "memory", "bandwidth"}
FIELDS = {
    "case",
    "impl",
    "device",
    "median_s",
    "iqr_s",
    "ratio_vs_eager",
    "bytes",
    "params",
    "shape",
    "note",
    "torch",
    "commit",
    "machine",
}
INVFLOW = ("invflow-fused", "invflow-eager")
COMPILE = "torch.compile(reference)"
COMPILE_FUSED = "torch.compile(fused)"
PEERS = ("FrEIA", "normflows")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--threads", "1", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def rows(records, case, variant=None):
    return {
        r["impl"]: r for r in records if r["case"] == case and (variant is None or r["variant"] == variant)
    }


def test_every_case_and_field_present(records):
    assert {r["case"] for r in records} == CASES
    for r in records:
        assert FIELDS <= set(r), f"missing fields {FIELDS - set(r)} in {r}"
        assert r["device"] == "cpu" and r["torch"] and r["machine"]
        assert r["impl"], r
        assert not str(r["note"]).startswith("error"), r


def test_impls_named_and_timed(records):
    timed = [
        ("step", "fwd+bwd"),
        ("model", "train_step"),
        ("model_paper_size", "train_step"),
        ("approx_mass", "nll"),
        ("approx_mass", "penalty"),
    ]
    for case, variant in timed:
        got = rows(records, case, variant)
        for name in INVFLOW + (COMPILE, COMPILE_FUSED) + PEERS:
            assert name in got, f"{case}/{variant}: no {name} row"
        for name in INVFLOW:
            assert got[name]["median_s"] > 0, got[name]
        assert got["invflow-eager"]["ratio_vs_eager"] == pytest.approx(1.0)
        for name in PEERS:  # either numbers, or a row that says why not
            r = got[name]
            assert r["median_s"] is not None or "not installed" in r["note"], r
            if r["median_s"] is not None:
                assert r["params"] > 0
    assert "FrEIA-AllInOne" in rows(records, "step")
    for case, variant in [
        ("step", "fwd+bwd"),
        ("model", "train_step"),
        ("model_paper_size", "train_step"),
        ("approx_mass", "nll"),
    ]:
        for name in (COMPILE, COMPILE_FUSED):
            assert rows(records, case, variant)[name]["median_s"] > 0, (case, name)
    # the fused ops inside torch.compile: the whole model is one graph (fullgraph=True, no breaks)
    assert "fullgraph" in rows(records, "model", "train_step")[COMPILE_FUSED]["note"]


def test_numbers_positive(records):
    for r in records:
        for key in ("median_s", "ratio_vs_eager", "bytes"):
            if r[key] is not None:
                assert r[key] > 0, (key, r)
        if r["iqr_s"] is not None:
            assert r["iqr_s"] >= 0, r


def test_compile_double_backward_marked_unsupported(records):
    for name in (COMPILE, COMPILE_FUSED):
        r = rows(records, "approx_mass", "penalty")[name]
        assert r["median_s"] is None and r["ratio_vs_eager"] is None
        assert r["note"].startswith("unsupported"), r
    for name in INVFLOW:
        assert rows(records, "approx_mass", "penalty")[name]["extra"]["penalty_over_nll"] > 0


def test_memory_free_saves_bytes(records):
    free = rows(records, "memory", "memory_free")
    assert set(free) == set(INVFLOW)
    for name in INVFLOW:
        assert free[name]["extra"]["reduction_vs_standard"] >= 4.0, free[name]


def test_bandwidth_rows(records):
    ops = {r["variant"] for r in records if r["case"] == "bandwidth"}
    assert ops == {"copy", "actnorm_forward", "actnorm_backward", "coupling_forward", "coupling_backward"}
    for r in records:
        if r["case"] == "bandwidth" and r["median_s"] is not None:
            assert r["extra"]["gbps"] > 0 and r["bytes"] > 0
