// The elementwise part of an affine coupling on the CPU, fused into one pass:
// scale function, multiply-add, mask and the per-sample log-det reduction.
//
//   y = s(raw) * x + t   where mask != 0 (or everywhere without a mask), y = x elsewhere
//   logdet[b] = sum over transformed entries of log s(raw)
//
// h = [raw, t] stacks the st-net output along channels: h is [B, 2C, ...] for x [B, C, ...]
// (raw = h[:, :C], t = h[:, C:]).  The scale functions are in csrc/common/scale.h; float32
// rows take a vectorised path (vec_math.h), other dtypes the shared scalar math.
#include <vector>

#include "../common/scale.h"
#include "../ops.h"
#include "coupling_rows.h"
#include "utils.h"
#include "vec_math.h"

namespace invflow {
namespace cpu {

namespace {

// ------------------------------------------------------------- float32 vectorised rows
template <ScaleKind K>
INVFLOW_ALWAYS_INLINE ScaleTerms<float> fast_scale(float r, float clamp) {
  if constexpr (K == ScaleKind::kSigmoid) {
    const float z = r + 2.0f;
    const float e = vmath::exp(z < 0.0f ? z : -z);  // exp(-|z|)
    const float l = vmath::log1p_unit(e);
    const float inv = 1.0f / (1.0f + e);
    const float s = z >= 0.0f ? inv : e * inv;
    return {s, z >= 0.0f ? -l : z - l, 1.0f - s};
  } else if constexpr (K == ScaleKind::kExp) {
    return {vmath::exp(r), r, 1.0f};
  } else {
    const float th = vmath::tanh(r / clamp);
    return {vmath::exp(clamp * th), clamp * th, 1.0f - th * th};
  }
}

template <ScaleKind K, bool Invert, bool Masked>
INVFLOW_ALWAYS_INLINE float apply_row(const float* in, const float* raw, const float* shift, const float* m,
                                      float* out, int64_t N, float clamp) {
  float ld = 0.0f;
#pragma omp simd reduction(+ : ld)
  for (int64_t n = 0; n < N; ++n) {
    const ScaleTerms<float> st = fast_scale<K>(raw[n], clamp);
    const float v = in[n];
    // the inverse multiplies by exp(-log s) like the reference and CUDA (1 / s = inf when s
    // underflows), not by 1 / s of a clamped s
    const float o = Invert ? (v - shift[n]) * vmath::exp(-st.log_s) : st.s * v + shift[n];
    const bool keep = !Masked || m[n] != 0.0f;
    out[n] = keep ? o : v;
    ld += keep ? st.log_s : 0.0f;
  }
  return ld;
}

template <ScaleKind K, bool Masked>
INVFLOW_ALWAYS_INLINE void grad_row(const float* gy, float gl, const float* x, const float* raw, const float* m,
                                    float* gx, float* graw, float* gshift, int64_t N, float clamp) {
#pragma omp simd
  for (int64_t n = 0; n < N; ++n) {
    const ScaleTerms<float> st = fast_scale<K>(raw[n], clamp);
    const float g = gy[n];
    const bool keep = !Masked || m[n] != 0.0f;
    gx[n] = keep ? g * st.s : g;
    graw[n] = keep ? (g * x[n] * st.s + gl) * st.dlog : 0.0f;
    gshift[n] = keep ? g : 0.0f;
  }
}

#define INVFLOW_SCALE_SWITCH(kind, ...)                    \
  switch (kind) {                                          \
    case ScaleKind::kSigmoid: {                            \
      constexpr ScaleKind K = ScaleKind::kSigmoid;         \
      __VA_ARGS__;                                         \
    }                                                      \
    case ScaleKind::kExp: {                                \
      constexpr ScaleKind K = ScaleKind::kExp;             \
      __VA_ARGS__;                                         \
    }                                                      \
    default: {                                             \
      constexpr ScaleKind K = ScaleKind::kTanh;            \
      __VA_ARGS__;                                         \
    }                                                      \
  }

// One (b, c) row of forward / inverse; returns the row's sum of log s.
INVFLOW_MULTIVERSION float apply_row_f32(const float* in, const float* raw, const float* shift, const float* m,
                                         float* out, int64_t N, ScaleKind kind, float clamp, bool invert) {
  if (invert) {
    if (m) {
      INVFLOW_SCALE_SWITCH(kind, return (apply_row<K, true, true>(in, raw, shift, m, out, N, clamp)))
    }
    INVFLOW_SCALE_SWITCH(kind, return (apply_row<K, true, false>(in, raw, shift, m, out, N, clamp)))
  }
  if (m) {
    INVFLOW_SCALE_SWITCH(kind, return (apply_row<K, false, true>(in, raw, shift, m, out, N, clamp)))
  }
  INVFLOW_SCALE_SWITCH(kind, return (apply_row<K, false, false>(in, raw, shift, m, out, N, clamp)))
}

INVFLOW_MULTIVERSION void grad_row_f32(const float* gy, float gl, const float* x, const float* raw, const float* m,
                                       float* gx, float* graw, float* gshift, int64_t N, ScaleKind kind,
                                       float clamp) {
  if (m) {
    INVFLOW_SCALE_SWITCH(kind, grad_row<K, true>(gy, gl, x, raw, m, gx, graw, gshift, N, clamp); return)
  }
  INVFLOW_SCALE_SWITCH(kind, grad_row<K, false>(gy, gl, x, raw, m, gx, graw, gshift, N, clamp); return)
}

// ------------------------------------------------------------------ generic dtype rows
// (double, half, bfloat16: the scalar math of csrc/common/scale.h, accumulated in opmath)
template <typename scalar_t>
at::opmath_type<scalar_t> apply_row_generic(const scalar_t* in, const scalar_t* raw, const scalar_t* shift,
                                            const scalar_t* m, scalar_t* out, int64_t N, ScaleKind kind,
                                            at::opmath_type<scalar_t> clamp, bool invert) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t ld = 0;
  for (int64_t n = 0; n < N; ++n) {
    if (m && m[n] == scalar_t(0)) {
      out[n] = in[n];
      continue;
    }
    acc_t log_s;
    const acc_t v = acc_t(in[n]), r = acc_t(raw[n]), t = acc_t(shift[n]);
    const acc_t o = invert ? coupling_unapply<acc_t>(v, r, t, kind, clamp, &log_s)
                           : coupling_apply<acc_t>(v, r, t, kind, clamp, &log_s);
    out[n] = static_cast<scalar_t>(o);
    ld += log_s;
  }
  return ld;
}

template <typename scalar_t>
void grad_row_generic(const scalar_t* gy, at::opmath_type<scalar_t> gl, const scalar_t* x, const scalar_t* raw,
                      const scalar_t* m, scalar_t* gx, scalar_t* graw, scalar_t* gshift, int64_t N,
                      ScaleKind kind, at::opmath_type<scalar_t> clamp) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t n = 0; n < N; ++n) {
    if (m && m[n] == scalar_t(0)) {
      gx[n] = gy[n];
      graw[n] = scalar_t(0);
      gshift[n] = scalar_t(0);
      continue;
    }
    acc_t g, r;
    coupling_grad<acc_t>(acc_t(gy[n]), gl, acc_t(x[n]), acc_t(raw[n]), kind, clamp, &g, &r);
    gx[n] = static_cast<scalar_t>(g);
    graw[n] = static_cast<scalar_t>(r);
    gshift[n] = gy[n];
  }
}

