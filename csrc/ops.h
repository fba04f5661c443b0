// Declarations of every kernel behind the TORCH_LIBRARY(invflow) schemas of registration.cpp,
// one block per op, and of the host helpers the CPU and CUDA kernels share.  Tensors are
// viewed as [B, C, N] (N = product of the trailing dimensions), so the same kernels serve
// images [B, C, H, W] and vectors [B, D]; coupling_cl takes channels last, [B, ..., C].
//
// Each INVFLOW_<OP>_KERNELS block is declared in namespace cpu (cpu/<op>.cpp, registered in
// cpu/register.cpp) and in namespace cuda (cuda/<op>.cu, registered in cuda/register.cu)
// with the same signatures; the argument types follow the schema (Tensor? ->
// c10::optional<at::Tensor>, str -> std::string, float -> double).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <utility>

namespace invflow {

// ------------------------------------------------------------ shared helpers (checks.cpp)
// Parses the `scale` argument of the coupling ops ("sigmoid" | "exp" | "tanh").
int parse_scale_kind(const std::string& scale);

// "[2, 3, 4, 4]": sizes formatted with std::to_string (error messages never stream integers).
std::string shape_str(at::IntArrayRef sizes);

// Shape checks shared by the CPU and CUDA entry points.
void check_actnorm_args(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& log_scale);
void check_channel_mix_args(const at::Tensor& x, const at::Tensor& weight);
void check_coupling_args(const at::Tensor& x, const at::Tensor& h,
                         const c10::optional<at::Tensor>& mask);
// Channels-last coupling: x [B, ..., C], h [B, ..., 2C] of x's dtype and device.
void check_coupling_cl_args(const at::Tensor& x, const at::Tensor& h);
// ... and its second order: u_x and grad_y shaped like x, u_h like h, grad_logdet [B].
void check_coupling_cl_double_backward_args(const at::Tensor& u_x, const at::Tensor& u_h, const at::Tensor& grad_y,
                                            const at::Tensor& grad_logdet, const at::Tensor& x, const at::Tensor& h);

// t [..., K] as rows of K entries with one row stride (t[r, k] at data + r * stride + k),
// without a copy when its layout allows (e.g. a column block of a wider row-major matrix);
// else a contiguous copy and stride K.
std::pair<at::Tensor, int64_t> as_rows(const at::Tensor& t);

// The dtype of every log-determinant: the accumulation dtype of the input (float32 for
// float16 / bfloat16 / float32 inputs, float64 for float64), so a half-precision input's
// log-det (a sum over C * H * W terms) neither overflows nor loses its digits.
at::ScalarType logdet_dtype(at::ScalarType input);

// Checks the incoming gradients of a backward op against its input x: grad_y has x's
// shape, dtype and device; grad_logdet (when given) is [B] on x's device in logdet_dtype.
void check_grad_args(const char* op, const at::Tensor& grad_y, const c10::optional<at::Tensor>& grad_logdet,
                     const at::Tensor& x);

// Argument checks of the rational-quadratic spline ops (defined in cpu/spline.cpp, used by
// both backends): x any shape S of a floating dtype, widths / heights S + [K] with 2 <= K <=
// 999, derivatives S + [K - 1], all of x's dtype and device, bound positive and finite; the
// backward's grad_out like x and grad_logabsdet (when given) of shape S in logdet_dtype.
void check_spline_args(const char* op, const at::Tensor& x, const at::Tensor& widths, const at::Tensor& heights,
                       const at::Tensor& derivatives, double bound);
void check_spline_grad_args(const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_logabsdet,
                            const at::Tensor& in);
// The arguments of a spline op, checked and laid out for its kernels: the input contiguous,
// each parameter tensor as rows of one stride (as_rows: a column block of a wider st-net
// output is read in place), n entries of K bins.
struct SplineArgs {
  at::Tensor in, widths, heights, derivatives;
  int64_t ws, hs, ds, n;
  int K;
};
SplineArgs prepare_spline_args(const char* op, const at::Tensor& in, const at::Tensor& widths,
                               const at::Tensor& heights, const at::Tensor& derivatives, double bound);
// The empty outputs of a spline op: (output like the input, logabsdet of its shape in logdet_dtype).
std::tuple<at::Tensor, at::Tensor> spline_outputs(const SplineArgs& a);
// The empty, contiguous gradients of spline_backward: (input, widths, heights, derivatives).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> spline_grads(const SplineArgs& a);

// ---------------------------------------- shared by both backends (common/channel_mix_gemm.cpp)
// GEMM forms of the 1x1 convolution for channel counts above the direct kernels' range
// (ATen GEMMs, any device): y = W x as one GEMM when N = 1 (vectors), and
// dL/dW = sum_b g_b x_b^T without materialising B C x C products when that is larger.
at::Tensor mix_gemm(const at::Tensor& xc, const at::Tensor& weight);
at::Tensor weight_grad_gemm(const at::Tensor& gc, const at::Tensor& xc);

// ------------------------------------------------ actnorm (cpu/actnorm.cpp, cuda/actnorm.cu)
#define INVFLOW_ACTNORM_KERNELS                                                                     \
  std::tuple<at::Tensor, at::Tensor> actnorm_forward(const at::Tensor& x, const at::Tensor& bias,   \
                                                     const at::Tensor& log_scale);                  \
  std::tuple<at::Tensor, at::Tensor> actnorm_inverse(const at::Tensor& y, const at::Tensor& bias,   \
                                                     const at::Tensor& log_scale);                  \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> actnorm_backward(                                  \
      const at::Tensor& grad_y, const c10::optional<at::Tensor>& grad_logdet, const at::Tensor& x, \
      const at::Tensor& bias, const at::Tensor& log_scale);

// ---------------------------------------- channel_mix (cpu/channel_mix.cpp, cuda/channel_mix.cu)
#define INVFLOW_CHANNEL_MIX_KERNELS                                                                 \
  at::Tensor channel_mix(const at::Tensor& x, const at::Tensor& weight);                            \
  std::tuple<at::Tensor, at::Tensor> channel_mix_backward(const at::Tensor& grad_y, const at::Tensor& x, \
                                                          const at::Tensor& weight);

// ---------------------------------------------- coupling (cpu/coupling.cpp, cuda/coupling.cu)
#define INVFLOW_COUPLING_KERNELS                                                                    \
  std::tuple<at::Tensor, at::Tensor> coupling_forward(const at::Tensor& x, const at::Tensor& h,     \
                                                      const c10::optional<at::Tensor>& mask,        \
                                                      const std::string& scale, double clamp);      \
  std::tuple<at::Tensor, at::Tensor> coupling_inverse(const at::Tensor& y, const at::Tensor& h,     \
                                                      const c10::optional<at::Tensor>& mask,        \
                                                      const std::string& scale, double clamp);      \
  std::tuple<at::Tensor, at::Tensor> coupling_backward(                                             \
      const at::Tensor& grad_y, const c10::optional<at::Tensor>& grad_logdet, const at::Tensor& x, \
      const at::Tensor& h, const c10::optional<at::Tensor>& mask, const std::string& scale, double clamp);

// ------------------------------------- coupling_cl (cpu/coupling_cl.cpp, cuda/coupling_cl.cu)
#define INVFLOW_COUPLING_CL_KERNELS                                                                 \
  std::tuple<at::Tensor, at::Tensor> coupling_cl_forward(const at::Tensor& x, const at::Tensor& h,  \
                                                         const std::string& scale, double clamp);   \
  std::tuple<at::Tensor, at::Tensor> coupling_cl_backward(                                          \
      const at::Tensor& grad_y, const c10::optional<at::Tensor>& grad_logdet, const at::Tensor& x, \
      const at::Tensor& h, const std::string& scale, double clamp);                                 \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> coupling_cl_double_backward(           \
      const at::Tensor& u_x, const at::Tensor& u_h, const at::Tensor& grad_y,                       \
      const at::Tensor& grad_logdet, const at::Tensor& x, const at::Tensor& h,                      \
      const std::string& scale, double clamp);

// ------------------------------------------------- spline (cpu/spline.cpp, cuda/spline.cu)
// The elementwise rational-quadratic spline: x any shape S, widths / heights S + [K],
// derivatives S + [K - 1]; (output, logabsdet of shape S); the backward of either direction
// returns the gradients of (input, widths, heights, derivatives).
#define INVFLOW_SPLINE_KERNELS                                                                      \
  std::tuple<at::Tensor, at::Tensor> spline_forward(const at::Tensor& x, const at::Tensor& widths,  \
                                                    const at::Tensor& heights,                      \
                                                    const at::Tensor& derivatives, double bound);   \
  std::tuple<at::Tensor, at::Tensor> spline_inverse(const at::Tensor& y, const at::Tensor& widths,  \
                                                    const at::Tensor& heights,                      \
                                                    const at::Tensor& derivatives, double bound);   \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> spline_backward(                       \
      const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_logabsdet, const at::Tensor& in, \
      const at::Tensor& widths, const at::Tensor& heights, const at::Tensor& derivatives, double bound, \
      bool inverse);

#define INVFLOW_DECLARE_KERNELS \
  INVFLOW_ACTNORM_KERNELS       \
  INVFLOW_CHANNEL_MIX_KERNELS   \
  INVFLOW_COUPLING_KERNELS      \
  INVFLOW_COUPLING_CL_KERNELS   \
  INVFLOW_SPLINE_KERNELS

// CPU kernels (csrc/cpu/), always built.
namespace cpu {
INVFLOW_DECLARE_KERNELS
}  // namespace cpu

// CUDA kernels (csrc/cuda/), built only when torch has CUDA and nvcc is found.
namespace cuda {
INVFLOW_DECLARE_KERNELS
}  // namespace cuda

}  // namespace invflow
