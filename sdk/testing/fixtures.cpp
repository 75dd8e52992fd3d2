// Test setups, contexts and comparisons of the test kit (fusion/testing/fixtures.hpp).
#include "fusion/testing/fixtures.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <sstream>

#include "fusion/error.hpp"
#include "fusion/files.hpp"
#include "fusion/seed.hpp"

namespace fusion::testing {

namespace {
// derive_seed tags of the streams a tiny setup draws.
constexpr uint64_t kPretrainedStream = 1, kTaskStream = 2, kPerturbationStream = 3;
}  // namespace

SyntheticTaskOptions tiny_task_options(const TinySetupOptions& options, int64_t index) {
  SyntheticTaskOptions o = options.task;
  o.classes = options.task.classes + index % 2;
  o.input_dim = options.model.input_dim;
  o.feature_dim = options.model.hidden;
  o.seed = derive_seed(options.seed, kTaskStream, static_cast<uint64_t>(index));
  if (!options.train_splits) o.train_size = 0;
  o.device = options.device;
  o.dtype = options.dtype;
  return o;
}

TinySetup make_tiny_setup(const TinySetupOptions& options) {
  FUSION_ENSURE(options.num_tasks >= 0, "make_tiny_setup: num_tasks must not be negative");
  FUSION_ENSURE(options.names.empty() || static_cast<int64_t>(options.names.size()) == options.num_tasks,
                "make_tiny_setup: ", options.names.size(), " names for ", options.num_tasks, " tasks");
  TinySetup s;
  s.pretrained = TinyModel::random(options.model, derive_seed(options.seed, kPretrainedStream));
  s.tasks = std::make_shared<MemoryTaskPool>();
  for (int64_t i = 0; i < options.num_tasks; ++i) {
    const std::string name = options.names.empty() ? "task" + std::to_string(i) : options.names[static_cast<size_t>(i)];
    const SyntheticTaskOptions task_options = tiny_task_options(options, i);
    s.tasks->add_synthetic(name, task_options);

    ConstModelPtr expert;
    switch (options.experts) {
      case ExpertKind::Identical:
        expert = s.pretrained->with_parameters(s.pretrained->parameters().clone());
        break;
      case ExpertKind::Perturbed: {
        at::Generator g = at::make_generator<at::CPUGeneratorImpl>(
            derive_seed(options.seed, kPerturbationStream, static_cast<uint64_t>(i)));
        StateDict p;
        for (const auto& [k, t] : s.pretrained->parameters())
          p.set(k, t.is_floating_point() ? t + at::randn(t.sizes(), g) * options.perturbation : t.clone());
        expert = s.pretrained->with_parameters(std::move(p));
        break;
      }
      case ExpertKind::FineTuned: {
        // Trained on the CPU in float32 on the task's train split (drawn even when the pool's tasks
        // have none: the same seed gives the same data).
        SyntheticTaskOptions cpu = task_options;
        cpu.device = at::kCPU;
        cpu.dtype = at::kFloat;
        if (cpu.train_size == 0) cpu.train_size = options.task.train_size > 0 ? options.task.train_size : 96;
        SyntheticTask trainer(name, cpu);
        expert = s.pretrained->with_parameters(fine_tune(*s.pretrained, s.pretrained->parameters(), trainer,
                                                         trainer.train_split(), options.fine_tune_steps,
                                                         options.fine_tune_lr));
        break;
      }
    }
    s.experts.emplace_back(name, std::move(expert));
  }
  s.models = std::make_shared<MemoryModelPool>(s.pretrained, s.experts, options.device, options.dtype);
  return s;
}

StateDict fine_tune(const Model& model, const StateDict& params, const Task& task, const Batch& batch,
                    int64_t steps, double lr) {
  StateDict p;
  for (const auto& [k, t] : params)
    p.set(k, t.is_floating_point() ? t.detach().clone().set_requires_grad(true) : t.clone());
  c10::AutoGradMode grad_on(true);
  for (int64_t s = 0; s < steps; ++s) {
    at::Tensor loss = task.loss(model, p, batch);
    loss.backward();
    c10::NoGradGuard no_grad;
    for (const auto& [k, t] : p) {
      if (!t.is_floating_point()) continue;
      at::Tensor w = t;  // the same tensor: updated in place
      if (w.grad().defined()) {
        w.sub_(w.grad() * lr);
        w.mutable_grad().zero_();
      }
    }
  }
  return p.detach();
}

std::map<std::string, Value> parse_assignments(const std::vector<std::string>& assignments) {
  RunConfig rc = RunConfig::from_string("", "assignments");
  for (const auto& a : assignments) {
    const std::string prefix = "method.";
    rc.apply_override(a.rfind(prefix, 0) == 0 ? a : prefix + a);
  }
  return rc.section("method");
}

Context test_context(const Schema& schema, const std::map<std::string, Value>& values,
                     const ContextOptions& options) {
  Context::Settings s;
  s.device = options.device;
  s.dtype = options.dtype;
  s.seed = options.seed;
  s.progress = options.progress;
  s.run_dir = options.run_dir;
  s.logger = options.logger ? options.logger : std::make_shared<Logger>(LogLevel::Warn);
  return Context(s).with_config(Config::validate("method", values, schema));
}

std::string state_dict_difference(const StateDict& actual, const StateDict& expected, double rtol, double atol) {
  for (const auto& [k, t] : actual)
    if (!expected.contains(k)) return "key '" + k + "' is not expected";
  for (const auto& [k, e] : expected) {
    const at::Tensor* a = actual.find(k);
    std::ostringstream out;
    out << "key '" << k << "': ";
    if (a == nullptr) return out.str() + "missing";
    if (a->scalar_type() != e.scalar_type()) {
      out << "dtype " << a->scalar_type() << ", expected " << e.scalar_type();
      return out.str();
    }
    if (a->sizes() != e.sizes()) {
      out << "shape " << a->sizes() << ", expected " << e.sizes();
      return out.str();
    }
    c10::NoGradGuard no_grad;
    at::Tensor x = a->detach().cpu(), y = e.detach().cpu();
    if (!at::isFloatingType(y.scalar_type())) {
      if (!x.equal(y)) return out.str() + "integer values differ";
      continue;
    }
    at::Tensor xd = x.to(at::kDouble), yd = y.to(at::kDouble);
    at::Tensor both_nan = xd.isnan() & yd.isnan();
    at::Tensor diff = (xd - yd).abs().masked_fill(both_nan, 0.0);
    at::Tensor bad = diff.isnan() | (diff > atol + rtol * yd.abs());
    if (bad.any().item<bool>()) {
      out << "max abs difference " << diff.masked_fill(diff.isnan(), INFINITY).max().item<double>() << " at rtol "
          << rtol << ", atol " << atol;
      return out.str();
    }
  }
  return "";
}

std::string non_finite(const StateDict& params) {
  c10::NoGradGuard no_grad;
  for (const auto& [k, t] : params) {
    if (!t.is_floating_point()) continue;
    const int64_t bad = (~t.detach().isfinite()).sum().item<int64_t>();
    if (bad > 0)
      return "key '" + k + "' has " + std::to_string(bad) + " non-finite value" + (bad == 1 ? "" : "s") + " of " +
             std::to_string(t.numel());
  }
  return "";
}

ScratchDir::ScratchDir(const std::string& prefix)
    : path_(std::filesystem::temp_directory_path() / (prefix + "_" + random_suffix())) {
  std::filesystem::create_directories(path_);
}

ScratchDir::~ScratchDir() {
  if (keep_) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

}  // namespace fusion::testing
