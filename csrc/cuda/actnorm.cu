// ActNorm on CUDA: the semantics of csrc/cpu/actnorm.cpp (Glow Sec. 3.1).
//   forward  y = (x + b) * exp(log_s),  inverse  x = y * exp(-log_s) - b,  log|det| = +-N sum log_s
//   backward gx = g s,  gb[c] = s[c] sum g,  glog_s[c] = s[c] sum g (x + b) + N sum_b gl[b]
// Log-dets are in logdet_dtype (float32 for half / bfloat16 inputs).  Forward and inverse
// are two launches (the map and the log-det), the backward two (map + per-block partial
// sums, then the per-channel finish); no buffer is zero-filled, no atomics, no host sync.
//
// Launch geometry of the elementwise kernels (apply_kernel, backward_kernel)
// ------------------------------------------------------------------------
// x [B, C, ...] is viewed as B samples of L = C * N columns (N = product of the trailing
// dims; column j of a sample belongs to channel j / N).  T threads per block (a multiple of
// 32, <= 256, fewer for tiny L), E elements per thread per sample (8; 4 for double), so a
// block pass covers span = T * E columns.  The columns are cut into channel-aligned column
// blocks:
//   N <= span: a column block holds cpb = span / N whole channels (rounded down to a
//              multiple of the vector width W when N % W != 0, so blocks start on vectors);
//   N >  span: a column block holds span columns of one channel (cpb = 1), and
//              kpc = ceil(N / span) column blocks cover a channel.
// Grid: blockIdx.x = column block (grid-stride over ceil(C / cpb) * kpc), blockIdx.y = first
// sample; a block walks down the batch, samples b = blockIdx.y + i * gridDim.y (gridDim.y
// <= 65535).  Thread t owns K = E / W vectors of W consecutive columns of its column block,
// vector k at local column (k * T + t) * W: consecutive threads touch consecutive 16-byte
// vectors, for every N including N = 1 (x [B, C], e.g. DenseGlow [B, 3072]).  W =
// 16 / sizeof(scalar_t) (4 floats, 2 doubles, 8 halfs) when every pointer is 16-byte aligned
// and the shape keeps vectors inside rows (L % W == 0 and column blocks start on multiples
// of W); else W = 1, K = E, the same code with scalar accesses.  A thread looks up the bias
// and exp(log_s) of its E columns once per column block (the channel index: none when the
// block is one channel, else one magic-number division of its local column by N per vector;
// never per element or per sample), then per sample does K vector loads, E multiply-adds and
// K vector stores (backward: two loads, one store, and the two column sums in registers).
// Tails: vectors at or past the column block's nx columns are skipped (nx is a multiple of W
// on the vector path, so a vector is wholly inside or outside).  Sizes: gridDim.y = min(B,
// 65535, enough blocks for about two waves of resident blocks), in the backward also at most
// max(ceil(B / 16), 64), so the partials stay small against the tensor.
//
// Backward reduction: after its samples, a block reduces its per-column sums per channel
// (cpb == 1: block_sum over the block; else the column sums go through shared memory and
// 2^k lanes per channel, k <= 5, add a channel's N columns and finish with shuffles) and
// writes one partial per (channel, column block of that channel, blockIdx.y) to
// part[(c * kpc + chunk) * gridDim.y + blockIdx.y]: each channel's K = kpc * gridDim.y
// partials are contiguous.  finish_kernel: one warp per channel adds them (fixed order);
// every block first sums grad_logdet over the batch (same order in every block).
#include <c10/util/accumulate.h>

#include "../ops.h"
#include "utils.cuh"
#include "vectorized.cuh"

