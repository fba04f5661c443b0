// GEMM forms of the invertible 1x1 convolution, shared by the CPU and CUDA backends for
// channel counts above their direct kernels (BLAS / cuBLAS win there).
//   y[b, :, n] = W x[b, :, n]            dL/dW = sum_{b, n} g[b, :, n] x[b, :, n]^T
#include <algorithm>

#include "../ops.h"

namespace invflow {

// xc: contiguous [B, C, ...].  Vectors (N = 1) are one [B, C] x [C, C]^T GEMM instead of B
// matrix-vector products.
at::Tensor mix_gemm(const at::Tensor& xc, const at::Tensor& weight) {
  const int64_t B = xc.size(0), C = xc.size(1), N = xc.numel() / std::max<int64_t>(B * C, 1);
  if (N == 1) return at::mm(xc.view({B, C}), weight.t()).view(xc.sizes());
  return at::matmul(weight, xc.view({B, C, N})).view(xc.sizes());
}

// gc, xc: contiguous [B, C, ...] of the same shape.  One GEMM over all B * N positions: for
// N = 1 on views, for C > N on [C, B N] copies of g and x (2 B C N elements, less than the
// B C^2 of per-sample products), otherwise a batched GEMM summed over the batch.  Half and
// bfloat16 inputs are computed in float32 and rounded once: the batched GEMM returns each
// sample's product already rounded to the input dtype, and their sum over the batch lost up
// to 60x float16's epsilon (B = 129, C = 80, N = 128), where the direct kernels accumulate
// in float32.
at::Tensor weight_grad_gemm(const at::Tensor& gc, const at::Tensor& xc) {
  const at::ScalarType dtype = xc.scalar_type();
  if (dtype == at::kHalf || dtype == at::kBFloat16) {
    return weight_grad_gemm(gc.to(at::kFloat), xc.to(at::kFloat)).to(dtype);
  }
  const int64_t B = xc.size(0), C = xc.size(1), N = xc.numel() / std::max<int64_t>(B * C, 1);
  if (N == 1) return at::mm(gc.view({B, C}).t(), xc.view({B, C}));
  if (C > N) {
    const at::Tensor g2 = gc.view({B, C, N}).transpose(0, 1).reshape({C, B * N});
    const at::Tensor x2 = xc.view({B, C, N}).transpose(0, 1).reshape({C, B * N});
    return at::mm(g2, x2.t());
  }
  return at::bmm(gc.view({B, C, N}), xc.view({B, C, N}).transpose(1, 2)).sum(0);
}

}  // namespace invflow
