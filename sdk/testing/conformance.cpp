// The conformance suite for algorithms (fusion/testing/conformance.hpp).
#include "fusion/testing/conformance.hpp"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <set>
#include <sstream>

#include "fusion/error.hpp"
#include "fusion/files.hpp"
#include "fusion/testing/fixtures.hpp"
#include "fusion/testing/memory_pools.hpp"

namespace fusion::testing {

namespace fs = std::filesystem;

const char* status_name(CheckStatus status) {
  switch (status) {
    case CheckStatus::Pass: return "PASS";
    case CheckStatus::Fail: return "FAIL";
    case CheckStatus::Skip: return "SKIP";
  }
  return "?";
}

const std::vector<std::string>& conformance_checks() {
  static const std::vector<std::string> checks = {"identity", "unmodified", "deterministic",
                                                  "requirements", "finite", "minimal"};
  return checks;
}

bool ConformanceReport::passed() const { return count(CheckStatus::Fail) == 0; }

const CheckResult* ConformanceReport::find(const std::string& check) const {
  for (const auto& c : checks)
    if (c.check == check) return &c;
  return nullptr;
}

int ConformanceReport::count(CheckStatus status) const {
  return static_cast<int>(std::count_if(checks.begin(), checks.end(),
                                        [&](const CheckResult& c) { return c.status == status; }));
}

std::string ConformanceReport::to_string() const {
  std::string out;
  for (const auto& c : checks)
    out += std::string(status_name(c.status)) + " " + algorithm + " " + c.check + ": " + c.message + "\n";
  return out;
}

Config conformance_config(const ComponentInfo& info, const std::vector<std::string>& assignments,
                          std::vector<std::string>& missing) {
  std::map<std::string, Value> values;
  try {
    values = parse_assignments(assignments);
  } catch (const Error& e) {
    FUSION_FAIL(info.name, ": ", e.what());
  }
  // Required options not given are recorded, not refused: the checks that run the method skip.
  Schema schema = info.schema;
  missing.clear();
  for (size_t i = 0; i < schema.options().size(); ++i) {
    const OptionSpec& o = schema.options()[i];
    if (!o.default_value && !o.optional_no_default && values.count(o.name) == 0) {
      missing.push_back(o.name);
      schema.spec_at(i).optional_no_default = true;
    }
  }
  try {
    return Config::validate("method", values, schema);
  } catch (const Error& e) {
    FUSION_FAIL(info.name, ": ", e.what());
  }
}

namespace {

std::string plural(size_t n, const std::string& what) {
  return std::to_string(n) + " " + what + (n == 1 ? "" : "s");
}

std::string first_line(const std::string& s) {
  auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl) + " [...]";
}

std::string number(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

/// What one run of the method gave.
struct Outcome {
  bool ok = false;
  bool fusion_error = false;      ///< it threw fusion::Error
  bool one_line = true;           ///< ... with a message of one line
  std::string error;              ///< what went wrong, one line
  std::vector<std::string> labels;
  std::vector<nlohmann::json> metadata;
  std::vector<ConstModelPtr> models;
};

/// The pools of one run and what they are.
struct Setup {
  std::shared_ptr<MemoryModelPool> models;
  std::shared_ptr<MemoryTaskPool> tasks;  ///< null: no task pool
  std::string description;                ///< "a pretrained model, 2 experts, a task pool with train splits"
};

class Suite {
 public:
  Suite(const ComponentInfo& info, const AlgorithmFactory& factory, const ConformanceOptions& options, Config config,
        fs::path work_dir)
      : info_(info),
        factory_(factory),
        o_(options),
        config_(std::move(config)),
        work_dir_(std::move(work_dir)),
        logger_(options.logger ? options.logger : std::make_shared<Logger>(LogLevel::Warn)) {
    const Requirements& r = info_.requirements;
    n_ = o_.num_experts > 0 ? o_.num_experts : std::max<int64_t>(2, r.min_experts);
    base_.num_tasks = n_;
    base_.model = o_.model;
    base_.seed = o_.seed;
    base_.device = o_.device;
    base_.dtype = o_.dtype;
    base_.fine_tune_steps = o_.fine_tune_steps;
    base_.experts = ExpertKind::FineTuned;
    distinct_ = make_tiny_setup(base_);
    TinySetupOptions same = base_;
    same.experts = ExpertKind::Identical;
    identical_ = make_tiny_setup(same);
  }

  /// A task pool of the setup's tasks, fresh (its own counters and streams).
  std::shared_ptr<MemoryTaskPool> tasks(bool train_splits, bool last_without_train = false) const {
    auto pool = std::make_shared<MemoryTaskPool>();
    TinySetupOptions o = base_;
    o.train_splits = train_splits;
    for (int64_t i = 0; i < n_; ++i) {
      SyntheticTaskOptions t = tiny_task_options(o, i);
      if (last_without_train && i == n_ - 1) t.train_size = 0;
      pool->add_synthetic(distinct_.experts[static_cast<size_t>(i)].first, t);
    }
    return pool;
  }

  /// A model pool over `setup`'s models: with or without the pretrained one, the first `experts`.
  std::shared_ptr<MemoryModelPool> models(const TinySetup& setup, bool pretrained, int64_t experts) const {
    std::vector<std::pair<std::string, ConstModelPtr>> ex(setup.experts.begin(),
                                                          setup.experts.begin() + std::min<int64_t>(experts, n_));
    return std::make_shared<MemoryModelPool>(pretrained ? setup.pretrained : nullptr, std::move(ex), o_.device, o_.dtype);
  }

  Setup full(const TinySetup& setup) const {
    return {models(setup, true, n_), tasks(true),
            "a pretrained model, " + plural(static_cast<size_t>(n_), "expert") + ", a task pool with train splits"};
  }

  /// Exactly what the method declares it needs.
  Setup minimal_setup() const {
    const Requirements& r = info_.requirements;
    const bool with_tasks = r.needs_task_pool || r.needs_train_splits;
    Setup s{models(distinct_, r.needs_pretrained, r.min_experts),
            with_tasks ? tasks(r.needs_train_splits) : nullptr, ""};
    s.description = std::string(r.needs_pretrained ? "a pretrained model" : "no pretrained model") + ", " +
                    (r.min_experts > 0 ? plural(static_cast<size_t>(r.min_experts), "expert") : "no experts") + ", " +
                    (!with_tasks ? "no task pool"
                                 : r.needs_train_splits ? "a task pool with train splits"
                                                        : "a task pool without train splits");
    return s;
  }

  /// The context of run `tag`: the run's settings, a fresh run directory, the checked options.
  Context context(const std::string& tag) const {
    const fs::path dir = work_dir_ / tag;
    std::error_code ec;
    fs::remove_all(dir, ec);
    fs::create_directories(dir);
    Context::Settings s;
    s.device = o_.device;
    s.dtype = o_.dtype;
    s.seed = o_.seed;
    s.threads = at::get_num_threads();
    s.progress = false;
    s.run_dir = dir;
    s.logger = logger_;
    return Context(s).with_config(config_);
  }

  /// Makes the algorithm once, before any run: "" when it can be made; otherwise why not. A
  /// fusion::Error from the factory is a refusal of the options (`refused` set): the options are
  /// valid for the schema but not usable together, e.g. multitask_pretrain's init = "random"
  /// without a model_config. Another exception is a fault of the factory.
  std::string probe(bool& refused) const {
    refused = false;
    try {
      if (!factory_(context("probe"))) return "the factory returned no object";
      return "";
    } catch (const Error& e) {
      refused = true;
      return first_line(e.what());
    } catch (const c10::Error& e) {
      return "the factory threw c10::Error (not fusion::Error): " + first_line(e.what_without_backtrace());
    } catch (const std::exception& e) {
      return "the factory threw an exception that is not fusion::Error: " + first_line(e.what());
    } catch (...) {
      return "the factory threw an exception that is not a std::exception";
    }
  }

  /// Runs the method once on `setup`, as the host does: requirements, factory, run, then every
  /// model made. Catches everything the method throws.
  Outcome run(const std::string& tag, const Setup& setup) {
    used_.push_back({tag, setup.models});
    Outcome out;
    const Context ctx = context(tag);
    at::manual_seed(o_.seed);
    try {
      check_requirements(info_, *setup.models, setup.tasks.get());
      std::unique_ptr<Algorithm> algorithm = factory_(ctx);
      if (!algorithm) {
        out.error = "the factory returned no object";
        return out;
      }
      Result result = algorithm->run(*setup.models, setup.tasks.get(), ctx);
      if (result.models.empty()) {
        out.error = "run() returned no model";
        return out;
      }
      std::set<std::string> seen;
      for (ResultModel& rm : result.models) {
        if (!seen.insert(rm.label).second) {
          out.error = "two models are labelled '" + rm.label + "' (labels must be unique)";
          return out;
        }
        if (!rm.make) {
          out.error = "model '" + rm.label + "' has nothing to make it";
          return out;
        }
        ConstModelPtr model = rm.make();
        if (!model) {
          out.error = "made no model for '" + rm.label + "'";
          return out;
        }
        out.labels.push_back(rm.label);
        out.metadata.push_back(rm.metadata.is_null() ? nlohmann::json::object() : rm.metadata);
        out.models.push_back(std::move(model));
      }
      out.ok = true;
    } catch (const Error& e) {
      const std::string msg = e.what();
      out.fusion_error = true;
      out.one_line = msg.find('\n') == std::string::npos && !msg.empty();
      out.error = "fusion::Error: " + first_line(msg);
    } catch (const c10::Error& e) {
      out.error = "c10::Error (not fusion::Error): " + first_line(e.what_without_backtrace());
    } catch (const std::exception& e) {
      out.error = "an exception that is not fusion::Error: " + first_line(e.what());
    } catch (...) {
      out.error = "an exception that is not a std::exception";
    }
    return out;
  }

  // --------------------------------------------------------------------------------------------
  // The checks.

  CheckResult identity() {
    const Outcome c = run("identity", full(identical_));
    if (!c.ok) return fail("identity", "the run on experts equal to the pretrained model failed: " + c.error);
    const StateDict expected = identical_.pretrained->parameters().to(o_.device, o_.dtype);
    for (size_t i = 0; i < c.models.size(); ++i) {
      const std::string diff = state_dict_difference(c.models[i]->parameters(), expected, o_.rtol, o_.atol);
      if (!diff.empty())
        return fail("identity", "experts equal to the pretrained model, but model '" + c.labels[i] +
                                    "' differs from it: " + diff);
    }
    return pass("identity", plural(c.models.size(), "model") + " from experts equal to the pretrained model " +
                                (c.models.size() == 1 ? "equals" : "equal") + " it (rtol " + number(o_.rtol) +
                                ", atol " + number(o_.atol) + ")");
  }

  void run_twice(bool both) {
    first_ = run("run1", full(distinct_));
    if (both) second_ = run("run2", full(distinct_));
  }

  CheckResult deterministic() {
    const Outcome& a = *first_;
    const Outcome& b = *second_;
    if (!a.ok) return fail("deterministic", "the first run failed: " + a.error);
    if (!b.ok) return fail("deterministic", "the first run succeeded, the second with the same seed failed: " + b.error);
    if (a.labels != b.labels) {
      std::string la, lb;
      for (const auto& l : a.labels) la += (la.empty() ? "" : ", ") + l;
      for (const auto& l : b.labels) lb += (lb.empty() ? "" : ", ") + l;
      return fail("deterministic", "two runs with seed " + std::to_string(o_.seed) + " returned different models: [" +
                                       la + "] and [" + lb + "]");
    }
    const double rtol = o_.exact_determinism ? 0.0 : o_.rtol, atol = o_.exact_determinism ? 0.0 : o_.atol;
    for (size_t i = 0; i < a.models.size(); ++i) {
      if (a.metadata[i] != b.metadata[i])
        return fail("deterministic", "model '" + a.labels[i] + "': metadata " + a.metadata[i].dump() + " then " +
                                         b.metadata[i].dump() + " with the same seed");
      const std::string diff = state_dict_difference(b.models[i]->parameters(), a.models[i]->parameters(), rtol, atol);
      if (!diff.empty())
        return fail("deterministic", "two runs with seed " + std::to_string(o_.seed) + " differ in model '" +
                                         a.labels[i] + "': " + diff);
    }
    return pass("deterministic", "two runs with seed " + std::to_string(o_.seed) + " returned the same " +
                                     plural(a.models.size(), "model") +
                                     (o_.exact_determinism ? ", bit for bit" : ", within rtol and atol"));
  }

  CheckResult finite() {
    const Outcome& a = *first_;
    if (!a.ok) return fail("finite", "the run failed: " + a.error);
    auto pool = tasks(true);
    for (size_t i = 0; i < a.models.size(); ++i) {
      const std::string& label = a.labels[i];
      const std::string bad = non_finite(a.models[i]->parameters());
      if (!bad.empty()) return fail("finite", "model '" + label + "': " + bad);
      nlohmann::json report;
      try {
        report = pool->evaluate(*a.models[i]);
      } catch (const std::exception& e) {
        const c10::Error* ce = dynamic_cast<const c10::Error*>(&e);
        return fail("finite", "model '" + label + "' cannot be evaluated on the tasks: " +
                                  first_line(ce ? ce->what_without_backtrace() : e.what()));
      }
      for (const auto& name : pool->task_names()) {
        for (const char* metric : {"accuracy", "loss"}) {
          const auto& r = report.at(name);
          if (!r.contains(metric) || !r[metric].is_number() || !std::isfinite(r[metric].get<double>()))
            return fail("finite", "model '" + label + "': " + metric + " on task '" + name + "' is " +
                                      (r.contains(metric) ? r[metric].dump() : std::string("missing")));
        }
      }
    }
    return pass("finite", plural(a.models.size(), "model") + ": every parameter finite, accuracy and loss finite on " +
                              plural(static_cast<size_t>(n_), "task"));
  }

  CheckResult requirements() {
    const Requirements& r = info_.requirements;
    std::vector<std::string> refused;
    std::string example;
    std::string problem;
    auto expect_refusal = [&](const std::string& what, const ModelPool& pool, TaskPool* tasks) {
      if (!problem.empty()) return;
      try {
        check_requirements(info_, pool, tasks);
        problem = "declares " + r.describe() + ", but a setup with " + what + " is accepted";
      } catch (const Error& e) {
        const std::string msg = e.what();
        if (msg.empty() || msg.find('\n') != std::string::npos)
          problem = "with " + what + ": the message is not one line: \"" + first_line(msg) + "\"";
        else if (msg.find(info_.name) == std::string::npos)
          problem = "with " + what + ": the message does not name " + info_.name + ": \"" + msg + "\"";
        else {
          refused.push_back(what);
          if (example.empty()) example = msg;
        }
      } catch (const std::exception& e) {
        problem = "with " + what + ": threw an exception that is not fusion::Error: " + first_line(e.what());
      }
    };
    auto all_tasks = tasks(true);
    if (r.needs_pretrained) expect_refusal("no pretrained model", *models(distinct_, false, n_), all_tasks.get());
    if (r.min_experts > 0) {
      std::set<int64_t> counts = {r.min_experts - 1, 0};
      for (auto it = counts.rbegin(); it != counts.rend(); ++it)
        expect_refusal(*it == 0 ? std::string("no experts") : plural(static_cast<size_t>(*it), "expert"),
                       *models(distinct_, true, *it), all_tasks.get());
    }
    if (r.needs_task_pool || r.needs_train_splits)
      expect_refusal("no task pool", *models(distinct_, true, n_), nullptr);
    if (r.needs_train_splits) {
      auto partial = tasks(true, true);
      expect_refusal("a task without a train split", *models(distinct_, true, n_), partial.get());
    }
    if (!problem.empty()) return fail("requirements", problem);
    const Setup f = full(distinct_);
    try {
      check_requirements(info_, *f.models, f.tasks.get());
    } catch (const std::exception& e) {
      return fail("requirements", "the full setup (" + f.description + ") is refused: " + first_line(e.what()));
    }
    if (refused.empty()) return pass("requirements", "declares no requirement; the full setup is accepted");
    std::string list;
    for (const auto& w : refused) list += (list.empty() ? "" : ", ") + w;
    return pass("requirements", "declares " + r.describe() + "; refused in one line each: " + list + " (\"" + example +
                                    "\"); the full setup is accepted");
  }

  CheckResult minimal() {
    const Setup s = minimal_setup();
    const Outcome d = run("minimal", s);
    if (d.ok) return pass("minimal", "given only what it declares (" + s.description + "), it returned " +
                                         plural(d.models.size(), "model"));
    if (d.fusion_error && d.one_line)
      return pass("minimal", "given only what it declares (" + s.description + "), it refused in one line: " +
                                 d.error.substr(std::string("fusion::Error: ").size()));
    if (d.fusion_error)
      return fail("minimal", "given only what it declares (" + s.description +
                                 "), it threw fusion::Error with a message that is not one line: " + d.error);
    return fail("minimal", "given only what it declares (" + s.description + "), it threw " + d.error);
  }

  CheckResult unmodified() const {
    if (used_.empty()) return skip("unmodified", "no run to watch (every check that runs the method is skipped)");
    int64_t loads = 0, handed = 0;
    for (const auto& [tag, pool] : used_) {
      const std::string change = pool->modification();
      if (!change.empty()) return fail("unmodified", "during run '" + tag + "': " + change);
      loads += pool->loads();
      handed += pool->pretrained_calls();
    }
    return pass("unmodified", "after " + plural(used_.size(), "run") + " (" + plural(static_cast<size_t>(loads), "expert load") +
                                  ", " + plural(static_cast<size_t>(handed), "pretrained() call") +
                                  ") the pools' models and the pretrained model they handed out are unchanged");
  }

  static CheckResult pass(const std::string& c, std::string m) { return {c, CheckStatus::Pass, std::move(m)}; }
  static CheckResult fail(const std::string& c, std::string m) { return {c, CheckStatus::Fail, std::move(m)}; }
  static CheckResult skip(const std::string& c, std::string m) { return {c, CheckStatus::Skip, std::move(m)}; }

  std::optional<Outcome> first_, second_;

 private:
  const ComponentInfo& info_;
  const AlgorithmFactory& factory_;
  const ConformanceOptions& o_;
  Config config_;
  fs::path work_dir_;
  std::shared_ptr<Logger> logger_;
  int64_t n_ = 2;
  TinySetupOptions base_;
  TinySetup distinct_, identical_;
  std::vector<std::pair<std::string, std::shared_ptr<MemoryModelPool>>> used_;
};

}  // namespace

ConformanceReport check_algorithm(const ComponentInfo& info, const AlgorithmFactory& factory,
                                  const ConformanceOptions& options) {
  const auto& names = conformance_checks();
  for (const auto& [check, reason] : options.skip) {
    if (std::find(names.begin(), names.end(), check) == names.end()) {
      std::string known;
      for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
      FUSION_FAIL(info.name, ": cannot skip unknown check '", check, "' (checks: ", known, ")");
    }
  }
  FUSION_ENSURE(static_cast<bool>(factory), info.name, ": no factory to make the algorithm");
  std::vector<std::string> missing;
  Config config = conformance_config(info, options.options, missing);

  std::optional<ScratchDir> scratch;
  fs::path work;
  if (options.work_dir.empty()) {
    scratch.emplace("fusion_check_" + info.name);
    work = scratch->path();
  } else {
    work = options.work_dir / info.name;
    std::error_code ec;
    fs::remove_all(work, ec);
    fs::create_directories(work);
  }

  ConformanceReport report;
  report.algorithm = info.name;
  auto skipped = [&](const std::string& check) { return options.skip.count(check) > 0; };
  auto on_request = [&](const std::string& check) {
    return Suite::skip(check, "skipped on request: " + options.skip.at(check));
  };

  Suite suite(info, factory, options, std::move(config), work);
  std::map<std::string, CheckResult> results;
  std::string made;
  if (!missing.empty()) {
    std::string list, example;
    for (const auto& m : missing) {
      list += (list.empty() ? "method." : ", method.") + m;
      example += (example.empty() ? "" : " ") + m + "=VALUE";
    }
    const std::string why = "cannot run without " + list + " (required, no default): give " +
                            (missing.size() == 1 ? "it" : "them") + " as options (fusion check: --set " + example + ")";
    for (const auto& c : names)
      if (c != "requirements") results[c] = Suite::skip(c, why);
  } else if (bool refused = false; !(made = suite.probe(refused)).empty()) {
    // The options are the schema's but the algorithm cannot be made with them: say so on every
    // check that runs it (a refusal of the options skips, any other failure of the factory fails).
    for (const auto& c : names) {
      if (c == "requirements") continue;
      results[c] = refused ? Suite::skip(c, "cannot be made with these options: " + made +
                                                " (give other options: fusion check --set KEY=VALUE)")
                           : Suite::fail(c, made);
    }
  } else {
    if (!skipped("identity")) results["identity"] = suite.identity();
    const bool need_first = !skipped("deterministic") || !skipped("finite");
    if (need_first) suite.run_twice(!skipped("deterministic"));
    if (!skipped("deterministic")) results["deterministic"] = suite.deterministic();
    if (!skipped("finite")) results["finite"] = suite.finite();
    if (!skipped("minimal")) results["minimal"] = suite.minimal();
    if (!skipped("unmodified")) results["unmodified"] = suite.unmodified();
  }
  if (!skipped("requirements")) results["requirements"] = suite.requirements();
  for (const auto& c : names) {
    if (skipped(c))
      report.checks.push_back(on_request(c));
    else
      report.checks.push_back(results.at(c));
  }
  return report;
}

}  // namespace fusion::testing