namespace invflow {
namespace cuda {

namespace {

// Elements per thread per sample: two 16-byte vectors of float, two of double, one of half.
template <typename scalar_t>
constexpr int elems_per_thread() {
  return sizeof(scalar_t) >= 8 ? 4 : 8;
}

// Column blocks of one launch (see the top of the file), in the kernel's index type.
template <typename index_t>
struct Blocks {
  index_t B;        // samples
  index_t C;        // channels
  index_t N;        // columns per channel
  index_t L;        // C * N: columns per sample, the sample stride
  index_t cpb;      // whole channels per column block (1 when kpc > 1)
  index_t kpc;      // column blocks per channel (1 when cpb >= 1 whole channels)
  index_t xblocks;  // ceil(C / cpb) * kpc
  Divider<uint32_t> div_n;  // N (used when kpc == 1, where N <= span <= 2048)
};

// The columns of one column block.
template <typename index_t>
struct Span {
  index_t c0;     // first channel
  index_t chunk;  // which of the channel's kpc column blocks (0 when kpc == 1)
  index_t pos0;   // column of the block's first column within channel c0 (chunk * span)
  index_t x0;     // first column within the sample
  index_t nx;     // columns in the block (a multiple of W on the vector path)
};

template <typename index_t>
__device__ __forceinline__ Span<index_t> span_of(const Blocks<index_t>& g, index_t bx, index_t span) {
  Span<index_t> s;
  if (g.kpc == 1) {
    s.c0 = bx * g.cpb;
    s.chunk = 0;
    s.pos0 = 0;
    s.x0 = s.c0 * g.N;
    s.nx = (g.C - s.c0 < g.cpb ? g.C - s.c0 : g.cpb) * g.N;
  } else {
    s.c0 = bx / g.kpc;  // once per column block
    s.chunk = bx - s.c0 * g.kpc;
    s.pos0 = s.chunk * span;
    s.x0 = s.c0 * g.N + s.pos0;
    s.nx = g.N - s.pos0 < span ? g.N - s.pos0 : span;
  }
  return s;
}

// Local column (within the column block, < span <= 2048) of the first element of vector k
// of this thread: 32-bit whatever index_t is, so the 64-bit path keeps its registers.
template <int W>
__device__ __forceinline__ uint32_t local_col(int k) {
  return (static_cast<uint32_t>(k) * blockDim.x + threadIdx.x) * W;
}

// Per-column channel parameters of this thread's E columns: b[k][w] = bias[c] and
// m[k][w] = exp(sign * log_s[c]) for the channel c of local column (k * T + t) * W + w (0 for
// columns past the block's end; sign is +1 or -1).  One lookup per column block when it is one
// channel, else one per vector (per column only for a vector that straddles two channels).
template <typename scalar_t, typename index_t, int W, int K>
__device__ __forceinline__ void channel_params(const Blocks<index_t>& g, const Span<index_t>& s,
                                               const scalar_t* __restrict__ bias,
                                               const scalar_t* __restrict__ log_scale,
                                               at::opmath_type<scalar_t> sign,
                                               at::opmath_type<scalar_t> (&b)[K][W],
                                               at::opmath_type<scalar_t> (&m)[K][W]) {
  using acc_t = at::opmath_type<scalar_t>;
  if (g.cpb == 1) {  // the whole column block is one channel
    const acc_t bc = static_cast<acc_t>(bias[s.c0]);
    const acc_t mc = exp(sign * static_cast<acc_t>(log_scale[s.c0]));
#pragma unroll
    for (int k = 0; k < K; ++k) {
#pragma unroll
      for (int w = 0; w < W; ++w) {
        b[k][w] = bc;
        m[k][w] = mc;
      }
    }
    return;
  }
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const uint32_t jl = local_col<W>(k);
    // jl < span <= 2048 and N <= span here (kpc == 1): a 32-bit magic-number division
    const auto dm = g.div_n.divmod(jl);
    index_t c = s.c0 + dm.div;
    uint32_t n = dm.mod;
    index_t loaded = ~index_t(0);  // the channel whose parameters bc, mc hold
    acc_t bc = 0, mc = 0;
#pragma unroll
    for (int w = 0; w < W; ++w) {
      if (jl + w < s.nx) {
        if (c != loaded) {  // once per vector unless it straddles two channels
          bc = static_cast<acc_t>(bias[c]);
          mc = exp(sign * static_cast<acc_t>(log_scale[c]));
          loaded = c;
        }
        b[k][w] = bc;
        m[k][w] = mc;
      } else {
        b[k][w] = acc_t(0);
        m[k][w] = acc_t(0);
      }
      if (++n == static_cast<uint32_t>(g.N)) {
        n = 0;
        ++c;
      }
    }
  }
}

template <typename scalar_t, typename index_t, int W, int K>
__global__ void __launch_bounds__(kThreads)
    apply_kernel(const scalar_t* __restrict__ in, scalar_t* __restrict__ out, const scalar_t* __restrict__ bias,
                 const scalar_t* __restrict__ log_scale, Blocks<index_t> g, bool invert) {
  using acc_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, W>;
  const index_t span = static_cast<index_t>(blockDim.x) * (W * K);
  for (index_t bx = blockIdx.x; bx < g.xblocks; bx += gridDim.x) {
    const Span<index_t> s = span_of(g, bx, span);
    const uint32_t nx = static_cast<uint32_t>(s.nx);
    acc_t shift[K][W], mult[K][W];
    channel_params<scalar_t, index_t, W, K>(g, s, bias, log_scale, invert ? acc_t(-1) : acc_t(1), shift, mult);
    for (index_t b = blockIdx.y; b < g.B; b += gridDim.y) {
      const scalar_t* src = in + b * g.L + s.x0;
      scalar_t* dst = out + b * g.L + s.x0;
      P v[K];
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const uint32_t jl = local_col<W>(k);
        if (jl < nx) v[k] = load_pack<W>(src + jl);
      }
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const uint32_t jl = local_col<W>(k);
        if (jl < nx) {
          P o;
#pragma unroll
          for (int w = 0; w < W; ++w) {
            const acc_t x = static_cast<acc_t>(v[k].v[w]);
            // forward (x + b) * exp(log_s); inverse y * exp(-log_s) - b (as csrc/cpu/actnorm.cpp)
            o.v[w] = static_cast<scalar_t>(invert ? x * mult[k][w] - shift[k][w] : (x + shift[k][w]) * mult[k][w]);
          }
          store_pack<W>(dst + jl, o);
        }
      }
    }
  }
}

