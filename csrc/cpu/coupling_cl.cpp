// Channels-last affine coupling on the CPU: the coupling of coupling.cpp on tensors whose
// channels are the LAST dimension, x [B, ..., C] and h [B, ..., 2C] with h[..., :C] = raw and
// h[..., C:] = t at every position (the layout of a channels-last st-net's output, rows of
// channels per pixel), so a channels-last flow needs no layout conversion around its coupling.
//
//   y = s(raw) * x + t,   logdet[b] = sum over positions and channels of log s(raw)
//
// Work is split into tiles of whole positions inside one sample; each tile de-interleaves its
// [raw | t] rows into two contiguous buffers and runs the vectorised span kernels of
// coupling.cpp over tile * C entries, so short channel rows (6..48 channels in Glow) cost no
// per-row overhead.  Per-tile log-det partial sums are reduced in a fixed order (deterministic).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/scale.h"
#include "../ops.h"
#include "coupling_rows.h"
#include "utils.h"

namespace invflow {
namespace cpu {

namespace {

constexpr int64_t kTileEntries = 4096;  // entries (positions x channels) per tile

struct Tiles {
  int64_t B, P, C;  // samples, positions per sample, channels
  int64_t per_tile, per_sample;
  Tiles(int64_t b, int64_t p, int64_t c) : B(b), P(p), C(c) {
    per_tile = std::max<int64_t>(1, kTileEntries / std::max<int64_t>(c, 1));
    per_sample = std::max<int64_t>(1, (p + per_tile - 1) / per_tile);
  }
  int64_t count() const { return B * per_sample; }
};

// One tile's [raw | t] rows -> contiguous raw and t (plain loops: a memcpy call per row of a
// few channels would cost more than the copy).
template <typename scalar_t>
inline void deinterleave(const scalar_t* __restrict__ h, int64_t h_stride, scalar_t* __restrict__ raw,
                         scalar_t* __restrict__ shift, int64_t rows, int64_t C) {
  for (int64_t p = 0; p < rows; ++p) {
    const scalar_t* hr = h + p * h_stride;
    scalar_t* r = raw + p * C;
    scalar_t* t = shift + p * C;
    for (int64_t c = 0; c < C; ++c) {
      r[c] = hr[c];
      t[c] = hr[C + c];
    }
  }
}

template <typename scalar_t>
inline void interleave(const scalar_t* __restrict__ raw, const scalar_t* __restrict__ shift, scalar_t* __restrict__ h,
                       int64_t rows, int64_t C) {
  for (int64_t p = 0; p < rows; ++p) {
    scalar_t* hr = h + p * 2 * C;
    const scalar_t* r = raw + p * C;
    const scalar_t* t = shift + p * C;
    for (int64_t c = 0; c < C; ++c) {
      hr[c] = r[c];
      hr[C + c] = t[c];
    }
  }
}

// Rows of C entries with a row stride (x[r, c] at data + r * stride + c) read in place.
template <typename scalar_t>
inline const scalar_t* rows_span(const scalar_t* data, int64_t stride, int64_t row0, int64_t rows, int64_t C,
                                 scalar_t* buf) {
  if (stride == C) return data + row0 * C;
  for (int64_t p = 0; p < rows; ++p) {
    const scalar_t* src = data + (row0 + p) * stride;
    for (int64_t c = 0; c < C; ++c) buf[p * C + c] = src[c];
  }
  return buf;
}

// t [..., K] as rows of K entries with one row stride, without a copy when its layout allows
// (e.g. a column block of a wider row-major matrix); else a contiguous copy.
std::pair<at::Tensor, int64_t> as_rows(const at::Tensor& t) {
  const int64_t D = t.dim(), K = t.size(-1);
  if (t.stride(D - 1) == 1 || K == 1) {
    const int64_t rs = t.stride(D - 2);
    bool ok = rs >= K;
    int64_t expect = rs;
    for (int64_t d = D - 2; d >= 0 && ok; --d) {
      if (t.size(d) != 1 && t.stride(d) != expect) ok = false;
      expect *= t.size(d);
    }
    if (ok) return {t, rs};
  }
  return {t.contiguous(), K};
}

}  // namespace

void check_coupling_cl_args(const at::Tensor& x, const at::Tensor& h) {
  TORCH_CHECK(x.dim() >= 2, "invflow: coupling_cl expects x [B, ..., C], got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "invflow: coupling_cl expects a floating tensor");
  TORCH_CHECK(h.dim() == x.dim(), "invflow: coupling_cl h must be [B, ..., 2C] for x ", x.sizes(), ", got ",
              h.sizes());
  for (int64_t d = 0; d < x.dim() - 1; ++d) {
    TORCH_CHECK(h.size(d) == x.size(d), "invflow: coupling_cl h ", h.sizes(), " does not match x ", x.sizes());
  }
  TORCH_CHECK(h.size(-1) == 2 * x.size(-1), "invflow: coupling_cl h must have 2C = ", 2 * x.size(-1),
              " channels in its last dimension, got ", h.sizes());
  TORCH_CHECK(h.scalar_type() == x.scalar_type(), "invflow: coupling_cl h dtype differs from x dtype");
  TORCH_CHECK(h.device() == x.device(), "invflow: coupling_cl h and x on different devices");
}

std::tuple<at::Tensor, at::Tensor> coupling_cl_forward(const at::Tensor& x, const at::Tensor& h,
                                                       const std::string& scale, double clamp) {
  check_coupling_cl_args(x, h);
  const ScaleKind kind = static_cast<ScaleKind>(parse_scale_kind(scale));
  const auto [xc, xs] = as_rows(x);
  const auto [hc, hs] = as_rows(h);
  const int64_t B = x.size(0), C = x.size(-1);
  const Tiles t(B, B > 0 ? x.numel() / std::max<int64_t>(B * C, 1) : 0, C);
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor logdet = at::empty({B}, x.options());
  INVFLOW_DISPATCH_FLOATING(x.scalar_type(), "coupling_cl_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* hp = hc.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    std::vector<acc_t> part(t.count(), acc_t(0));
    at::parallel_for(0, t.count(), 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> raw(t.per_tile * C), shift(t.per_tile * C), xbuf(xs == C ? 0 : t.per_tile * C);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / t.per_sample;
        const int64_t p0 = (task % t.per_sample) * t.per_tile;
        const int64_t rows = std::min(t.per_tile, t.P - p0);
        if (rows <= 0) continue;
        const int64_t row0 = b * t.P + p0;
        deinterleave(hp + row0 * hs, hs, raw.data(), shift.data(), rows, C);
        const scalar_t* xr = rows_span(xp, xs, row0, rows, C, xbuf.data());
        part[task] = coupling_apply_span<scalar_t>(xr, raw.data(), shift.data(), yp + row0 * C,
                                                   rows * C, kind, static_cast<acc_t>(clamp), false);
      }
    });
    scalar_t* ld = logdet.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      acc_t sum = 0;
      for (int64_t k = 0; k < t.per_sample; ++k) sum += part[b * t.per_sample + k];
      ld[b] = static_cast<scalar_t>(sum);
    }
  });
  return {y, logdet};
}

