// The coupling's elementwise math on contiguous spans (no mask), defined in coupling.cpp
// (vectorised float32 path, scalar opmath for the other dtypes) and shared with the
// channels-last coupling (coupling_cl.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "../common/scale.h"

namespace invflow {
namespace cpu {

// out = s(raw) * in + shift (or (in - shift) / s(raw) when invert) on n entries; returns the
// sum of log s(raw) over them.
template <typename scalar_t>
at::opmath_type<scalar_t> coupling_apply_span(const scalar_t* in, const scalar_t* raw, const scalar_t* shift,
                                              scalar_t* out, int64_t n, ScaleKind kind,
                                              at::opmath_type<scalar_t> clamp, bool invert);

// gx = gy * s, graw = (gy * x * s + gl) * dlog s/draw, gshift = gy on n entries.
template <typename scalar_t>
void coupling_grad_span(const scalar_t* gy, at::opmath_type<scalar_t> gl, const scalar_t* x, const scalar_t* raw,
                        scalar_t* gx, scalar_t* graw, scalar_t* gshift, int64_t n, ScaleKind kind,
                        at::opmath_type<scalar_t> clamp);

}  // namespace cpu
}  // namespace invflow
