#pragma once
// The conformance suite for merging algorithms (library fusion::testing), in the spirit of ggml's
// backend tests: one catalogue of checks that any registered Algorithm, in the tree or outside it,
// must pass on a tiny functional model (TinyModel) with synthetic tasks (SyntheticTask).
//
//   fusion check NAME [NAME...] [--set key=value ...]     (the `fusion` binary, plugins as `run`)
//   fusion::testing::check_algorithm<MyMethod>(options)    (a plugin's own unit test)
//
// The checks, in the order they are reported:
//   identity       experts equal to the pretrained model: every model returned equals it
//   unmodified     no model the pool holds or handed out (pretrained()) changes during any run
//   deterministic  two runs with the same seed return the same labels, metadata and parameters
//   requirements   each declared requirement, violated, is refused by check_requirements with
//                  fusion::Error and a one-line message naming the method; the full setup is not
//   finite         every parameter of every returned model is finite, and so are its accuracy and
//                  loss on every task's test split (the model must keep a forward)
//   minimal        a run given exactly what the method declares (no pretrained model unless
//                  declared, min_experts experts, no task pool unless declared, no train splits
//                  unless declared) returns models or refuses with fusion::Error in one line;
//                  another exception fails (a method that dereferences a task pool it did not
//                  declare crashes, as it would in `fusion run`)
//
// Before any run the algorithm is made once from the options. When a required option is missing,
// or the factory refuses the options with fusion::Error (options each valid but not usable
// together, such as multitask_pretrain's init = "random" without a model_config), every check
// that runs the method is SKIP with that reason; `requirements` still runs. Once it is made,
// whatever a run throws is a FAIL.
//
// The full setup: a pretrained TinyModel, max(2, min_experts) experts fine-tuned on synthetic tasks
// "task0", "task1", ... and a task pool of those tasks with train and test splits; the method gets
// both pools whatever it declares. Every run has its own run directory, the run's seed and a
// generator seeded from it (at::manual_seed too, as the host does).
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "fusion/algorithm.hpp"
#include "fusion/component.hpp"
#include "fusion/config.hpp"
#include "fusion/context.hpp"
#include "fusion/plugin.hpp"
#include "fusion/testing/tiny_model.hpp"

namespace fusion::testing {

enum class CheckStatus { Pass, Fail, Skip };

/// "PASS", "FAIL", "SKIP".
const char* status_name(CheckStatus status);

/// The names of the checks, in report order: identity, unmodified, deterministic, requirements,
/// finite, minimal.
const std::vector<std::string>& conformance_checks();

/// One check's outcome. `message` is one line: what was verified (PASS), what went wrong (FAIL),
/// or why the check did not run (SKIP).
struct CheckResult {
  std::string check;
  CheckStatus status = CheckStatus::Skip;
  std::string message;
};

/// How check_algorithm runs the suite.
struct ConformanceOptions {
  /// The method's options, `key=value` over its defaults (TOML values: `weights=[0.5, 0.5]`,
  /// `task=task0`; a `method.` prefix is allowed). A required option that is not given makes every
  /// check that runs the method SKIP, saying which option to give.
  std::vector<std::string> options;
  /// Checks not to run: check name → reason (reported as SKIP with it). E.g. {"identity", "trains
  /// the model: its output differs from the pretrained model by design"}.
  std::map<std::string, std::string> skip;
  /// Experts (and tasks) of the full setup; 0: max(2, the method's min_experts).
  int64_t num_experts = 0;
  uint64_t seed = 42;               ///< the runs' seed
  double rtol = 1e-5;               ///< identity: |θ − θ₀| ≤ atol + rtol·|θ₀|
  double atol = 1e-6;
  bool exact_determinism = true;    ///< deterministic: bit for bit (false: within rtol, atol)
  at::Device device = at::kCPU;     ///< where the pools hand out models and data
  at::ScalarType dtype = at::kFloat;
  TinyModelConfig model;            ///< the tiny model's shape
  int64_t fine_tune_steps = 30;     ///< how far the experts are trained from the pretrained model
  /// Run directories are made under it ("" : a temporary folder, removed afterwards).
  std::filesystem::path work_dir;
  /// The methods' logger (null: a new one at Warn level, so that only warnings and errors show).
  std::shared_ptr<Logger> logger;
};

/// The outcome of the suite on one algorithm.
struct ConformanceReport {
  std::string algorithm;
  std::vector<CheckResult> checks;  ///< one per conformance_checks() entry, in that order

  /// No check failed (skipped checks do not fail a report).
  bool passed() const;
  /// The result of `check` (nullptr when there is none by that name).
  const CheckResult* find(const std::string& check) const;
  /// Counts of each status.
  int count(CheckStatus status) const;
  /// One line per check: "PASS task_arithmetic identity: 1 model equals the pretrained model ...".
  std::string to_string() const;
};

/// The method config the suite uses: `assignments` (ConformanceOptions::options) over the defaults
/// of info.schema, checked as the host checks `[method]`. The names of required options that are
/// not given go to `missing` (their absence is not an error here). Throws fusion::Error, naming the
/// algorithm and `method.key`, for an unknown key, a malformed assignment or a bad value.
Config conformance_config(const ComponentInfo& info, const std::vector<std::string>& assignments,
                          std::vector<std::string>& missing);

/// Runs every check on the algorithm `info` describes, made by `factory` (as the host makes it:
/// from a Context whose config() holds the checked options). What the algorithm throws becomes a
/// FAIL of the check that ran it, never an exception out of here; throws fusion::Error only for bad
/// `options` (conformance_config, an unknown check in `skip`). Crashes of the algorithm itself (a
/// null dereference) are not caught.
ConformanceReport check_algorithm(const ComponentInfo& info, const AlgorithmFactory& factory,
                                  const ConformanceOptions& options = {});

namespace detail {
/// A Registrar that keeps what is registered, for check_algorithm<T>.
class CapturingRegistrar : public Registrar {
 public:
  void add_algorithm(ComponentInfo info, AlgorithmFactory factory) override {
    info_ = std::move(info);
    factory_ = std::move(factory);
  }
  void add_model_pool(ComponentInfo, ModelPoolFactory) override {}
  void add_task_pool(ComponentInfo, TaskPoolFactory) override {}
  ComponentInfo info_;
  AlgorithmFactory factory_;
};
}  // namespace detail

/// Runs every check on algorithm T, registered exactly as `reg.add<T>()` registers it in a plugin.
template <class T>
ConformanceReport check_algorithm(const ConformanceOptions& options = {}) {
  detail::CapturingRegistrar reg;
  reg.add<T>();
  return check_algorithm(reg.info_, reg.factory_, options);
}

}  // namespace fusion::testing
