// Helpers shared by the CUDA kernels: launch geometry, index division, block reductions.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <limits>

namespace invflow {
namespace cuda {

constexpr int kThreads = 256;

// Grid size for a grid-stride loop over `work` items of `per_block` each: enough blocks to
// fill the device several times over, never more than the work needs.
inline unsigned int grid_for(int64_t work, int64_t per_block = kThreads) {
  const int64_t needed = std::max<int64_t>(1, (work + per_block - 1) / per_block);
  const int64_t cap = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return static_cast<unsigned int>(std::min(needed, cap));
}

// Index arithmetic in 32 bits (magic-number division) whenever the tensor allows it.
inline bool fits_32bit(int64_t n) { return n < static_cast<int64_t>(std::numeric_limits<int32_t>::max()); }

template <typename index_t>
using Divider = at::cuda::detail::IntDivider<index_t>;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block; the result is valid in thread 0.  blockDim.x must be a multiple of 32.
// Safe to call repeatedly in one kernel (the trailing barrier protects the shared buffer).
template <typename T>
__device__ T block_sum(T v) {
  __shared__ T partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x >> 5) ? partial[lane] : T(0);
  if (warp == 0) v = warp_sum(v);
  __syncthreads();
  return v;
}

// out[b] = sign * the sum of partial[b * parts + k] over k (per-block partial sums of one
// sample, e.g. of a log-det): one warp per sample, lanes over the partials, then a warp sum,
// so the order is fixed and the result deterministic.
template <typename acc_t>
__global__ void sum_partials_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ out, int64_t B,
                                    int64_t parts, acc_t sign) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = blockDim.x >> 5;
  for (int64_t b = blockIdx.x * warps + (threadIdx.x >> 5); b < B; b += static_cast<int64_t>(gridDim.x) * warps) {
    acc_t v = 0;
    for (int64_t k = lane; k < parts; k += 32) v += partial[b * parts + k];
    v = warp_sum(v);
    if (lane == 0) out[b] = sign * v;
  }
}

// Launches sum_partials_kernel for B samples (nothing when B == 0).
template <typename acc_t>
void sum_partials(const acc_t* partial, acc_t* out, int64_t B, int64_t parts, acc_t sign, cudaStream_t stream) {
  if (B == 0) return;
  sum_partials_kernel<acc_t><<<grid_for(B, kThreads / 32), kThreads, 0, stream>>>(partial, out, B, parts, sign);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace invflow

#define INVFLOW_CUDA_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// Runs BODY with index_t = uint32_t when N fits in 32 bits, else uint64_t.
#define INVFLOW_INDEX_DISPATCH(N, ...)      \
  [&] {                                     \
    if (::invflow::cuda::fits_32bit(N)) {   \
      using index_t = uint32_t;             \
      return __VA_ARGS__();                 \
    }                                       \
    using index_t = uint64_t;               \
    return __VA_ARGS__();                   \
  }()
