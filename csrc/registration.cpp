// Operator schemas of invflow (TORCH_LIBRARY) and their CPU implementations.  CUDA
// implementations register themselves for the CUDA key in csrc/cuda/ under the same
// schemas.  Autograd (first and second order) and fake-tensor kernels are registered
// from Python in invflow/ops/fused.py.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

extern "C" {
// `import invflow._C` loads this library, which runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(invflow, m) {
  m.def("actnorm_forward(Tensor x, Tensor bias, Tensor log_scale) -> (Tensor, Tensor)");
  m.def("actnorm_inverse(Tensor y, Tensor bias, Tensor log_scale) -> (Tensor, Tensor)");
  m.def(
      "actnorm_backward(Tensor grad_y, Tensor? grad_logdet, Tensor x, Tensor bias, "
      "Tensor log_scale) -> (Tensor, Tensor, Tensor)");
  m.def("channel_mix(Tensor x, Tensor weight) -> Tensor");
  m.def("channel_mix_backward(Tensor grad_y, Tensor x, Tensor weight) -> (Tensor, Tensor)");
  m.def(
      "coupling_forward(Tensor x, Tensor h, Tensor? mask, str scale, float clamp) "
      "-> (Tensor, Tensor)");
  m.def(
      "coupling_inverse(Tensor y, Tensor h, Tensor? mask, str scale, float clamp) "
      "-> (Tensor, Tensor)");
  m.def(
      "coupling_backward(Tensor grad_y, Tensor? grad_logdet, Tensor x, Tensor h, Tensor? mask, "
      "str scale, float clamp) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(invflow, CPU, m) {
  m.impl("actnorm_forward", &invflow::cpu::actnorm_forward);
  m.impl("actnorm_inverse", &invflow::cpu::actnorm_inverse);
  m.impl("actnorm_backward", &invflow::cpu::actnorm_backward);
  m.impl("channel_mix", &invflow::cpu::channel_mix);
  m.impl("channel_mix_backward", &invflow::cpu::channel_mix_backward);
  m.impl("coupling_forward", &invflow::cpu::coupling_forward);
  m.impl("coupling_inverse", &invflow::cpu::coupling_inverse);
  m.impl("coupling_backward", &invflow::cpu::coupling_backward);
}
