// Affine coupling on CUDA: the semantics of csrc/cpu/coupling.cpp, with the per-entry math
// of csrc/common/scale.h.  Log-dets are in logdet_dtype (float32 for half / bfloat16 inputs).
//
// Launch geometry
// ---------------
// x [B, C, ...] is viewed as B samples of M = C * N contiguous entries, h = [raw, t] [B, 2C, ...]
// as B rows of 2M (raw = h[b, :M], t = h[b, M:]), the mask [C, ...] as one row of M entries
// shared by every sample.  T threads per block (a multiple of 32, <= 256, fewer for small M),
// E entries per thread per pass (8; for double 4, 2 in the backward), so a pass covers span =
// T * E entries of one sample (a chunk); a sample has `chunks` = ceil(M / span) of them.
// Grid: blockIdx.y = sample (grid-stride: b = blockIdx.y + i * gridDim.y, gridDim.y <= 65535),
// blockIdx.x = first chunk, chunks q = blockIdx.x + i * gridDim.x of that sample (gridDim.x
// <= chunks, sized so that the grid fills the device about twice), so the sample index and
// its row offsets are per block and there is no division at all.  In chunk q thread t owns
// K = E / W vectors of W consecutive entries, vector k at q * span + (k * T + t) * W:
// consecutive threads touch consecutive 16-byte vectors.  W = 16 / sizeof(scalar_t) (4
// floats, 2 doubles, 8 halfs) when M % W == 0 and every pointer (x, h, mask, outputs) is
// 16-byte aligned; else W = 1, K = E, the same code with scalar accesses (any tail is cut at
// vector granularity: a vector lies wholly inside or wholly outside the sample).  A thread
// first issues all K loads of every stream, then computes its E entries.
//
// Forward / inverse: each thread adds log s over its entries of all the block's chunks of
// sample b; block_sum; partial[b * gridDim.x + blockIdx.x]; sum_partials (utils.cuh), one warp per sample,
// adds a sample's gridDim.x partials in a fixed order (deterministic, no atomics).
// Backward: the same grid, no reduction (grad_logdet[b] is read once per block and sample).
#include "../common/scale.h"
#include "../ops.h"
#include "utils.cuh"
#include "vectorized.cuh"