// logdet[b] = sign * N * sum_c log_s[c] for every b.  Each block sums log_s in the same
// order, so every sample gets the identical value.
template <typename scalar_t>
__global__ void logdet_kernel(const scalar_t* __restrict__ log_scale, at::opmath_type<scalar_t>* __restrict__ logdet,
                              int64_t C, int64_t B, at::opmath_type<scalar_t> factor) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t v = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) v += static_cast<acc_t>(log_scale[c]);
  __shared__ acc_t total;
  v = block_sum(v);
  if (threadIdx.x == 0) total = v * factor;
  __syncthreads();
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < B;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    logdet[b] = total;
  }
}

// grad_x = g * s, and one partial of sum g and of sum g (x + b) per (channel, column block of
// the channel, blockIdx.y); see the top of the file.  log2_lanes: lanes per channel in the
// shared-memory reduction (cpb > 1).
template <typename scalar_t, typename index_t, int W, int K>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                    const scalar_t* __restrict__ bias, const scalar_t* __restrict__ log_scale,
                    scalar_t* __restrict__ gx, at::opmath_type<scalar_t>* __restrict__ part_g,
                    at::opmath_type<scalar_t>* __restrict__ part_gx, Blocks<index_t> geo, int log2_lanes) {
  using acc_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, W>;
  constexpr int E = W * K;
  __shared__ acc_t col_g[kThreads * E];
  __shared__ acc_t col_gx[kThreads * E];
  const index_t span = static_cast<index_t>(blockDim.x) * E;
  for (index_t bx = blockIdx.x; bx < geo.xblocks; bx += gridDim.x) {
    const Span<index_t> s = span_of(geo, bx, span);
    const uint32_t nx = static_cast<uint32_t>(s.nx);
    acc_t bb[K][W], sc[K][W], sum_g[K][W], sum_gx[K][W];
    channel_params<scalar_t, index_t, W, K>(geo, s, bias, log_scale, acc_t(1), bb, sc);
#pragma unroll
    for (int k = 0; k < K; ++k) {
#pragma unroll
      for (int w = 0; w < W; ++w) {
        sum_g[k][w] = acc_t(0);
        sum_gx[k][w] = acc_t(0);
      }
    }
    for (index_t b = blockIdx.y; b < geo.B; b += gridDim.y) {
      const index_t base = b * geo.L + s.x0;
      P gv[K], xv[K];
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const uint32_t jl = local_col<W>(k);
        if (jl < nx) {
          gv[k] = load_pack<W>(g + base + jl);
          xv[k] = load_pack<W>(x + base + jl);
        }
      }
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const uint32_t jl = local_col<W>(k);
        if (jl < nx) {
          P o;
#pragma unroll
          for (int w = 0; w < W; ++w) {
            const acc_t gval = static_cast<acc_t>(gv[k].v[w]);
            o.v[w] = static_cast<scalar_t>(gval * sc[k][w]);
            sum_g[k][w] += gval;
            sum_gx[k][w] += gval * (static_cast<acc_t>(xv[k].v[w]) + bb[k][w]);
          }
          store_pack<W>(gx + base + jl, o);
        }
      }
    }
    // Per-channel sums of the block (columns past the block's end hold zeros).
    if (geo.cpb == 1) {  // one channel: c0
      acc_t tg = 0, tgx = 0;
#pragma unroll
      for (int k = 0; k < K; ++k) {
#pragma unroll
        for (int w = 0; w < W; ++w) {
          tg += sum_g[k][w];
          tgx += sum_gx[k][w];
        }
      }
      tg = block_sum(tg);
      tgx = block_sum(tgx);
      if (threadIdx.x == 0) {
        const index_t i = (s.c0 * geo.kpc + s.chunk) * gridDim.y + blockIdx.y;
        part_g[i] = tg;
        part_gx[i] = tgx;
      }
    } else {  // cpb channels of N columns each (kpc == 1, N <= span / 2)
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const uint32_t jl = local_col<W>(k);
#pragma unroll
        for (int w = 0; w < W; ++w) {
          col_g[jl + w] = sum_g[k][w];
          col_gx[jl + w] = sum_gx[k][w];
        }
      }
      __syncthreads();
      // nseg channels of n columns, local columns [seg * n, seg * n + n) (all < span)
      const uint32_t n = static_cast<uint32_t>(geo.N);
      const uint32_t nseg = static_cast<uint32_t>(geo.C - s.c0 < geo.cpb ? geo.C - s.c0 : geo.cpb);
      const uint32_t lanes = 1u << log2_lanes;
      const uint32_t lane = threadIdx.x & (lanes - 1);
      const uint32_t group = threadIdx.x >> log2_lanes, groups = blockDim.x >> log2_lanes;
      for (uint32_t s0 = 0; s0 < nseg; s0 += groups) {  // the same trip count in every thread
        const uint32_t seg = s0 + group;
        acc_t tg = 0, tgx = 0;
        if (seg < nseg) {
          for (uint32_t i = lane; i < n; i += lanes) {
            tg += col_g[seg * n + i];
            tgx += col_gx[seg * n + i];
          }
        }
        for (int off = static_cast<int>(lanes) >> 1; off > 0; off >>= 1) {  // within aligned groups of `lanes`
          tg += __shfl_down_sync(0xffffffffu, tg, off, static_cast<int>(lanes));
          tgx += __shfl_down_sync(0xffffffffu, tgx, off, static_cast<int>(lanes));
        }
        if (lane == 0 && seg < nseg) {
          const index_t i = (s.c0 + seg) * gridDim.y + blockIdx.y;  // kpc == 1
          part_g[i] = tg;
          part_gx[i] = tgx;
        }
      }
      __syncthreads();  // col_g / col_gx are rewritten for the next column block
    }
  }
}

