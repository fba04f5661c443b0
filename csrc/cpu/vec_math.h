// Branch-free float exp / log1p / tanh that GCC auto-vectorises, for the CPU kernels.
//
// libm's expf/log1pf are scalar calls and would make a fused kernel slower than PyTorch's
// vectorised (SLEEF) eager ops.  These follow Cephes' single-precision algorithms
// (range reduction + minimax polynomial, about 2 ulp) and contain no calls or branches,
// so loops over them vectorise.  Functions tagged INVFLOW_MULTIVERSION are compiled twice
// (x86-64-v3 = AVX2 + FMA, and the baseline) and picked at load time, so the extension
// still runs on CPUs without AVX2.  NaN propagates; exp overflows to inf above x = 88.72 like
// expf and flushes to 0 below x = -87.33 (where expf returns denormals), so the kernels give
// the IEEE results of the reference at the ends (e.g. an inverse coupling's 1 / s = inf).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define INVFLOW_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define INVFLOW_MULTIVERSION
#endif

#define INVFLOW_ALWAYS_INLINE inline __attribute__((always_inline))

namespace invflow {
namespace cpu {
namespace vmath {

INVFLOW_ALWAYS_INLINE float bits_to_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof(f));
  return f;
}

INVFLOW_ALWAYS_INLINE float clampf(float x, float lo, float hi) {
  x = x < lo ? lo : x;  // NaN compares false and passes through
  return x > hi ? hi : x;
}

// exp(x): x = n ln2 + r, |r| <= ln2 / 2, exp(r) by Cephes' degree-6 polynomial, 2^n via bits.
INVFLOW_ALWAYS_INLINE float exp(float x_in) {
  const float x = clampf(x_in, -87.33654f, 88.72283f);
  // round(x / ln2) with the 1.5 * 2^23 trick (exact without -ffast-math)
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n as 2^(n/2) * 2^(n - n/2): n = 128 (x near 88.7) and n = -126 stay representable
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t n1 = ni / 2;
  const float y = p * bits_to_float((n1 + 127) << 23) * bits_to_float((ni - n1 + 127) << 23);
  const float hi = x_in > 88.72283f ? __builtin_inff() : y;  // selects, no branches
  return x_in < -87.33654f ? 0.0f : hi;
}

// log(1 + e) for e in [0, 1]: 2 atanh(t) with t = e / (2 + e) in [0, 1/3]; the odd series
// to t^15 is below float resolution there, and there is no cancellation for small e.
INVFLOW_ALWAYS_INLINE float log1p_unit(float e) {
  const float t = e / (2.0f + e);
  const float t2 = t * t;
  float p = 1.0f / 15.0f;
  p = p * t2 + 1.0f / 13.0f;
  p = p * t2 + 1.0f / 11.0f;
  p = p * t2 + 1.0f / 9.0f;
  p = p * t2 + 1.0f / 7.0f;
  p = p * t2 + 1.0f / 5.0f;
  p = p * t2 + 1.0f / 3.0f;
  p = p * t2 + 1.0f;
  return 2.0f * t * p;
}

// tanh(x) = sign(x) (1 - 2 / (exp(2|x|) + 1)); absolute error ~1e-7.
INVFLOW_ALWAYS_INLINE float tanh(float x) {
  const float a = x < 0.0f ? -x : x;
  const float t = 1.0f - 2.0f / (exp(2.0f * a) + 1.0f);
  return x < 0.0f ? -t : t;
}

}  // namespace vmath
}  // namespace cpu
}  // namespace invflow
