// Declarations of every kernel behind the TORCH_LIBRARY(invflow) schemas in
// registration.cpp.  Tensors are viewed as [B, C, N] (N = product of the trailing
// dimensions), so the same kernels serve images [B, C, H, W] and vectors [B, D].
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <tuple>

namespace invflow {

// Parses the `scale` argument of the coupling ops ("sigmoid" | "exp" | "tanh").
int parse_scale_kind(const std::string& scale);

// Shape checks shared by the CPU and CUDA entry points (see ops_checks.cpp).
void check_actnorm_args(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& log_scale);
void check_channel_mix_args(const at::Tensor& x, const at::Tensor& weight);
void check_coupling_args(const at::Tensor& x, const at::Tensor& h,
                         const c10::optional<at::Tensor>& mask);

// Every backend implements the same kernels with the same signatures.
#define INVFLOW_DECLARE_KERNELS \
  std::tuple<at::Tensor, at::Tensor> actnorm_forward(const at::Tensor& x, const at::Tensor& bias, \
                                                     const at::Tensor& log_scale); \
  std::tuple<at::Tensor, at::Tensor> actnorm_inverse(const at::Tensor& y, const at::Tensor& bias, \
                                                     const at::Tensor& log_scale); \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> actnorm_backward( \
      const at::Tensor& grad_y, const c10::optional<at::Tensor>& grad_logdet, const at::Tensor& x, \
      const at::Tensor& bias, const at::Tensor& log_scale); \
  \
  at::Tensor channel_mix(const at::Tensor& x, const at::Tensor& weight); \
  std::tuple<at::Tensor, at::Tensor> channel_mix_backward(const at::Tensor& grad_y, \
                                                          const at::Tensor& x, \
                                                          const at::Tensor& weight); \
  \
  std::tuple<at::Tensor, at::Tensor> coupling_forward(const at::Tensor& x, const at::Tensor& h, \
                                                      const c10::optional<at::Tensor>& mask, \
                                                      const std::string& scale, double clamp); \
  std::tuple<at::Tensor, at::Tensor> coupling_inverse(const at::Tensor& y, const at::Tensor& h, \
                                                      const c10::optional<at::Tensor>& mask, \
                                                      const std::string& scale, double clamp); \
  std::tuple<at::Tensor, at::Tensor> coupling_backward( \
      const at::Tensor& grad_y, const c10::optional<at::Tensor>& grad_logdet, const at::Tensor& x, \
      const at::Tensor& h, const c10::optional<at::Tensor>& mask, const std::string& scale, \
      double clamp);

namespace cpu {
INVFLOW_DECLARE_KERNELS
}  // namespace cpu

// CUDA kernels (csrc/cuda/*.cu), built only when torch has CUDA and nvcc is found.
namespace cuda {
INVFLOW_DECLARE_KERNELS
}  // namespace cuda

}  // namespace invflow