// grad_x = gy * s, grad_raw = (gy * x * s + gl[b]) * dlog s/draw, grad_t = gy.
std::tuple<at::Tensor, at::Tensor> coupling_cl_backward(const at::Tensor& grad_y,
                                                        const c10::optional<at::Tensor>& grad_logdet,
                                                        const at::Tensor& x, const at::Tensor& h,
                                                        const std::string& scale, double clamp) {
  check_coupling_cl_args(x, h);
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "invflow: coupling_cl_backward grad_y shape ", grad_y.sizes(),
              " differs from x ", x.sizes());
  const ScaleKind kind = static_cast<ScaleKind>(parse_scale_kind(scale));
  const auto [gc, gs] = as_rows(grad_y);
  const auto [xc, xs] = as_rows(x);
  const auto [hc, hs] = as_rows(h);
  const at::Tensor glc = grad_logdet.has_value() ? grad_logdet->contiguous() : at::Tensor();
  const int64_t B = x.size(0), C = x.size(-1);
  TORCH_CHECK(!glc.defined() || glc.numel() == B, "invflow: grad_logdet must have shape [B] = [", B, "]");
  const Tiles t(B, B > 0 ? x.numel() / std::max<int64_t>(B * C, 1) : 0, C);
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  at::Tensor grad_h = at::empty(h.sizes(), h.options());
  INVFLOW_DISPATCH_FLOATING(x.scalar_type(), "coupling_cl_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* hp = hc.data_ptr<scalar_t>();
    const scalar_t* glp = glc.defined() ? glc.data_ptr<scalar_t>() : nullptr;
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    scalar_t* ghp = grad_h.data_ptr<scalar_t>();
    at::parallel_for(0, t.count(), 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> raw(t.per_tile * C), shift(t.per_tile * C), graw(t.per_tile * C),
          gshift(t.per_tile * C), xbuf(xs == C ? 0 : t.per_tile * C), gbuf(gs == C ? 0 : t.per_tile * C);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / t.per_sample;
        const int64_t p0 = (task % t.per_sample) * t.per_tile;
        const int64_t rows = std::min(t.per_tile, t.P - p0);
        if (rows <= 0) continue;
        const int64_t row0 = b * t.P + p0;
        deinterleave(hp + row0 * hs, hs, raw.data(), shift.data(), rows, C);
        const scalar_t* xr = rows_span(xp, xs, row0, rows, C, xbuf.data());
        const scalar_t* gr = rows_span(gp, gs, row0, rows, C, gbuf.data());
        const acc_t gl = glp ? acc_t(glp[b]) : acc_t(0);
        coupling_grad_span<scalar_t>(gr, gl, xr, raw.data(), gxp + row0 * C, graw.data(),
                                     gshift.data(), rows * C, kind, static_cast<acc_t>(clamp));
        interleave(graw.data(), gshift.data(), ghp + row0 * 2 * C, rows, C);
      }
    });
  });
  return {grad_x, grad_h};
}

}  // namespace cpu
}  // namespace invflow

