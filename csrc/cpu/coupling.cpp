// The elementwise part of an affine coupling on the CPU, fused into one pass:
// scale function, multiply-add, mask and the per-sample log-det reduction.
//
//   y = s(raw) * x + t   where mask != 0 (or everywhere without a mask), y = x elsewhere
//   logdet[b] = sum over transformed entries of log s(raw)
//
// h = [raw, t] stacks the st-net output along channels: h is [B, 2C, ...] for x [B, C, ...]
// (raw = h[:, :C], t = h[:, C:]).  The scale functions are in csrc/common/scale.h.
#include <vector>

#include "../common/scale.h"
#include "../ops.h"
#include "utils.h"

namespace invflow {
namespace cpu {

namespace {

struct Geometry {
  int64_t B, C, N;
};

Geometry geometry(const at::Tensor& x) { return {x.size(0), x.size(1), inner_size(x)}; }

// Applies `row_fn(b, c, n_begin...)` over all (b, c) rows in parallel and returns the
// per-sample sum of the per-row values it reports.
template <typename acc_t, typename RowFn>
std::vector<acc_t> for_rows(const Geometry& g, RowFn row_fn) {
  std::vector<acc_t> row_sum(g.B * g.C);
  at::parallel_for(0, g.B * g.C, row_grain(g.N), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) row_sum[r] = row_fn(r / g.C, r % g.C);
  });
  std::vector<acc_t> per_sample(g.B, acc_t(0));
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t c = 0; c < g.C; ++c) per_sample[b] += row_sum[b * g.C + c];
  return per_sample;
}

template <typename scalar_t, typename acc_t>
void write_logdet(at::Tensor& logdet, const std::vector<acc_t>& v, acc_t sign) {
  scalar_t* p = logdet.data_ptr<scalar_t>();
  for (size_t b = 0; b < v.size(); ++b) p[b] = static_cast<scalar_t>(sign * v[b]);
}

// Shared body of forward (invert = false) and inverse (invert = true).
template <bool invert>
std::tuple<at::Tensor, at::Tensor> coupling_apply_all(const at::Tensor& in, const at::Tensor& h,
                                                      const c10::optional<at::Tensor>& mask,
                                                      const std::string& scale, double clamp) {
  check_coupling_args(in, h, mask);
  const ScaleKind kind = static_cast<ScaleKind>(parse_scale_kind(scale));
  const at::Tensor ic = in.contiguous(), hc = h.contiguous();
  const at::Tensor mc = mask.has_value() ? mask->contiguous() : at::Tensor();
  const Geometry g = geometry(in);
  at::Tensor out = at::empty_like(ic);
  at::Tensor logdet = at::empty({g.B}, in.options());
  INVFLOW_DISPATCH_FLOATING(in.scalar_type(), invert ? "coupling_inverse" : "coupling_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ip = ic.data_ptr<scalar_t>();
    const scalar_t* hp = hc.data_ptr<scalar_t>();
    const scalar_t* mp = mc.defined() ? mc.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    const acc_t cl = static_cast<acc_t>(clamp);
    auto per_sample = for_rows<acc_t>(g, [&](int64_t b, int64_t c) {
      const int64_t off = (b * g.C + c) * g.N;
      const scalar_t* raw = hp + (b * 2 * g.C + c) * g.N;
      const scalar_t* shift = raw + g.C * g.N;
      const scalar_t* m = mp ? mp + c * g.N : nullptr;
      acc_t ld = 0;
      for (int64_t n = 0; n < g.N; ++n) {
        const acc_t v = acc_t(ip[off + n]);
        if (m && m[n] == scalar_t(0)) {
          op[off + n] = ip[off + n];
          continue;
        }
        acc_t log_s;
        const acc_t r = invert ? coupling_unapply<acc_t>(v, acc_t(raw[n]), acc_t(shift[n]), kind, cl, &log_s)
                               : coupling_apply<acc_t>(v, acc_t(raw[n]), acc_t(shift[n]), kind, cl, &log_s);
        op[off + n] = static_cast<scalar_t>(r);
        ld += log_s;
      }
      return ld;
    });
    write_logdet<scalar_t, acc_t>(logdet, per_sample, invert ? acc_t(-1) : acc_t(1));
  });
  return {out, logdet};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> coupling_forward(const at::Tensor& x, const at::Tensor& h,
                                                    const c10::optional<at::Tensor>& mask,
                                                    const std::string& scale, double clamp) {
  return coupling_apply_all<false>(x, h, mask, scale, clamp);
}

