#include "fusion/merging.hpp"

#include <ATen/Parallel.h>

#include <algorithm>

#include <cstring>
#include <memory>
#include <set>
#include <sstream>
#include <utility>

#include "fusion/checkpoint_stream.hpp"
#include "fusion/error.hpp"

namespace fusion {

at::ScalarType accumulation_dtype(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

std::vector<std::string> expert_names_checked(const ModelPool& pool, const std::string& method) {
  std::vector<std::string> names = pool.expert_names();
  FUSION_ENSURE(!names.empty(), method, ": the model pool has no experts (modelpool.models is empty)");
  return names;
}

ConstModelPtr pretrained_checked(ModelPool& pool, const std::string& method) {
  FUSION_ENSURE(pool.has_pretrained(), method,
                " needs a pretrained model: set modelpool.pretrained");
  ConstModelPtr model = pool.pretrained();
  FUSION_ENSURE(model != nullptr, method, ": the model pool returned no pretrained model");
  return model;
}

namespace {

std::string expert_label(const std::string& name) { return "expert '" + name + "'"; }

// Loads expert `name`, checks it against the reference layout when one is given.
ModelPtr load_expert(ModelPool& pool, const std::string& name, const StateDict* reference,
                     const std::string& reference_name) {
  ModelPtr model = pool.load(name);
  FUSION_ENSURE(model != nullptr, "the model pool returned nothing for ", expert_label(name));
  if (reference != nullptr) {
    check_same_layout(*reference, model->parameters(), reference_name, expert_label(name));
  }
  return model;
}

}  // namespace

namespace {

// Σₜ wₜ θₜ in one pass over the experts' files (detail::CheckpointStream), chunk by chunk, into one
// flat output: no expert is ever held, and each chunk of every expert is read once, checked and
// dropped. The same arithmetic as the loop below, element by element: acc = w₀·x₀, acc += wₜ·xₜ.
ModelPtr weighted_sum_streamed(ModelPool& pool, const Context& ctx, const std::vector<std::string>& names,
                               const std::vector<float>& w, const detail::CheckpointStream& stream) {
  // The first expert as the pool loads it (its tensors are views of the file, not resident): the
  // result keeps its Model object, config and integer tensors, as the loop below does.
  ModelPtr first = load_expert(pool, names[0], nullptr, "");
  auto progress = ctx.progress("summing experts (streamed)", 1);
  // When the host saves the model, it goes from each chunk straight into its file
  // (detail::OutputFile), which the save then links; otherwise into one flat buffer.
  std::unique_ptr<detail::OutputFile> file = detail::OutputFile::create(stream, first->parameters());
  constexpr int64_t kChunk = 32768;
  // Per thread: the output chunk (when written to the file) and the chunk each expert is read into.
  std::vector<std::vector<float>> scratch(std::max(1, at::get_num_threads()), std::vector<float>(2 * kChunk));
  at::Tensor flat = file ? at::Tensor() : stream.flat_buffer();
  float* out_base = file ? nullptr : flat.data_ptr<float>();
  const size_t t_count = names.size();
  stream.for_each_chunk([&](size_t i, int64_t b, int64_t e) {
    float* y = scratch[at::get_thread_num()].data();
    float* out = file ? y + kChunk : out_base + stream.flat_offset(i) + b;
    const int64_t n = e - b;
    // Read unchecked: the weighted sum is NaN or ±Inf wherever a weight is (check_result).
    stream.read_unchecked(0, i, b, e, out);  // x₀, scaled in place
    if (w[0] != 1.0f) {
      for (int64_t j = 0; j < n; ++j) out[j] = out[j] * w[0];
    }
    for (size_t t = 1; t < t_count; ++t) {
      stream.read_unchecked(t, i, b, e, y);
      const float wt = w[t];
      for (int64_t j = 0; j < n; ++j) out[j] += wt * y[j];
    }
    stream.check_result(i, b, e, out);
    if (file) file->write(i, b, e, out);
  }, kChunk);
  first->parameters() = file ? file->finish() : stream.unflatten(flat, first->parameters());
  progress->advance();
  progress->finish();
  return first;
}

}  // namespace

ModelPtr weighted_sum_of_experts(ModelPool& pool, const Context& ctx,
                                 const std::vector<double>& weights, const std::string& option) {
  const std::vector<std::string> names = expert_names_checked(pool, "merging");
  FUSION_ENSURE(weights.empty() || weights.size() == names.size(), option, " has ", weights.size(), " entries but the model pool has ", names.size(),
                " experts");
  auto weight = [&](size_t i) { return weights.empty() ? 1.0 : weights[i]; };
  const at::Device device = ctx.device();
  if (device.is_cpu()) {
    if (const auto stream = detail::CheckpointStream::open(pool, names)) {
      std::vector<float> w;
      for (size_t i = 0; i < names.size(); ++i) w.push_back(static_cast<float>(weight(i)));
      return weighted_sum_streamed(pool, ctx, names, w, *stream);
    }
  }
  auto progress = ctx.progress("summing experts", static_cast<int64_t>(names.size()));

  // The sum starts as the first expert's own tensors (scaled in place), so it costs no copy.
  ModelPtr first = load_expert(pool, names[0], nullptr, "");
  StateDict& sum = first->parameters();
  std::vector<at::ScalarType> original_dtype;  // to cast half tensors back at the end
  original_dtype.reserve(sum.size());
  for (const auto& [key, tensor] : sum) {
    original_dtype.push_back(tensor.scalar_type());
    if (!is_mergeable(tensor)) {
      if (tensor.device() != device) sum.set(key, tensor.to(device));
      continue;
    }
    at::Tensor acc = tensor.to(device, accumulation_dtype(tensor.scalar_type()));
    // In place is fine: ModelPool::load hands us a fresh copy that we own.
    if (weight(0) != 1.0) acc.mul_(weight(0));
    sum.set(key, std::move(acc));
  }
  progress->advance();

  for (size_t i = 1; i < names.size(); ++i) {
    ModelPtr expert = load_expert(pool, names[i], &sum, expert_label(names[0]));
    for (const auto& [key, acc] : sum) {
      if (!is_mergeable(acc)) continue;
      const at::Tensor& x = expert->parameters().at(key);
      const_cast<at::Tensor&>(acc).add_(x.to(device), weight(i));
    }
    expert.reset();  // drop it before loading the next one
    progress->advance();
  }
  size_t j = 0;
  for (const auto& [key, tensor] : sum) {
    if (tensor.scalar_type() != original_dtype[j]) sum.set(key, tensor.to(original_dtype[j]));
    ++j;
  }
  progress->finish();
  return first;
}

StateDict sum_task_vectors(ModelPool& pool, const Context& ctx) {
  FUSION_ENSURE(pool.has_pretrained(), "task vectors need a pretrained model: set modelpool.pretrained");
  const std::vector<std::string> names = expert_names_checked(pool, "task vectors");
  const at::Device device = ctx.device();

  // Σ θₜ first (the pretrained model is not needed while streaming), then Σ τₜ = Σ θₜ − T·θ₀.
  // Summing in accumulation_dtype: half tensors are widened, so the sum is not cast back here.
  auto progress = ctx.progress("summing task vectors", static_cast<int64_t>(names.size()));
  StateDict sum;
  std::string first_name = expert_label(names[0]);
  for (size_t i = 0; i < names.size(); ++i) {
    ModelPtr expert = load_expert(pool, names[i], i == 0 ? nullptr : &sum, first_name);
    if (i == 0) {
      for (const auto& [key, tensor] : expert->parameters()) {
        if (!is_mergeable(tensor)) {
          sum.set(key, tensor);
          continue;
        }
        // ModelPool::load hands us a fresh copy that we own, so the sum may start as its tensors.
        sum.set(key, tensor.to(device, accumulation_dtype(tensor.scalar_type())));
      }
    } else {
      for (const auto& [key, acc] : sum) {
        if (!is_mergeable(acc)) continue;
        const_cast<at::Tensor&>(acc).add_(expert->parameters().at(key).to(device));
      }
    }
    expert.reset();
    progress->advance();
  }
  progress->finish();

  ConstModelPtr pretrained = pool.pretrained();
  FUSION_ENSURE(pretrained != nullptr, "the model pool returned no pretrained model");
  check_same_layout(pretrained->parameters(), sum, "pretrained", first_name);
  const double t = static_cast<double>(names.size());
  for (const auto& [key, base] : pretrained->parameters()) {
    at::Tensor& acc = sum.at(key);
    if (!is_mergeable(base)) {
      acc = base;  // integer tensors are the pretrained model's
      continue;
    }
    acc.sub_(base.to(device), t);
  }
  return sum;
}

StateDict add_scaled(const StateDict& base, const StateDict& delta, double lambda) {
  StateDict out;
  for (const auto& [key, b] : base) {
    const at::Tensor* d = delta.find(key);
    if (d == nullptr || !is_mergeable(b)) {
      out.set(key, b);
      continue;
    }
    FUSION_ENSURE(d->sizes() == b.sizes(), "key '", key, "': the base has shape ", b.sizes(),
                  " but the delta has shape ", d->sizes());
    at::Tensor merged = at::add(b.to(d->device()), *d, lambda);
    if (merged.scalar_type() != b.scalar_type()) merged = merged.to(b.scalar_type());
    out.set(key, std::move(merged));
  }
  return out;
}

std::string format_scalar(double v) {
  std::ostringstream out;
  out.precision(10);
  out << v;
  return out.str();
}

std::vector<double> scaling_factors_of(double scaling_factor,
                                       const std::vector<double>& scaling_factors) {
  return scaling_factors.empty() ? std::vector<double>{scaling_factor} : scaling_factors;
}

void add_scaled_results(Result& result, ConstModelPtr pretrained, StateDict delta,
                        const std::vector<double>& scaling_factors, const std::string& option) {
  FUSION_ENSURE(!scaling_factors.empty(), option, " is empty: give at least one scaling factor");
  FUSION_ENSURE(pretrained != nullptr, "no pretrained model to add the task vector to");
  std::set<std::string> seen;
  for (double lambda : scaling_factors) {
    FUSION_ENSURE(seen.insert(format_scalar(lambda)).second, option, " lists ",
                  format_scalar(lambda), " more than once");
  }

  if (scaling_factors.size() == 1) {
    // θ₀ + λ·Δ in Δ's own storage: no third model-sized buffer.
    const double lambda = scaling_factors[0];
    StateDict merged;
    for (const auto& [key, b] : pretrained->parameters()) {
      const at::Tensor* d = delta.find(key);
      if (d == nullptr || !is_mergeable(b)) {
        merged.set(key, b);
        continue;
      }
      FUSION_ENSURE(d->sizes() == b.sizes(), "key '", key, "': the pretrained model has shape ",
                    b.sizes(), " but the task vector has shape ", d->sizes());
      at::Tensor t = *d;
      t.mul_(lambda).add_(b.to(t.device()));
      if (t.scalar_type() != b.scalar_type()) t = t.to(b.scalar_type());
      merged.set(key, std::move(t));
    }
    delta = StateDict();
    result.add("merged", pretrained->with_parameters(std::move(merged)),
               nlohmann::json{{"scaling_factor", lambda}});
    return;
  }

  auto shared_delta = std::make_shared<const StateDict>(std::move(delta));
  result.sweep = true;
  for (double lambda : scaling_factors) {
    result.add_lazy(
        "scaling_factor=" + format_scalar(lambda),
        [pretrained, shared_delta, lambda]() {
          return pretrained->with_parameters(add_scaled(pretrained->parameters(), *shared_delta, lambda));
        },
        nlohmann::json{{"scaling_factor", lambda}});
  }
}

}  // namespace fusion
