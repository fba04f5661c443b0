// The rational-quadratic spline of Durkan et al. 2019 (Neural Spline Flows, Sec. 3.1), one
// entry at a time, shared by the CPU (cpu/spline.cpp) and CUDA (cuda/spline.cu) kernels.  The
// semantics are those of the pure-PyTorch reference, invflow/ops/spline.py:
//
//   K bins on [-B, B], identity outside (linear tails).  Per entry, K unnormalised widths and
//   heights and K - 1 unnormalised inner derivatives:
//     p_j = 1e-3 + (1 - 1e-3 K) softmax(u)_j,  knot_k = 2 B (p_0 + ... + p_{k-1}) - B
//     (knot_0 = -B, knot_K = B exactly),  d_k = 1e-3 + softplus(ud_{k-1}),  d_0 = d_K = 1.
//   Bin k holds knot_k <= v < knot_{k+1} (+B is in the last bin).  In a bin, with w, h its
//   width and height, s = h / w, theta = (x - x_k) / w, T = theta (1 - theta),
//   C = d_k + d_{k+1} - 2 s and D = s + C T:
//     y = y_k + h (s theta^2 + d_k T) / D
//     log dy/dx = log(s^2 (d_{k+1} theta^2 + 2 s T + d_k (1 - theta)^2)) - 2 log D
//   The inverse takes the stable root theta = 2c / (-b - sqrt(b^2 - 4ac)) of Eq. 6-8.
//
// Gradients (rq_local_grads): with y = y_k + h g(theta, s, d_k, d_{k+1}) and L = log dy/dx,
// a cotangent a on y and b on L gives G_q = a dy/dq + b dL/dq for q in (theta, s, d_k,
// d_{k+1}), chained through theta = (x - x_k) / w, s = h / w, w = x_{k+1} - x_k,
// h = y_{k+1} - y_k to the bin's knots; the softmax / cumulative sum / softplus backward
// (rq_row_grad) takes those to the unnormalised rows.  The inverse map's gradients follow
// from the forward partials at the solved x (dx/dq = -(dy/dq) / (dy/dx)): see spline.cpp.
#pragma once

#include <cmath>

#include "scale.h"  // INVFLOW_HD

namespace invflow {
namespace rq {

// The paper's code defaults (nflows DEFAULT_MIN_BIN_WIDTH / HEIGHT / DERIVATIVE).
constexpr double kMinBin = 1e-3;
constexpr double kMinDerivative = 1e-3;

// softplus as torch.nn.functional.softplus (beta 1, threshold 20).
template <typename T>
INVFLOW_HD T softplus(T v) {
  using std::exp;
  using std::log1p;
  return v > T(20) ? v : log1p(exp(v));
}

template <typename T>
INVFLOW_HD T sigmoid(T v) {
  using std::exp;
  return T(1) / (T(1) + exp(-v));
}

// One row of K unnormalised bin sizes: p_j = min + (1 - min K) exp(u_j - max) / sum.
template <typename T, typename In>
struct Row {
  const In* u;
  int K;
  T max, inv_sum, scale;