namespace invflow {
namespace cuda {

namespace {

// Entries per thread per pass: two 16-byte vectors of float (one of half); of double two in
// forward / inverse, one in the backward (its three outputs and the double scale math do not
// fit two vectors in 64 registers without spilling).
template <typename scalar_t, bool Backward>
constexpr int elems_per_thread() {
  return sizeof(scalar_t) >= 8 ? (Backward ? 2 : 4) : 8;
}

// Offset of vector k of this thread within its chunk (< span <= 2048): 32-bit whatever index_t
// is, so the 64-bit path keeps its registers.
template <int W>
__device__ __forceinline__ uint32_t local_entry(int k) {
  return (static_cast<uint32_t>(k) * blockDim.x + threadIdx.x) * W;
}

// Bit k * W + w set where mask entry w of vector k is nonzero (the entry is transformed), all
// bits without a mask: the mask vectors die right after their loads.
template <int W, int K, typename scalar_t>
__device__ __forceinline__ uint32_t keep_bits(const Pack<scalar_t, W> (&m)[K], bool masked, uint32_t n) {
  static_assert(W * K <= 32, "one bit per entry");
  if (!masked) return 0xffffffffu;
  uint32_t bits = 0;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    if (local_entry<W>(k) < n) {
#pragma unroll
      for (int w = 0; w < W; ++w) bits |= (m[k].v[w] != scalar_t(0) ? 1u : 0u) << (k * W + w);
    }
  }
  return bits;
}

template <typename scalar_t, typename index_t, int W, int K>
__global__ void __launch_bounds__(kThreads)
    apply_kernel(const scalar_t* __restrict__ in, const scalar_t* __restrict__ h, const scalar_t* __restrict__ mask,
                 scalar_t* __restrict__ out, at::opmath_type<scalar_t>* __restrict__ partial, index_t B, index_t M,
                 index_t chunks, ScaleKind kind, at::opmath_type<scalar_t> clamp, bool invert) {
  using acc_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, W>;
  const index_t span = static_cast<index_t>(blockDim.x) * (W * K);
  for (index_t b = blockIdx.y; b < B; b += gridDim.y) {
    acc_t ld = 0;
    for (index_t q = blockIdx.x; q < chunks; q += gridDim.x) {
      const index_t e0 = q * span;  // first entry of the chunk, < M
      const uint32_t n = static_cast<uint32_t>(M - e0 < span ? M - e0 : span);  // entries in the chunk
      const scalar_t* src = in + b * M + e0;
      const scalar_t* raw = h + b * 2 * M + e0;
      const scalar_t* shift = raw + M;
      P v[K], r[K], t[K], m[K];
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const uint32_t e = local_entry<W>(k);
        if (e < n) {
          v[k] = load_pack<W>(src + e);
          r[k] = load_pack<W>(raw + e);
          t[k] = load_pack<W>(shift + e);
          if (mask != nullptr) m[k] = load_pack<W>(mask + e0 + e);
        }
      }
      const uint32_t keep = keep_bits<W, K>(m, mask != nullptr, n);
      scalar_t* dst = out + b * M + e0;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const uint32_t e = local_entry<W>(k);
        if (e < n) {
          P o;
#pragma unroll
          for (int w = 0; w < W; ++w) {
            if (!(keep >> (k * W + w) & 1u)) {  // masked out: passes through, log s = 0
              o.v[w] = v[k].v[w];
              continue;
            }
            acc_t log_s;
            const acc_t x = static_cast<acc_t>(v[k].v[w]), rv = static_cast<acc_t>(r[k].v[w]),
                        tv = static_cast<acc_t>(t[k].v[w]);
            const acc_t y = invert ? coupling_unapply<acc_t>(x, rv, tv, kind, clamp, &log_s)
                                   : coupling_apply<acc_t>(x, rv, tv, kind, clamp, &log_s);
            o.v[w] = static_cast<scalar_t>(y);
            ld += log_s;
          }
          store_pack<W>(dst + e, o);
        }
      }
    }
    ld = block_sum(ld);
    if (threadIdx.x == 0) partial[b * gridDim.x + blockIdx.x] = ld;
  }
}

template <typename scalar_t, typename index_t, int W, int K>
__global__ void __launch_bounds__(kThreads)
    grad_kernel(const scalar_t* __restrict__ gy, const at::opmath_type<scalar_t>* __restrict__ gl,
                const scalar_t* __restrict__ x, const scalar_t* __restrict__ h, const scalar_t* __restrict__ mask,
                scalar_t* __restrict__ gx, scalar_t* __restrict__ gh, index_t B, index_t M, index_t chunks,
                ScaleKind kind, at::opmath_type<scalar_t> clamp) {
  using acc_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, W>;
  const index_t span = static_cast<index_t>(blockDim.x) * (W * K);
  for (index_t b = blockIdx.y; b < B; b += gridDim.y) {
    const acc_t glv = gl != nullptr ? gl[b] : acc_t(0);
    for (index_t q = blockIdx.x; q < chunks; q += gridDim.x) {
      const index_t e0 = q * span;  // first entry of the chunk, < M
      const uint32_t n = static_cast<uint32_t>(M - e0 < span ? M - e0 : span);  // entries in the chunk
      const scalar_t* g_b = gy + b * M + e0;
      const scalar_t* x_b = x + b * M + e0;
      const scalar_t* raw = h + b * 2 * M + e0;
      P gv[K], xv[K], r[K], m[K];
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const uint32_t e = local_entry<W>(k);
        if (e < n) {
          gv[k] = load_pack<W>(g_b + e);
          xv[k] = load_pack<W>(x_b + e);
          r[k] = load_pack<W>(raw + e);
          if (mask != nullptr) m[k] = load_pack<W>(mask + e0 + e);
        }
      }
      const uint32_t keep = keep_bits<W, K>(m, mask != nullptr, n);
      scalar_t* gx_b = gx + b * M + e0;
      scalar_t* graw = gh + b * 2 * M + e0;
      scalar_t* gshift = graw + M;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const uint32_t e = local_entry<W>(k);
        if (e < n) {
          P ox, orw, osh;
#pragma unroll
          for (int w = 0; w < W; ++w) {
            if (!(keep >> (k * W + w) & 1u)) {  // masked out: passes through, zero parameter gradients
              ox.v[w] = gv[k].v[w];
              orw.v[w] = scalar_t(0);
              osh.v[w] = scalar_t(0);
              continue;
            }
            acc_t gxv, grv;
            coupling_grad<acc_t>(static_cast<acc_t>(gv[k].v[w]), glv, static_cast<acc_t>(xv[k].v[w]),
                                 static_cast<acc_t>(r[k].v[w]), kind, clamp, &gxv, &grv);
            ox.v[w] = static_cast<scalar_t>(gxv);
            orw.v[w] = static_cast<scalar_t>(grv);
            osh.v[w] = gv[k].v[w];
          }
          store_pack<W>(gx_b + e, ox);
          store_pack<W>(graw + e, orw);
          store_pack<W>(gshift + e, osh);
        }
      }
    }
  }
}

