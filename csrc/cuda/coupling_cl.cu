// Channels-last affine coupling on CUDA: the semantics of csrc/cpu/coupling_cl.cpp.
// x [B, ..., C] and h [B, ..., 2C] are read in place as rows of
// C (resp. 2C) entries with one row stride each (as_rows: a column block of a wider matrix
// needs no copy), h[row, :C] = raw and h[row, C:] = t.  Outputs are contiguous.
//
//   forward          y = s(raw) x + t,  logdet[b] = sum over b's entries of log s(raw)
//   backward         gx = gy s,  g_raw = (gy x s + gl[b]) dlog,  g_t = gy
//   double backward  the vector-Jacobian product of the backward with (u_x, u_h), in closed
//                    form (see csrc/cpu/coupling_cl.cpp), and d_gl[b] = sum u_r dlog
//
// Launch (every op): sample b's M = P * C entries (P positions) are cut into chunks of at
// most kMaxChunk entries; a block takes one chunk per iteration of a grid-stride loop over
// the B * chunks chunks, its threads stride over the chunk's entries (entry e -> row
// e / C, channel e % C by magic-number division), and, where a per-sample sum is needed,
// the block's partial sum goes to partial[b, chunk].  A second launch (sum_partials,
// utils.cuh) adds each sample's partials in a fixed order (deterministic, no float atomics).  Sums accumulate in
// at::opmath_type (float32 for half / bfloat16); log-dets are in logdet_dtype.
#include "../common/scale.h"
#include "../ops.h"
#include "utils.cuh"

