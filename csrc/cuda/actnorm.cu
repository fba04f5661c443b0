// ActNorm on CUDA: the semantics of csrc/cpu/actnorm.cpp (Glow Sec. 3.1).
//   forward  y = (x + b) * exp(log_s),  inverse  x = y * exp(-log_s) - b,  log|det| = +-N sum log_s
//   backward gx = g s,  gb[c] = s[c] sum g,  glog_s[c] = s[c] sum g (x + b) + N sum_b gl[b]
// Log-dets are in logdet_dtype (float32 for half / bfloat16 inputs).  Forward and inverse
// are two launches (the map and the log-det), the backward two (map + partial sums, then
// one block per channel to finish them); no buffer is zero-filled.
#include "../ops.h"
#include "utils.cuh"

namespace invflow {
namespace cuda {

namespace {

template <typename scalar_t, typename index_t>
__global__ void apply_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                             const scalar_t* __restrict__ bias, const scalar_t* __restrict__ log_scale,
                             index_t total, Divider<index_t> div_n, index_t C, bool invert) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t c = div_n.div(i) % C;
    const acc_t b = static_cast<acc_t>(bias[c]), ls = static_cast<acc_t>(log_scale[c]);
    const acc_t v = static_cast<acc_t>(in[i]);
    out[i] = static_cast<scalar_t>(invert ? v * exp(-ls) - b : (v + b) * exp(ls));
  }
}

// logdet[b] = sign * N * sum_c log_s[c] for every b.  Each block sums log_s in the same
// order, so every sample gets the identical value.
template <typename scalar_t>
__global__ void logdet_kernel(const scalar_t* __restrict__ log_scale, at::opmath_type<scalar_t>* __restrict__ logdet,
                              int64_t C, int64_t B, at::opmath_type<scalar_t> factor) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t v = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) v += static_cast<acc_t>(log_scale[c]);
  __shared__ acc_t total;
  v = block_sum(v);
  if (threadIdx.x == 0) total = v * factor;
  __syncthreads();
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < B;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    logdet[b] = total;
  }
}

// One block per (channel, split of the batch*pixel range): writes grad_x and per-block
// partial sums of g and g * (x + b), finished by finish_kernel (deterministic order).
template <typename scalar_t, typename index_t>
__global__ void backward_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                const scalar_t* __restrict__ bias, const scalar_t* __restrict__ log_scale,
                                scalar_t* __restrict__ gx, at::opmath_type<scalar_t>* __restrict__ part_g,
                                at::opmath_type<scalar_t>* __restrict__ part_gx, index_t C, index_t BN,
                                Divider<index_t> div_n, index_t N) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t c = blockIdx.x;
  const acc_t b = static_cast<acc_t>(bias[c]);
  const acc_t s = exp(static_cast<acc_t>(log_scale[c]));
  acc_t sum_g = 0, sum_gx = 0;
  for (index_t j = blockIdx.y * static_cast<index_t>(blockDim.x) + threadIdx.x; j < BN;
       j += static_cast<index_t>(gridDim.y) * blockDim.x) {
    const auto dm = div_n.divmod(j);  // j = batch * N + pixel
    const index_t i = (dm.div * C + c) * N + dm.mod;
    const acc_t gv = static_cast<acc_t>(g[i]);
    gx[i] = static_cast<scalar_t>(gv * s);
    sum_g += gv;
    sum_gx += gv * (static_cast<acc_t>(x[i]) + b);
  }
  sum_g = block_sum(sum_g);
  sum_gx = block_sum(sum_gx);
  if (threadIdx.x == 0) {
    part_g[c * gridDim.y + blockIdx.y] = sum_g;
    part_gx[c * gridDim.y + blockIdx.y] = sum_gx;
  }
}

// Block c: gb[c] = s sum(part_g[c, :]), gls[c] = s sum(part_gx[c, :]) + N sum_b gl[b].
template <typename scalar_t>
__global__ void finish_kernel(const at::opmath_type<scalar_t>* __restrict__ part_g,
                              const at::opmath_type<scalar_t>* __restrict__ part_gx,
                              const at::opmath_type<scalar_t>* __restrict__ gl, const scalar_t* __restrict__ log_scale,
                              scalar_t* __restrict__ grad_b, scalar_t* __restrict__ grad_ls, int64_t splits,
                              int64_t B, at::opmath_type<scalar_t> N) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t c = blockIdx.x;
  acc_t sg = 0, sgx = 0, sl = 0;
  for (int64_t k = threadIdx.x; k < splits; k += blockDim.x) {
    sg += part_g[c * splits + k];
    sgx += part_gx[c * splits + k];
  }
  if (gl != nullptr) {
    for (int64_t b = threadIdx.x; b < B; b += blockDim.x) sl += gl[b];
  }
  sg = block_sum(sg);
  sgx = block_sum(sgx);
  sl = block_sum(sl);
  if (threadIdx.x == 0) {
    const acc_t s = exp(static_cast<acc_t>(log_scale[c]));
    grad_b[c] = static_cast<scalar_t>(s * sg);
    grad_ls[c] = static_cast<scalar_t>(s * sgx + N * sl);
  }
}

