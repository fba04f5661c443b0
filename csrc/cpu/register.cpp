// CPU implementations of every TORCH_LIBRARY(invflow) schema (registration.cpp).
#include <torch/library.h>

#include "../ops.h"

TORCH_LIBRARY_IMPL(invflow, CPU, m) {
  m.impl("actnorm_forward", &invflow::cpu::actnorm_forward);
  m.impl("actnorm_inverse", &invflow::cpu::actnorm_inverse);
  m.impl("actnorm_backward", &invflow::cpu::actnorm_backward);
  m.impl("channel_mix", &invflow::cpu::channel_mix);
  m.impl("channel_mix_backward", &invflow::cpu::channel_mix_backward);
  m.impl("coupling_forward", &invflow::cpu::coupling_forward);
  m.impl("coupling_inverse", &invflow::cpu::coupling_inverse);
  m.impl("coupling_backward", &invflow::cpu::coupling_backward);
  m.impl("coupling_cl_forward", &invflow::cpu::coupling_cl_forward);
  m.impl("coupling_cl_backward", &invflow::cpu::coupling_cl_backward);
  m.impl("coupling_cl_double_backward", &invflow::cpu::coupling_cl_double_backward);
  m.impl("spline_forward", &invflow::cpu::spline_forward);
  m.impl("spline_inverse", &invflow::cpu::spline_inverse);
  m.impl("spline_backward", &invflow::cpu::spline_backward);
}