namespace invflow {
namespace cuda {

namespace {

constexpr int64_t kMaxChunk = 8 * kThreads;  // most entries of one sample per block

// Entries per chunk: at most kMaxChunk, and small enough that the B samples give about 4
// blocks per SM (one image alone still fills the device), in whole multiples of kThreads.
int64_t chunk_size(int64_t B, int64_t M) {
  const int64_t target_blocks = 4 * static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  const int64_t per_sample = std::max<int64_t>(1, (target_blocks + B - 1) / std::max<int64_t>(B, 1));
  int64_t chunk = (M + per_sample - 1) / per_sample;
  chunk = (chunk + kThreads - 1) / kThreads * kThreads;
  return std::min<int64_t>(kMaxChunk, std::max<int64_t>(kThreads, chunk));
}

// Rows of one tensor: entry (row, c) at data + row * stride + c.
template <typename scalar_t, typename index_t>
struct Rows {
  const scalar_t* data;
  index_t stride;
  __device__ __forceinline__ at::opmath_type<scalar_t> operator()(index_t row, index_t c) const {
    return static_cast<at::opmath_type<scalar_t>>(data[row * stride + c]);
  }
};

// The geometry shared by the ops: B samples of P rows of C channels, chunked.
template <typename index_t>
struct Plan {
  index_t P, C, M, chunk, chunks_per_sample, total_chunks;
  Divider<index_t> div_c;
};

// Runs f(b, row, c, i) -> acc_t on every entry (i = b * M + e, the contiguous output index)
// and writes each chunk's sum of f to partial[q] when partial is given.
template <typename acc_t, typename index_t, typename F>
__device__ __forceinline__ void for_each_entry(const Plan<index_t>& plan, acc_t* __restrict__ partial, F f) {
  for (index_t q = blockIdx.x; q < plan.total_chunks; q += gridDim.x) {
    const index_t b = q / plan.chunks_per_sample;
    const index_t begin = (q - b * plan.chunks_per_sample) * plan.chunk;
    const index_t end = min(plan.M, begin + plan.chunk);
    acc_t sum = 0;
    for (index_t e = begin + threadIdx.x; e < end; e += blockDim.x) {
      const auto dm = plan.div_c.divmod(e);  // e = position * C + channel
      sum += f(b, b * plan.P + dm.div, dm.mod, b * plan.M + e);
    }
    if (partial != nullptr) {  // the same for every thread of the block
      sum = block_sum(sum);
      if (threadIdx.x == 0) partial[q] = sum;
    }
  }
}

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads) forward_kernel(Plan<index_t> plan, Rows<scalar_t, index_t> x,
                                                          Rows<scalar_t, index_t> h, scalar_t* __restrict__ y,
                                                          at::opmath_type<scalar_t>* __restrict__ partial,
                                                          ScaleKind kind, at::opmath_type<scalar_t> clamp) {
  using acc_t = at::opmath_type<scalar_t>;
  for_each_entry<acc_t>(plan, partial, [&](index_t, index_t row, index_t c, index_t i) {
    acc_t log_s;
    y[i] = static_cast<scalar_t>(coupling_apply<acc_t>(x(row, c), h(row, c), h(row, c + plan.C), kind, clamp, &log_s));
    return log_s;
  });
}

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads) backward_kernel(Plan<index_t> plan, Rows<scalar_t, index_t> gy,
                                                           const at::opmath_type<scalar_t>* __restrict__ gl,
                                                           Rows<scalar_t, index_t> x, Rows<scalar_t, index_t> h,
                                                           scalar_t* __restrict__ gx, scalar_t* __restrict__ gh,
                                                           ScaleKind kind, at::opmath_type<scalar_t> clamp) {
  using acc_t = at::opmath_type<scalar_t>;
  for_each_entry<acc_t>(plan, static_cast<acc_t*>(nullptr), [&](index_t b, index_t row, index_t c, index_t i) {
    const acc_t g = gy(row, c);
    acc_t gxv, grv;
    coupling_grad<acc_t>(g, gl != nullptr ? gl[b] : acc_t(0), x(row, c), h(row, c), kind, clamp, &gxv, &grv);
    gx[i] = static_cast<scalar_t>(gxv);
    gh[row * 2 * plan.C + c] = static_cast<scalar_t>(grv);
    gh[row * 2 * plan.C + plan.C + c] = static_cast<scalar_t>(g);
    return acc_t(0);
  });
}

// s, dlog s/draw and d^2 log s/draw^2 of one raw value.
template <typename T>
__device__ __forceinline__ void scale_d2(T raw, ScaleKind kind, T clamp, T* s, T* d1, T* d2) {
  const ScaleTerms<T> st = scale_terms(raw, kind, clamp);
  *s = st.s;
  *d1 = st.dlog;
  if (kind == ScaleKind::kSigmoid) {
    *d2 = -st.s * st.dlog;
  } else if (kind == ScaleKind::kExp) {
    *d2 = T(0);
  } else {
    *d2 = T(-2) * (st.log_s / clamp) * st.dlog / clamp;  // th = log_s / clamp
  }
}

// Contiguous outputs d_gy, d_x [rows, C] and d_h [rows, 2C] = [d_raw, 0]; partial sums of
// u_r dlog (-> d_gl).  All math in acc_t.
template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads) double_backward_kernel(
    Plan<index_t> plan, Rows<scalar_t, index_t> ux, Rows<scalar_t, index_t> uh, Rows<scalar_t, index_t> gy,
    const at::opmath_type<scalar_t>* __restrict__ gl, Rows<scalar_t, index_t> x, Rows<scalar_t, index_t> h,
    scalar_t* __restrict__ d_gy, scalar_t* __restrict__ d_x, scalar_t* __restrict__ d_h,
    at::opmath_type<scalar_t>* __restrict__ partial, ScaleKind kind, at::opmath_type<scalar_t> clamp) {
  using acc_t = at::opmath_type<scalar_t>;
  for_each_entry<acc_t>(plan, partial, [&](index_t b, index_t row, index_t c, index_t i) {
    acc_t s, d1, d2;
    scale_d2<acc_t>(h(row, c), kind, clamp, &s, &d1, &d2);
    const acc_t u = ux(row, c), r = uh(row, c), g = gy(row, c), xv = x(row, c);
    const acc_t sd = s * d1;
    d_gy[i] = static_cast<scalar_t>(u * s + r * xv * sd + uh(row, c + plan.C));
    d_x[i] = static_cast<scalar_t>(r * g * sd);
    d_h[row * 2 * plan.C + c] = static_cast<scalar_t>(u * g * sd + r * (g * xv * s * (d1 * d1 + d2) + gl[b] * d2));
    d_h[row * 2 * plan.C + plan.C + c] = scalar_t(0);
    return r * d1;
  });
}

