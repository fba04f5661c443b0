// Affine coupling on CUDA: the semantics of csrc/cpu/coupling.cpp, with the per-entry math
// of csrc/common/scale.h.  x is [B, C, ...] and h = [raw, t] is [B, 2C, ...]; each sample's
// C * N entries are contiguous, so a block works on a chunk of one sample and writes its
// partial log-det sum, and the partials are reduced per sample afterwards (deterministic).
// Log-dets are in logdet_dtype (float32 for half / bfloat16 inputs).
#include "../common/scale.h"
#include "../ops.h"
#include "utils.cuh"

namespace invflow {
namespace cuda {

namespace {

constexpr int kItemsPerThread = 8;
constexpr int64_t kMaxChunk = kThreads * kItemsPerThread;  // most entries of one sample per block

// Entries of one sample per block: at most kMaxChunk, and small enough that B samples give
// about 4 blocks per SM (a single image, as in sampling or scoring one input, still fills the
// device), in whole multiples of the block size.
int64_t chunk_size(int64_t B, int64_t M) {
  const int64_t target_blocks = 4 * static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  const int64_t per_sample = std::max<int64_t>(1, (target_blocks + B - 1) / std::max<int64_t>(B, 1));
  int64_t chunk = (M + per_sample - 1) / per_sample;
  chunk = (chunk + kThreads - 1) / kThreads * kThreads;
  return std::min<int64_t>(kMaxChunk, std::max<int64_t>(kThreads, chunk));
}

template <typename scalar_t, typename index_t>
__global__ void apply_kernel(const scalar_t* __restrict__ in, const scalar_t* __restrict__ h,
                             const scalar_t* __restrict__ mask, scalar_t* __restrict__ out,
                             at::opmath_type<scalar_t>* __restrict__ partial, index_t M, index_t chunk,
                             index_t chunks_per_sample, index_t total_chunks, ScaleKind kind,
                             at::opmath_type<scalar_t> clamp, bool invert) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t q = blockIdx.x; q < total_chunks; q += gridDim.x) {
    const index_t b = q / chunks_per_sample;
    const index_t begin = (q - b * chunks_per_sample) * chunk;
    const index_t end = min(M, begin + chunk);
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

// logdet[b] = sign * sum of the sample's chunk partials, in a fixed order (deterministic).
template <typename acc_t>
__global__ void logdet_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ logdet, int64_t B,
                              int64_t chunks_per_sample, acc_t sign) {
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < B;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t v = 0;
    for (int64_t k = 0; k < chunks_per_sample; ++k) v += partial[b * chunks_per_sample + k];
    logdet[b] = sign * v;
  }
}

template <typename scalar_t, typename index_t>
__global__ void grad_kernel(const scalar_t* __restrict__ gy, const at::opmath_type<scalar_t>* __restrict__ gl,
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
    const acc_t glv = gl != nullptr ? gl[dm.div] : acc_t(0);
    coupling_grad<acc_t>(static_cast<acc_t>(g), glv, static_cast<acc_t>(x[i]), static_cast<acc_t>(h[hr]), kind,
                         clamp, &gxv, &grv);
    gx[i] = static_cast<scalar_t>(gxv);
    gh[hr] = static_cast<scalar_t>(grv);
    gh[hr + M] = g;
  }
}

std::tuple<at::Tensor, at::Tensor> apply(const at::Tensor& in, const at::Tensor& h,
                                         const c10::optional<at::Tensor>& mask, const std::string& scale,
                                         double clamp, bool invert) {
  check_coupling_args(in, h, mask);
  const ScaleKind kind = static_cast<ScaleKind>(parse_scale_kind(scale));
  const c10::cuda::CUDAGuard guard(in.device());
  const at::Tensor ic = in.contiguous(), hc = h.contiguous();
  const at::Tensor mc = mask.has_value() ? mask->contiguous() : at::Tensor();
  const int64_t B = in.size(0), M = B > 0 ? in.numel() / B : 0;
  at::Tensor out = at::empty_like(ic);
  const auto acc = in.options().dtype(logdet_dtype(in.scalar_type()));
  if (in.numel() == 0) return {out, at::zeros({B}, acc)};
  const int64_t chunk = chunk_size(B, M);
  const int64_t chunks_per_sample = (M + chunk - 1) / chunk;
  const int64_t total_chunks = B * chunks_per_sample;
  at::Tensor partial = at::empty({B, chunks_per_sample}, acc);
  at::Tensor logdet = at::empty({B}, acc);
  const auto stream = at::cuda::getCurrentCUDAStream();
  INVFLOW_CUDA_DISPATCH(in.scalar_type(), "coupling_apply_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    INVFLOW_INDEX_DISPATCH(h.numel(), [&] {
      apply_kernel<scalar_t, index_t><<<grid_for(total_chunks, 1), kThreads, 0, stream>>>(
          ic.data_ptr<scalar_t>(), hc.data_ptr<scalar_t>(), mc.defined() ? mc.data_ptr<scalar_t>() : nullptr,
          out.data_ptr<scalar_t>(), partial.data_ptr<acc_t>(), static_cast<index_t>(M), static_cast<index_t>(chunk),
          static_cast<index_t>(chunks_per_sample), static_cast<index_t>(total_chunks), kind,
          static_cast<acc_t>(clamp), invert);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    logdet_kernel<acc_t><<<grid_for(B), kThreads, 0, stream>>>(partial.data_ptr<acc_t>(), logdet.data_ptr<acc_t>(),
                                                               B, chunks_per_sample, acc_t(invert ? -1 : 1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, logdet};
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
  check_grad_args("coupling_backward", grad_y, grad_logdet, x);
  const ScaleKind kind = static_cast<ScaleKind>(parse_scale_kind(scale));
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor gc = grad_y.contiguous(), xc = x.contiguous(), hc = h.contiguous();
  const at::Tensor mc = mask.has_value() ? mask->contiguous() : at::Tensor();
  const at::Tensor glc = grad_logdet.has_value() ? grad_logdet->contiguous() : at::Tensor();
  const int64_t B = x.size(0), M = B > 0 ? x.numel() / B : 0;
  at::Tensor grad_x = at::empty_like(xc);
  at::Tensor grad_h = at::empty_like(hc);
  const int64_t total = xc.numel();
  if (total > 0) {
    INVFLOW_CUDA_DISPATCH(x.scalar_type(), "coupling_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      INVFLOW_INDEX_DISPATCH(h.numel(), [&] {
        grad_kernel<scalar_t, index_t><<<grid_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            gc.data_ptr<scalar_t>(), glc.defined() ? glc.data_ptr<acc_t>() : nullptr, xc.data_ptr<scalar_t>(),
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
