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
#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../common/scale.h"
#include "../ops.h"
#include "coupling_rows.h"
#include "utils.h"
#include "vec_math.h"

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

// Runs body(scratch, task, b, row0, rows) on every non-empty tile in parallel: sample b, its
// rows row0 .. row0 + rows - 1 of the [B * P, ...] matrices; make_scratch() gives each thread
// chunk its own buffers.
template <typename MakeScratch, typename Body>
void for_each_tile(const Tiles& t, MakeScratch make_scratch, Body body) {
  at::parallel_for(0, t.count(), 1, [&](int64_t begin, int64_t end) {
    auto scratch = make_scratch();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / t.per_sample;
      const int64_t p0 = (task % t.per_sample) * t.per_tile;
      const int64_t rows = std::min(t.per_tile, t.P - p0);
      if (rows > 0) body(scratch, task, b, b * t.P + p0, rows);
    }
  });
}

// out[b] = the sum of sample b's per-tile partial sums (a fixed order: deterministic).
template <typename acc_t>
void sum_tiles(const Tiles& t, const std::vector<acc_t>& part, acc_t* out) {
  for (int64_t b = 0; b < t.B; ++b) {
    acc_t sum = 0;
    for (int64_t k = 0; k < t.per_sample; ++k) sum += part[b * t.per_sample + k];
    out[b] = sum;
  }
}

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

// ---------------------------------------------------------- second order (closed form)
// s, d = dlog s/draw and d2 = d^2 log s/draw^2 of one raw value.
template <typename T>
INVFLOW_ALWAYS_INLINE void scale_d2(T raw, ScaleKind kind, T clamp, T* s, T* d1, T* d2) {
  if (kind == ScaleKind::kSigmoid) {
    T e;
    if constexpr (std::is_same_v<T, float>) {
      e = vmath::exp(-(raw + 2.0f));
    } else {
      e = std::exp(-(raw + T(2)));
    }
    *s = T(1) / (T(1) + e);
    *d1 = T(1) - *s;
    *d2 = -*s * *d1;
  } else if (kind == ScaleKind::kExp) {
    if constexpr (std::is_same_v<T, float>) {
      *s = vmath::exp(raw);
    } else {
      *s = std::exp(raw);
    }
    *d1 = T(1);
    *d2 = T(0);
  } else {
    T th;
    if constexpr (std::is_same_v<T, float>) {
      th = vmath::tanh(raw / clamp);
      *s = vmath::exp(clamp * th);
    } else {
      th = std::tanh(raw / clamp);
      *s = std::exp(clamp * th);
    }
    *d1 = T(1) - th * th;
    *d2 = T(-2) * th * *d1 / clamp;
  }
}

// The derivatives of coupling_cl_backward's outputs (gx = gy s, g_raw = (gy x s + gl) d,
// g_t = gy) in the directions u_x, u_h = [u_r, u_t], on n entries of one sample:
//   d_gy = u_x s + u_r x s d + u_t      d_x = u_r gy s d      d_t = 0
//   d_raw = u_x gy s d + u_r (gy x s (d^2 + d2) + gl d2)      returns sum(u_r d) (-> d_gl)
template <typename T, typename scalar_t>
INVFLOW_ALWAYS_INLINE T double_backward_span(const scalar_t* ux, const scalar_t* ur, const scalar_t* ut,
                                             const scalar_t* gy, T gl, const scalar_t* x, const scalar_t* raw,
                                             scalar_t* d_gy, scalar_t* d_x, scalar_t* d_raw, int64_t n,
                                             ScaleKind kind, T clamp) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    T s, d1, d2;
    scale_d2<T>(T(raw[i]), kind, clamp, &s, &d1, &d2);
    const T u = T(ux[i]), r = T(ur[i]), g = T(gy[i]), xv = T(x[i]);
    const T sd = s * d1;
    d_gy[i] = static_cast<scalar_t>(u * s + r * xv * sd + T(ut[i]));
    d_x[i] = static_cast<scalar_t>(r * g * sd);
    d_raw[i] = static_cast<scalar_t>(u * g * sd + r * (g * xv * s * (d1 * d1 + d2) + gl * d2));
    acc += r * d1;
  }
  return acc;
}

INVFLOW_MULTIVERSION float double_backward_span_f32(const float* ux, const float* ur, const float* ut,
                                                    const float* gy, float gl, const float* x, const float* raw,
                                                    float* d_gy, float* d_x, float* d_raw, int64_t n, ScaleKind kind,
                                                    float clamp) {
  return double_backward_span<float, float>(ux, ur, ut, gy, gl, x, raw, d_gy, d_x, d_raw, n, kind, clamp);
}