// float32 rows take the vectorised path: these overloads beat the templates above.
float apply_row_generic(const float* in, const float* raw, const float* shift, const float* m, float* out,
                        int64_t N, ScaleKind kind, float clamp, bool invert) {
  return apply_row_f32(in, raw, shift, m, out, N, kind, clamp, invert);
}

void grad_row_generic(const float* gy, float gl, const float* x, const float* raw, const float* m, float* gx,
                      float* graw, float* gshift, int64_t N, ScaleKind kind, float clamp) {
  grad_row_f32(gy, gl, x, raw, m, gx, graw, gshift, N, kind, clamp);
}

// --------------------------------------------------------------------------- drivers
struct Rows {
  int64_t B, C, N;
  int64_t count() const { return B * C; }
  int64_t offset(int64_t r) const { return r * N; }                                // in x
  int64_t h_offset(int64_t r) const { return ((r / C) * 2 * C + r % C) * N; }     // raw in h
};

Rows rows_of(const at::Tensor& x) { return {x.size(0), x.size(1), inner_size(x)}; }

// Shared body of forward (invert = false) and inverse (invert = true).
std::tuple<at::Tensor, at::Tensor> apply_all(const at::Tensor& in, const at::Tensor& h,
                                             const c10::optional<at::Tensor>& mask, const std::string& scale,
                                             double clamp, bool invert) {
  check_coupling_args(in, h, mask);
  const ScaleKind kind = static_cast<ScaleKind>(parse_scale_kind(scale));
  const at::Tensor ic = in.contiguous(), hc = h.contiguous();
  const at::Tensor mc = mask.has_value() ? mask->contiguous() : at::Tensor();
  const Rows g = rows_of(in);
  at::Tensor out = at::empty_like(ic);
  at::Tensor logdet = at::empty({g.B}, in.options().dtype(logdet_dtype(in.scalar_type())));
  INVFLOW_DISPATCH_FLOATING(in.scalar_type(), "coupling_apply", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ip = ic.data_ptr<scalar_t>();
    const scalar_t* hp = hc.data_ptr<scalar_t>();
    const scalar_t* mp = mc.defined() ? mc.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    std::vector<acc_t> row_ld(g.count());
    at::parallel_for(0, g.count(), row_grain(g.N), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* raw = hp + g.h_offset(r);
        const scalar_t* shift = raw + g.C * g.N;
        const scalar_t* m = mp ? mp + (r % g.C) * g.N : nullptr;
        row_ld[r] = apply_row_generic(ip + g.offset(r), raw, shift, m, op + g.offset(r), g.N, kind,
                                      static_cast<acc_t>(clamp), invert);
      }
    });
    acc_t* ld = logdet.data_ptr<acc_t>();
    for (int64_t b = 0; b < g.B; ++b) {
      acc_t sum = 0;
      for (int64_t c = 0; c < g.C; ++c) sum += row_ld[b * g.C + c];
      ld[b] = invert ? -sum : sum;
    }
  });
  return {out, logdet};
}

}  // namespace

