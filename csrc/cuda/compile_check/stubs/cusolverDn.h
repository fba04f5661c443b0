// Compile-check stub (tools/cuda_compile_check.sh only; never used by a real build).
#pragma once
#include "cusolver_common.h"
typedef struct cusolverDnContext* cusolverDnHandle_t;