// One warp per channel c: gb[c] = s sum_k part_g[c, k], gls[c] = s sum_k part_gx[c, k] + N sum_b gl[b],
// over the channel's K contiguous partials, in a fixed order.
template <typename scalar_t>
__global__ void finish_kernel(const at::opmath_type<scalar_t>* __restrict__ part_g,
                              const at::opmath_type<scalar_t>* __restrict__ part_gx,
                              const at::opmath_type<scalar_t>* __restrict__ gl, const scalar_t* __restrict__ log_scale,
                              scalar_t* __restrict__ grad_b, scalar_t* __restrict__ grad_ls, int64_t C, int64_t K,
                              int64_t B, at::opmath_type<scalar_t> N) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t gl_total;
  acc_t sl = 0;
  if (gl != nullptr) {
    for (int64_t b = threadIdx.x; b < B; b += blockDim.x) sl += gl[b];
  }
  sl = block_sum(sl);
  if (threadIdx.x == 0) gl_total = sl;
  __syncthreads();
  const acc_t n_gl = N * gl_total;
  const int lane = threadIdx.x & 31;
  const int64_t warps = blockDim.x >> 5;
  for (int64_t c = blockIdx.x * warps + (threadIdx.x >> 5); c < C; c += static_cast<int64_t>(gridDim.x) * warps) {
    acc_t sg = 0, sgx = 0;
    for (int64_t k = lane; k < K; k += 32) {
      sg += part_g[c * K + k];
      sgx += part_gx[c * K + k];
    }
    sg = warp_sum(sg);
    sgx = warp_sum(sgx);
    if (lane == 0) {
      const acc_t s = exp(static_cast<acc_t>(log_scale[c]));
      grad_b[c] = static_cast<scalar_t>(s * sg);
      grad_ls[c] = static_cast<scalar_t>(s * sgx + n_gl);
    }
  }
}