// Threads per block, chunks per sample and the grid for samples of M entries.
struct Plan {
  int threads = kThreads;
  int64_t chunks = 0;
  unsigned int gx = 1, gy = 1;
};

Plan plan_rows(int64_t B, int64_t M, int E) {
  Plan p;
  const int64_t T = std::min<int64_t>(kThreads, std::max<int64_t>(32, ((M + E - 1) / E + 31) / 32 * 32));
  const int64_t span = T * E;
  p.threads = static_cast<int>(T);
  p.chunks = (M + span - 1) / span;
  const int64_t gy = std::min<int64_t>(B, 65535);
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t target = sms * std::max<int64_t>(1, 2048 / T) * 2;  // two full waves of resident blocks
  p.gy = static_cast<unsigned int>(gy);
  p.gx = static_cast<unsigned int>(
      std::min<int64_t>({p.chunks, std::max<int64_t>(1, (target + gy - 1) / gy), std::numeric_limits<int32_t>::max()}));
  return p;
}

std::tuple<at::Tensor, at::Tensor> apply(const at::Tensor& in, const at::Tensor& h,
                                         const c10::optional<at::Tensor>& mask, const std::string& scale,
                                         double clamp, bool invert) {
  check_coupling_args(in, h, mask);
  const ScaleKind kind = static_cast<ScaleKind>(parse_scale_kind(scale));
  const c10::cuda::CUDAGuard guard(in.device());
  const at::Tensor ic = in.contiguous(), hc = h.contiguous();
  const at::Tensor mc = mask.has_value() ? mask->contiguous() : at::Tensor();
  const int64_t B = in.size(0), M = B > 0 ? in.numel() / B : 0;
  at::Tensor out = at::empty_like(ic);
  const auto acc = in.options().dtype(logdet_dtype(in.scalar_type()));
  if (in.numel() == 0) return {out, at::zeros({B}, acc)};
  at::Tensor logdet = at::empty({B}, acc);
  const auto stream = at::cuda::getCurrentCUDAStream();
  INVFLOW_CUDA_DISPATCH(in.scalar_type(), "coupling_apply_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int E = elems_per_thread<scalar_t, false>(), W = vec_width<scalar_t>();
    const scalar_t* ip = ic.const_data_ptr<scalar_t>();
    const scalar_t* hp = hc.const_data_ptr<scalar_t>();
    const scalar_t* mp = mc.defined() ? mc.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const bool vec = M % W == 0 && all_vec_aligned(ip, hp, mp, op);
    const Plan p = plan_rows(B, M, E);
    at::Tensor partial = at::empty({B, static_cast<int64_t>(p.gx)}, acc);
    const dim3 grid(p.gx, p.gy);
    INVFLOW_INDEX_DISPATCH(hc.numel(), [&] {
      if (vec) {
        apply_kernel<scalar_t, index_t, W, E / W><<<grid, p.threads, 0, stream>>>(
            ip, hp, mp, op, partial.mutable_data_ptr<acc_t>(), static_cast<index_t>(B), static_cast<index_t>(M),
            static_cast<index_t>(p.chunks), kind, static_cast<acc_t>(clamp), invert);
      } else {
        apply_kernel<scalar_t, index_t, 1, E><<<grid, p.threads, 0, stream>>>(
            ip, hp, mp, op, partial.mutable_data_ptr<acc_t>(), static_cast<index_t>(B), static_cast<index_t>(M),
            static_cast<index_t>(p.chunks), kind, static_cast<acc_t>(clamp), invert);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    sum_partials<acc_t>(partial.const_data_ptr<acc_t>(), logdet.mutable_data_ptr<acc_t>(), B,
                        static_cast<int64_t>(p.gx), acc_t(invert ? -1 : 1), stream);
  });
  return {out, logdet};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> coupling_forward(const at::Tensor& x, const at::Tensor& h,
                                                    const c10::optional<at::Tensor>& mask,
                                                    const std::string& scale, double clamp) {
  return apply(x, h, mask, scale, clamp, /*invert=*/false);
}

std::tuple<at::Tensor, at::Tensor> coupling_inverse(const at::Tensor& y, const at::Tensor& h,
                                                    const c10::optional<at::Tensor>& mask,
                                                    const std::string& scale, double clamp) {
  return apply(y, h, mask, scale, clamp, /*invert=*/true);
}

std::tuple<at::Tensor, at::Tensor> coupling_backward(
    const at::Tensor& grad_y, const c10::optional<at::Tensor>& grad_logdet, const at::Tensor& x,
    const at::Tensor& h, const c10::optional<at::Tensor>& mask, const std::string& scale,
    double clamp) {
  check_coupling_args(x, h, mask);
  check_grad_args("coupling_backward", grad_y, grad_logdet, x);
  const ScaleKind kind = static_cast<ScaleKind>(parse_scale_kind(scale));
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor gc = grad_y.contiguous(), xc = x.contiguous(), hc = h.contiguous();
  const at::Tensor mc = mask.has_value() ? mask->contiguous() : at::Tensor();
  const at::Tensor glc = grad_logdet.has_value() ? grad_logdet->contiguous() : at::Tensor();
  const int64_t B = x.size(0), M = B > 0 ? x.numel() / B : 0;
  at::Tensor grad_x = at::empty_like(xc);
  at::Tensor grad_h = at::empty_like(hc);
  if (xc.numel() > 0) {
    INVFLOW_CUDA_DISPATCH(x.scalar_type(), "coupling_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      constexpr int E = elems_per_thread<scalar_t, true>(), W = vec_width<scalar_t>();
      const scalar_t* gp = gc.const_data_ptr<scalar_t>();
      const scalar_t* xp = xc.const_data_ptr<scalar_t>();
      const scalar_t* hp = hc.const_data_ptr<scalar_t>();
      const scalar_t* mp = mc.defined() ? mc.const_data_ptr<scalar_t>() : nullptr;
      const acc_t* glp = glc.defined() ? glc.const_data_ptr<acc_t>() : nullptr;
      scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
      scalar_t* ghp = grad_h.mutable_data_ptr<scalar_t>();
      const bool vec = M % W == 0 && all_vec_aligned(gp, xp, hp, mp, gxp, ghp);
      const Plan p = plan_rows(B, M, E);
      const dim3 grid(p.gx, p.gy);
      const auto stream = at::cuda::getCurrentCUDAStream();
      INVFLOW_INDEX_DISPATCH(hc.numel(), [&] {
        if (vec) {
          grad_kernel<scalar_t, index_t, W, E / W><<<grid, p.threads, 0, stream>>>(
              gp, glp, xp, hp, mp, gxp, ghp, static_cast<index_t>(B), static_cast<index_t>(M),
              static_cast<index_t>(p.chunks), kind, static_cast<acc_t>(clamp));
        } else {
          grad_kernel<scalar_t, index_t, 1, E><<<grid, p.threads, 0, stream>>>(
              gp, glp, xp, hp, mp, gxp, ghp, static_cast<index_t>(B), static_cast<index_t>(M),
              static_cast<index_t>(p.chunks), kind, static_cast<acc_t>(clamp));
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {grad_x, grad_h};
}

}  // namespace cuda
}  // namespace invflow
