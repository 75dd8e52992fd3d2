#pragma once
// Mixed precision in CLIP's functional forward (internal to libfusion_clip). When the GEMM weights
// are bfloat16 or float16, the towers follow PyTorch autocast's policy: linear layers, the patch
// convolution and the attention products run in the weights' 16-bit dtype; the residual stream,
// the layer norms and the softmax run in float32, so rounding does not accumulate over the layers.
// With float32 or float64 weights nothing is cast and every op is the one it always was.
#include <ATen/ATen.h>

namespace fusion::clip::detail {

inline bool is_reduced_float(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

/// layer_norm of `x` in x's dtype; the weights are cast to it when theirs differs (a 16-bit copy
/// of the parameters normalising the float32 residual stream).
inline at::Tensor norm(const at::Tensor& x, int64_t d, const at::Tensor& w, const at::Tensor& b, double eps) {
  if (w.scalar_type() == x.scalar_type() && b.scalar_type() == x.scalar_type())
    return at::layer_norm(x, {d}, w, b, eps);
  return at::layer_norm(x, {d}, w.to(x.scalar_type()), b.to(x.scalar_type()), eps);
}

/// x·wᵀ + b in w's dtype: `x` and `b` are cast to it when theirs differs.
inline at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {}) {
  const at::ScalarType t = w.scalar_type();
  if (x.scalar_type() == t && (!b.defined() || b.scalar_type() == t)) return at::linear(x, w, b);
  return at::linear(x.to(t), w, b.defined() ? b.to(t) : b);
}

}  // namespace fusion::clip::detail