// Host side of the column blocks: threads, span, cpb, kpc and the grid.
struct Plan {
  int threads = kThreads;
  int64_t cpb = 1, kpc = 1, xblocks = 0;
  unsigned int gx = 1, gy = 1;
  int log2_lanes = 0;
};

// The plan for vectors of W columns and E columns per thread, or false when the shape does
// not allow W-vectors (W = 1 always succeeds).  B, C, N > 0.  backward: also bound the
// partials (gridDim.y) so that every block walks at least ~16 samples once the device is full.
bool plan_columns(int64_t B, int64_t C, int64_t N, int W, int E, bool backward, Plan* p) {
  const int64_t L = C * N;
  if (L % W != 0) return false;
  const int64_t T = std::min<int64_t>(kThreads, std::max<int64_t>(32, ((L + E - 1) / E + 31) / 32 * 32));
  const int64_t span = T * E;
  if (N <= span) {
    p->cpb = span / N;
    if (N % W != 0) p->cpb -= p->cpb % W;  // column blocks start on multiples of W
    if (p->cpb == 0) return false;
    p->kpc = 1;
  } else {
    if (N % W != 0) return false;
    p->cpb = 1;
    p->kpc = (N + span - 1) / span;
  }
  p->threads = static_cast<int>(T);
  p->xblocks = (C + p->cpb - 1) / p->cpb * p->kpc;
  p->gx = static_cast<unsigned int>(std::min<int64_t>(p->xblocks, std::numeric_limits<int32_t>::max()));
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t target = sms * std::max<int64_t>(1, 2048 / T) * 2;  // two full waves of resident blocks
  int64_t gy = std::max<int64_t>(1, (target + p->xblocks - 1) / p->xblocks);
  if (backward) gy = std::min<int64_t>(gy, std::max<int64_t>((B + 15) / 16, 64));
  p->gy = static_cast<unsigned int>(std::min<int64_t>({gy, B, 65535}));
  int lanes_log2 = 0;
  while ((int64_t{1} << lanes_log2) < std::min<int64_t>(N, 32)) ++lanes_log2;
  p->log2_lanes = lanes_log2;
  return true;
}

template <typename index_t>
Blocks<index_t> blocks_of(int64_t B, int64_t C, int64_t N, const Plan& p) {
  const Divider<uint32_t> div_n(p.kpc == 1 ? static_cast<uint32_t>(N) : 1u);  // N <= span when kpc == 1
  return Blocks<index_t>{static_cast<index_t>(B),   static_cast<index_t>(C),     static_cast<index_t>(N),
                         static_cast<index_t>(C * N), static_cast<index_t>(p.cpb), static_cast<index_t>(p.kpc),
                         static_cast<index_t>(p.xblocks), div_n};
}

int64_t inner_size(const at::Tensor& x) { return c10::multiply_integers(x.sizes().slice(2)); }

