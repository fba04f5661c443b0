// Argument checks shared by every backend.  The Python layers validate user input
// with friendlier messages; these guard the raw ops (torch.ops.invflow.*).
//
// Every message is built from strings only: shapes and counts are formatted with
// std::to_string (shape_str), dtypes with c10::toString and devices with Device::str, never
// by streaming integers or IntArrayRef into std::ostream.  (On the one H200 run so far, the
// CUDA build crashed in exactly the messages that streamed sizes, while the same calls
// raised cleanly on the CPU build; string-only messages take that path out of the picture.)
#include "ops.h"

#include <utility>

namespace invflow {

std::string shape_str(at::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (d > 0) out += ", ";
    out += std::to_string(sizes[d]);
  }
  return out + "]";
}

namespace {

std::string num(int64_t v) { return std::to_string(v); }
const char* dtype_str(const at::Tensor& t) { return c10::toString(t.scalar_type()); }
std::string device_str(const at::Tensor& t) { return t.device().str(); }

void check_param(const at::Tensor& x, const at::Tensor& p, const char* name, int64_t numel) {
  TORCH_CHECK(p.dim() == 1 && p.numel() == numel, "invflow: ", name, " must have shape [", num(numel), "], got ",
              shape_str(p.sizes()));
  TORCH_CHECK(p.scalar_type() == x.scalar_type(), "invflow: ", name, " has dtype ", dtype_str(p),
              " but the input has ", dtype_str(x));
  TORCH_CHECK(p.device() == x.device(), "invflow: ", name, " is on ", device_str(p), " but the input is on ",
              device_str(x));
}

// t must have x's shape, dtype and device (a gradient or a direction of a backward op).
void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x, const char* what) {
  TORCH_CHECK(t.sizes() == x.sizes(), "invflow: ", op, ": ", name, " must have the ", what, "'s shape ",
              shape_str(x.sizes()), ", got ", shape_str(t.sizes()));
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "invflow: ", op, ": ", name, " has dtype ", dtype_str(t),
              " but the ", what, " has ", dtype_str(x));
  TORCH_CHECK(t.device() == x.device(), "invflow: ", op, ": ", name, " is on ", device_str(t), " but the ", what,
              " is on ", device_str(x));
}

}  // namespace

int parse_scale_kind(const std::string& scale) {
  if (scale == "sigmoid") return 0;
  if (scale == "exp") return 1;
  if (scale == "tanh") return 2;
  TORCH_CHECK(false, "invflow: scale must be 'sigmoid', 'exp' or 'tanh', got '", scale, "'");
}

void check_actnorm_args(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& log_scale) {
  TORCH_CHECK(x.dim() >= 2, "invflow: actnorm expects [B, C, ...], got ", shape_str(x.sizes()));
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "invflow: actnorm expects a floating tensor");
  check_param(x, bias, "bias", x.size(1));
  check_param(x, log_scale, "log_scale", x.size(1));
}

void check_channel_mix_args(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() >= 2, "invflow: channel_mix expects [B, C, ...], got ", shape_str(x.sizes()));
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "invflow: channel_mix expects a floating tensor");
  const int64_t C = x.size(1);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == C && weight.size(1) == C, "invflow: channel_mix weight must be [",
              num(C), ", ", num(C), "], got ", shape_str(weight.sizes()));
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "invflow: weight dtype ", dtype_str(weight),
              " differs from input dtype ", dtype_str(x));
  TORCH_CHECK(weight.device() == x.device(), "invflow: weight and input on different devices (",
              device_str(weight), ", ", device_str(x), ")");
}

