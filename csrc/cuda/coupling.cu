// Affine coupling on CUDA: the semantics of csrc/cpu/coupling.cpp, with the per-entry math
// of csrc/common/scale.h.  x is [B, C, ...] and h = [raw, t] is [B, 2C, ...]; each sample's
// C * N entries are contiguous, so a block works on a chunk of one sample and writes its
// partial log-det sum, and the partials are reduced per sample afterwards (deterministic).
#include "../common/scale.h"
#include "../ops.h"
#include "utils.cuh"

namespace invflow {
namespace cuda {

namespace {

constexpr int kItemsPerThread = 8;
constexpr int64_t kChunk = kThreads * kItemsPerThread;  // entries of one sample per block

template <typename scalar_t, typename index_t>
__global__ void apply_kernel(const scalar_t* __restrict__ in, const scalar_t* __restrict__ h,
                             const scalar_t* __restrict__ mask, scalar_t* __restrict__ out,
                             at::opmath_type<scalar_t>* __restrict__ partial, index_t M, index_t chunks_per_sample,
                             index_t total_chunks, ScaleKind kind, at::opmath_type<scalar_t> clamp, bool invert) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t q = blockIdx.x; q < total_chunks; q += gridDim.x) {
    const index_t b = q / chunks_per_sample;
    const index_t begin = (q - b * chunks_per_sample) * static_cast<index_t>(kChunk);
    const index_t end = min(M, begin + static_cast<index_t>(kChunk));
    const scalar_t* raw = h + b * 2 * M;
    const scalar_t* shift = raw + M;
    acc_t ld = 0;
    for (index_t e = begin + threadIdx.x; e < end; e += blockDim.x) {
      const index_t i = b * M + e;
      if (mask != nullptr && mask[e] == scalar_t(0)) {
        out[i] = in[i];
        continue;
      }
      acc_t log_s;
      const acc_t v = static_cast<acc_t>(in[i]), r = static_cast<acc_t>(raw[e]), t = static_cast<acc_t>(shift[e]);
      const acc_t o = invert ? coupling_unapply<acc_t>(v, r, t, kind, clamp, &log_s)
                             : coupling_apply<acc_t>(v, r, t, kind, clamp, &log_s);
      out[i] = static_cast<scalar_t>(o);
      ld += log_s;
    }
    ld = block_sum(ld);
    if (threadIdx.x == 0) partial[q] = ld;
  }
}

template <typename scalar_t, typename index_t>
__global__ void grad_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ gl,
                            const scalar_t* __restrict__ x, const scalar_t* __restrict__ h,
                            const scalar_t* __restrict__ mask, scalar_t* __restrict__ gx, scalar_t* __restrict__ gh,
                            index_t total, Divider<index_t> div_m, index_t M, ScaleKind kind,
                            at::opmath_type<scalar_t> clamp) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const auto dm = div_m.divmod(i);  // i = sample * M + entry
    const index_t hr = dm.div * 2 * M + dm.mod;
    const scalar_t g = gy[i];
    if (mask != nullptr && mask[dm.mod] == scalar_t(0)) {
      gx[i] = g;
      gh[hr] = scalar_t(0);
      gh[hr + M] = scalar_t(0);
      continue;
    }
    acc_t gxv, grv;
    const acc_t glv = gl != nullptr ? static_cast<acc_t>(gl[dm.div]) : acc_t(0);
    coupling_grad<acc_t>(static_cast<acc_t>(g), glv, static_cast<acc_t>(x[i]), static_cast<acc_t>(h[hr]), kind,
                         clamp, &gxv, &grv);
    gx[i] = static_cast<scalar_t>(gxv);
    gh[hr] = static_cast<scalar_t>(grv);
    gh[hr + M] = g;
  }
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

