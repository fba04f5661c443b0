// Invertible 1x1 convolution on the CPU (Glow, Kingma & Dhariwal 2018, Sec. 3.2):
// y[b, :, n] = W x[b, :, n] for every pixel n.  The log-determinant N * log|det W| (or
// N * sum log|s| in the LU form) depends only on W and is computed on the Python side.
//
// For small C (the common case in multi-scale flows: 12, 24, 48 channels) a direct
// per-pixel kernel streams each sample once; above kDirectMaxChannels BLAS wins.
#include <vector>

#include "../ops.h"
#include "utils.h"
#include "vec_math.h"

namespace invflow {
namespace cpu {

namespace {

constexpr int64_t kDirectMaxChannels = 64;
constexpr int64_t kTile = 256;  // pixels per task in the direct kernel

// One tile of `len` pixels of one sample: y[o, t] = sum_i w[o, i] x[i, t].
template <typename scalar_t, typename acc_t>
INVFLOW_ALWAYS_INLINE void mix_tile(const scalar_t* xb, const acc_t* w, scalar_t* yb, acc_t* buf, int64_t C,
                                    int64_t N, int64_t len) {
  for (int64_t o = 0; o < C; ++o) {
    const acc_t* wo = w + o * C;
    for (int64_t t = 0; t < len; ++t) buf[t] = 0;
    for (int64_t i = 0; i < C; ++i) {
      const acc_t wv = wo[i];
      const scalar_t* xi = xb + i * N;
#pragma omp simd
      for (int64_t t = 0; t < len; ++t) buf[t] += wv * acc_t(xi[t]);
    }
    scalar_t* yo = yb + o * N;
    for (int64_t t = 0; t < len; ++t) yo[t] = static_cast<scalar_t>(buf[t]);
  }
}

template <typename scalar_t, typename acc_t>
void mix_tile_any(const scalar_t* xb, const acc_t* w, scalar_t* yb, acc_t* buf, int64_t C, int64_t N,
                  int64_t len) {
  mix_tile(xb, w, yb, buf, C, N, len);
}

INVFLOW_MULTIVERSION void mix_tile_any(const float* xb, const float* w, float* yb, float* buf, int64_t C,
                                       int64_t N, int64_t len) {
  mix_tile(xb, w, yb, buf, C, N, len);
}

// acc[o, i] += sum_n g[o, n] x[i, n] for one sample.
template <typename scalar_t, typename acc_t>
INVFLOW_ALWAYS_INLINE void outer_accumulate(const scalar_t* gb, const scalar_t* xb, acc_t* acc, int64_t C,
                                            int64_t N) {
  for (int64_t o = 0; o < C; ++o) {
    const scalar_t* go = gb + o * N;
    for (int64_t i = 0; i < C; ++i) {
      const scalar_t* xi = xb + i * N;
      acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t n = 0; n < N; ++n) dot += acc_t(go[n]) * acc_t(xi[n]);
      acc[o * C + i] += dot;
    }
  }
}

template <typename scalar_t, typename acc_t>
void outer_accumulate_any(const scalar_t* gb, const scalar_t* xb, acc_t* acc, int64_t C, int64_t N) {
  outer_accumulate(gb, xb, acc, C, N);
}

INVFLOW_MULTIVERSION void outer_accumulate_any(const float* gb, const float* xb, float* acc, int64_t C, int64_t N) {
  outer_accumulate(gb, xb, acc, C, N);
}

template <typename scalar_t>
void mix_direct(const scalar_t* x, const scalar_t* w, scalar_t* y, int64_t B, int64_t C, int64_t N) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<acc_t> wa(w, w + C * C);
  const int64_t tiles = (N + kTile - 1) / kTile;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C * std::min(N, kTile), 1));
  at::parallel_for(0, B * tiles, grain, [&](int64_t begin, int64_t end) {
    acc_t buf[kTile];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles;
      const int64_t t0 = (task % tiles) * kTile;
      const int64_t len = std::min(kTile, N - t0);
      mix_tile_any(x + b * C * N + t0, wa.data(), y + b * C * N + t0, buf, C, N, len);
    }
  });
}

// dL/dW = sum_{b,n} g[b, :, n] x[b, :, n]^T, accumulated per block of samples and reduced
// in a fixed order so the result does not depend on the thread count.
template <typename scalar_t>
void weight_grad_direct(const scalar_t* g, const scalar_t* x, scalar_t* gw, int64_t B, int64_t C,
                        int64_t N) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kBlock = 4;
  const int64_t blocks = (B + kBlock - 1) / kBlock;
  std::vector<acc_t> partial(blocks * C * C, acc_t(0));
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      acc_t* acc = partial.data() + blk * C * C;
      for (int64_t b = blk * kBlock; b < std::min(B, (blk + 1) * kBlock); ++b) {
        outer_accumulate_any(g + b * C * N, x + b * C * N, acc, C, N);
      }
    }
  });
  for (int64_t k = 0; k < C * C; ++k) {
    acc_t s = 0;
    for (int64_t blk = 0; blk < blocks; ++blk) s += partial[blk * C * C + k];
    gw[k] = static_cast<scalar_t>(s);
  }
}

at::Tensor mix(const at::Tensor& xc, const at::Tensor& weight) {
  const int64_t B = xc.size(0), C = xc.size(1), N = inner_size(xc);
  if (C > kDirectMaxChannels) return mix_gemm(xc, weight);
  at::Tensor y = at::empty_like(xc);
  const at::Tensor wc = weight.contiguous();
  INVFLOW_DISPATCH_FLOATING(xc.scalar_type(), "channel_mix", [&] {
    mix_direct<scalar_t>(xc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), B,
                         C, N);
  });
  return y;
}

}  // namespace

at::Tensor channel_mix(const at::Tensor& x, const at::Tensor& weight) {
  check_channel_mix_args(x, weight);
  return mix(x.contiguous(), weight);
}

std::tuple<at::Tensor, at::Tensor> channel_mix_backward(const at::Tensor& grad_y,
                                                        const at::Tensor& x,
                                                        const at::Tensor& weight) {
  check_channel_mix_args(x, weight);
  check_grad_args("channel_mix_backward", grad_y, c10::nullopt, x);
  const at::Tensor gc = grad_y.contiguous(), xc = x.contiguous();
  const int64_t B = x.size(0), C = x.size(1), N = inner_size(x);
  at::Tensor grad_x = mix(gc, weight.t());
  at::Tensor grad_w;
  if (C > kDirectMaxChannels) {
    grad_w = weight_grad_gemm(gc, xc);
  } else {
    grad_w = at::empty({C, C}, weight.options());
    INVFLOW_DISPATCH_FLOATING(x.scalar_type(), "channel_mix_backward", [&] {
      weight_grad_direct<scalar_t>(gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(),
                                   grad_w.data_ptr<scalar_t>(), B, C, N);
    });
  }
  return {grad_x, grad_w};
}

}  // namespace cpu
}  // namespace invflow
