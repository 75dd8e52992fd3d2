#include "training.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "fusion/error.hpp"

namespace fusion::finetune {

const std::vector<std::string>& trainable_subsets() {
  static const std::vector<std::string> subsets = {"all", "encoder", "mlp", "attention"};
  return subsets;
}

bool is_trainable(const std::string& key, const at::Tensor& t, const std::string& subset) {
  if (!t.is_floating_point()) return false;
  if (subset == "all") return true;
  if (subset == "encoder")
    return key.find(".encoder.layers.") != std::string::npos || key.rfind("transformer.h.", 0) == 0;
  if (subset == "mlp") return key.find(".mlp.") != std::string::npos;
  if (subset == "attention")
    return key.find(".self_attn.") != std::string::npos || key.find(".attn.") != std::string::npos;
  FUSION_FAIL("unknown trainable subset \"", subset, "\" (expected all, encoder, mlp or attention)");
}

RowRange rows_of_rank(int64_t n, int rank, int world) {
  FUSION_ENSURE(world >= 1 && rank >= 0 && rank < world && n >= 0, "rows_of_rank: rank ", rank, " of ", world,
                " and ", n, " rows");
  const int64_t q = n / world, extra = n % world, r = rank;
  const int64_t begin = r * q + std::min(r, extra);
  return {begin, begin + q + (r < extra ? 1 : 0)};
}

std::vector<std::vector<size_t>> gradient_buckets(const std::vector<at::Tensor>& params, int64_t bucket_bytes) {
  FUSION_ENSURE(bucket_bytes > 0, "gradient_buckets: the bucket size must be positive, got ", bucket_bytes);
  std::vector<std::vector<size_t>> buckets;
  int64_t filled = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    const int64_t bytes = p.numel() * static_cast<int64_t>(p.element_size());
    const bool fits = !buckets.empty() && filled + bytes <= bucket_bytes &&
                      params[buckets.back().front()].scalar_type() == p.scalar_type() &&
                      params[buckets.back().front()].device() == p.device();
    if (!fits) {
      buckets.emplace_back();
      filled = 0;
    }
    buckets.back().push_back(i);
    filled += bytes;
  }
  return buckets;
}

void all_reduce_gradients(const Communicator& comm, const std::vector<at::Tensor>& params,
                          const std::vector<std::vector<size_t>>& buckets, double scale) {
  at::NoGradGuard no_grad;
  for (const auto& bucket : buckets) {
    FUSION_ENSURE(!bucket.empty(), "all_reduce_gradients: an empty bucket");
    int64_t n = 0;
    for (size_t i : bucket) n += params.at(i).numel();
    const int64_t count = static_cast<int64_t>(bucket.size());
    const at::Tensor& first = params[bucket.front()];
    at::Tensor buffer = at::zeros({n + count}, at::TensorOptions().dtype(first.scalar_type()).device(first.device()));
    at::Tensor flags = at::zeros({count}, first.options().requires_grad(false).device(at::kCPU));
    int64_t off = 0;
    for (int64_t k = 0; k < count; ++k) {
      const at::Tensor& p = params[bucket[static_cast<size_t>(k)]];
      const at::Tensor& g = p.grad();
      if (g.defined()) {
        buffer.narrow(0, off, p.numel()).copy_(g.reshape({-1}));
        flags[k] = 1;
      }
      off += p.numel();
    }
    if (scale != 1.0) buffer.narrow(0, 0, n).mul_(scale);
    buffer.narrow(0, n, count).copy_(flags);
    comm.all_reduce_sum(buffer);
    const at::Tensor defined = buffer.narrow(0, n, count).to(at::kCPU, at::kDouble).contiguous();
    const double* on_ranks = defined.data_ptr<double>();
    off = 0;
    for (int64_t k = 0; k < count; ++k) {
      at::Tensor& p = const_cast<at::Tensor&>(params[bucket[static_cast<size_t>(k)]]);
      if (on_ranks[k] > 0.0)
        p.mutable_grad() = buffer.narrow(0, off, p.numel()).view(p.sizes());
      else
        p.mutable_grad() = at::Tensor();
      off += p.numel();
    }
  }
}

std::string short_number(double v) {
  char buf[32];
  if (v != 0.0 && (std::fabs(v) < 1e-3 || std::fabs(v) >= 1e4))
    std::snprintf(buf, sizeof(buf), "%.2e", v);
  else
    std::snprintf(buf, sizeof(buf), "%.4g", v);
  return buf;
}

}  // namespace fusion::finetune
