// The elementwise rational-quadratic spline (Durkan et al. 2019) on the CPU: forward,
// inverse and their backward, one entry per iteration of at::parallel_for, with the per-entry
// math of csrc/common/rq_spline.h (semantics: invflow/ops/spline.py).
//
//   x: any shape S (viewed as n entries), widths / heights: S + [K], derivatives: S + [K - 1]
//   (rows of one stride each; a column block of a wider parameter tensor is read in place),
//   y: S in x's dtype, logabsdet: S in logdet_dtype (float32 for half / bfloat16).
//
// Each entry's rows are short (K bins) and its bin is found by a data-dependent search, so the
// loop stays scalar: the work per entry is a few passes over K logits, in opmath precision.
#include "../common/rq_spline.h"
#include "../ops.h"
#include "utils.h"

#include <cmath>
#include <tuple>
#include <vector>

namespace invflow {

void check_spline_args(const char* op, const at::Tensor& x, const at::Tensor& widths, const at::Tensor& heights,
                       const at::Tensor& derivatives, double bound) {
  const std::string name(op);
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), name, ": x must be a floating tensor");
  for (const at::Tensor* t : {&widths, &heights, &derivatives}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), name, ": widths, heights and derivatives must have x's dtype");
    TORCH_CHECK(t->device() == x.device(), name, ": widths, heights and derivatives must be on x's device");
  }
  TORCH_CHECK(widths.dim() == x.dim() + 1 && widths.sizes().slice(0, x.dim()) == x.sizes(), name,
              ": widths must be x.shape + [K], got ", shape_str(widths.sizes()), " for x ", shape_str(x.sizes()));
  const int64_t K = widths.size(-1);
  TORCH_CHECK(K >= 2 && K <= 999, name, ": the number of bins must be in [2, 999], got ", std::to_string(K));
  TORCH_CHECK(heights.sizes() == widths.sizes(), name, ": heights must have the shape of widths ",
              shape_str(widths.sizes()), ", got ", shape_str(heights.sizes()));
  TORCH_CHECK(derivatives.dim() == widths.dim() && derivatives.sizes().slice(0, x.dim()) == x.sizes() &&
                  derivatives.size(-1) == K - 1,
              name, ": derivatives must be x.shape + [K - 1], got ", shape_str(derivatives.sizes()));
  TORCH_CHECK(std::isfinite(bound) && bound > 0, name, ": bound must be positive and finite, got ",
              std::to_string(bound));
}

void check_spline_grad_args(const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_logabsdet,
                            const at::Tensor& in) {
  TORCH_CHECK(grad_out.sizes() == in.sizes() && grad_out.scalar_type() == in.scalar_type() &&
                  grad_out.device() == in.device(),
              "spline_backward: grad_out must have the input's shape ", shape_str(in.sizes()),
              ", dtype and device, got ", shape_str(grad_out.sizes()));
  if (!grad_logabsdet.has_value()) return;
  const at::Tensor& gl = *grad_logabsdet;
  TORCH_CHECK(gl.sizes() == in.sizes() && gl.scalar_type() == logdet_dtype(in.scalar_type()) &&
                  gl.device() == in.device(),
              "spline_backward: grad_logabsdet must have the input's shape ", shape_str(in.sizes()),
              " in the log-det dtype on its device, got ", shape_str(gl.sizes()));
}

namespace {
std::pair<at::Tensor, int64_t> rows_of(const at::Tensor& t) {
  if (t.dim() == 1) return {t.contiguous(), t.size(0)};  // the one row of a 0-dimensional x
  return as_rows(t);
}
}  // namespace

SplineArgs prepare_spline_args(const char* op, const at::Tensor& in, const at::Tensor& widths,
                               const at::Tensor& heights, const at::Tensor& derivatives, double bound) {
  check_spline_args(op, in, widths, heights, derivatives, bound);
  SplineArgs a;
  a.in = in.contiguous();
  std::tie(a.widths, a.ws) = rows_of(widths);
  std::tie(a.heights, a.hs) = rows_of(heights);
  std::tie(a.derivatives, a.ds) = rows_of(derivatives);
  a.n = a.in.numel();
  a.K = static_cast<int>(widths.size(-1));
  return a;
}

