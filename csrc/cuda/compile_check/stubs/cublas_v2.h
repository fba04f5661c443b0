// Compile-check stub (tools/cuda_compile_check.sh only; never used by a real build):
// the CPU torch wheel's ATen/cuda headers name these cuBLAS types.
#pragma once
typedef struct cublasContext* cublasHandle_t;
typedef enum { CUBLAS_STATUS_SUCCESS = 0 } cublasStatus_t;