void check_coupling_args(const at::Tensor& x, const at::Tensor& h, const c10::optional<at::Tensor>& mask) {
  TORCH_CHECK(x.dim() >= 2, "invflow: coupling expects [B, C, ...], got ", shape_str(x.sizes()));
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "invflow: coupling expects a floating tensor");
  bool match = h.dim() == x.dim() && h.size(0) == x.size(0) && h.size(1) == 2 * x.size(1);
  for (int64_t d = 2; match && d < x.dim(); ++d) match = h.size(d) == x.size(d);
  TORCH_CHECK(match, "invflow: coupling parameters h must be [B, 2C, ...] = [", num(x.size(0)), ", ",
              num(2 * x.size(1)), ", ...] for input ", shape_str(x.sizes()), ", got ", shape_str(h.sizes()));
  TORCH_CHECK(h.scalar_type() == x.scalar_type(), "invflow: h dtype differs from input dtype");
  TORCH_CHECK(h.device() == x.device(), "invflow: h and input on different devices");
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK(m.sizes() == x.sizes().slice(1), "invflow: coupling mask must have shape ",
                shape_str(x.sizes().slice(1)), " (the input without its batch dimension), got ",
                shape_str(m.sizes()));
    TORCH_CHECK(m.scalar_type() == x.scalar_type(), "invflow: mask dtype differs from input dtype");
    TORCH_CHECK(m.device() == x.device(), "invflow: mask and input on different devices");
  }
}

void check_coupling_cl_args(const at::Tensor& x, const at::Tensor& h) {
  TORCH_CHECK(x.dim() >= 2, "invflow: coupling_cl expects x [B, ..., C], got ", shape_str(x.sizes()));
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "invflow: coupling_cl expects a floating tensor");
  TORCH_CHECK(h.dim() == x.dim(), "invflow: coupling_cl h must be [B, ..., 2C] for x ", shape_str(x.sizes()),
              ", got ", shape_str(h.sizes()));
  for (int64_t d = 0; d < x.dim() - 1; ++d) {
    TORCH_CHECK(h.size(d) == x.size(d), "invflow: coupling_cl h ", shape_str(h.sizes()), " does not match x ",
                shape_str(x.sizes()));
  }
  TORCH_CHECK(h.size(-1) == 2 * x.size(-1), "invflow: coupling_cl h must have 2C = ", num(2 * x.size(-1)),
              " channels in its last dimension, got ", shape_str(h.sizes()));
  TORCH_CHECK(h.scalar_type() == x.scalar_type(), "invflow: coupling_cl h dtype differs from x dtype");
  TORCH_CHECK(h.device() == x.device(), "invflow: coupling_cl h and x on different devices");
}

void check_coupling_cl_double_backward_args(const at::Tensor& u_x, const at::Tensor& u_h, const at::Tensor& grad_y,
                                            const at::Tensor& grad_logdet, const at::Tensor& x, const at::Tensor& h) {
  const char* op = "coupling_cl_double_backward";
  check_coupling_cl_args(x, h);
  check_grad_args(op, grad_y, grad_logdet, x);
  check_like(op, "u_x", u_x, x, "input x");
  check_like(op, "u_h", u_h, h, "parameters h");
}

at::ScalarType logdet_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

void check_grad_args(const char* op, const at::Tensor& grad_y, const c10::optional<at::Tensor>& grad_logdet,
                     const at::Tensor& x) {
  check_like(op, "grad_y", grad_y, x, "input");
  if (!grad_logdet.has_value()) return;
  const at::Tensor& gl = *grad_logdet;
  TORCH_CHECK(gl.dim() == 1 && gl.size(0) == x.size(0), "invflow: ", op, ": grad_logdet must have shape [",
              num(x.size(0)), "], got ", shape_str(gl.sizes()));
  const at::ScalarType want = logdet_dtype(x.scalar_type());
  TORCH_CHECK(gl.scalar_type() == want, "invflow: ", op, ": grad_logdet has dtype ", dtype_str(gl),
              " but log-dets of ", dtype_str(x), " inputs are ", c10::toString(want));
  TORCH_CHECK(gl.device() == x.device(), "invflow: ", op, ": grad_logdet is on ", device_str(gl),
              " but the input is on ", device_str(x));
}

std::pair<at::Tensor, int64_t> as_rows(const at::Tensor& t) {
  const int64_t D = t.dim(), K = t.size(-1);
  if (t.stride(D - 1) == 1 || K == 1) {
    const int64_t rs = t.stride(D - 2);
    bool ok = rs >= K;
    int64_t expect = rs;
    for (int64_t d = D - 2; d >= 0 && ok; --d) {
      if (t.size(d) != 1 && t.stride(d) != expect) ok = false;
      expect *= t.size(d);
    }
    if (ok) return {t, rs};
  }
  return {t.contiguous(), K};
}

}  // namespace invflow