// Largest element offset + 1 that any of the row views reaches (for the index type).
int64_t extent(std::initializer_list<std::pair<int64_t, int64_t>> stride_width, int64_t rows) {
  int64_t most = 0;
  for (const auto& [stride, width] : stride_width) most = std::max(most, rows * std::max(stride, width) + width);
  return most;
}

// Calls body(plan, partial or undefined) with index_t chosen for the largest offset.
struct Launch {
  int64_t B, P, C, M, chunk, chunks_per_sample, total_chunks;
  Launch(const at::Tensor& x) {
    B = x.size(0);
    C = x.size(-1);
    P = 1;
    for (int64_t d = 1; d < x.dim() - 1; ++d) P *= x.size(d);
    M = P * C;
    chunk = chunk_size(B, M);
    chunks_per_sample = std::max<int64_t>(1, (M + chunk - 1) / chunk);
    total_chunks = B * chunks_per_sample;
  }
  bool empty() const { return B == 0 || M == 0; }
  template <typename index_t>
  Plan<index_t> plan() const {
    return Plan<index_t>{static_cast<index_t>(P), static_cast<index_t>(C), static_cast<index_t>(M),
                         static_cast<index_t>(chunk), static_cast<index_t>(chunks_per_sample),
                         static_cast<index_t>(total_chunks), Divider<index_t>(static_cast<index_t>(std::max<int64_t>(C, 1)))};
  }
  unsigned int grid() const { return grid_for(total_chunks, 1); }
};

template <typename scalar_t, typename index_t>
Rows<scalar_t, index_t> rows_of(const at::Tensor& t, int64_t stride) {
  return Rows<scalar_t, index_t>{t.data_ptr<scalar_t>(), static_cast<index_t>(stride)};
}

