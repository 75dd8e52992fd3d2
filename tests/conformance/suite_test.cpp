// The conformance suite on algorithms written here: a correct one passes every check, and each
// broken one fails the check that exists to catch it (and only the checks it should).
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <stdexcept>

#include "fusion/error.hpp"
#include "fusion/merging.hpp"
#include "fusion/options.hpp"
#include "fusion/testing/conformance.hpp"
#include "fusion/testing/fixtures.hpp"
#include "fusion/testing/gtest.hpp"

namespace {

namespace ft = fusion::testing;
using fusion::ComponentInfo;
using fusion::Context;
using fusion::ModelPool;
using fusion::Requirements;
using fusion::Result;
using fusion::StateDict;
using fusion::TaskPool;

/// θ = mean of the experts, streamed (the SDK's weighted sum).
StateDict mean_of(ModelPool& pool, const Context& ctx) {
  fusion::ModelPtr sum = fusion::weighted_sum_of_experts(pool, ctx);
  return fusion::scale(sum->parameters(), 1.0 / static_cast<double>(pool.expert_names().size()));
}

class Average : public fusion::Algorithm {
 public:
  static ComponentInfo info() { return {"test_average", "mean of the experts", "", {}, Requirements().experts(1)}; }
  Result run(ModelPool& pool, TaskPool*, const Context& ctx) override {
    Result r;
    r.add("merged", pool.load(pool.expert_names().front())->with_parameters(mean_of(pool, ctx)));
    return r;
  }
};

/// Task arithmetic with a required λ (an options struct, registered through Registrar::add<T>).
struct ScaledOptions {
  double lambda = 0.0;
  static void bind(fusion::Options<ScaledOptions>& o) {
    o("lambda", &ScaledOptions::lambda, "λ in θ₀ + λ Σ τ").range(0.0, 1.0).required();
  }
};
class Scaled : public fusion::Algorithm {
 public:
  using Options = ScaledOptions;
  explicit Scaled(Options o) : o_(o) {}
  static ComponentInfo info() {
    return {"test_scaled", "θ₀ + λ Σ τ", "", {}, Requirements().pretrained().experts(1)};
  }
  Result run(ModelPool& pool, TaskPool*, const Context& ctx) override {
    Result r;
    fusion::add_scaled_results(r, pool.pretrained(), fusion::sum_task_vectors(pool, ctx), {o_.lambda});
    return r;
  }

