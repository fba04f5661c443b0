// Invertible 1x1 convolution on CUDA: y[b, :, n] = W x[b, :, n] (Glow Sec. 3.2).
// For C <= 32 one thread computes all C outputs of one pixel, with W in shared memory (one
// read and one write of the activations); above that cuBLAS wins (mix_gemm /
// weight_grad_gemm in csrc/common/channel_mix_gemm.cpp).
//
// Launch: a 1-D grid-stride loop over the B * N pixels, kThreads per block.  Each thread
// loads the pixel's C inputs into registers (xin, padded with zeros to the bucket MAXC),
// then loops over the C output rows WITHOUT unrolling that loop: row o of W is read from
// shared memory as aligned 16-byte vectors, so only one row of W is live in registers at a
// time.  (Unrolling both loops lifts all MAXC^2 weights into registers: 255 registers and
// kilobytes of spills per thread at MAXC = 32, which tools/cuda_compile_check.sh rejects.)
#include "../ops.h"
#include "utils.cuh"

namespace invflow {
namespace cuda {

namespace {

constexpr int64_t kMaxFusedChannels = 32;

// 16-byte vector of the accumulation type, for shared-memory reads of a row of W.
template <typename acc_t>
struct Vec16;
template <>
struct Vec16<float> {
  using type = float4;
  static constexpr int width = 4;
  __device__ static void unpack(const type& v, float* out) {
    out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
  }
};
template <>
struct Vec16<double> {
  using type = double2;
  static constexpr int width = 2;
  __device__ static void unpack(const type& v, double* out) {
    out[0] = v.x; out[1] = v.y;
  }
};

// W is staged in shared memory with row stride MAXC and zero padding (rows and columns
// >= C), so the unrolled inner loop never reads another row's entries or unwritten memory:
// a NaN or Inf in row o of W reaches output o only, as on the CPU.
template <typename scalar_t, typename index_t, int MAXC>
__global__ void __launch_bounds__(kThreads) mix_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                                                      scalar_t* __restrict__ y, index_t pixels, Divider<index_t> div_n,
                                                      index_t N, int C) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec16<acc_t>;
  static_assert(MAXC % V::width == 0, "rows of W must be whole vectors");
  __shared__ __align__(16) acc_t ws[MAXC * MAXC];
  for (int k = threadIdx.x; k < MAXC * MAXC; k += blockDim.x) {
    const int o = k / MAXC, i = k - o * MAXC;
    ws[k] = (o < C && i < C) ? static_cast<acc_t>(w[o * C + i]) : acc_t(0);
  }
  __syncthreads();
  for (index_t p = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; p < pixels;
       p += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const auto dm = div_n.divmod(p);  // p = sample * N + pixel
    const index_t base = dm.div * static_cast<index_t>(C) * N + dm.mod;
    acc_t xin[MAXC];
#pragma unroll
    for (int i = 0; i < MAXC; ++i) xin[i] = i < C ? static_cast<acc_t>(x[base + i * N]) : acc_t(0);
#pragma unroll 1
    for (int o = 0; o < C; ++o) {
      const typename V::type* row = reinterpret_cast<const typename V::type*>(ws + o * MAXC);
      acc_t acc = 0;
#pragma unroll
      for (int k = 0; k < MAXC / V::width; ++k) {
        acc_t wv[V::width];
        V::unpack(row[k], wv);
#pragma unroll
        for (int j = 0; j < V::width; ++j) acc += wv[j] * xin[k * V::width + j];
      }
      y[base + o * N] = static_cast<scalar_t>(acc);
    }
  }
}

template <int MAXC>
void launch_mix(const at::Tensor& xc, const at::Tensor& wc, at::Tensor& y, int64_t B, int64_t C, int64_t N) {
  INVFLOW_CUDA_DISPATCH(xc.scalar_type(), "channel_mix_cuda", [&] {
    INVFLOW_INDEX_DISPATCH(xc.numel(), [&] {
      const int64_t pixels = B * N;
      mix_kernel<scalar_t, index_t, MAXC><<<grid_for(pixels), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          xc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), static_cast<index_t>(pixels),
          Divider<index_t>(static_cast<index_t>(N)), static_cast<index_t>(N), static_cast<int>(C));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

at::Tensor mix(const at::Tensor& xc, const at::Tensor& weight) {
  const int64_t B = xc.size(0), C = xc.size(1), N = xc.numel() / std::max<int64_t>(B * C, 1);
  if (xc.numel() == 0) return at::empty_like(xc);
  if (C > kMaxFusedChannels) return mix_gemm(xc, weight);
  at::Tensor y = at::empty_like(xc);
  const at::Tensor wc = weight.contiguous();
  if (C <= 4) {
    launch_mix<4>(xc, wc, y, B, C, N);
  } else if (C <= 8) {
    launch_mix<8>(xc, wc, y, B, C, N);
  } else if (C <= 16) {
    launch_mix<16>(xc, wc, y, B, C, N);
  } else {
    launch_mix<32>(xc, wc, y, B, C, N);
  }
  return y;
}

}  // namespace

at::Tensor channel_mix(const at::Tensor& x, const at::Tensor& weight) {
  check_channel_mix_args(x, weight);
  const c10::cuda::CUDAGuard guard(x.device());
  return mix(x.contiguous(), weight);
}

std::tuple<at::Tensor, at::Tensor> channel_mix_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                                        const at::Tensor& weight) {
  check_channel_mix_args(x, weight);
  check_grad_args("channel_mix_backward", grad_y, c10::nullopt, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor gc = grad_y.contiguous(), xc = x.contiguous();
  at::Tensor grad_x = mix(gc, weight.t());
  return {grad_x, weight_grad_gemm(gc, xc)};
}

}  // namespace cuda
}  // namespace invflow
