// CUDA implementations of every TORCH_LIBRARY(invflow) schema (registration.cpp).
#include <torch/library.h>

#include "../ops.h"

TORCH_LIBRARY_IMPL(invflow, CUDA, m) {
  m.impl("actnorm_forward", &invflow::cuda::actnorm_forward);
  m.impl("actnorm_inverse", &invflow::cuda::actnorm_inverse);
  m.impl("actnorm_backward", &invflow::cuda::actnorm_backward);
  m.impl("channel_mix", &invflow::cuda::channel_mix);
  m.impl("channel_mix_backward", &invflow::cuda::channel_mix_backward);
  m.impl("coupling_forward", &invflow::cuda::coupling_forward);
  m.impl("coupling_inverse", &invflow::cuda::coupling_inverse);
  m.impl("coupling_backward", &invflow::cuda::coupling_backward);
  m.impl("coupling_cl_forward", &invflow::cuda::coupling_cl_forward);
  m.impl("coupling_cl_backward", &invflow::cuda::coupling_cl_backward);
  m.impl("coupling_cl_double_backward", &invflow::cuda::coupling_cl_double_backward);
  m.impl("spline_forward", &invflow::cuda::spline_forward);
  m.impl("spline_inverse", &invflow::cuda::spline_inverse);
  m.impl("spline_backward", &invflow::cuda::spline_backward);
}
