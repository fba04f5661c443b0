"""The GPU-check tooling on CPU: tools/gpu_check.sh's budget, verdicts and source hash,
tools/gpu_probe.py's crash reporting, tools/gpu_driver.py --check-registration.

The real (non-dry) path of gpu_check.sh runs here against a fake interpreter and a fake
compute-sanitizer that print what the real tools print, so its verdict logic (test floor,
non-gating bench, budget skips, build failure, verification line) is tested without a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(ROOT, "tools")
GPU_CHECK = os.path.join(TOOLS, "gpu_check.sh")
DRIVER = os.path.join(TOOLS, "gpu_driver.py")
HASH_LINE = re.compile(r"^source hash: [0-9a-f]{64} \(sha256 over \d+ files", re.M)

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils timeout"
)


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(TOOLS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(args, env=None, timeout=120):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(args, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- source hash
def _fake_tree(root):
    for rel, text in {
        "csrc/ops.h": "int f();\n",
        "csrc/cuda/k.cu": "__global__ void k() {}\n",
        "invflow/__init__.py": "x = 1\n",
        "tests/test_a.py": "def test(): pass\n",
        "setup.py": "print()\n",
        "Makefile": "all:\n",
        "README.md": "not hashed\n",
    }.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def test_source_hash_is_stable_and_follows_the_sources(tmp_path):
    sh = _load("source_hash")
    a, b = tmp_path / "a", tmp_path / "b"
    _fake_tree(a)
    _fake_tree(b)
    first, count = sh.source_hash(str(a))
    assert count == 6 and sh.source_hash(str(b)) == (first, count), "same tree, another place: same hash"
    # build products and caches do not count
    for rel in (
        "invflow/_C.cpython-311-x86_64-linux-gnu.so",
        "invflow/.build-stamp",
        "invflow/__pycache__/x.cpython-311.pyc",
        "bench/results-cpu.json",
        "tests/.hypothesis/db",
    ):
        os.makedirs(os.path.dirname(a / rel), exist_ok=True)
        (a / rel).write_text("built")
    (a / "README.md").write_text("edited, outside the hashed set")
    assert sh.source_hash(str(a)) == (first, count)
    (a / "csrc/cuda/k.cu").write_text("__global__ void k() { }\n")
    assert sh.source_hash(str(a))[0] != first, "a csrc edit changes the hash"
    (b / "csrc/cuda/k.cu").rename(b / "csrc/cuda/k2.cu")
    assert sh.source_hash(str(b))[0] != first, "a rename changes the hash"


def test_source_hash_cli_matches_the_function():
    out = _run([sys.executable, os.path.join(TOOLS, "source_hash.py"), ROOT])
    assert out.returncode == 0, out.stderr
    value, count = out.stdout.split()
    assert (value, int(count)) == _load("source_hash").source_hash(ROOT)


# ------------------------------------------------------------------ gpu_check.sh, dry run
def test_dry_run_with_a_tiny_budget_skips_every_stage_and_records_the_hash(tmp_path):
    out = _run(
        ["bash", GPU_CHECK, str(tmp_path)],
        env={"DRY_RUN": "1", "GPU_CHECK_BUDGET_S": "1", "PY": sys.executable},
    )
    assert out.returncode == 0, out.stdout + out.stderr  # a budget skip does not fail the dry run
    summary = (tmp_path / "summary.txt").read_text()
    for name in ("build", "probe", "tests-collect", "smoke", "driver-cpu"):
        assert re.search(rf"^{name} +SKIPPED\(budget\)", summary, re.M), f"{name} not skipped:\n{summary}"
    assert HASH_LINE.search((tmp_path / "environment.txt").read_text())
    assert HASH_LINE.search(summary)
    assert "SKIPPED(budget): not verified" in out.stdout and "all 0 selected stages passed" not in out.stdout
    assert "verification: incomplete" in out.stdout
    assert re.search(r"^commit: ", summary, re.M)


# ---------------------------------------------------- gpu_check.sh, real path, fake tools
FAKE_PY = """\
#!/usr/bin/env bash
# stands in for python3 on a GPU machine: prints what the real scripts print
case "$1" in
  -c) echo 1; echo 9.0; echo "python 3.12 | torch fake | cuda 13.0 | FAKE H200" ;;
  tools/source_hash.py) exec {python} "$@" ;;
  setup.py) [ -n "${{FAKE_BUILD_FAILS:-}}" ] && {{ echo "error: nvcc failed"; exit 1; }}; echo "built" ;;
  tools/gpu_driver.py)
    if [ "$2" = --check-registration ]
    then echo "gpu_driver: all 11 ops of csrc/ have a CUDA kernel registered"
    else echo "gpu_driver: called all 11 ops on cuda in 4 dtypes"; fi ;;
  tools/gpu_probe.py) echo "gpu_probe: all 86 bad-input cases raised RuntimeError on cpu, cuda (3.0 s)" ;;
  -m) echo "${{FAKE_PASSED:-{floor}}} passed, 2 skipped in 100.00s" ;;
  tools/gpu_smoke.py) echo "gpu_smoke: 4/4 checks passed on cuda" ;;
  bench/compare.py) echo "bench broke"; exit 1 ;;
  *) echo "fake python: unexpected $*"; exit 9 ;;