// Contiguous spans without a mask, for the other coupling layouts (coupling_rows.h).
template <typename scalar_t>
at::opmath_type<scalar_t> coupling_apply_span(const scalar_t* in, const scalar_t* raw, const scalar_t* shift,
                                              scalar_t* out, int64_t n, ScaleKind kind,
                                              at::opmath_type<scalar_t> clamp, bool invert) {
  return apply_row_generic(in, raw, shift, static_cast<const scalar_t*>(nullptr), out, n, kind, clamp, invert);
}

template <typename scalar_t>
void coupling_grad_span(const scalar_t* gy, at::opmath_type<scalar_t> gl, const scalar_t* x, const scalar_t* raw,
                        scalar_t* gx, scalar_t* graw, scalar_t* gshift, int64_t n, ScaleKind kind,
                        at::opmath_type<scalar_t> clamp) {
  grad_row_generic(gy, gl, x, raw, static_cast<const scalar_t*>(nullptr), gx, graw, gshift, n, kind, clamp);
}

#define INVFLOW_INSTANTIATE_SPANS(T)                                                                     \
  template at::opmath_type<T> coupling_apply_span<T>(const T*, const T*, const T*, T*, int64_t, ScaleKind, \
                                                     at::opmath_type<T>, bool);                          \
  template void coupling_grad_span<T>(const T*, at::opmath_type<T>, const T*, const T*, T*, T*, T*, int64_t, \
                                      ScaleKind, at::opmath_type<T>);
INVFLOW_INSTANTIATE_SPANS(float)
INVFLOW_INSTANTIATE_SPANS(double)
INVFLOW_INSTANTIATE_SPANS(c10::Half)
INVFLOW_INSTANTIATE_SPANS(c10::BFloat16)
#undef INVFLOW_INSTANTIATE_SPANS

std::tuple<at::Tensor, at::Tensor> coupling_forward(const at::Tensor& x, const at::Tensor& h,
                                                    const c10::optional<at::Tensor>& mask,
                                                    const std::string& scale, double clamp) {
  return apply_all(x, h, mask, scale, clamp, /*invert=*/false);
}

std::tuple<at::Tensor, at::Tensor> coupling_inverse(const at::Tensor& y, const at::Tensor& h,
                                                    const c10::optional<at::Tensor>& mask,
                                                    const std::string& scale, double clamp) {
  return apply_all(y, h, mask, scale, clamp, /*invert=*/true);
}

// grad_x = gy * s, grad_raw = (gy * x * s + gl[b]) * dlog s/draw, grad_t = gy on transformed
// entries; grad_x = gy and zero parameter gradients elsewhere.
std::tuple<at::Tensor, at::Tensor> coupling_backward(
    const at::Tensor& grad_y, const c10::optional<at::Tensor>& grad_logdet, const at::Tensor& x,
    const at::Tensor& h, const c10::optional<at::Tensor>& mask, const std::string& scale,
    double clamp) {
  check_coupling_args(x, h, mask);
  check_grad_args("coupling_backward", grad_y, grad_logdet, x);
  const ScaleKind kind = static_cast<ScaleKind>(parse_scale_kind(scale));
  const at::Tensor gc = grad_y.contiguous(), xc = x.contiguous(), hc = h.contiguous();
  const at::Tensor mc = mask.has_value() ? mask->contiguous() : at::Tensor();
  const at::Tensor glc = grad_logdet.has_value() ? grad_logdet->contiguous() : at::Tensor();
  const Rows g = rows_of(x);
  at::Tensor grad_x = at::empty_like(xc);
  at::Tensor grad_h = at::empty_like(hc);
  INVFLOW_DISPATCH_FLOATING(x.scalar_type(), "coupling_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* hp = hc.data_ptr<scalar_t>();
    const scalar_t* mp = mc.defined() ? mc.data_ptr<scalar_t>() : nullptr;
    const acc_t* glp = glc.defined() ? glc.data_ptr<acc_t>() : nullptr;
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    scalar_t* ghp = grad_h.data_ptr<scalar_t>();
    at::parallel_for(0, g.count(), row_grain(g.N), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t off = g.offset(r), hoff = g.h_offset(r);
        const scalar_t* m = mp ? mp + (r % g.C) * g.N : nullptr;
        const acc_t gl = glp ? acc_t(glp[r / g.C]) : acc_t(0);
        scalar_t* graw = ghp + hoff;
        scalar_t* gshift = graw + g.C * g.N;
        grad_row_generic(gp + off, gl, xp + off, hp + hoff, m, gxp + off, graw, gshift, g.N, kind,
                         static_cast<acc_t>(clamp));
      }
    });
  });
  return {grad_x, grad_h};
}

}  // namespace cpu
}  // namespace invflow