template <typename scalar_t>
at::opmath_type<scalar_t> double_backward_any(const scalar_t* ux, const scalar_t* ur, const scalar_t* ut,
                                              const scalar_t* gy, at::opmath_type<scalar_t> gl, const scalar_t* x,
                                              const scalar_t* raw, scalar_t* d_gy, scalar_t* d_x, scalar_t* d_raw,
                                              int64_t n, ScaleKind kind, at::opmath_type<scalar_t> clamp) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return double_backward_span_f32(ux, ur, ut, gy, gl, x, raw, d_gy, d_x, d_raw, n, kind, clamp);
  } else {
    return double_backward_span<at::opmath_type<scalar_t>, scalar_t>(ux, ur, ut, gy, gl, x, raw, d_gy, d_x, d_raw,
                                                                     n, kind, clamp);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> coupling_cl_forward(const at::Tensor& x, const at::Tensor& h,
                                                       const std::string& scale, double clamp) {
  check_coupling_cl_args(x, h);
  const ScaleKind kind = static_cast<ScaleKind>(parse_scale_kind(scale));
  const auto [xc, xs] = as_rows(x);
  const auto [hc, hs] = as_rows(h);
  const int64_t B = x.size(0), C = x.size(-1);
  const Tiles t(B, B > 0 ? x.numel() / std::max<int64_t>(B * C, 1) : 0, C);
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor logdet = at::empty({B}, x.options().dtype(logdet_dtype(x.scalar_type())));
  INVFLOW_DISPATCH_FLOATING(x.scalar_type(), "coupling_cl_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* hp = hc.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    const int64_t n = t.per_tile * C;
    std::vector<acc_t> part(t.count(), acc_t(0));
    for_each_tile(
        t, [&] { return std::tuple(std::vector<scalar_t>(n), std::vector<scalar_t>(n),
                                   std::vector<scalar_t>(xs == C ? 0 : n)); },
        [&](auto& scratch, int64_t task, int64_t, int64_t row0, int64_t rows) {
          auto& [raw, shift, xbuf] = scratch;
          deinterleave(hp + row0 * hs, hs, raw.data(), shift.data(), rows, C);
          const scalar_t* xr = rows_span(xp, xs, row0, rows, C, xbuf.data());
          part[task] = coupling_apply_span<scalar_t>(xr, raw.data(), shift.data(), yp + row0 * C,
                                                     rows * C, kind, static_cast<acc_t>(clamp), false);
        });
    sum_tiles(t, part, logdet.data_ptr<acc_t>());
  });
  return {y, logdet};
}

// grad_x = gy * s, grad_raw = (gy * x * s + gl[b]) * dlog s/draw, grad_t = gy.
std::tuple<at::Tensor, at::Tensor> coupling_cl_backward(const at::Tensor& grad_y,
                                                        const c10::optional<at::Tensor>& grad_logdet,
                                                        const at::Tensor& x, const at::Tensor& h,
                                                        const std::string& scale, double clamp) {
  check_coupling_cl_args(x, h);
  check_grad_args("coupling_cl_backward", grad_y, grad_logdet, x);
  const ScaleKind kind = static_cast<ScaleKind>(parse_scale_kind(scale));
  const auto [gc, gs] = as_rows(grad_y);
  const auto [xc, xs] = as_rows(x);
  const auto [hc, hs] = as_rows(h);
  const at::Tensor glc = grad_logdet.has_value() ? grad_logdet->contiguous() : at::Tensor();
  const int64_t B = x.size(0), C = x.size(-1);
  const Tiles t(B, B > 0 ? x.numel() / std::max<int64_t>(B * C, 1) : 0, C);
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  at::Tensor grad_h = at::empty(h.sizes(), h.options());
  INVFLOW_DISPATCH_FLOATING(x.scalar_type(), "coupling_cl_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* hp = hc.data_ptr<scalar_t>();
    const acc_t* glp = glc.defined() ? glc.data_ptr<acc_t>() : nullptr;
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    scalar_t* ghp = grad_h.data_ptr<scalar_t>();
    const int64_t n = t.per_tile * C;
    for_each_tile(
        t, [&] { return std::tuple(std::vector<scalar_t>(n), std::vector<scalar_t>(n), std::vector<scalar_t>(n),
                                   std::vector<scalar_t>(n), std::vector<scalar_t>(xs == C ? 0 : n),
                                   std::vector<scalar_t>(gs == C ? 0 : n)); },
        [&](auto& scratch, int64_t, int64_t b, int64_t row0, int64_t rows) {
          auto& [raw, shift, graw, gshift, xbuf, gbuf] = scratch;
          deinterleave(hp + row0 * hs, hs, raw.data(), shift.data(), rows, C);
          const scalar_t* xr = rows_span(xp, xs, row0, rows, C, xbuf.data());
          const scalar_t* gr = rows_span(gp, gs, row0, rows, C, gbuf.data());
          const acc_t gl = glp ? acc_t(glp[b]) : acc_t(0);
          coupling_grad_span<scalar_t>(gr, gl, xr, raw.data(), gxp + row0 * C, graw.data(),
                                       gshift.data(), rows * C, kind, static_cast<acc_t>(clamp));
          interleave(graw.data(), gshift.data(), ghp + row0 * 2 * C, rows, C);
        });
  });
  return {grad_x, grad_h};
}