  INVFLOW_HD Row(const In* u_, int K_) : u(u_), K(K_) {
    using std::exp;
    T m = T(u[0]);
    for (int j = 1; j < K; ++j) m = T(u[j]) > m ? T(u[j]) : m;
    T s = T(0);
    for (int j = 0; j < K; ++j) s += exp(T(u[j]) - m);
    max = m;
    inv_sum = T(1) / s;
    scale = T(1) - T(kMinBin) * T(K);
  }
  INVFLOW_HD T softmax(int j) const {
    using std::exp;
    return exp(T(u[j]) - max) * inv_sum;  // one division per row, not per bin
  }
  INVFLOW_HD T p(int j) const { return T(kMinBin) + scale * softmax(j); }
};

// The knots of bin k of a row: *lo = knot_k, *hi = knot_{k+1}.
template <typename T, typename In>
INVFLOW_HD void knots_of_bin(const Row<T, In>& r, int k, T bound, T* lo, T* hi) {
  T cum = T(0);
  T knot = -bound;
  for (int j = 0; j < k; ++j) {
    cum += r.p(j);
    knot = T(2) * bound * cum - bound;
  }
  *lo = k == 0 ? -bound : knot;
  *hi = k == r.K - 1 ? bound : T(2) * bound * (cum + r.p(k)) - bound;
}

// The bin of v in a row's knots (the number of inner knots <= v) and its two knots.
template <typename T, typename In>
INVFLOW_HD int find_bin(const Row<T, In>& r, T v, T bound, T* lo, T* hi) {
  T cum = T(0);
  T a = -bound, b = bound;
  int k = 0;
  for (int j = 0; j < r.K - 1; ++j) {
    cum += r.p(j);
    const T knot = T(2) * bound * cum - bound;
    if (v >= knot) {
      a = knot;
      k = j + 1;
    } else {
      b = knot;
      break;
    }
  }
  *lo = a;
  *hi = b;
  return k;
}

// One bin: knots (x0, x1) and (y0, y1), knot derivatives d0, d1, and its bin index.
template <typename T>
struct Bin {
  int k;
  T x0, x1, y0, y1, d0, d1;
};

// Locates v (in x-space, or in y-space when `inverse`) in the rows of widths and heights and
// gathers its bin.
template <typename T, typename In>
INVFLOW_HD Bin<T> locate(const Row<T, In>& rw, const Row<T, In>& rh, const In* ud, T bound, T v, bool inverse) {
  Bin<T> bin;
  if (inverse) {
    bin.k = find_bin(rh, v, bound, &bin.y0, &bin.y1);
    knots_of_bin(rw, bin.k, bound, &bin.x0, &bin.x1);
  } else {
    bin.k = find_bin(rw, v, bound, &bin.x0, &bin.x1);
    knots_of_bin(rh, bin.k, bound, &bin.y0, &bin.y1);
  }
  bin.d0 = bin.k == 0 ? T(1) : T(kMinDerivative) + softplus(T(ud[bin.k - 1]));
  bin.d1 = bin.k == rw.K - 1 ? T(1) : T(kMinDerivative) + softplus(T(ud[bin.k]));
  return bin;
}

// theta of v in its bin: (v - x0) / w forward, the root of Eq. 6-8 inverse.
template <typename T>
INVFLOW_HD T bin_theta(const Bin<T>& q, T v, bool inverse) {
  using std::sqrt;
  const T w = q.x1 - q.x0;
  if (!inverse) return (v - q.x0) / w;
  const T h = q.y1 - q.y0;
  const T s = h / w;
  const T curv = q.d0 + q.d1 - T(2) * s;
  const T dy = v - q.y0;
  const T a = dy * curv + h * (s - q.d0);
  const T b = h * q.d0 - dy * curv;
  const T c = -s * dy;
  T disc = b * b - T(4) * a * c;
  disc = disc < T(0) ? T(0) : disc;  // >= 0 in exact arithmetic (a monotone spline)
  return (T(2) * c) / (-b - sqrt(disc));
}

// y (forward) or x (inverse) at theta, and log dy/dx there (not negated).
template <typename T>
INVFLOW_HD T bin_eval(const Bin<T>& q, T theta, bool inverse, T* log_dydx) {
  using std::log;
  const T w = q.x1 - q.x0, h = q.y1 - q.y0;
  const T s = h / w;
  const T curv = q.d0 + q.d1 - T(2) * s;
  const T t1 = theta * (T(1) - theta);
  const T den = s + curv * t1;
  const T om = T(1) - theta;
  const T dnum = s * s * (q.d1 * theta * theta + T(2) * s * t1 + q.d0 * om * om);
  *log_dydx = log(dnum) - T(2) * log(den);
  if (inverse) return theta * w + q.x0;
  return q.y0 + h * (s * theta * theta + q.d0 * t1) / den;
}

// The partials of y and of L = log dy/dx with respect to one bin's knots (x0, x1, y0, y1, d0,
// d1) at theta, and dy/dx, dL/dx there.
template <typename T>
struct Knots {
  T x0, x1, y0, y1, d0, d1;
};

template <typename T>
struct LocalGrads {
  Knots<T> y, L;
  T dydx, dLdx;
};

template <typename T>
INVFLOW_HD LocalGrads<T> rq_local_grads(const Bin<T>& q, T theta) {
  const T w = q.x1 - q.x0, h = q.y1 - q.y0;
  const T s = h / w;
  const T d0 = q.d0, d1 = q.d1;
  const T curv = d0 + d1 - T(2) * s;
  const T om = T(1) - theta;
  const T t1 = theta * om;
  const T dt1 = T(1) - T(2) * theta;  // dT / dtheta
  const T D = s + curv * t1;
  const T N = s * theta * theta + d0 * t1;  // g = N / D
  const T P = d1 * theta * theta + T(2) * s * t1 + d0 * om * om;
  const T iD = T(1) / D, iP = T(1) / P, iw = T(1) / w;
  const T iD2 = iD * iD;
  // y = y0 + h g(theta, s, d0, d1): the partials of h g
  const T g = N * iD;
  const T y_th = h * s * P * iD2;
  const T y_s = h * (theta * theta * D - N * (T(1) - T(2) * t1)) * iD2;
  // L = 2 log s + log P - 2 log D
  const T L_th = (T(2) * d1 * theta + T(2) * s * dt1 - T(2) * d0 * om) * iP - T(2) * curv * dt1 * iD;
  const T L_s = T(2) / s + T(2) * t1 * iP - T(2) * (T(1) - T(2) * t1) * iD;
  // chained through theta = (x - x0) / w, s = h / w, w = x1 - x0, h = y1 - y0
  LocalGrads<T> r;
  r.y.x0 = (y_th * (theta - T(1)) + y_s * s) * iw;
  r.y.x1 = -(y_th * theta + y_s * s) * iw;
  r.y.y0 = T(1) - g - y_s * iw;
  r.y.y1 = g + y_s * iw;
  r.y.d0 = h * t1 * (D - N) * iD2;
  r.y.d1 = -h * N * t1 * iD2;
  r.L.x0 = (L_th * (theta - T(1)) + L_s * s) * iw;
  r.L.x1 = -(L_th * theta + L_s * s) * iw;
  r.L.y0 = -L_s * iw;
  r.L.y1 = L_s * iw;
  r.L.d0 = om * om * iP - T(2) * t1 * iD;
  r.L.d1 = theta * theta * iP - T(2) * t1 * iD;
  r.dydx = y_th * iw;
  r.dLdx = L_th * iw;
  return r;
}

// The gradient of one row of K unnormalised sizes (softmax, then cumulative knots) given the
// gradients g_lo, g_hi of knot_k and knot_{k+1}; the fixed end knots (-B, B) take none.
template <typename T, typename In, typename Out>
INVFLOW_HD void rq_row_grad(const Row<T, In>& r, int k, T bound, T g_lo, T g_hi, Out* gu) {
  const T lo = k == 0 ? T(0) : g_lo;
  const T hi = k == r.K - 1 ? T(0) : g_hi;
  const T c = T(2) * bound * r.scale;  // d knot_i / d softmax_j for j < i
  // dL/dsoftmax_j = c (lo [j < k] + hi [j <= k]); softmax backward: sm_j (g_j - sum sm g)
  T below = T(0);
  for (int j = 0; j < k; ++j) below += r.softmax(j);
  const T upto = below + r.softmax(k);
  const T dot = c * (lo * below + hi * upto);
  for (int j = 0; j < r.K; ++j) {
    const T gj = j < k ? c * (lo + hi) : (j == k ? c * hi : T(0));
    gu[j] = static_cast<Out>(r.softmax(j) * (gj - dot));
  }
}

}  // namespace rq
}  // namespace invflow

