// Scale functions of the affine coupling, shared by the CPU and CUDA kernels.
//
// An affine coupling computes y = s(raw) * x + t on its transformed entries; the
// per-sample log-determinant is the sum of log s(raw) over those entries.  Three
// scale functions are supported (the `scale` string of invflow.AffineCoupling):
//
//   sigmoid  s = sigmoid(raw + 2)            Glow (Kingma & Dhariwal 2018, code)
//   exp      s = exp(raw)                    RealNVP (Dinh et al. 2017)
//   tanh     s = exp(c * tanh(raw / c))      soft-clamped exp (flows_ood, FrEIA-style
//                                            clamping; c = `clamp`)
//
// ScaleTerms also carries d log s / d raw and d^2 log s / d raw^2, which the backward
// kernels and the double-backward formulas need.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define INVFLOW_HD __host__ __device__ __forceinline__
#else
#define INVFLOW_HD inline
#endif

namespace invflow {

enum class ScaleKind : int { kSigmoid = 0, kExp = 1, kTanh = 2 };

template <typename T>
struct ScaleTerms {
  T s;       // scale s(raw)
  T log_s;   // log s(raw)
  T dlog;    // d log s / d raw
};

// Numerically stable log-sigmoid and sigmoid sharing one exponential.
template <typename T>
INVFLOW_HD void sigmoid_and_log(T z, T* s, T* log_s) {
  using std::exp;
  using std::log1p;
  const T e = exp(-(z < T(0) ? -z : z));  // exp(-|z|) in (0, 1]
  const T l = log1p(e);
  if (z >= T(0)) {
    *s = T(1) / (T(1) + e);
    *log_s = -l;
  } else {
    *s = e / (T(1) + e);
    *log_s = z - l;
  }
}

template <typename T>
INVFLOW_HD ScaleTerms<T> scale_terms(T raw, ScaleKind kind, T clamp) {
  using std::exp;
  using std::tanh;
  ScaleTerms<T> r;
  switch (kind) {
    case ScaleKind::kSigmoid: {
      sigmoid_and_log(raw + T(2), &r.s, &r.log_s);
      r.dlog = T(1) - r.s;
      break;
    }
    case ScaleKind::kExp: {
      r.log_s = raw;
      r.s = exp(raw);
      r.dlog = T(1);
      break;
    }
    default: {  // kTanh
      const T th = tanh(raw / clamp);
      r.log_s = clamp * th;
      r.s = exp(r.log_s);
      r.dlog = T(1) - th * th;
      break;
    }
  }
  return r;
}

// Coupling forward on one entry: y = s * x + t, returns log s through *log_s.
template <typename T>
INVFLOW_HD T coupling_apply(T x, T raw, T shift, ScaleKind kind, T clamp, T* log_s) {
  const ScaleTerms<T> st = scale_terms(raw, kind, clamp);
  *log_s = st.log_s;
  return st.s * x + shift;
}

// Coupling inverse on one entry: x = (y - t) / s, returns log s through *log_s.
template <typename T>
INVFLOW_HD T coupling_unapply(T y, T raw, T shift, ScaleKind kind, T clamp, T* log_s) {
  using std::exp;
  const ScaleTerms<T> st = scale_terms(raw, kind, clamp);
  *log_s = st.log_s;
  return (y - shift) * exp(-st.log_s);
}

// Backward of one coupling entry given dL/dy = gy and dL/dlogdet = gl:
//   dL/dx = gy * s,  dL/draw = (gy * x * s + gl) * dlog,  dL/dt = gy.
template <typename T>
INVFLOW_HD void coupling_grad(T gy, T gl, T x, T raw, ScaleKind kind, T clamp,
                              T* gx, T* graw) {
  const ScaleTerms<T> st = scale_terms(raw, kind, clamp);
  *gx = gy * st.s;
  *graw = (gy * x * st.s + gl) * st.dlog;
}

}  // namespace invflow