std::tuple<at::Tensor, at::Tensor> coupling_inverse(const at::Tensor& y, const at::Tensor& h,
                                                    const c10::optional<at::Tensor>& mask,
                                                    const std::string& scale, double clamp) {
  return coupling_apply_all<true>(y, h, mask, scale, clamp);
}

// grad_x = gy * s, grad_raw = (gy * x * s + gl[b]) * dlog s/draw, grad_t = gy on transformed
// entries; grad_x = gy and zero parameter gradients elsewhere.
std::tuple<at::Tensor, at::Tensor> coupling_backward(
    const at::Tensor& grad_y, const c10::optional<at::Tensor>& grad_logdet, const at::Tensor& x,
    const at::Tensor& h, const c10::optional<at::Tensor>& mask, const std::string& scale,
    double clamp) {
  check_coupling_args(x, h, mask);
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "invflow: coupling_backward grad_y shape mismatch");
  const ScaleKind kind = static_cast<ScaleKind>(parse_scale_kind(scale));
  const at::Tensor gc = grad_y.contiguous(), xc = x.contiguous(), hc = h.contiguous();
  const at::Tensor mc = mask.has_value() ? mask->contiguous() : at::Tensor();
  const at::Tensor glc = grad_logdet.has_value() ? grad_logdet->contiguous() : at::Tensor();
  const Geometry g = geometry(x);
  TORCH_CHECK(!glc.defined() || glc.numel() == g.B, "invflow: grad_logdet must have shape [B]");
  at::Tensor grad_x = at::empty_like(xc);
  at::Tensor grad_h = at::empty_like(hc);
  INVFLOW_DISPATCH_FLOATING(x.scalar_type(), "coupling_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* hp = hc.data_ptr<scalar_t>();
    const scalar_t* mp = mc.defined() ? mc.data_ptr<scalar_t>() : nullptr;
    const scalar_t* glp = glc.defined() ? glc.data_ptr<scalar_t>() : nullptr;
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    scalar_t* ghp = grad_h.data_ptr<scalar_t>();
    const acc_t cl = static_cast<acc_t>(clamp);
    at::parallel_for(0, g.B * g.C, row_grain(g.N), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / g.C, c = r % g.C;
        const int64_t off = r * g.N;
        const int64_t hoff = (b * 2 * g.C + c) * g.N;
        const scalar_t* raw = hp + hoff;
        scalar_t* graw = ghp + hoff;
        scalar_t* gshift = graw + g.C * g.N;
        const scalar_t* m = mp ? mp + c * g.N : nullptr;
        const acc_t gl = glp ? acc_t(glp[b]) : acc_t(0);
        for (int64_t n = 0; n < g.N; ++n) {
          const scalar_t gy = gp[off + n];
          if (m && m[n] == scalar_t(0)) {
            gxp[off + n] = gy;
            graw[n] = scalar_t(0);
            gshift[n] = scalar_t(0);
            continue;
          }
          acc_t gx, gr;
          coupling_grad<acc_t>(acc_t(gy), gl, acc_t(xp[off + n]), acc_t(raw[n]), kind, cl, &gx, &gr);
          gxp[off + n] = static_cast<scalar_t>(gx);
          graw[n] = static_cast<scalar_t>(gr);
          gshift[n] = gy;
        }
      }
    });
  });
  return {grad_x, grad_h};
}

}  // namespace cpu
}  // namespace invflow