namespace invflow {
namespace rq {

// One entry of the op: v mapped forward (or inverted), *lad = log|dy/dx| (log|dx/dy| when
// inverse); identity with *lad = 0 outside [-B, B] (NaN included).
template <typename T, typename In>
INVFLOW_HD T rq_apply(const In* uw, const In* uh, const In* ud, int K, T bound, T v, bool inverse, T* lad) {
  if (!(v >= -bound && v <= bound)) {
    *lad = T(0);
    return v;
  }
  const Row<T, In> rw(uw, K), rh(uh, K);
  const Bin<T> q = locate(rw, rh, ud, bound, v, inverse);
  T L;
  const T out = bin_eval(q, bin_theta(q, v, inverse), inverse, &L);
  *lad = inverse ? -L : L;
  return out;
}

// The backward of one entry: given the op's input v, the cotangent gout of its output and gl
// of its log-det, writes the gradients of the entry's rows (gw, gh: K; gd: K - 1) and returns
// the gradient of v.  Forward: g_q = gout dy/dq + gl dL/dq, g_v = gout dy/dx + gl dL/dx.
// Inverse (x = f^-1(v), log-det -L(x)): g_v = (gout - gl dL/dx) / (dy/dx) and
// g_q = -(g_v dy/dq + gl dL/dq), since dx/dq = -(dy/dq) / (dy/dx).
template <typename T, typename In, typename Out>
INVFLOW_HD T rq_backward(const In* uw, const In* uh, const In* ud, int K, T bound, T v, bool inverse, T gout, T gl,
                         Out* gw, Out* gh, Out* gd) {
  if (!(v >= -bound && v <= bound)) {
    for (int j = 0; j < K; ++j) gw[j] = gh[j] = Out(0);
    for (int j = 0; j < K - 1; ++j) gd[j] = Out(0);
    return gout;
  }
  const Row<T, In> rw(uw, K), rh(uh, K);
  const Bin<T> q = locate(rw, rh, ud, bound, v, inverse);
  const LocalGrads<T> lg = rq_local_grads(q, bin_theta(q, v, inverse));
  T a, b, gv;
  if (inverse) {
    gv = (gout - gl * lg.dLdx) / lg.dydx;
    a = -gv;
    b = -gl;
  } else {
    gv = gout * lg.dydx + gl * lg.dLdx;
    a = gout;
    b = gl;
  }
  // the knots' gradients first, so only these six stay live through the row loops
  Knots<T> gk;
  gk.x0 = a * lg.y.x0 + b * lg.L.x0;
  gk.x1 = a * lg.y.x1 + b * lg.L.x1;
  gk.y0 = a * lg.y.y0 + b * lg.L.y0;
  gk.y1 = a * lg.y.y1 + b * lg.L.y1;
  gk.d0 = a * lg.y.d0 + b * lg.L.d0;
  gk.d1 = a * lg.y.d1 + b * lg.L.d1;
  for (int j = 0; j < K - 1; ++j) {
    // d_{j+1} = 1e-3 + softplus(ud_j): bin k uses d_k (ud_{k-1}) and d_{k+1} (ud_k)
    const T g = j == q.k - 1 ? gk.d0 : (j == q.k ? gk.d1 : T(0));
    gd[j] = static_cast<Out>(g == T(0) ? T(0) : g * sigmoid(T(ud[j])));
  }
  rq_row_grad(rw, q.k, bound, gk.x0, gk.x1, gw);
  rq_row_grad(rh, q.k, bound, gk.y0, gk.y1, gh);
  return gv;
}

}  // namespace rq
}  // namespace invflow
