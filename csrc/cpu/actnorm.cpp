// ActNorm on the CPU: y = (x + b) * exp(log_s) per channel (Glow, Kingma & Dhariwal 2018,
// Sec. 3.1), log|det| = N * sum_c log_s[c] per sample, N = H * W, in logdet_dtype (float32 for
// half / bfloat16 inputs).
#include <cmath>
#include <vector>

#include "../ops.h"
#include "utils.h"

namespace invflow {
namespace cpu {

namespace {

// y = (x + shift) * mult per channel; returns nothing, writes out.
template <typename scalar_t>
void affine_rows(const scalar_t* in, scalar_t* out, const std::vector<at::opmath_type<scalar_t>>& shift,
                 const std::vector<at::opmath_type<scalar_t>>& mult, int64_t rows, int64_t C, int64_t N,
                 bool shift_first) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, rows, row_grain(N), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t c = r % C;
      const acc_t a = shift[c], m = mult[c];
      const scalar_t* src = in + r * N;
      scalar_t* dst = out + r * N;
      if (shift_first) {
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) dst[n] = static_cast<scalar_t>((acc_t(src[n]) + a) * m);
      } else {
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) dst[n] = static_cast<scalar_t>(acc_t(src[n]) * m + a);
      }
    }
  });
}

// grad_x = g * s per row, and per-row sums of g and g * (x + b).
template <typename scalar_t>
void backward_rows(const scalar_t* g, const scalar_t* xp, scalar_t* gx, const scalar_t* bp,
                   const std::vector<at::opmath_type<scalar_t>>& s,
                   std::vector<at::opmath_type<scalar_t>>& row_g,
                   std::vector<at::opmath_type<scalar_t>>& row_gx, int64_t rows, int64_t C, int64_t N) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, rows, row_grain(N), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t c = r % C;
      const acc_t sc = s[c], b = acc_t(bp[c]);
      const scalar_t* gr = g + r * N;
      const scalar_t* xr = xp + r * N;
      scalar_t* out = gx + r * N;
      acc_t sum_g = 0, sum_gx = 0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
      for (int64_t n = 0; n < N; ++n) {
        const acc_t gv = acc_t(gr[n]);
        out[n] = static_cast<scalar_t>(gv * sc);
        sum_g += gv;
        sum_gx += gv * (acc_t(xr[n]) + b);
      }
      row_g[r] = sum_g;
      row_gx[r] = sum_gx;
    }
  });
}

// Forward y = (x + b) * exp(log_s), or inverse x = y * exp(-log_s) - b, with the log-det.
std::tuple<at::Tensor, at::Tensor> apply(const at::Tensor& in, const at::Tensor& bias, const at::Tensor& log_scale,
                                         bool invert) {
  check_actnorm_args(in, bias, log_scale);
  const at::Tensor ic = in.contiguous();
  const int64_t B = in.size(0), C = in.size(1), N = inner_size(in);
  at::Tensor out = at::empty_like(ic);
  at::Tensor logdet = at::empty({B}, in.options().dtype(logdet_dtype(in.scalar_type())));
  INVFLOW_DISPATCH_FLOATING(in.scalar_type(), "actnorm_apply", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor bc = bias.contiguous(), lc = log_scale.contiguous();
    const scalar_t* bp = bc.data_ptr<scalar_t>();
    const scalar_t* lp = lc.data_ptr<scalar_t>();
    const acc_t sign = invert ? acc_t(-1) : acc_t(1);
    std::vector<acc_t> shift(C), mult(C);
    acc_t sum_log = 0;
    for (int64_t c = 0; c < C; ++c) {
      shift[c] = sign * acc_t(bp[c]);
      mult[c] = std::exp(sign * acc_t(lp[c]));
      sum_log += acc_t(lp[c]);
    }
    affine_rows<scalar_t>(ic.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), shift, mult, B * C, C, N,
                          /*shift_first=*/!invert);
    logdet.fill_(static_cast<double>(sign * sum_log) * static_cast<double>(N));
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

// dL/dx = g * s;  dL/db[c] = s[c] * sum g;  dL/dlog_s[c] = s[c] * sum g * (x + b) + N * sum_b gl[b].
std::tuple<at::Tensor, at::Tensor, at::Tensor> actnorm_backward(
    const at::Tensor& grad_y, const c10::optional<at::Tensor>& grad_logdet, const at::Tensor& x,
    const at::Tensor& bias, const at::Tensor& log_scale) {
  check_actnorm_args(x, bias, log_scale);
  check_grad_args("actnorm_backward", grad_y, grad_logdet, x);
  const at::Tensor gc = grad_y.contiguous(), xc = x.contiguous();
  const int64_t B = x.size(0), C = x.size(1), N = inner_size(x);
  at::Tensor grad_x = at::empty_like(xc);
  at::Tensor grad_b = at::empty_like(bias, at::MemoryFormat::Contiguous);
  at::Tensor grad_ls = at::empty_like(log_scale, at::MemoryFormat::Contiguous);
  INVFLOW_DISPATCH_FLOATING(x.scalar_type(), "actnorm_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor bc = bias.contiguous(), lc = log_scale.contiguous();
    const scalar_t* bp = bc.data_ptr<scalar_t>();
    const scalar_t* lp = lc.data_ptr<scalar_t>();
    std::vector<acc_t> s(C);
    for (int64_t c = 0; c < C; ++c) s[c] = std::exp(acc_t(lp[c]));
    // Per-row partial sums, reduced afterwards in a fixed order (deterministic).
    std::vector<acc_t> row_g(B * C), row_gx(B * C);
    backward_rows<scalar_t>(gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(),
                            bp, s, row_g, row_gx, B * C, C, N);
    acc_t gl_sum = 0;
    if (grad_logdet.has_value()) {
      const at::Tensor glc = grad_logdet->contiguous();
      const acc_t* glp = glc.data_ptr<acc_t>();
      for (int64_t b = 0; b < B; ++b) gl_sum += acc_t(glp[b]);
    }
    scalar_t* gbp = grad_b.data_ptr<scalar_t>();
    scalar_t* glsp = grad_ls.data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      acc_t sg = 0, sgx = 0;
      for (int64_t b = 0; b < B; ++b) {
        sg += row_g[b * C + c];
        sgx += row_gx[b * C + c];
      }
      gbp[c] = static_cast<scalar_t>(s[c] * sg);
      glsp[c] = static_cast<scalar_t>(s[c] * sgx + acc_t(N) * gl_sum);
    }
  });
  return {grad_x, grad_b, grad_ls};
}

}  // namespace cpu
}  // namespace invflow
