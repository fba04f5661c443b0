// Compile-check stub (tools/cuda_compile_check.sh only; never used by a real build).
#pragma once
typedef enum { CUSOLVER_STATUS_SUCCESS = 0 } cusolverStatus_t;
