// The elementwise rational-quadratic spline on CUDA: the semantics of csrc/cpu/spline.cpp
// with the per-entry math of csrc/common/rq_spline.h (invflow/ops/spline.py is the spec).
//
// One thread per entry (grid-stride loop): the entry's K-bin rows of widths, heights and
// derivatives are read from its row (one row stride per tensor, so a column block of the
// st-net output is read in place), the bin is found by a scan of the cumulative widths (or
// heights, inverse), and y and log|dy/dx| are written in opmath precision (float32 for
// half / bfloat16, whose log-dets are float32).  The backward writes the entry's full rows of
// parameter gradients (zeros outside [-B, B]).  Index arithmetic is 32-bit when every
// tensor's extent allows.
#include "../common/rq_spline.h"
#include "../ops.h"
#include "utils.cuh"

namespace invflow {
namespace cuda {

namespace {

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    spline_apply_kernel(const scalar_t* __restrict__ in, const scalar_t* __restrict__ uw,
                        const scalar_t* __restrict__ uh, const scalar_t* __restrict__ ud, scalar_t* __restrict__ out,
                        at::opmath_type<scalar_t>* __restrict__ lad, index_t n, index_t ws, index_t hs, index_t ds,
                        int K, at::opmath_type<scalar_t> bound, bool inverse) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    acc_t l;
    out[i] = static_cast<scalar_t>(
        rq::rq_apply<acc_t>(uw + i * ws, uh + i * hs, ud + i * ds, K, bound, acc_t(in[i]), inverse, &l));
    lad[i] = l;
  }
}

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    spline_backward_kernel(const scalar_t* __restrict__ gout, const at::opmath_type<scalar_t>* __restrict__ gl,
                           const scalar_t* __restrict__ in, const scalar_t* __restrict__ uw,
                           const scalar_t* __restrict__ uh, const scalar_t* __restrict__ ud,
                           scalar_t* __restrict__ g_in, scalar_t* __restrict__ g_w, scalar_t* __restrict__ g_h,
                           scalar_t* __restrict__ g_d, index_t n, index_t ws, index_t hs, index_t ds, int K,
                           at::opmath_type<scalar_t> bound, bool inverse) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t K1 = static_cast<index_t>(K);
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const acc_t g = gl != nullptr ? gl[i] : acc_t(0);
    g_in[i] = static_cast<scalar_t>(rq::rq_backward<acc_t>(uw + i * ws, uh + i * hs, ud + i * ds, K, bound,
                                                           acc_t(in[i]), inverse, acc_t(gout[i]), g,
                                                           g_w + i * K1, g_h + i * K1, g_d + i * (K1 - 1)));
  }
}

// The largest element offset any kernel touches, for the 32-bit index choice.
int64_t extent(const SplineArgs& a) {
  return a.n * std::max<int64_t>(std::max<int64_t>(a.ws, a.hs), std::max<int64_t>(a.ds, a.K)) + a.K;
}

std::tuple<at::Tensor, at::Tensor> apply_all(const char* op, const at::Tensor& in, const at::Tensor& widths,
                                             const at::Tensor& heights, const at::Tensor& derivatives, double bound,
                                             bool inverse) {
  const c10::cuda::CUDAGuard guard(in.device());
  const SplineArgs a = prepare_spline_args(op, in, widths, heights, derivatives, bound);
  auto [out, lad] = spline_outputs(a);
  if (a.n == 0) return {out, lad};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  INVFLOW_CUDA_DISPATCH(in.scalar_type(), "spline_apply", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    INVFLOW_INDEX_DISPATCH(extent(a), [&] {
      spline_apply_kernel<scalar_t, index_t><<<grid_for(a.n), kThreads, 0, stream>>>(
          a.in.data_ptr<scalar_t>(), a.widths.data_ptr<scalar_t>(), a.heights.data_ptr<scalar_t>(),
          a.derivatives.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lad.data_ptr<acc_t>(),
          static_cast<index_t>(a.n), static_cast<index_t>(a.ws), static_cast<index_t>(a.hs),
          static_cast<index_t>(a.ds), a.K, static_cast<acc_t>(bound), inverse);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, lad};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> spline_forward(const at::Tensor& x, const at::Tensor& widths,
                                                  const at::Tensor& heights, const at::Tensor& derivatives,
                                                  double bound) {
  return apply_all("spline_forward", x, widths, heights, derivatives, bound, /*inverse=*/false);
}

std::tuple<at::Tensor, at::Tensor> spline_inverse(const at::Tensor& y, const at::Tensor& widths,
                                                  const at::Tensor& heights, const at::Tensor& derivatives,
                                                  double bound) {
  return apply_all("spline_inverse", y, widths, heights, derivatives, bound, /*inverse=*/true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> spline_backward(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_logabsdet, const at::Tensor& in,
    const at::Tensor& widths, const at::Tensor& heights, const at::Tensor& derivatives, double bound,
    bool inverse) {
  const c10::cuda::CUDAGuard guard(in.device());
  const SplineArgs a = prepare_spline_args("spline_backward", in, widths, heights, derivatives, bound);
  check_spline_grad_args(grad_out, grad_logabsdet, in);
  const at::Tensor gc = grad_out.contiguous();
  const at::Tensor glc = grad_logabsdet.has_value() ? grad_logabsdet->contiguous() : at::Tensor();
  auto [g_in, g_w, g_h, g_d] = spline_grads(a);
  if (a.n == 0) return {g_in, g_w, g_h, g_d};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  INVFLOW_CUDA_DISPATCH(in.scalar_type(), "spline_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    INVFLOW_INDEX_DISPATCH(extent(a), [&] {
      spline_backward_kernel<scalar_t, index_t><<<grid_for(a.n), kThreads, 0, stream>>>(
          gc.data_ptr<scalar_t>(), glc.defined() ? glc.data_ptr<acc_t>() : nullptr, a.in.data_ptr<scalar_t>(),
          a.widths.data_ptr<scalar_t>(), a.heights.data_ptr<scalar_t>(), a.derivatives.data_ptr<scalar_t>(),
          g_in.data_ptr<scalar_t>(), g_w.data_ptr<scalar_t>(), g_h.data_ptr<scalar_t>(), g_d.data_ptr<scalar_t>(),
          static_cast<index_t>(a.n), static_cast<index_t>(a.ws), static_cast<index_t>(a.hs),
          static_cast<index_t>(a.ds), a.K, static_cast<acc_t>(bound), inverse);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {g_in, g_w, g_h, g_d};
}

}  // namespace cuda
}  // namespace invflow
