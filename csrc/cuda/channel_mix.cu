// Invertible 1x1 convolution on CUDA: y[b, :, n] = W x[b, :, n] (Glow Sec. 3.2).
// For C <= 32 one thread computes all C outputs of one pixel from registers, with W in
// shared memory (one read and one write of the activations); above that cuBLAS wins
// (mix_gemm / weight_grad_gemm in csrc/channel_mix_gemm.cpp).
#include "../ops.h"
#include "utils.cuh"

namespace invflow {
namespace cuda {

namespace {

constexpr int64_t kMaxFusedChannels = 32;

// W is staged in shared memory with row stride MAXC and zero padding (rows and columns
// >= C), so the unrolled loops never read another row's entries or unwritten memory: a NaN
// or Inf in row o' of W reaches output o' only, as on the CPU.
template <typename scalar_t, typename index_t, int MAXC>
__global__ void mix_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, scalar_t* __restrict__ y,
                           index_t pixels, Divider<index_t> div_n, index_t N, int C) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t ws[MAXC * MAXC];
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
#pragma unroll
    for (int o = 0; o < MAXC; ++o) {
      if (o < C) {
        acc_t acc = 0;
#pragma unroll
        for (int i = 0; i < MAXC; ++i) acc += ws[o * MAXC + i] * xin[i];
        y[base + o * N] = static_cast<scalar_t>(acc);
      }
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
  return {grad_x, weight_grad_gemm(gc, xc).to(weight.scalar_type())};
}

}  // namespace cuda
}  // namespace invflow