esac
"""

FAKE_SANITIZER = """\
#!/usr/bin/env bash
[ "$1" = --help ] && exit 0
echo "gpu_driver: called all 11 ops on cuda in 4 dtypes"
if [ -n "${FAKE_SANITIZER_ERRORS:-}" ]; then echo "========= ERROR SUMMARY: 2 errors"; exit 3; fi
echo "========= ERROR SUMMARY: 0 errors"
"""


def _executable(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def default_floor() -> int:
    """The script's default CUDA test floor (the fake pytest passes exactly that many: the
    boundary passes)."""
    with open(GPU_CHECK) as f:
        return int(re.search(r"GPU_CHECK_MIN_CUDA_TESTS:-(\d+)", f.read()).group(1))


@pytest.fixture
def fake_gpu(tmp_path):
    """run(**env) -> (returncode, stdout, summary.txt) of gpu_check.sh on a fake GPU machine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    py = _executable(bin_dir / "fakepython", FAKE_PY.format(python=sys.executable, floor=default_floor()))
    _executable(bin_dir / "compute-sanitizer", FAKE_SANITIZER)

    def run(_script=GPU_CHECK, **env):
        out_dir = tmp_path / "out"
        shutil.rmtree(out_dir, ignore_errors=True)
        env = {"PY": py, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DRY_RUN": "", **env}
        out = _run(["bash", _script, str(out_dir)], env=env, timeout=60)
        return out.returncode, out.stdout + out.stderr, (out_dir / "summary.txt").read_text()

    return run


def test_a_copied_tree_without_git_says_so_and_hashes_the_same(tmp_path, fake_gpu):
    tree = tmp_path / "copy"
    _fake_tree(tree)
    os.makedirs(tree / "tools")
    for name in ("gpu_check.sh", "source_hash.py"):
        shutil.copy(os.path.join(TOOLS, name), tree / "tools" / name)
    rc, stdout, _ = fake_gpu(STAGES="smoke", _script=str(tree / "tools" / "gpu_check.sh"))
    assert rc == 0, stdout
    environment = (tmp_path / "out" / "environment.txt").read_text()
    assert "commit: none (no .git)" in environment
    assert f"source hash: {_load('source_hash').source_hash(str(tree))[0]} " in environment


def test_real_path_passes_and_says_verification_complete(fake_gpu):
    rc, stdout, summary = fake_gpu()
    assert rc == 0, stdout
    assert re.search(r"^verification: complete for source hash [0-9a-f]{64}$", summary, re.M), summary
    assert re.search(r"^bench +FAIL", summary, re.M), "the bench's failure is reported"
    assert "bench FAIL(rc=1) (the bench does not gate)" in stdout
    order = [m.group(1) for m in re.finditer(r"^(\S+) +(?:PASS|FAIL)", summary, re.M)]
    assert order == [
        "build",
        "probe",
        "tests",
        "smoke",
        "sanitize-memcheck",
        "sanitize-racecheck",
        "sanitize-initcheck",
        "sanitize-synccheck",
        "bench",
    ]


def test_real_path_fails_below_the_cuda_test_floor(fake_gpu):
    rc, stdout, summary = fake_gpu(FAKE_PASSED="12")
    assert rc == 1, stdout
    floor = r"^tests +FAIL\(check\) .*only 12 CUDA tests passed, the floor is \d+"
    assert re.search(floor, summary, re.M), summary
    assert "verification: incomplete" in summary and "tests (>=" in summary


def test_real_path_sanitizer_errors_fail(fake_gpu):
    rc, stdout, summary = fake_gpu(FAKE_SANITIZER_ERRORS="1", SANITIZERS="memcheck")
    assert rc == 1
    assert re.search(r"^sanitize-memcheck +FAIL\(rc=3\)", summary, re.M), summary
    assert "missing memcheck 0 errors; racecheck 0 errors" in summary


def test_real_path_budget_skips_are_not_verification(fake_gpu):
    # 100 s: the stages with a minimum above 100 s (tests, bench) cannot start
    rc, stdout, summary = fake_gpu(GPU_CHECK_BUDGET_S="100")
    assert rc == 3, stdout
    assert re.search(r"^tests +SKIPPED\(budget\)", summary, re.M)
    assert re.search(r"^bench +SKIPPED\(budget\)", summary, re.M)
    assert re.search(r"^sanitize-synccheck +PASS", summary, re.M)
    assert "all stages passed" not in stdout and "selected stages passed" not in stdout
    verdict = r"^gpu-check: \d+ passed, 1 SKIPPED\(budget\): not verified: tests;"
    assert re.search(verdict, summary, re.M), summary
    assert 'rerun the rest: STAGES="build tests" make gpu-check' in summary
    assert re.search(r"^verification: incomplete for source hash [0-9a-f]{64}: missing tests", summary, re.M)


def test_real_path_skips_everything_after_a_failed_build(fake_gpu):
    rc, stdout, summary = fake_gpu(FAKE_BUILD_FAILS="1")
    assert rc == 1
    assert re.search(r"^build +FAIL", summary, re.M)
    for name in ("probe", "tests", "smoke", "sanitize-memcheck", "sanitize-synccheck", "bench"):
        assert re.search(rf"^{name} +SKIPPED\(build failed\)", summary, re.M), f"{name}:\n{summary}"


def test_stage_selection_still_works(fake_gpu):
    rc, stdout, summary = fake_gpu(STAGES="smoke sanitize", SANITIZERS="initcheck")
    assert rc == 0, stdout
    ran = re.findall(r"^(\S+) +PASS", summary, re.M)
    assert ran == ["smoke", "sanitize-initcheck"]
    assert "selected stages passed" in stdout and "verification: incomplete" in summary


# ----------------------------------------------------------------------------- gpu_probe.py
def test_probe_on_cpu_every_case_raises_cleanly():
    out = _run([sys.executable, os.path.join(TOOLS, "gpu_probe.py"), "--device", "cpu"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"gpu_probe: all \d+ bad-input cases raised RuntimeError on cpu", out.stdout)
    assert "FAIL" not in out.stdout and "CRASH" not in out.stdout


def test_probe_names_a_crashing_case_and_keeps_going():
    out = _run(
        [
            sys.executable,
            os.path.join(TOOLS, "gpu_probe.py"),
            "--device",
            "cpu",
            "--self-test-crash",
            "--only",
            "e",
        ]
    )  # "e": the self-test and the other cases
    assert out.returncode == 1
    assert "gpu_probe: CRASH signal 11 (SIGSEGV): cpu self-test crash" in out.stdout
    assert re.search(r"gpu_probe: 1 of \d+ bad-input cases did not raise cleanly on cpu", out.stdout)
    assert out.stdout.count("gpu_probe: PASS") > 10, "the cases after the crash still ran"


def test_probe_reports_a_case_that_does_not_raise():
    # in a fresh interpreter: run_cases forks, which a multi-threaded pytest process should not
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        import gpu_probe as p
        jobs = [(p.Case("silent op", lambda device: None), "cpu"),
                (p.Case("wrong exception", lambda device: [][1]), "cpu")]
        sys.exit(p.run_cases(jobs, parallel=2, timeout=30))
    """)
    out = _run([sys.executable, "-c", code, TOOLS])
    assert out.returncode == 2, out.stdout + out.stderr
    assert "gpu_probe: FAIL cpu silent op: no error raised" in out.stdout
    assert "gpu_probe: FAIL cpu wrong exception: IndexError instead of RuntimeError" in out.stdout


def test_probe_wrong_device_cases_run_on_cuda_only():
    probe = _load("gpu_probe")
    cpu = {c.name for c, _ in probe.select(["cpu"], None, False)}
    both = probe.select(["cpu", "cuda"], None, False)
    assert not any("wrong device" in name for name in cpu)
    assert any("wrong device" in c.name for c, d in both if d == "cuda")
    names = {c.name for c in probe.all_cases()}
    for op in (
        "actnorm_backward",
        "coupling_backward",
        "channel_mix_backward",
        "coupling_cl_backward",
        "coupling_cl_double_backward",
    ):
        assert f"{op} grad_y wrong shape" in names
    for arg in ("u_x", "u_h"):
        assert f"coupling_cl_double_backward {arg} wrong shape" in names


# ---------------------------------------------------------------------------- gpu_driver.py
def test_driver_registration_check_on_the_cpu_key():
    out = _run([sys.executable, DRIVER, "--check-registration", "--device=cpu"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"gpu_driver: all \d+ ops of csrc/ have a CPU kernel registered", out.stdout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA kernels are there")
def test_driver_registration_check_fails_without_cuda_kernels():
    out = _run([sys.executable, DRIVER, "--check-registration", "--device=cuda"])
    assert out.returncode == 1
    assert "ops with no CUDA kernel registered: ['actnorm_backward'" in out.stderr


def test_smoke_op_capture_cases_cover_every_op():
    """The per-op capture check's cases (on CPU: two eager calls, bitwise) cover every op."""
    smoke = _load("gpu_smoke")
    assert smoke.check_op_capture("cpu").startswith("per-op capture:")
