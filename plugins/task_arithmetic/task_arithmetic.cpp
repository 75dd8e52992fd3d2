#include "task_arithmetic.hpp"

#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>
#include <set>
#include <utility>

#include "fusion/checkpoint_stream.hpp"
#include "fusion/error.hpp"
#include "fusion/merging.hpp"

namespace fusion::methods {

void TaskArithmeticOptions::bind(Options<TaskArithmeticOptions>& o) {
  o("scaling_factor", &TaskArithmeticOptions::scaling_factor, "λ in θ = θ₀ + λ Σₜ (θₜ − θ₀)");
  o("scaling_factors", &TaskArithmeticOptions::scaling_factors,
    "a λ sweep: one merged model per value, replacing scaling_factor "
    "(the task vectors are summed once)");
}

ComponentInfo TaskArithmetic::info() {
  return {"task_arithmetic", "Task arithmetic: the pretrained model plus λ times the sum of the task vectors",
          "https://arxiv.org/abs/2212.04089", {}, Requirements().pretrained().experts(1)};
}

namespace {

constexpr const char* kOption = "method.scaling_factors";

// The checks add_scaled_results makes, with its messages.
void check_lambdas(const std::vector<double>& lambdas) {
  FUSION_ENSURE(!lambdas.empty(), kOption, " is empty: give at least one scaling factor");
  std::set<std::string> seen;
  for (double lambda : lambdas) {
    FUSION_ENSURE(seen.insert(format_scalar(lambda)).second, kOption, " lists ", format_scalar(lambda),
                  " more than once");
  }
}

// The streamed pass's arithmetic on one chunk, compiled for AVX2 and the baseline x86-64 (the loader
// picks one): the same float operations per element either way, vectorised 8 or 4 wide.
#if defined(__x86_64__) && defined(__GNUC__)
#define FUSION_TA_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FUSION_TA_CLONES
#endif
FUSION_TA_CLONES void add_into(float* __restrict out, const float* __restrict y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] += y[j];
}
// out = (s − T·θ₀)·λ + θ₀
FUSION_TA_CLONES void task_arithmetic_of(float* __restrict out, const float* __restrict base, float t, float lambda,
                                         int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = (out[j] - t * base[j]) * lambda + base[j];
}
FUSION_TA_CLONES void subtract_scaled(float* __restrict out, const float* __restrict base, float t, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] -= t * base[j];
}
FUSION_TA_CLONES void scaled_plus(float* __restrict out, const float* __restrict delta, float lambda,
                                  const float* __restrict base, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = delta[j] * lambda + base[j];
}