std::tuple<at::Tensor, at::Tensor> apply(const at::Tensor& in, const at::Tensor& bias, const at::Tensor& log_scale,
                                         bool invert) {
  check_actnorm_args(in, bias, log_scale);
  const c10::cuda::CUDAGuard guard(in.device());
  const at::Tensor ic = in.contiguous(), bc = bias.contiguous(), lc = log_scale.contiguous();
  const int64_t B = in.size(0), C = in.size(1), N = inner_size(in);
  at::Tensor out = at::empty_like(ic);
  at::Tensor logdet = at::empty({B}, in.options().dtype(logdet_dtype(in.scalar_type())));
  const auto stream = at::cuda::getCurrentCUDAStream();
  INVFLOW_CUDA_DISPATCH(in.scalar_type(), "actnorm_apply_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int E = elems_per_thread<scalar_t>(), W = vec_width<scalar_t>();
    if (ic.numel() > 0) {
      const scalar_t* ip = ic.const_data_ptr<scalar_t>();
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      Plan p;
      const bool vec = all_vec_aligned(ip, op) && plan_columns(B, C, N, W, E, false, &p);
      if (!vec) plan_columns(B, C, N, 1, E, false, &p);
      const dim3 grid(p.gx, p.gy);
      INVFLOW_INDEX_DISPATCH(ic.numel(), [&] {
        const Blocks<index_t> g = blocks_of<index_t>(B, C, N, p);
        if (vec) {
          apply_kernel<scalar_t, index_t, W, E / W><<<grid, p.threads, 0, stream>>>(
              ip, op, bc.const_data_ptr<scalar_t>(), lc.const_data_ptr<scalar_t>(), g, invert);
        } else {
          apply_kernel<scalar_t, index_t, 1, E><<<grid, p.threads, 0, stream>>>(
              ip, op, bc.const_data_ptr<scalar_t>(), lc.const_data_ptr<scalar_t>(), g, invert);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    if (B > 0) {
      const acc_t factor = static_cast<acc_t>(invert ? -1.0 : 1.0) * static_cast<acc_t>(N);
      logdet_kernel<scalar_t><<<grid_for(B), kThreads, 0, stream>>>(lc.const_data_ptr<scalar_t>(),
                                                                   logdet.mutable_data_ptr<acc_t>(), C, B, factor);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> actnorm_backward(
    const at::Tensor& grad_y, const c10::optional<at::Tensor>& grad_logdet, const at::Tensor& x,
    const at::Tensor& bias, const at::Tensor& log_scale) {
  check_actnorm_args(x, bias, log_scale);
  check_grad_args("actnorm_backward", grad_y, grad_logdet, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor gc = grad_y.contiguous(), xc = x.contiguous(), bc = bias.contiguous(), lc = log_scale.contiguous();
  const at::Tensor glc = grad_logdet.has_value() ? grad_logdet->contiguous() : at::Tensor();
  const int64_t B = x.size(0), C = x.size(1), N = inner_size(x);
  at::Tensor grad_x = at::empty_like(xc);
  at::Tensor grad_b = at::empty({C}, bias.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_ls = at::empty({C}, log_scale.options().memory_format(at::MemoryFormat::Contiguous));
  if (C == 0) return {grad_x, grad_b, grad_ls};
  const auto acc = x.options().dtype(logdet_dtype(x.scalar_type()));
  const auto stream = at::cuda::getCurrentCUDAStream();
  INVFLOW_CUDA_DISPATCH(x.scalar_type(), "actnorm_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int E = elems_per_thread<scalar_t>(), W = vec_width<scalar_t>();
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
    // K partials per channel; 0 when there is nothing to reduce (empty batch or pixels): the sums are 0.
    Plan p;
    bool vec = false;
    int64_t K = 0;
    if (B > 0 && N > 0) {
      vec = all_vec_aligned(gp, xp, gxp) && plan_columns(B, C, N, W, E, true, &p);
      if (!vec) plan_columns(B, C, N, 1, E, true, &p);
      K = p.kpc * p.gy;
    }
    at::Tensor part_g = at::empty({std::max<int64_t>(C * K, 1)}, acc);
    at::Tensor part_gx = at::empty({std::max<int64_t>(C * K, 1)}, acc);
    if (K > 0) {
      const dim3 grid(p.gx, p.gy);
      INVFLOW_INDEX_DISPATCH(xc.numel(), [&] {
        const Blocks<index_t> geo = blocks_of<index_t>(B, C, N, p);
        if (vec) {
          backward_kernel<scalar_t, index_t, W, E / W><<<grid, p.threads, 0, stream>>>(
              gp, xp, bc.const_data_ptr<scalar_t>(), lc.const_data_ptr<scalar_t>(), gxp,
              part_g.mutable_data_ptr<acc_t>(), part_gx.mutable_data_ptr<acc_t>(), geo, p.log2_lanes);
        } else {
          backward_kernel<scalar_t, index_t, 1, E><<<grid, p.threads, 0, stream>>>(
              gp, xp, bc.const_data_ptr<scalar_t>(), lc.const_data_ptr<scalar_t>(), gxp,
              part_g.mutable_data_ptr<acc_t>(), part_gx.mutable_data_ptr<acc_t>(), geo, p.log2_lanes);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    finish_kernel<scalar_t><<<grid_for(C, kThreads / 32), kThreads, 0, stream>>>(
        part_g.const_data_ptr<acc_t>(), part_gx.const_data_ptr<acc_t>(),
        glc.defined() ? glc.const_data_ptr<acc_t>() : nullptr, lc.const_data_ptr<scalar_t>(),
        grad_b.mutable_data_ptr<scalar_t>(), grad_ls.mutable_data_ptr<scalar_t>(), C, K, B, static_cast<acc_t>(N));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_x, grad_b, grad_ls};
}

}  // namespace cuda
}  // namespace invflow
