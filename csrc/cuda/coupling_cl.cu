// Channels-last coupling on CUDA (schemas and CPU kernels in csrc/cpu/coupling_cl.cpp):
// x [B, ..., C], h [B, ..., 2C] with h[..., :C] = raw and h[..., C:] = t.  Composed from the
// channels-first CUDA coupling kernels (csrc/cuda/coupling.cu) on transposed views: each call
// pays a layout copy of its inputs and outputs, which a native channels-last kernel would
// save; the results are the same.
#include <torch/library.h>

#include <vector>

#include "../ops.h"

namespace invflow {
namespace cuda {

namespace {

// [B, ..., K] -> [B, K, P] view (P = positions per sample).
at::Tensor channels_first(const at::Tensor& t) {
  const int64_t B = t.size(0), K = t.size(-1);
  return t.reshape({B, -1, K}).transpose(1, 2);
}

// [B, K, P] -> contiguous [B, ..., K] shaped like `like` with K channels last.
at::Tensor channels_last(const at::Tensor& t, const at::Tensor& like, int64_t K) {
  std::vector<int64_t> shape(like.sizes().begin(), like.sizes().end());
  shape.back() = K;
  return t.transpose(1, 2).contiguous().view(shape);
}

void check_args(const at::Tensor& x, const at::Tensor& h) {
  TORCH_CHECK(x.dim() >= 2 && h.dim() == x.dim() && h.size(-1) == 2 * x.size(-1),
              "invflow: coupling_cl expects x [B, ..., C] and h [B, ..., 2C], got ", x.sizes(), " and ",
              h.sizes());
  for (int64_t d = 0; d < x.dim() - 1; ++d) {
    TORCH_CHECK(h.size(d) == x.size(d), "invflow: coupling_cl h ", h.sizes(), " does not match x ", x.sizes());
  }
}

std::tuple<at::Tensor, at::Tensor> coupling_cl_forward(const at::Tensor& x, const at::Tensor& h,
                                                       const std::string& scale, double clamp) {
  check_args(x, h);
  auto out = coupling_forward(channels_first(x), channels_first(h), c10::nullopt, scale, clamp);
  return {channels_last(std::get<0>(out), x, x.size(-1)), std::get<1>(out)};
}

std::tuple<at::Tensor, at::Tensor> coupling_cl_backward(const at::Tensor& grad_y,
                                                        const c10::optional<at::Tensor>& grad_logdet,
                                                        const at::Tensor& x, const at::Tensor& h,
                                                        const std::string& scale, double clamp) {
  check_args(x, h);
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "invflow: coupling_cl_backward grad_y shape ", grad_y.sizes(),
              " differs from x ", x.sizes());
  auto g = coupling_backward(channels_first(grad_y), grad_logdet, channels_first(x), channels_first(h),
                             c10::nullopt, scale, clamp);
  return {channels_last(std::get<0>(g), x, x.size(-1)), channels_last(std::get<1>(g), h, h.size(-1))};
}

}  // namespace

}  // namespace cuda
}  // namespace invflow

TORCH_LIBRARY_IMPL(invflow, CUDA, m) {
  m.impl("coupling_cl_forward", &invflow::cuda::coupling_cl_forward);
  m.impl("coupling_cl_backward", &invflow::cuda::coupling_cl_backward);
}
