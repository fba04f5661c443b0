#!/usr/bin/env bash
# Compile-checks every csrc/cuda/*.cu with nvcc against the installed torch headers, so the
# CUDA kernels cannot rot on machines without a GPU (CI runs this from `make test`).
#
# It builds as the extension does (-O3) with `-Xptxas -v` and fails when ptxas reports any
# spill (spill stores or loads > 0 bytes) in any kernel: register spills turn a
# bandwidth-bound kernel into a local-memory-bound one, and only this report shows them
# without a GPU.  The per-kernel registers / spills are written to
# build/cuda-check/ptxas.txt (KERNEL REGS SPILL_STORES SPILL_LOADS, demangled).
#
# A CPU-only torch wheel lacks a few cuBLAS / cuSPARSE / cuSOLVER headers that
# <ATen/cuda/CUDAContext.h> includes; csrc/cuda/compile_check/stubs provides the handful of
# typedefs it needs.  The stubs are on the include path of this check only.
#
#   PY=.venv/bin/python tools/cuda_compile_check.sh [SOURCE.cu ...]   (ARCH=sm_90 by default;
#                                                                     all of csrc/cuda/*.cu)
# Without nvcc it says so and exits 0, unless INVFLOW_REQUIRE_NVCC=1 (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ARCH=${ARCH:-sm_90}
NVCC=${NVCC:-$(command -v nvcc || true)}
if [ -z "$NVCC" ]; then
  if [ -n "${INVFLOW_REQUIRE_NVCC:-}" ]; then
    echo "cuda-check: nvcc not found but INVFLOW_REQUIRE_NVCC is set" >&2
    exit 1
  fi
  echo "cuda-check: nvcc not found; CUDA sources NOT compile-checked"
  exit 0
fi
read -r -a TORCH_INC < <("$PY" -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I' + p for p in include_paths()))")
PY_INC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
NVCC_FLAGS=$("$PY" -c "from torch.utils.cpp_extension import COMMON_NVCC_FLAGS; print(' '.join(COMMON_NVCC_FLAGS))")
OUT=${CUDA_CHECK_OUT:-build/cuda-check}
mkdir -p "$OUT"
export NVCC ARCH OUT PY_INC NVCC_FLAGS
export TORCH_INC_STR="${TORCH_INC[*]}"
check_one() {
  local src=$1
  local start=$SECONDS
  # shellcheck disable=SC2086
  if "$NVCC" -c "$src" -o "$OUT/$(basename "$src").o" -std=c++20 -O3 -arch="$ARCH" -Xptxas -v $NVCC_FLAGS \
      -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C \
      -Icsrc/cuda/compile_check/stubs $TORCH_INC_STR -I"$PY_INC" -Xcompiler -fPIC 2> "$OUT/$(basename "$src").log"; then
    echo "cuda-check: ok     $src ($((SECONDS - start)) s, $ARCH)"
  else
    echo "cuda-check: FAILED $src" >&2
    cat "$OUT/$(basename "$src").log" >&2
    return 1
  fi
}
export -f check_one
status=0
SOURCES=("$@")
[ ${#SOURCES[@]} -eq 0 ] && SOURCES=(csrc/cuda/*.cu)
rm -f "$OUT"/*.log
printf '%s\n' "${SOURCES[@]}" | xargs -P "$(nproc)" -I{} bash -c 'check_one {}' || status=1
[ $status -eq 0 ] || exit $status
# registers and spills of every kernel (sm_90, -O3): any spill fails the check
"$PY" tools/ptxas_report.py "$OUT"/*.log --out "$OUT/ptxas.txt" || status=1
echo "cuda-check: registers and spills per kernel in $OUT/ptxas.txt"
exit $status
