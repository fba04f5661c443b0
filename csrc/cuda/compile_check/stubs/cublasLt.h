// Compile-check stub (tools/cuda_compile_check.sh only; never used by a real build).
#pragma once
typedef struct cublasLtContext* cublasLtHandle_t;