 private:
  Options o_;
};

/// Writes the average into the pool's pretrained model (through a const_cast) and returns it.
class ModifiesPool : public fusion::Algorithm {
 public:
  static ComponentInfo info() { return {"test_modifies", "", "", {}, Requirements().pretrained().experts(1)}; }
  Result run(ModelPool& pool, TaskPool*, const Context& ctx) override {
    auto pre = pool.pretrained();
    StateDict avg = mean_of(pool, ctx);
    for (const auto& [k, t] : const_cast<fusion::Model&>(*pre).parameters()) const_cast<at::Tensor&>(t).copy_(avg.at(k));
    Result r;
    r.add("merged", pre);
    return r;
  }
};

/// The average, with a NaN in its first floating tensor.
class ReturnsNan : public fusion::Algorithm {
 public:
  static ComponentInfo info() { return {"test_nan", "", "", {}, Requirements().experts(1)}; }
  Result run(ModelPool& pool, TaskPool*, const Context& ctx) override {
    StateDict avg = mean_of(pool, ctx);
    avg.at("model.embeddings.weight").view(-1)[0].fill_(NAN);
    Result r;
    r.add("merged", pool.load(pool.expert_names().front())->with_parameters(avg));
    return r;
  }
};

/// The average plus noise below the identity tolerance, from a generator the run's seed does not
/// control.
class Nondeterministic : public fusion::Algorithm {
 public:
  static ComponentInfo info() { return {"test_nondeterministic", "", "", {}, Requirements().experts(1)}; }
  Result run(ModelPool& pool, TaskPool*, const Context& ctx) override {
    StateDict avg = mean_of(pool, ctx);
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(std::random_device{}());
    at::Tensor& w = avg.at("model.encoder.layers.0.mlp.fc1.weight");
    w = w + at::rand(w.sizes(), g) * 2e-7;
    Result r;
    r.add("merged", pool.load(pool.expert_names().front())->with_parameters(avg));
    return r;
  }
};

/// Returns θ₀ + 0.1: wrong even when every expert is θ₀.
class Offset : public fusion::Algorithm {
 public:
  static ComponentInfo info() { return {"test_offset", "", "", {}, Requirements().pretrained()}; }
  Result run(ModelPool& pool, TaskPool*, const Context&) override {
    StateDict p = pool.pretrained()->parameters().clone();
    p.at("model.post_layernorm.bias").add_(0.1);
    Result r;
    r.add("merged", pool.pretrained()->with_parameters(p));
    return r;
  }
};

/// The average as a plain checkpoint: the architecture (and its forward) is lost.
class LosesArchitecture : public fusion::Algorithm {
 public:
  static ComponentInfo info() { return {"test_checkpoint", "", "", {}, Requirements().experts(1)}; }
  Result run(ModelPool& pool, TaskPool*, const Context& ctx) override {
    Result r;
    r.add("merged", std::make_shared<fusion::Model>("checkpoint", mean_of(pool, ctx)));
    return r;
  }
};

/// Uses the task pool without declaring it, and throws std::logic_error without one.
class UndeclaredTasks : public fusion::Algorithm {
 public:
  static ComponentInfo info() { return {"test_undeclared", "", "", {}, Requirements().pretrained()}; }
  Result run(ModelPool& pool, TaskPool* tasks, const Context&) override {
    if (tasks == nullptr) throw std::logic_error("tasks is null");
    Result r;
    r.add("pretrained", pool.pretrained());
    return r;
  }
};

/// Declares more experts than the default setup has.
class NeedsMany : public fusion::Algorithm {
 public:
  static ComponentInfo info() { return {"test_many", "", "", {}, Requirements().experts(3)}; }
  Result run(ModelPool& pool, TaskPool*, const Context& ctx) override {
    Result r;
    r.add("merged", pool.load(pool.expert_names().front())->with_parameters(mean_of(pool, ctx)));
    return r;
  }
};

/// Refuses its default options in its constructor (as multitask_pretrain refuses init = "random"
/// without a model_config).
struct PickyOptions {
  bool ready = false;
  static void bind(fusion::Options<PickyOptions>& o) { o("ready", &PickyOptions::ready, "must be true"); }
};
class Picky : public fusion::Algorithm {
 public:
  using Options = PickyOptions;
  explicit Picky(Options o) { FUSION_ENSURE(o.ready, "method.ready: must be true on this setup"); }
  static ComponentInfo info() { return {"test_picky", "", "", {}, Requirements().experts(1)}; }
  Result run(ModelPool& pool, TaskPool*, const Context& ctx) override {
    Result r;
    r.add("merged", pool.load(pool.expert_names().front())->with_parameters(mean_of(pool, ctx)));
    return r;
  }
};

/// A constructor that throws something other than fusion::Error.
class FaultyFactory : public Average {
 public:
  FaultyFactory() { throw std::runtime_error("out of coffee"); }
  static ComponentInfo info() { return {"test_faulty", "", "", {}, Requirements().experts(1)}; }
};

/// The statuses by check, for compact assertions: "identity=PASS unmodified=FAIL ...".
std::string statuses(const ft::ConformanceReport& r) {
  std::string out;
  for (const auto& c : r.checks) out += (out.empty() ? "" : " ") + c.check + "=" + ft::status_name(c.status);
  return out;
}

const std::string kAllPass =
    "identity=PASS unmodified=PASS deterministic=PASS requirements=PASS finite=PASS minimal=PASS";

TEST(Suite, ACorrectAlgorithmPassesEveryCheck) {
  const auto r = ft::check_algorithm<Average>();
  FUSION_EXPECT_CONFORMS(r);
  EXPECT_EQ(statuses(r), kAllPass) << r.to_string();
  EXPECT_EQ(r.algorithm, "test_average");
  EXPECT_NE(r.find("requirements")->message.find("refused in one line each: no experts"), std::string::npos)
      << r.to_string();
  EXPECT_NE(r.find("minimal")->message.find("no pretrained model, 1 expert, no task pool"), std::string::npos)
      << r.to_string();
  EXPECT_EQ(r.to_string().rfind("PASS test_average identity: ", 0), 0u) << r.to_string();
}

TEST(Suite, RequiredOptionsSkipUntilGiven) {
  const auto missing = ft::check_algorithm<Scaled>();
  EXPECT_TRUE(missing.passed());
  EXPECT_EQ(statuses(missing),
            "identity=SKIP unmodified=SKIP deterministic=SKIP requirements=PASS finite=SKIP minimal=SKIP");
  EXPECT_NE(missing.find("identity")->message.find("method.lambda"), std::string::npos);
  EXPECT_NE(missing.find("identity")->message.find("--set lambda=VALUE"), std::string::npos);
  ft::ConformanceOptions o;
  o.options = {"lambda=0.5"};
  const auto given = ft::check_algorithm<Scaled>(o);
  EXPECT_EQ(statuses(given), kAllPass) << given.to_string();
  o.options = {"lambda=2"};
  try {
    ft::check_algorithm<Scaled>(o);
    ADD_FAILURE() << "an out-of-range option was accepted";
  } catch (const fusion::Error& e) {
    EXPECT_NE(std::string(e.what()).find("test_scaled: method.lambda"), std::string::npos) << e.what();
  }
  o.options = {"lambda=0.5", "nope=1"};
  EXPECT_THROW(ft::check_algorithm<Scaled>(o), fusion::Error);
}

TEST(Suite, OptionsTheFactoryRefusesSkipUntilChanged) {
  const auto refused = ft::check_algorithm<Picky>();
  EXPECT_TRUE(refused.passed());
  EXPECT_EQ(statuses(refused),
            "identity=SKIP unmodified=SKIP deterministic=SKIP requirements=PASS finite=SKIP minimal=SKIP");
  EXPECT_EQ(refused.find("finite")->message,
            "cannot be made with these options: method.ready: must be true on this setup (give other options: "
            "fusion check --set KEY=VALUE)");
  ft::ConformanceOptions o;
  o.options = {"ready=true"};
  EXPECT_EQ(statuses(ft::check_algorithm<Picky>(o)), kAllPass);
  const auto faulty = ft::check_algorithm<FaultyFactory>();
  EXPECT_EQ(statuses(faulty),
            "identity=FAIL unmodified=FAIL deterministic=FAIL requirements=PASS finite=FAIL minimal=FAIL");
  EXPECT_EQ(faulty.find("identity")->message,
            "the factory threw an exception that is not fusion::Error: out of coffee");
}

TEST(Suite, ModifyingThePoolFailsUnmodified) {
  const auto r = ft::check_algorithm<ModifiesPool>();
  EXPECT_FALSE(r.passed());
  EXPECT_EQ(r.find("unmodified")->status, ft::CheckStatus::Fail) << r.to_string();
  EXPECT_NE(r.find("unmodified")->message.find("the pretrained model handed out by pretrained() changed"),
            std::string::npos)
      << r.to_string();
  // Every run starts from an intact pool: the other checks see a correct average.
  EXPECT_EQ(r.find("deterministic")->status, ft::CheckStatus::Pass) << r.to_string();
  EXPECT_EQ(r.find("identity")->status, ft::CheckStatus::Pass) << r.to_string();
}

TEST(Suite, ANanFailsFinite) {
  const auto r = ft::check_algorithm<ReturnsNan>();
  EXPECT_EQ(r.find("finite")->status, ft::CheckStatus::Fail) << r.to_string();
  EXPECT_NE(r.find("finite")->message.find("model 'merged': key 'model.embeddings.weight' has 1 non-finite value"),
            std::string::npos)
      << r.to_string();
  EXPECT_EQ(r.find("unmodified")->status, ft::CheckStatus::Pass);
}

TEST(Suite, UnseededNoiseFailsDeterministicOnly) {
  const auto r = ft::check_algorithm<Nondeterministic>();
  EXPECT_EQ(statuses(r),
            "identity=PASS unmodified=PASS deterministic=FAIL requirements=PASS finite=PASS minimal=PASS")
      << r.to_string();
  EXPECT_NE(r.find("deterministic")->message.find("differ in model 'merged': key 'model.encoder.layers.0.mlp.fc1.weight'"),
            std::string::npos)
      << r.to_string();
  ft::ConformanceOptions lenient;
  lenient.exact_determinism = false;
  EXPECT_EQ(ft::check_algorithm<Nondeterministic>(lenient).find("deterministic")->status, ft::CheckStatus::Pass);
}

TEST(Suite, AWrongResultFailsIdentity) {
  const auto r = ft::check_algorithm<Offset>();
  EXPECT_EQ(r.find("identity")->status, ft::CheckStatus::Fail) << r.to_string();
  EXPECT_NE(r.find("identity")->message.find("model 'merged' differs from it: key 'model.post_layernorm.bias'"),
            std::string::npos)
      << r.to_string();
}

TEST(Suite, AModelWithoutItsArchitectureFailsFinite) {
  const auto r = ft::check_algorithm<LosesArchitecture>();
  EXPECT_EQ(r.find("finite")->status, ft::CheckStatus::Fail) << r.to_string();
  EXPECT_NE(r.find("finite")->message.find("cannot be evaluated on the tasks: architecture 'checkpoint' has no forward"),
            std::string::npos)
      << r.to_string();
}

TEST(Suite, AnUndeclaredNeedFailsMinimal) {
  const auto r = ft::check_algorithm<UndeclaredTasks>();
  EXPECT_EQ(r.find("minimal")->status, ft::CheckStatus::Fail) << r.to_string();
  EXPECT_NE(r.find("minimal")->message.find("no task pool"), std::string::npos);
  EXPECT_NE(r.find("minimal")->message.find("not fusion::Error: tasks is null"), std::string::npos) << r.to_string();
  EXPECT_EQ(r.find("identity")->status, ft::CheckStatus::Pass);
}

TEST(Suite, RequirementsTheSetupCannotMeetFail) {
  ft::ConformanceOptions o;
  o.num_experts = 2;
  const auto r = ft::check_algorithm<NeedsMany>(o);
  EXPECT_EQ(r.find("requirements")->status, ft::CheckStatus::Fail) << r.to_string();
  EXPECT_NE(r.find("requirements")->message.find("test_many needs at least 3 experts, the model pool has 2"),
            std::string::npos)
      << r.to_string();
  // With the default setup (max(2, min_experts) experts) it conforms.
  const auto ok = ft::check_algorithm<NeedsMany>();
  EXPECT_EQ(statuses(ok), kAllPass) << ok.to_string();
  EXPECT_NE(ok.find("requirements")->message.find("2 experts, no experts"), std::string::npos) << ok.to_string();
}

TEST(Suite, ChecksCanBeSkippedWithAReason) {
  ft::ConformanceOptions o;
  o.skip = {{"identity", "trains; not a merge"}};
  const auto r = ft::check_algorithm<Offset>(o);
  EXPECT_TRUE(r.passed()) << r.to_string();
  EXPECT_EQ(r.find("identity")->status, ft::CheckStatus::Skip);
  EXPECT_EQ(r.find("identity")->message, "skipped on request: trains; not a merge");
  o.skip = {{"identiti", "typo"}};
  EXPECT_THROW(ft::check_algorithm<Offset>(o), fusion::Error);
}

TEST(Suite, RunsInAWorkDirGivenAndOnAnotherDtype) {
  ft::ScratchDir dir("fusion_suite_work");
  ft::ConformanceOptions o;
  o.work_dir = dir.path();
  o.dtype = at::kDouble;
  const auto r = ft::check_algorithm<Average>(o);
  EXPECT_EQ(statuses(r), kAllPass) << r.to_string();
  EXPECT_TRUE(std::filesystem::is_directory(dir.path() / "test_average" / "run1"));
}

}  // namespace