// Sums each sample's partials into out (B entries), or zero-fills it for empty samples.
template <typename acc_t>
void finish_sums(const Launch& l, const at::Tensor& partial, at::Tensor& out, cudaStream_t stream) {
  if (l.B == 0) return;
  if (l.M == 0) {
    out.zero_();
    return;
  }
  sum_partials<acc_t>(partial.data_ptr<acc_t>(), out.data_ptr<acc_t>(), l.B, l.chunks_per_sample, acc_t(1), stream);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> coupling_cl_forward(const at::Tensor& x, const at::Tensor& h,
                                                       const std::string& scale, double clamp) {
  check_coupling_cl_args(x, h);
  const ScaleKind kind = static_cast<ScaleKind>(parse_scale_kind(scale));
  const c10::cuda::CUDAGuard guard(x.device());
  const auto [xr, xs] = as_rows(x);
  const auto [hr, hs] = as_rows(h);
  const Launch l(x);
  const auto acc = x.options().dtype(logdet_dtype(x.scalar_type()));
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor logdet = at::empty({l.B}, acc);
  at::Tensor partial = at::empty({std::max<int64_t>(l.total_chunks, 1)}, acc);
  const auto stream = at::cuda::getCurrentCUDAStream();
  INVFLOW_CUDA_DISPATCH(x.scalar_type(), "coupling_cl_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (!l.empty()) {
      INVFLOW_INDEX_DISPATCH(extent({{xs, l.C}, {hs, 2 * l.C}}, l.B * l.P), [&] {
        forward_kernel<scalar_t, index_t><<<l.grid(), kThreads, 0, stream>>>(
            l.plan<index_t>(), rows_of<scalar_t, index_t>(xr, xs), rows_of<scalar_t, index_t>(hr, hs),
            y.data_ptr<scalar_t>(), partial.data_ptr<acc_t>(), kind, static_cast<acc_t>(clamp));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    finish_sums<acc_t>(l, partial, logdet, stream);
  });
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor> coupling_cl_backward(const at::Tensor& grad_y,
                                                        const c10::optional<at::Tensor>& grad_logdet,
                                                        const at::Tensor& x, const at::Tensor& h,
                                                        const std::string& scale, double clamp) {
  check_coupling_cl_args(x, h);
  check_grad_args("coupling_cl_backward", grad_y, grad_logdet, x);
  const ScaleKind kind = static_cast<ScaleKind>(parse_scale_kind(scale));
  const c10::cuda::CUDAGuard guard(x.device());
  const auto [gr, gs] = as_rows(grad_y);
  const auto [xr, xs] = as_rows(x);
  const auto [hr, hs] = as_rows(h);
  const at::Tensor glc = grad_logdet.has_value() ? grad_logdet->contiguous() : at::Tensor();
  const Launch l(x);
  const auto contiguous = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_x = at::empty(x.sizes(), contiguous);
  at::Tensor grad_h = at::empty(h.sizes(), contiguous);
  if (l.empty()) return {grad_x, grad_h};
  INVFLOW_CUDA_DISPATCH(x.scalar_type(), "coupling_cl_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    INVFLOW_INDEX_DISPATCH(extent({{gs, l.C}, {xs, l.C}, {hs, 2 * l.C}}, l.B * l.P), [&] {
      backward_kernel<scalar_t, index_t><<<l.grid(), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          l.plan<index_t>(), rows_of<scalar_t, index_t>(gr, gs), glc.defined() ? glc.data_ptr<acc_t>() : nullptr,
          rows_of<scalar_t, index_t>(xr, xs), rows_of<scalar_t, index_t>(hr, hs), grad_x.data_ptr<scalar_t>(),
          grad_h.data_ptr<scalar_t>(), kind, static_cast<acc_t>(clamp));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_x, grad_h};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> coupling_cl_double_backward(
    const at::Tensor& u_x, const at::Tensor& u_h, const at::Tensor& grad_y, const at::Tensor& grad_logdet,
    const at::Tensor& x, const at::Tensor& h, const std::string& scale, double clamp) {
  check_coupling_cl_double_backward_args(u_x, u_h, grad_y, grad_logdet, x, h);
  const ScaleKind kind = static_cast<ScaleKind>(parse_scale_kind(scale));
  const c10::cuda::CUDAGuard guard(x.device());
  const auto [uxr, uxs] = as_rows(u_x);
  const auto [uhr, uhs] = as_rows(u_h);
  const auto [gr, gs] = as_rows(grad_y);
  const auto [xr, xs] = as_rows(x);
  const auto [hr, hs] = as_rows(h);
  const at::Tensor glc = grad_logdet.contiguous();
  const Launch l(x);
  const auto contiguous = x.options().memory_format(at::MemoryFormat::Contiguous);
  const auto acc = x.options().dtype(logdet_dtype(x.scalar_type()));
  at::Tensor d_gy = at::empty(x.sizes(), contiguous);
  at::Tensor d_x = at::empty(x.sizes(), contiguous);
  at::Tensor d_h = at::empty(h.sizes(), contiguous);
  at::Tensor d_gl = at::empty({l.B}, acc);
  at::Tensor partial = at::empty({std::max<int64_t>(l.total_chunks, 1)}, acc);
  const auto stream = at::cuda::getCurrentCUDAStream();
  INVFLOW_CUDA_DISPATCH(x.scalar_type(), "coupling_cl_double_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (!l.empty()) {
      INVFLOW_INDEX_DISPATCH(extent({{uxs, l.C}, {uhs, 2 * l.C}, {gs, l.C}, {xs, l.C}, {hs, 2 * l.C}}, l.B * l.P), [&] {
        double_backward_kernel<scalar_t, index_t><<<l.grid(), kThreads, 0, stream>>>(
            l.plan<index_t>(), rows_of<scalar_t, index_t>(uxr, uxs), rows_of<scalar_t, index_t>(uhr, uhs),
            rows_of<scalar_t, index_t>(gr, gs), glc.data_ptr<acc_t>(), rows_of<scalar_t, index_t>(xr, xs),
            rows_of<scalar_t, index_t>(hr, hs), d_gy.data_ptr<scalar_t>(), d_x.data_ptr<scalar_t>(),
            d_h.data_ptr<scalar_t>(), partial.data_ptr<acc_t>(), kind, static_cast<acc_t>(clamp));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    finish_sums<acc_t>(l, partial, d_gl, stream);
  });
  return {d_gy, d_gl, d_x, d_h};
}

}  // namespace cuda
}  // namespace invflow
