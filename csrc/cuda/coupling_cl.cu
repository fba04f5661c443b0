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
  int64_t P = 1;  // explicit, so that empty tensors reshape too
  for (int64_t d = 1; d < t.dim() - 1; ++d) P *= t.size(d);
  return t.reshape({B, P, K}).transpose(1, 2);
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

// Second order (see csrc/cpu/coupling_cl.cpp): composed from ATen's CUDA ops.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> coupling_cl_double_backward(
    const at::Tensor& u_x, const at::Tensor& u_h, const at::Tensor& grad_y, const at::Tensor& grad_logdet,
    const at::Tensor& x, const at::Tensor& h, const std::string& scale, double clamp) {
  check_args(x, h);
  const int64_t C = x.size(-1);
  const int kind = parse_scale_kind(scale);
  const at::Tensor raw = h.narrow(-1, 0, C);
  at::Tensor s, d1, d2;
  if (kind == 0) {
    s = at::sigmoid(raw + 2.0);
    d1 = 1.0 - s;
    d2 = -s * d1;
  } else if (kind == 1) {
    s = at::exp(raw);
    d1 = at::ones_like(raw);
    d2 = at::zeros_like(raw);
  } else {
    const at::Tensor th = at::tanh(raw / clamp);
    s = at::exp(clamp * th);
    d1 = 1.0 - th * th;
    d2 = -2.0 * th * d1 / clamp;
  }
  const at::Tensor ur = u_h.narrow(-1, 0, C), ut = u_h.narrow(-1, C, C);
  std::vector<int64_t> bshape(x.dim(), 1);
  bshape[0] = x.size(0);
  const at::Tensor gl = grad_logdet.view(bshape);
  const at::Tensor sd = s * d1;
  at::Tensor d_gy = u_x * s + ur * x * sd + ut;
  at::Tensor d_gl = (ur * d1).flatten(1).sum(1);
  at::Tensor d_x = ur * grad_y * sd;
  at::Tensor d_r = u_x * grad_y * sd + ur * (grad_y * x * s * (d1 * d1 + d2) + gl * d2);
  at::Tensor d_h = at::cat({d_r, at::zeros_like(d_r)}, -1);
  const auto dt = x.scalar_type();
  return {d_gy.to(dt), d_gl.to(logdet_dtype(dt)), d_x.to(dt), d_h.to(dt)};
}

}  // namespace

}  // namespace cuda
}  // namespace invflow

TORCH_LIBRARY_IMPL(invflow, CUDA, m) {
  m.impl("coupling_cl_forward", &invflow::cuda::coupling_cl_forward);
  m.impl("coupling_cl_backward", &invflow::cuda::coupling_cl_backward);
  m.impl("coupling_cl_double_backward", &invflow::cuda::coupling_cl_double_backward);
}
