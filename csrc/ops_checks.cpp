// Argument checks shared by every backend.  The Python layers validate user input
// with friendlier messages; these guard the raw ops (torch.ops.invflow.*).
#include "ops.h"

namespace invflow {

int parse_scale_kind(const std::string& scale) {
  if (scale == "sigmoid") return 0;
  if (scale == "exp") return 1;
  if (scale == "tanh") return 2;
  TORCH_CHECK(false, "invflow: scale must be 'sigmoid', 'exp' or 'tanh', got '", scale, "'");
}

static void check_param(const at::Tensor& x, const at::Tensor& p, const char* name, int64_t numel) {
  TORCH_CHECK(p.dim() == 1 && p.numel() == numel, "invflow: ", name, " must have shape [",
              numel, "], got ", p.sizes());
  TORCH_CHECK(p.scalar_type() == x.scalar_type(), "invflow: ", name, " has dtype ",
              p.scalar_type(), " but the input has ", x.scalar_type());
  TORCH_CHECK(p.device() == x.device(), "invflow: ", name, " is on ", p.device(),
              " but the input is on ", x.device());
}

void check_actnorm_args(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& log_scale) {
  TORCH_CHECK(x.dim() >= 2, "invflow: actnorm expects [B, C, ...], got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "invflow: actnorm expects a floating tensor");
  check_param(x, bias, "bias", x.size(1));
  check_param(x, log_scale, "log_scale", x.size(1));
}

void check_channel_mix_args(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() >= 2, "invflow: channel_mix expects [B, C, ...], got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "invflow: channel_mix expects a floating tensor");
  const int64_t C = x.size(1);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == C && weight.size(1) == C,
              "invflow: channel_mix weight must be [", C, ", ", C, "], got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "invflow: weight dtype ",
              weight.scalar_type(), " differs from input dtype ", x.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), "invflow: weight and input on different devices");
}

void check_coupling_args(const at::Tensor& x, const at::Tensor& h,
                         const c10::optional<at::Tensor>& mask) {
  TORCH_CHECK(x.dim() >= 2, "invflow: coupling expects [B, C, ...], got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "invflow: coupling expects a floating tensor");
  TORCH_CHECK(h.dim() == x.dim() && h.size(0) == x.size(0) && h.size(1) == 2 * x.size(1),
              "invflow: coupling parameters h must be [B, 2C, ...] = [", x.size(0), ", ",
              2 * x.size(1), ", ...] for input ", x.sizes(), ", got ", h.sizes());
  for (int64_t d = 2; d < x.dim(); ++d) {
    TORCH_CHECK(h.size(d) == x.size(d), "invflow: coupling h ", h.sizes(),
                " does not match input ", x.sizes());
  }
  TORCH_CHECK(h.scalar_type() == x.scalar_type(), "invflow: h dtype differs from input dtype");
  TORCH_CHECK(h.device() == x.device(), "invflow: h and input on different devices");
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK(m.sizes() == x.sizes().slice(1), "invflow: coupling mask must have shape ",
                x.sizes().slice(1), " (the input without its batch dimension), got ", m.sizes());
    TORCH_CHECK(m.scalar_type() == x.scalar_type(), "invflow: mask dtype differs from input dtype");
    TORCH_CHECK(m.device() == x.device(), "invflow: mask and input on different devices");
  }
}

at::ScalarType logdet_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

void check_grad_args(const char* op, const at::Tensor& grad_y, const c10::optional<at::Tensor>& grad_logdet,
                     const at::Tensor& x) {
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "invflow: ", op, ": grad_y must have the input's shape ", x.sizes(),
              ", got ", grad_y.sizes());
  TORCH_CHECK(grad_y.scalar_type() == x.scalar_type(), "invflow: ", op, ": grad_y has dtype ",
              grad_y.scalar_type(), " but the input has ", x.scalar_type());
  TORCH_CHECK(grad_y.device() == x.device(), "invflow: ", op, ": grad_y is on ", grad_y.device(),
              " but the input is on ", x.device());
  if (!grad_logdet.has_value()) return;
  const at::Tensor& gl = *grad_logdet;
  TORCH_CHECK(gl.dim() == 1 && gl.size(0) == x.size(0), "invflow: ", op, ": grad_logdet must have shape [",
              x.size(0), "], got ", gl.sizes());
  TORCH_CHECK(gl.scalar_type() == logdet_dtype(x.scalar_type()), "invflow: ", op, ": grad_logdet has dtype ",
              gl.scalar_type(), " but log-dets of ", x.scalar_type(), " inputs are ",
              logdet_dtype(x.scalar_type()));
  TORCH_CHECK(gl.device() == x.device(), "invflow: ", op, ": grad_logdet is on ", gl.device(),
              " but the input is on ", x.device());
}

}  // namespace invflow