std::tuple<at::Tensor, at::Tensor> spline_outputs(const SplineArgs& a) {
  return {at::empty_like(a.in), at::empty(a.in.sizes(), a.in.options().dtype(logdet_dtype(a.in.scalar_type())))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> spline_grads(const SplineArgs& a) {
  const auto opts = a.in.options();
  const at::IntArrayRef S = a.in.sizes();
  std::vector<int64_t> with_k(S.begin(), S.end()), with_k1(S.begin(), S.end());
  with_k.push_back(a.K);
  with_k1.push_back(a.K - 1);
  return {at::empty_like(a.in), at::empty(with_k, opts), at::empty(with_k, opts), at::empty(with_k1, opts)};
}

namespace cpu {

namespace {

// Entries per parallel task: each costs O(K) transcendental math.
int64_t entry_grain(int64_t K) { return std::max<int64_t>(1, 2048 / std::max<int64_t>(K, 1)); }

std::tuple<at::Tensor, at::Tensor> apply_all(const char* op, const at::Tensor& in, const at::Tensor& widths,
                                             const at::Tensor& heights, const at::Tensor& derivatives, double bound,
                                             bool inverse) {
  const SplineArgs a = prepare_spline_args(op, in, widths, heights, derivatives, bound);
  auto [out, lad] = spline_outputs(a);
  if (a.n == 0) return {out, lad};
  INVFLOW_DISPATCH_FLOATING(in.scalar_type(), "spline_apply", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ip = a.in.data_ptr<scalar_t>();
    const scalar_t* wp = a.widths.data_ptr<scalar_t>();
    const scalar_t* hp = a.heights.data_ptr<scalar_t>();
    const scalar_t* dp = a.derivatives.data_ptr<scalar_t>();
    scalar_t* op_ = out.data_ptr<scalar_t>();
    acc_t* lp = lad.data_ptr<acc_t>();
    const acc_t B = static_cast<acc_t>(bound);
    at::parallel_for(0, a.n, entry_grain(a.K), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        acc_t l;
        op_[i] = static_cast<scalar_t>(
            rq::rq_apply<acc_t>(wp + i * a.ws, hp + i * a.hs, dp + i * a.ds, a.K, B, acc_t(ip[i]), inverse, &l));
        lp[i] = l;
      }
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

// Gradients of spline_forward (inverse = false) or spline_inverse (inverse = true) with respect
// to (input, widths, heights, derivatives), given the cotangents of (output, logabsdet).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> spline_backward(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_logabsdet, const at::Tensor& in,
    const at::Tensor& widths, const at::Tensor& heights, const at::Tensor& derivatives, double bound,
    bool inverse) {
  const SplineArgs a = prepare_spline_args("spline_backward", in, widths, heights, derivatives, bound);
  check_spline_grad_args(grad_out, grad_logabsdet, in);
  const at::Tensor gc = grad_out.contiguous();
  const at::Tensor glc = grad_logabsdet.has_value() ? grad_logabsdet->contiguous() : at::Tensor();
  auto [g_in, g_w, g_h, g_d] = spline_grads(a);
  if (a.n == 0) return {g_in, g_w, g_h, g_d};
  const int K = a.K;
  INVFLOW_DISPATCH_FLOATING(in.scalar_type(), "spline_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ip = a.in.data_ptr<scalar_t>();
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const acc_t* glp = glc.defined() ? glc.data_ptr<acc_t>() : nullptr;
    const scalar_t* wp = a.widths.data_ptr<scalar_t>();
    const scalar_t* hp = a.heights.data_ptr<scalar_t>();
    const scalar_t* dp = a.derivatives.data_ptr<scalar_t>();
    scalar_t* gip = g_in.data_ptr<scalar_t>();
    scalar_t* gwp = g_w.data_ptr<scalar_t>();
    scalar_t* ghp = g_h.data_ptr<scalar_t>();
    scalar_t* gdp = g_d.data_ptr<scalar_t>();
    const acc_t B = static_cast<acc_t>(bound);
    at::parallel_for(0, a.n, entry_grain(K), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc_t gl = glp ? glp[i] : acc_t(0);
        gip[i] = static_cast<scalar_t>(rq::rq_backward<acc_t>(wp + i * a.ws, hp + i * a.hs, dp + i * a.ds, K, B,
                                                              acc_t(ip[i]), inverse, acc_t(gp[i]), gl,
                                                              gwp + i * K, ghp + i * K, gdp + i * (K - 1)));
      }
    });
  });
  return {g_in, g_w, g_h, g_d};
}

}  // namespace cpu
}  // namespace invflow
