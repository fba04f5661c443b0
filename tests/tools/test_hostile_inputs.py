"""tools/hostile_inputs.py: the classifier on synthetic snippets (a hang is "hang", an internal
error "traceback", a wrong success "silent", ...), the case list, and a few real cases whose
outcome does not depend on pending fixes, run through the script's own command line."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tools", "hostile_inputs.py")

_spec = importlib.util.spec_from_file_location("hostile_inputs", SCRIPT)
hi = importlib.util.module_from_spec(_spec)
sys.modules["hostile_inputs"] = hi  # dataclasses look their module up
_spec.loader.exec_module(hi)


def synthetic(name, code, expect="refuse", setup="", timeout=5.0, **kw):
    """A case that needs neither torch nor fixtures (a fresh interpreter starts in ~0.1 s)."""
    return hi.Case(
        name,
        "synthetic",
        "test",
        expect,
        "test",
        setup=setup,
        code=code,
        timeout=timeout,
        prelude=False,
        **kw,
    )


def statuses(cases, **kw):
    results = hi.run_cases(cases, fixtures={}, **kw)
    return {r["name"]: (r["status"], r["detail"]) for r in results}


def test_classifier_on_synthetic_cases(tmp_path):
    cases = [
        synthetic("hang", "while True:\n    pass", timeout=1.0),
        synthetic("key-error", "{}['x']"),
        synthetic("multi-line", "raise ValueError('first line\\nsecond line')"),
        synthetic(
            "torch-like", 'raise TypeError("rand() received an invalid combination of arguments - got (int)")'
        ),
        synthetic(
            "pickle-advice", "raise ValueError('Object arrays cannot be loaded when allow_pickle=False')"
        ),
        synthetic("clear", "raise ValueError('n must be an integer >= 1, got -1')"),
        synthetic("json-unwrapped", "import json\njson.loads('')"),
        synthetic(
            "json-wrapped",
            "raise ValueError('x/bundle.json: not valid JSON (Expecting value: line 1 column 1)')",
        ),
        synthetic("missing-file", "open(W + '/nope')"),
        synthetic("silent-return", "x = 1"),
        synthetic("silent-check", "expect(1 + 1 == 3, 'arithmetic is off')", expect="succeed"),
        synthetic("ok", "expect(1 + 1 == 2, 'arithmetic is off')", expect="succeed"),
        synthetic("wrong-refusal", "raise ValueError('no')", expect="succeed"),
        synthetic(
            "wrong-cause",
            "raise ValueError('PCA.score: call fit first')",
            expect="either",
            message="Ensemble",
        ),
        synthetic(
            "either-refused",
            "raise ValueError('Ensemble: fit the members first')",
            expect="either",
            message="Ensemble",
        ),
        synthetic("payload", "open(MARKER, 'w').close()\nraise ValueError('refused')"),
        synthetic("memory", "b = bytearray(3 * 2**30)"),
        synthetic("harness", "x = 1", setup="raise OSError('setup broke')"),
        synthetic("timeout-means-silent", "import time\ntime.sleep(30)", timeout=1.0, on_timeout="silent"),
        synthetic(
            "warned",
            "import warnings\nwarnings.warn('careful: 3 NaN values')\nexpect(warned('NaN'), 'not recorded')",
            expect="succeed",
        ),
    ]
    got = statuses(cases, isolation="process", mem_gb=1.0, scratch=str(tmp_path))
    want = {
        "hang": "hang",
        "key-error": "traceback",
        "multi-line": "traceback",
        "torch-like": "traceback",
        "pickle-advice": "traceback",
        "clear": "clear",
        "json-unwrapped": "traceback",
        "json-wrapped": "clear",
        "missing-file": "clear",
        "silent-return": "silent",
        "silent-check": "silent",
        "ok": "ok",
        "wrong-refusal": "wrong",
        "wrong-cause": "wrong",
        "either-refused": "clear",
        "payload": "silent",
        "memory": "traceback",
        "harness": "harness",
        "timeout-means-silent": "silent",
        "warned": "ok",
    }
    assert {k: v[0] for k, v in got.items()} == want, got
    assert "PAYLOAD RAN" in got["payload"][1]
    assert "arithmetic is off" in got["silent-check"][1]
    assert "MemoryError" in got["memory"][1]


def test_fork_isolation_times_out_and_reports(tmp_path):
    cases = [
        synthetic("hang", "while True:\n    pass", timeout=1.0),
        synthetic("clear", "raise TypeError('x must be a str')"),
    ]
    got = statuses(cases, isolation="fork", scratch=str(tmp_path))
    assert got["hang"][0] == "hang" and got["clear"][0] == "clear", got


@pytest.mark.parametrize(
    "rc, stderr, clear",
    [
        (2, "python -m detectors fit: error: --size must be <= 1024, got 100000\n", True),
        (
            2,
            "usage: python -m detectors fit ...\npython -m detectors fit: error: argument --steps: invalid int value\n",
            True,
        ),
        (1, "Traceback (most recent call last):\n  ...\nRuntimeError: boom\n", False),
        (2, "Traceback (most recent call last):\n  ...\nFileExistsError: x\n", False),
        (0, "", False),
        (2, "python -m detectors fit: error: x.npz: allow_pickle=False; load it with pickle\n", False),
        (2, "python -m detectors score: error: 'utf-8' codec can't encode character '\\udcff'\n", False),
        (2, "python -m detectors score: error: b.json: not valid JSON (Expecting value: line 1)\n", True),
        (-9, "", False),
    ],
)
def test_judge_cli(rc, stderr, clear):
    assert hi.judge_cli(rc, stderr)[0] is clear


def test_case_list_is_well_formed():
    cases = hi.all_cases()
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    assert len(cases) >= 250 and len({c.entry for c in cases}) >= 35
    from detectors.cli import SUBCOMMANDS

    for c in cases:
        assert c.expect in hi.EXPECTS and c.on_timeout in ("hang", "silent"), c.name
        assert bool(c.code) != bool(c.argv), c.name  # a Python call or a command line
        assert set(c.needs) <= set(hi.FIXTURE_GROUPS), c.name
        if c.argv:
            assert c.argv[0] in SUBCOMMANDS, c.name
        else:
            compile(c.code, c.name, "exec")
        compile(c.setup or "pass", c.name, "exec")
    kinds = {c.kind for c in cases}
    for kind in (
        "fifo",
        "symlink-loop",
        "pickle",
        "memory",
        "non-finite",
        "deep-nesting",
        "path-escape",
        "non-utf8",
    ):
        assert kind in kinds
    # what the inputs must give now: a dict config and a flow's own samples are taken,
    # sizes and counts past the flags' limits are refused naming the limit
    by_name = {c.name: c for c in cases}
    assert by_name["detectors.fit_bundle/config-a-dict"].expect == "succeed"
    assert by_name["Bundle.score/flow-own-samples"].expect == "succeed"
    for name, limit in (
        ("detectors.fit_bundle/config-hidden-1e9", "MAX_HIDDEN"),
        ("cli reproduce/set-hidden-1e9", "MAX_HIDDEN"),
        ("cli score/n-1e12", "MAX_IMAGES"),
    ):
        assert by_name[name].expect == "refuse" and by_name[name].message == limit, name


def test_real_cases_through_the_command_line(tmp_path):
    """Refusals that hold before and after this round's fixes, run as the sweep runs them."""
    out = tmp_path / "r.json"
    only = [
        "invflow.load/text-named-safetensors",
        "invflow.load/pickle-payload",  # and pickle-payload-in-run-dir
        "cli fit/data-missing",
        "invflow.data.preprocess/valid",
    ]
    cmd = [sys.executable, SCRIPT, "--json", str(out), "--fixtures", str(tmp_path / "fx")]
    for o in only:
        cmd += ["--only", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(
        r"entry points: 3, cases: 5, clear: 4, ok: 1, tracebacks: 0, silent: 0, hangs: 0", proc.stdout
    )
    results = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert results["invflow.load/pickle-payload"]["status"] == "clear"
    assert "PAYLOAD" not in results["invflow.load/pickle-payload"]["detail"]
    assert results["cli fit/data-missing"]["status"] == "clear"