// ------------------------------------------------------------------------ autograd (C++)
// First-order autograd of coupling_cl_forward in C++: the Python autograd wrapper of
// torch.library costs more than this kernel on Glow-sized tensors.  The backward calls the
// op coupling_cl_backward through the dispatcher, whose own autograd (second order, for the
// approximate-mass penalty) is registered from Python (invflow/ops/channels_last.py).
namespace invflow {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const std::string&,
                                                      double);
using BackwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const c10::optional<at::Tensor>&,
                                                       const at::Tensor&, const at::Tensor&, const std::string&,
                                                       double);

const c10::TypedOperatorHandle<ForwardSig>& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("invflow::coupling_cl_forward", "")
                             .typed<ForwardSig>();
  return op;
}

const c10::TypedOperatorHandle<BackwardSig>& backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("invflow::coupling_cl_backward", "")
                             .typed<BackwardSig>();
  return op;
}

class CouplingClFunction : public torch::autograd::Function<CouplingClFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& h,
                               const std::string& scale, double clamp) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto out = forward_op().call(x, h, scale, clamp);
    ctx->save_for_backward({x, h});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["clamp"] = clamp;
    return {std::get<0>(out), std::get<1>(out)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& h = saved[1];
    const at::Tensor gy = grads[0].defined() ? grads[0] : at::zeros_like(x);
    const c10::optional<at::Tensor> gl = grads[1].defined() ? c10::optional<at::Tensor>(grads[1]) : c10::nullopt;
    auto g = backward_op().call(gy, gl, x, h, ctx->saved_data["scale"].toStringRef(),
                                ctx->saved_data["clamp"].toDouble());
    return {std::get<0>(g), std::get<1>(g), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> coupling_cl_forward_autograd(const at::Tensor& x, const at::Tensor& h,
                                                                const std::string& scale, double clamp) {
  auto out = CouplingClFunction::apply(x, h, scale, clamp);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace invflow

TORCH_LIBRARY_FRAGMENT(invflow, m) {
  m.def("coupling_cl_forward(Tensor x, Tensor h, str scale, float clamp) -> (Tensor, Tensor)");
  m.def(
      "coupling_cl_backward(Tensor grad_y, Tensor? grad_logdet, Tensor x, Tensor h, str scale, float clamp) "
      "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(invflow, CPU, m) {
  m.impl("coupling_cl_forward", &invflow::cpu::coupling_cl_forward);
  m.impl("coupling_cl_backward", &invflow::cpu::coupling_cl_backward);
}

TORCH_LIBRARY_IMPL(invflow, Autograd, m) {
  m.impl("coupling_cl_forward", &invflow::coupling_cl_forward_autograd);
}