// Task arithmetic in one pass over the files of θ₀ and every θₜ (detail::CheckpointStream), chunk by
// chunk: s = Σₜ θₜ, Δ = s − T·θ₀, θ = θ₀ + λ·Δ, the same float arithmetic per element as
// sum_task_vectors + add_scaled_results.
//
// When the host saves the models (detail::OutputFile::create gives a file), each θ goes straight
// from the chunk, in cache, into its file as it is computed, and the save links that file instead
// of writing it: a sweep then makes all of its models in the same single pass (Δ is never held).
// Otherwise one λ writes θ into the output, the one model-sized buffer; a sweep keeps Δ (flat), and
// each model θ₀ + λΔ is made when the host asks for it, θ₀ read again from the stream; a buffer the
// host has dropped is reused for the next.
Result run_streamed(ModelPool& models, const Context& ctx, const std::vector<double>& lambdas,
                    std::shared_ptr<const detail::CheckpointStream> stream) {
  const size_t t_count = stream->num_models() - 1;  // model 0 is θ₀
  const float t_f = static_cast<float>(t_count);
  const bool sweep = lambdas.size() > 1;
  const float lambda0 = static_cast<float>(lambdas[0]);
  ConstModelPtr pretrained = models.pretrained();  // the Model object; its tensors are not read
  auto progress = ctx.progress("task arithmetic (streamed)", 1);

  std::vector<std::unique_ptr<detail::OutputFile>> files;
  for (size_t k = 0; k < lambdas.size(); ++k) {
    std::unique_ptr<detail::OutputFile> file = detail::OutputFile::create(*stream, pretrained->parameters());
    if (!file) break;
    files.push_back(std::move(file));
  }
  Result result;
  result.info = {{"num_experts", t_count}, {"scaling_factors", lambdas}};
  result.sweep = sweep;
  if (files.size() == lambdas.size()) {
    constexpr int64_t kChunk = 32768;
    const int threads = std::max(1, at::get_num_threads());
    std::vector<std::vector<float>> scratch(threads, std::vector<float>(3 * kChunk));
    std::vector<float> l(lambdas.begin(), lambdas.end());
    stream->for_each_chunk(
        [&](size_t i, int64_t b, int64_t e) {
          float* out = scratch[at::get_thread_num()].data();
          float* model = out + kChunk;
          float* base = model + kChunk;
          const int64_t n = e - b;
          // Read unchecked: the result is NaN or ±Inf wherever a weight is (check_result).
          stream->read_unchecked(1, i, b, e, out);
          for (size_t t = 2; t <= t_count; ++t) {
            stream->read_unchecked(t, i, b, e, model);
            add_into(out, model, n);
          }
          stream->read_unchecked(0, i, b, e, base);
          if (!sweep) {
            task_arithmetic_of(out, base, t_f, lambda0, n);
            stream->check_result(i, b, e, out);
            files[0]->write(i, b, e, out);
            return;
          }
          subtract_scaled(out, base, t_f, n);
          stream->check_result(i, b, e, out);
          for (size_t k = 0; k < l.size(); ++k) {
            scaled_plus(model, out, l[k], base, n);
            files[k]->write(i, b, e, model);
          }
        },
        kChunk);
    progress->advance();
    progress->finish();
    for (size_t k = 0; k < lambdas.size(); ++k) {
      ConstModelPtr model = pretrained->with_parameters(files[k]->finish());
      if (!sweep) {
        result.add("merged", std::move(model), nlohmann::json{{"scaling_factor", lambdas[0]}});
      } else {
        result.add("scaling_factor=" + format_scalar(lambdas[k]), std::move(model),
                   nlohmann::json{{"scaling_factor", lambdas[k]}});
      }
    }
    return result;
  }
  files.clear();

  at::Tensor flat = stream->flat_buffer();
  float* out_base = flat.data_ptr<float>();
  constexpr int64_t kChunk = 32768;
  std::vector<std::vector<float>> scratch(std::max(1, at::get_num_threads()), std::vector<float>(kChunk));
  stream->for_each_chunk([&](size_t i, int64_t b, int64_t e) {
    float* out = out_base + stream->flat_offset(i) + b;
    float* y = scratch[at::get_thread_num()].data();
    const int64_t n = e - b;
    stream->read_unchecked(1, i, b, e, out);  // the result is checked (check_result)
    for (size_t t = 2; t <= t_count; ++t) {
      stream->read_unchecked(t, i, b, e, y);
      add_into(out, y, n);
    }
    stream->read_unchecked(0, i, b, e, y);  // θ₀
    if (sweep) {
      subtract_scaled(out, y, t_f, n);
    } else {
      task_arithmetic_of(out, y, t_f, lambda0, n);
    }
    stream->check_result(i, b, e, out);
  }, kChunk);
  progress->advance();
  progress->finish();

  if (!sweep) {
    result.add("merged", pretrained->with_parameters(stream->unflatten(flat, pretrained->parameters())),
               nlohmann::json{{"scaling_factor", lambdas[0]}});
    return result;
  }
  struct Shared {
    std::shared_ptr<const detail::CheckpointStream> stream;
    ConstModelPtr pretrained;
    at::Tensor delta;
    at::Tensor spare;  ///< the last output buffer; reused once nothing else holds it
  };
  auto shared = std::make_shared<Shared>(Shared{std::move(stream), pretrained, flat, at::Tensor()});
  for (double lambda : lambdas) {
    result.add_lazy(
        "scaling_factor=" + format_scalar(lambda),
        [shared, lambda]() -> ConstModelPtr {
          const detail::CheckpointStream& s = *shared->stream;
          at::Tensor out = shared->spare.defined() && shared->spare.use_count() == 1 &&
                                   shared->spare.storage().use_count() == 1
                               ? shared->spare
                               : s.flat_buffer();
          shared->spare = out;
          float* o = out.data_ptr<float>();
          const float* d = shared->delta.data_ptr<float>();
          const float l = static_cast<float>(lambda);
          s.for_each_chunk([&](size_t i, int64_t b, int64_t e) {
            const int64_t off = s.flat_offset(i);
            float* base = o + off + b;  // θ₀ read into the output, then θ₀ + λΔ in place
            s.read(0, i, b, e, base);
            for (int64_t j = 0; j < e - b; ++j) base[j] = d[off + b + j] * l + base[j];
          });
          return shared->pretrained->with_parameters(s.unflatten(out, shared->pretrained->parameters()));
        },
        nlohmann::json{{"scaling_factor", lambda}});
  }
  return result;
}

}  // namespace

Result TaskArithmetic::run(ModelPool& models, TaskPool* /*tasks*/, const Context& ctx) {
  const std::vector<double> lambdas =
      scaling_factors_of(options_.scaling_factor, options_.scaling_factors.value_or(std::vector<double>{}));
  if (ctx.device().is_cpu()) {
    std::vector<std::string> names{"pretrained"};
    for (const std::string& name : expert_names_checked(models, "task vectors")) names.push_back(name);
    if (std::shared_ptr<const detail::CheckpointStream> stream = detail::CheckpointStream::open(models, names)) {
      check_lambdas(lambdas);
      return run_streamed(models, ctx, lambdas, std::move(stream));
    }
  }
  StateDict task_vector_sum = sum_task_vectors(models, ctx);
  Result result;
  result.info = {{"num_experts", models.expert_names().size()}, {"scaling_factors", lambdas}};
  add_scaled_results(result, models.pretrained(), std::move(task_vector_sum), lambdas);
  return result;
}

}  // namespace fusion::methods