// Second-order kernel: the vector-Jacobian product of coupling_cl_backward with (u_x, u_h),
// i.e. the gradients (d_grad_y, d_grad_logdet, d_x, d_h) that its autograd formula in
// invflow/ops/fused.py computes with eager ops, in one pass.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> coupling_cl_double_backward(
    const at::Tensor& u_x, const at::Tensor& u_h, const at::Tensor& grad_y, const at::Tensor& grad_logdet,
    const at::Tensor& x, const at::Tensor& h, const std::string& scale, double clamp) {
  check_coupling_cl_double_backward_args(u_x, u_h, grad_y, grad_logdet, x, h);
  const ScaleKind kind = static_cast<ScaleKind>(parse_scale_kind(scale));
  const int64_t B = x.size(0), C = x.size(-1);
  const at::Tensor uxc = u_x.contiguous(), uhc = u_h.contiguous(), gc = grad_y.contiguous(),
                   glc = grad_logdet.contiguous(), xc = x.contiguous(), hc = h.contiguous();
  const Tiles t(B, B > 0 ? x.numel() / std::max<int64_t>(B * C, 1) : 0, C);
  at::Tensor d_gy = at::empty(x.sizes(), x.options());
  at::Tensor d_x = at::empty(x.sizes(), x.options());
  at::Tensor d_h = at::zeros(h.sizes(), h.options());
  at::Tensor d_gl = at::empty({B}, x.options().dtype(logdet_dtype(x.scalar_type())));
  INVFLOW_DISPATCH_FLOATING(x.scalar_type(), "coupling_cl_double_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* uxp = uxc.data_ptr<scalar_t>();
    const scalar_t* uhp = uhc.data_ptr<scalar_t>();
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const acc_t* glp = glc.data_ptr<acc_t>();
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* hp = hc.data_ptr<scalar_t>();
    scalar_t* dgyp = d_gy.data_ptr<scalar_t>();
    scalar_t* dxp = d_x.data_ptr<scalar_t>();
    scalar_t* dhp = d_h.data_ptr<scalar_t>();
    const int64_t n = t.per_tile * C;
    std::vector<acc_t> part(t.count(), acc_t(0));
    for_each_tile(
        t, [&] { return std::tuple(std::vector<scalar_t>(n), std::vector<scalar_t>(n), std::vector<scalar_t>(n),
                                   std::vector<scalar_t>(n), std::vector<scalar_t>(n)); },
        [&](auto& scratch, int64_t task, int64_t b, int64_t row0, int64_t rows) {
          auto& [raw, unused, ur, ut, draw] = scratch;
          deinterleave(hp + row0 * 2 * C, 2 * C, raw.data(), unused.data(), rows, C);
          deinterleave(uhp + row0 * 2 * C, 2 * C, ur.data(), ut.data(), rows, C);
          part[task] = double_backward_any<scalar_t>(uxp + row0 * C, ur.data(), ut.data(), gp + row0 * C,
                                                     acc_t(glp[b]), xp + row0 * C, raw.data(), dgyp + row0 * C,
                                                     dxp + row0 * C, draw.data(), rows * C, kind,
                                                     static_cast<acc_t>(clamp));
          for (int64_t p = 0; p < rows; ++p) {   // d_h = [d_raw, 0] per row
            for (int64_t c = 0; c < C; ++c) dhp[(row0 + p) * 2 * C + c] = draw[p * C + c];
          }
        });
    sum_tiles(t, part, d_gl.data_ptr<acc_t>());
  });
  return {d_gy, d_gl, d_x, d_h};
}

}  // namespace cpu
}  // namespace invflow