std::tuple<at::Tensor, at::Tensor> apply(const at::Tensor& in, const at::Tensor& h,
                                         const c10::optional<at::Tensor>& mask, const std::string& scale,
                                         double clamp, bool invert) {
  check_coupling_args(in, h, mask);
  const ScaleKind kind = static_cast<ScaleKind>(parse_scale_kind(scale));
  const c10::cuda::CUDAGuard guard(in.device());
  const at::Tensor ic = in.contiguous(), hc = h.contiguous();
  const at::Tensor mc = mask.has_value() ? mask->contiguous() : at::Tensor();
  const int64_t B = in.size(0), M = B > 0 ? in.numel() / B : 0;
  const int64_t chunks_per_sample = std::max<int64_t>(1, (M + kChunk - 1) / kChunk);
  const int64_t total_chunks = B * chunks_per_sample;
  at::Tensor out = at::empty_like(ic);
  at::Tensor partial = at::zeros({B, chunks_per_sample}, in.options().dtype(acc_type(in.scalar_type())));
  if (in.numel() > 0) {
    INVFLOW_CUDA_DISPATCH(in.scalar_type(), "coupling_apply_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      INVFLOW_INDEX_DISPATCH(h.numel(), [&] {
        apply_kernel<scalar_t, index_t>
            <<<grid_for(total_chunks, 1), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
                ic.data_ptr<scalar_t>(), hc.data_ptr<scalar_t>(), mc.defined() ? mc.data_ptr<scalar_t>() : nullptr,
                out.data_ptr<scalar_t>(), partial.data_ptr<acc_t>(), static_cast<index_t>(M),
                static_cast<index_t>(chunks_per_sample), static_cast<index_t>(total_chunks), kind,
                static_cast<acc_t>(clamp), invert);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  at::Tensor logdet = partial.sum(1);
  if (invert) logdet = -logdet;
  return {out, logdet.to(in.scalar_type())};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> coupling_forward(const at::Tensor& x, const at::Tensor& h,
                                                    const c10::optional<at::Tensor>& mask,
                                                    const std::string& scale, double clamp) {
  return apply(x, h, mask, scale, clamp, /*invert=*/false);
}

std::tuple<at::Tensor, at::Tensor> coupling_inverse(const at::Tensor& y, const at::Tensor& h,
                                                    const c10::optional<at::Tensor>& mask,
                                                    const std::string& scale, double clamp) {
  return apply(y, h, mask, scale, clamp, /*invert=*/true);
}

std::tuple<at::Tensor, at::Tensor> coupling_backward(
    const at::Tensor& grad_y, const c10::optional<at::Tensor>& grad_logdet, const at::Tensor& x,
    const at::Tensor& h, const c10::optional<at::Tensor>& mask, const std::string& scale,
    double clamp) {
  check_coupling_args(x, h, mask);
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "invflow: coupling_backward grad_y shape mismatch");
  const ScaleKind kind = static_cast<ScaleKind>(parse_scale_kind(scale));
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor gc = grad_y.contiguous(), xc = x.contiguous(), hc = h.contiguous();
  const at::Tensor mc = mask.has_value() ? mask->contiguous() : at::Tensor();
  const at::Tensor glc = grad_logdet.has_value() ? grad_logdet->contiguous() : at::Tensor();
  const int64_t B = x.size(0), M = B > 0 ? x.numel() / B : 0;
  TORCH_CHECK(!glc.defined() || glc.numel() == B, "invflow: grad_logdet must have shape [B]");
  at::Tensor grad_x = at::empty_like(xc);
  at::Tensor grad_h = at::empty_like(hc);
  const int64_t total = xc.numel();
  if (total > 0) {
    INVFLOW_CUDA_DISPATCH(x.scalar_type(), "coupling_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      INVFLOW_INDEX_DISPATCH(h.numel(), [&] {
        grad_kernel<scalar_t, index_t><<<grid_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            gc.data_ptr<scalar_t>(), glc.defined() ? glc.data_ptr<scalar_t>() : nullptr, xc.data_ptr<scalar_t>(),
            hc.data_ptr<scalar_t>(), mc.defined() ? mc.data_ptr<scalar_t>() : nullptr, grad_x.data_ptr<scalar_t>(),
            grad_h.data_ptr<scalar_t>(), static_cast<index_t>(total), Divider<index_t>(static_cast<index_t>(M)),
            static_cast<index_t>(M), kind, static_cast<acc_t>(clamp));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {grad_x, grad_h};
}

}  // namespace cuda
}  // namespace invflow
