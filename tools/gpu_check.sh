#!/usr/bin/env bash
# One command that proves the CUDA kernels on a GPU machine (`make gpu-check`), in one run:
#
#   tools/gpu_check.sh [OUT_DIR]              (default OUT_DIR: build/gpu-check)
#   DRY_RUN=1 tools/gpu_check.sh [OUT_DIR]    every CPU-runnable part (part of `make test`)
#
# Stages, each with a log in OUT_DIR and a line in OUT_DIR/summary.txt:
#   1 build     the extension for the local GPU's arch only, all cores (build time stated)
#   2 tests     the CUDA tests (pytest -k cuda over tests/ops tests/layers tests/models
#               tests/test_backend.py); TF32 is off in tests/conftest.py
#   3 sanitize  compute-sanitizer memcheck, racecheck, initcheck, synccheck over
#               tools/gpu_driver.py (every kernel; caching allocator off)
#   4 smoke     tools/gpu_smoke.py: bf16-autocast Glow training, CUDA-graph capture, no host
#               syncs in a training step
#   5 bench     bench/compare.py --device cuda --quick (fused vs eager vs torch.compile vs
#               peers; bandwidth vs copy)
# Needs only what the GPU machine has: python3 with torch (CUDA), nvcc, ninja, pytest,
# compute-sanitizer; no network.  Without CUDA (and without DRY_RUN) it says so in one line
# and exits 2.  STAGES="tests smoke" reruns a subset, SANITIZERS="memcheck" some tools;
# PY picks the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${1:-build/gpu-check}
PY=${PY:-python3}
DRY_RUN=${DRY_RUN:-}
STAGES=${STAGES:-build tests sanitize smoke bench}
SANITIZERS=${SANITIZERS:-memcheck racecheck initcheck synccheck}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
failed=0

has_cuda=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ -z "$DRY_RUN" ] && [ "$has_cuda" != 1 ]; then
  echo "gpu-check: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine, or DRY_RUN=1 for the CPU parts"
  exit 2
fi
DEVICE=cuda
[ -n "$DRY_RUN" ] && DEVICE=cpu

want() { [[ " $STAGES " == *" $1 "* ]]; }

# stage NAME TIMEOUT_S COMMAND...: runs COMMAND with its output in OUT/NAME.log, records
# PASS / FAIL / TIMEOUT and the seconds taken.
stage() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS rc
  echo "gpu-check: [$name] $*"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  local took=$((SECONDS - start)) verdict=PASS
  if [ $rc -eq 124 ]; then verdict="TIMEOUT(${limit}s)"; elif [ $rc -ne 0 ]; then verdict="FAIL(rc=$rc)"; fi
  [ "$verdict" != PASS ] && failed=1
  printf '%-22s %-14s %5ss  %s\n' "$name" "$verdict" "$took" "$(tail -n 1 "$OUT/$name.log" | cut -c1-110)" \
    | tee -a "$SUMMARY"
}

{
  echo "gpu-check on $(hostname) at $(date -u +%FT%TZ)${DRY_RUN:+ (DRY_RUN: CPU parts only)}"
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
  command -v nvcc > /dev/null && nvcc --version | tail -n 1
  git -C "$ROOT" log -1 --format='commit %h %s' 2>/dev/null | cut -c1-100
} | tee "$OUT/environment.txt" | tee -a "$SUMMARY"

# 1. build ------------------------------------------------------------------------------
if want build; then
  if [ -n "$DRY_RUN" ]; then
    echo "build                  skipped        (dry run: make test builds the CPU extension)" | tee -a "$SUMMARY"
  else
    ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
    stage build 420 env TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$(nproc)" "$PY" setup.py build_ext --inplace
  fi
fi

# 2. tests ------------------------------------------------------------------------------
TESTS=(tests/ops tests/layers tests/models tests/test_backend.py)
if want tests; then
  if [ -n "$DRY_RUN" ]; then
    # collect the CUDA selection with the packages the GPU machine lacks made unimportable
    stage tests-collect 300 "$PY" tools/collect_without.py --block hypothesis,numpy,scipy,sklearn,safetensors,tqdm \
      --min 100 -- -q -p no:cacheprovider --collect-only -k cuda "${TESTS[@]}"
  else
    stage tests 420 "$PY" -m pytest -q -p no:cacheprovider -x -k cuda -rs "${TESTS[@]}"
  fi
fi

# 3. compute-sanitizer ------------------------------------------------------------------
if want sanitize; then
  if [ -n "$DRY_RUN" ]; then
    stage driver-cpu 300 "$PY" tools/gpu_driver.py --device cpu --small
  elif ! command -v compute-sanitizer > /dev/null; then
    echo "sanitize               FAIL           compute-sanitizer not found" | tee -a "$SUMMARY"
    failed=1
  else
    FILTER=()
    compute-sanitizer --help 2>&1 | grep -q -- "--kernel-name" && FILTER=(--kernel-name kns=invflow)
    for tool in $SANITIZERS; do
      stage "sanitize-$tool" 240 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" \
        --error-exitcode 3 "${FILTER[@]}" "$PY" tools/gpu_driver.py --device cuda --small
    done
  fi
fi

# 4. training smoke ---------------------------------------------------------------------
if want smoke; then
  stage smoke 300 "$PY" tools/gpu_smoke.py --device "$DEVICE"
fi

# 5. bench ------------------------------------------------------------------------------
if want bench; then
  if [ -n "$DRY_RUN" ]; then
    echo "bench                  skipped        (dry run: tests/test_bench_compare.py runs compare.py --smoke)" | tee -a "$SUMMARY"
  else
    stage bench 420 "$PY" bench/compare.py --device cuda --quick --json "$OUT/compare-cuda.json"
    cp "$OUT/bench.log" "$OUT/compare-cuda.txt" 2>/dev/null
  fi
fi

echo "---- summary ($OUT/summary.txt)"
cat "$SUMMARY"
if [ $failed -ne 0 ]; then
  echo "gpu-check: FAILED (logs in $OUT)"
  exit 1
fi
echo "gpu-check: all stages passed${DRY_RUN:+ (dry run)}"