std::tuple<at::Tensor, at::Tensor> apply(const at::Tensor& in, const at::Tensor& bias, const at::Tensor& log_scale,
                                         bool invert) {
  check_actnorm_args(in, bias, log_scale);
  const c10::cuda::CUDAGuard guard(in.device());
  const at::Tensor ic = in.contiguous(), bc = bias.contiguous(), lc = log_scale.contiguous();
  const int64_t B = in.size(0), C = in.size(1), N = in.numel() / std::max<int64_t>(B * C, 1);
  at::Tensor out = at::empty_like(ic);
  at::Tensor logdet = at::empty({B}, in.options().dtype(logdet_dtype(in.scalar_type())));
  const int64_t total = ic.numel();
  const auto stream = at::cuda::getCurrentCUDAStream();
  INVFLOW_CUDA_DISPATCH(in.scalar_type(), "actnorm_apply_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (total > 0) {
      INVFLOW_INDEX_DISPATCH(total, [&] {
        apply_kernel<scalar_t, index_t><<<grid_for(total), kThreads, 0, stream>>>(
            ic.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), lc.data_ptr<scalar_t>(),
            static_cast<index_t>(total), Divider<index_t>(static_cast<index_t>(N)), static_cast<index_t>(C), invert);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    if (B > 0) {
      const acc_t factor = static_cast<acc_t>(invert ? -1.0 : 1.0) * static_cast<acc_t>(N);
      logdet_kernel<scalar_t><<<grid_for(B), kThreads, 0, stream>>>(lc.data_ptr<scalar_t>(), logdet.data_ptr<acc_t>(),
                                                                   C, B, factor);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {out, logdet};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> actnorm_forward(const at::Tensor& x, const at::Tensor& bias,
                                                   const at::Tensor& log_scale) {
  return apply(x, bias, log_scale, /*invert=*/false);
}

std::tuple<at::Tensor, at::Tensor> actnorm_inverse(const at::Tensor& y, const at::Tensor& bias,
                                                   const at::Tensor& log_scale) {
  return apply(y, bias, log_scale, /*invert=*/true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> actnorm_backward(
    const at::Tensor& grad_y, const c10::optional<at::Tensor>& grad_logdet, const at::Tensor& x,
    const at::Tensor& bias, const at::Tensor& log_scale) {
  check_actnorm_args(x, bias, log_scale);
  check_grad_args("actnorm_backward", grad_y, grad_logdet, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor gc = grad_y.contiguous(), xc = x.contiguous(), bc = bias.contiguous(), lc = log_scale.contiguous();
  const at::Tensor glc = grad_logdet.has_value() ? grad_logdet->contiguous() : at::Tensor();
  const int64_t B = x.size(0), C = x.size(1), N = x.numel() / std::max<int64_t>(B * C, 1);
  const int64_t BN = B * N;
  at::Tensor grad_x = at::empty_like(xc);
  at::Tensor grad_b = at::empty({C}, bias.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_ls = at::empty({C}, log_scale.options().memory_format(at::MemoryFormat::Contiguous));
  if (C == 0) return {grad_x, grad_b, grad_ls};
  const auto acc = x.options().dtype(logdet_dtype(x.scalar_type()));
  // splits = 0 when there is nothing to reduce (empty batch or pixels): the sums are 0.
  const int64_t splits = BN == 0 ? 0 : std::max<int64_t>(
      1, std::min<int64_t>({(BN + 4 * kThreads - 1) / (4 * kThreads), 1024,
                            std::max<int64_t>(1, 8 * at::cuda::getCurrentDeviceProperties()->multiProcessorCount / C)}));
  at::Tensor part_g = at::empty({C, std::max<int64_t>(splits, 1)}, acc);
  at::Tensor part_gx = at::empty({C, std::max<int64_t>(splits, 1)}, acc);
  const auto stream = at::cuda::getCurrentCUDAStream();
  INVFLOW_CUDA_DISPATCH(x.scalar_type(), "actnorm_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (splits > 0) {
      INVFLOW_INDEX_DISPATCH(x.numel(), [&] {
        const dim3 grid(static_cast<unsigned int>(C), static_cast<unsigned int>(splits));
        backward_kernel<scalar_t, index_t><<<grid, kThreads, 0, stream>>>(
            gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), lc.data_ptr<scalar_t>(),
            grad_x.data_ptr<scalar_t>(), part_g.data_ptr<acc_t>(), part_gx.data_ptr<acc_t>(), static_cast<index_t>(C),
            static_cast<index_t>(BN), Divider<index_t>(static_cast<index_t>(N)), static_cast<index_t>(N));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    finish_kernel<scalar_t><<<static_cast<unsigned int>(C), kThreads, 0, stream>>>(
        part_g.data_ptr<acc_t>(), part_gx.data_ptr<acc_t>(), glc.defined() ? glc.data_ptr<acc_t>() : nullptr,
        lc.data_ptr<scalar_t>(), grad_b.data_ptr<scalar_t>(), grad_ls.data_ptr<scalar_t>(), splits, B,
        static_cast<acc_t>(N));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_x, grad_b, grad_ls};
}

}  // namespace cuda
}  // namespace invflow
