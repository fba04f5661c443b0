// Every operator schema of invflow (TORCH_LIBRARY), and nothing else: the kernels register
// for the CPU key in cpu/register.cpp and for the CUDA key in cuda/register.cu; fake
// (meta) kernels and autograd (first and second order) are registered from Python in
// invflow/ops/fused.py.  docs/kernels.md lists the steps of adding an op.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import invflow._C` loads this library, which runs every registration block of csrc/.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(invflow, m) {
  // actnorm: y = (x + b) exp(log_s) per channel, logdet [B]
  m.def("actnorm_forward(Tensor x, Tensor bias, Tensor log_scale) -> (Tensor, Tensor)");
  m.def("actnorm_inverse(Tensor y, Tensor bias, Tensor log_scale) -> (Tensor, Tensor)");
  m.def(
      "actnorm_backward(Tensor grad_y, Tensor? grad_logdet, Tensor x, Tensor bias, "
      "Tensor log_scale) -> (Tensor, Tensor, Tensor)");
  // channel_mix: y = W x at every position (the invertible 1x1 convolution)
  m.def("channel_mix(Tensor x, Tensor weight) -> Tensor");
  m.def("channel_mix_backward(Tensor grad_y, Tensor x, Tensor weight) -> (Tensor, Tensor)");
  // coupling: y = s(raw) x + t on channels-first x [B, C, ...], h = [raw, t] along dim 1
  m.def(
      "coupling_forward(Tensor x, Tensor h, Tensor? mask, str scale, float clamp) "
      "-> (Tensor, Tensor)");
  m.def(
      "coupling_inverse(Tensor y, Tensor h, Tensor? mask, str scale, float clamp) "
      "-> (Tensor, Tensor)");
  m.def(
      "coupling_backward(Tensor grad_y, Tensor? grad_logdet, Tensor x, Tensor h, Tensor? mask, "
      "str scale, float clamp) -> (Tensor, Tensor)");
  // coupling_cl: the same on channels-last x [B, ..., C], h = [raw, t] along the last dim
  m.def("coupling_cl_forward(Tensor x, Tensor h, str scale, float clamp) -> (Tensor, Tensor)");
  m.def(
      "coupling_cl_backward(Tensor grad_y, Tensor? grad_logdet, Tensor x, Tensor h, str scale, "
      "float clamp) -> (Tensor, Tensor)");
  m.def(
      "coupling_cl_double_backward(Tensor u_x, Tensor u_h, Tensor grad_y, Tensor grad_logdet, "
      "Tensor x, Tensor h, str scale, float clamp) -> (Tensor, Tensor, Tensor, Tensor)");
  // spline: the elementwise rational-quadratic spline, x any shape S, widths / heights S + [K],
  // derivatives S + [K - 1] (unnormalised); (y, logabsdet of shape S)
  m.def(
      "spline_forward(Tensor x, Tensor widths, Tensor heights, Tensor derivatives, float bound) "
      "-> (Tensor, Tensor)");
  m.def(
      "spline_inverse(Tensor y, Tensor widths, Tensor heights, Tensor derivatives, float bound) "
      "-> (Tensor, Tensor)");
  m.def(
      "spline_backward(Tensor grad_out, Tensor? grad_logabsdet, Tensor input, Tensor widths, "
      "Tensor heights, Tensor derivatives, float bound, bool inverse) -> (Tensor, Tensor, Tensor, Tensor)");
}
