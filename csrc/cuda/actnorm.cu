// ActNorm on CUDA: the semantics of csrc/cpu/actnorm.cpp (Glow Sec. 3.1).
//   forward  y = (x + b) * exp(log_s),  inverse  x = y * exp(-log_s) - b,  log|det| = +-N sum log_s
//   backward gx = g s,  gb[c] = s[c] sum g,  glog_s[c] = s[c] sum g (x + b) + N sum_b gl[b]
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

// One block per (channel, split of the batch*pixel range): writes grad_x and per-block
// partial sums of g and g * (x + b), reduced over splits afterwards (deterministic).
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

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// N * sum(log_s) broadcast to [B], in the input dtype.
at::Tensor constant_logdet(const at::Tensor& log_scale, int64_t B, int64_t N, double sign) {
  return (log_scale.to(acc_type(log_scale.scalar_type())).sum() * (sign * static_cast<double>(N)))
      .expand({B})
      .to(log_scale.scalar_type())
      .contiguous();
}

std::tuple<at::Tensor, at::Tensor> apply(const at::Tensor& in, const at::Tensor& bias, const at::Tensor& log_scale,
                                         bool invert) {
  check_actnorm_args(in, bias, log_scale);
  const c10::cuda::CUDAGuard guard(in.device());
  const at::Tensor ic = in.contiguous(), bc = bias.contiguous(), lc = log_scale.contiguous();
  const int64_t B = in.size(0), C = in.size(1), N = in.numel() / std::max<int64_t>(B * C, 1);
  at::Tensor out = at::empty_like(ic);
  const int64_t total = ic.numel();
  if (total > 0) {
    INVFLOW_CUDA_DISPATCH(in.scalar_type(), "actnorm_apply_cuda", [&] {
      INVFLOW_INDEX_DISPATCH(total, [&] {
        apply_kernel<scalar_t, index_t><<<grid_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            ic.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), lc.data_ptr<scalar_t>(),
            static_cast<index_t>(total), Divider<index_t>(static_cast<index_t>(N)), static_cast<index_t>(C), invert);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {out, constant_logdet(lc, B, N, invert ? -1.0 : 1.0)};
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
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "invflow: actnorm_backward grad_y shape mismatch");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor gc = grad_y.contiguous(), xc = x.contiguous(), bc = bias.contiguous(), lc = log_scale.contiguous();
  const int64_t B = x.size(0), C = x.size(1), N = x.numel() / std::max<int64_t>(B * C, 1);
  const int64_t BN = B * N;
  at::Tensor grad_x = at::empty_like(xc);
  const auto acc = x.options().dtype(acc_type(x.scalar_type()));
  const int64_t splits = std::max<int64_t>(
      1, std::min<int64_t>({(BN + 4 * kThreads - 1) / (4 * kThreads), 1024,
                            std::max<int64_t>(1, 8 * at::cuda::getCurrentDeviceProperties()->multiProcessorCount / std::max<int64_t>(C, 1))}));
  at::Tensor part_g = at::zeros({C, splits}, acc), part_gx = at::zeros({C, splits}, acc);
  if (x.numel() > 0) {
    INVFLOW_CUDA_DISPATCH(x.scalar_type(), "actnorm_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      INVFLOW_INDEX_DISPATCH(x.numel(), [&] {
        const dim3 grid(static_cast<unsigned int>(C), static_cast<unsigned int>(splits));
        backward_kernel<scalar_t, index_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), lc.data_ptr<scalar_t>(),
            grad_x.data_ptr<scalar_t>(), part_g.data_ptr<acc_t>(), part_gx.data_ptr<acc_t>(), static_cast<index_t>(C),
            static_cast<index_t>(BN), Divider<index_t>(static_cast<index_t>(N)), static_cast<index_t>(N));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  const at::Tensor s = lc.to(acc.dtype()).exp();
  at::Tensor grad_b = (s * part_g.sum(1)).to(x.scalar_type());
  at::Tensor grad_ls = s * part_gx.sum(1);
  if (grad_logdet.has_value()) {
    grad_ls = grad_ls + grad_logdet->to(acc.dtype()).sum() * static_cast<double>(N);
  }
  return {grad_x, grad_b, grad_ls.to(x.scalar_type()).contiguous()};
}

}  // namespace cuda
}  // namespace invflow
