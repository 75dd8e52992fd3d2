// A plugin for the distributed end-to-end tests: the test kit's tiny world (fusion/testing/fixtures.hpp)
// as a model pool (tiny_models) and a task pool (tiny_tasks), so that `fusion run` trains and evaluates
// PWEMoE in a second. The same options and seed give the same models and data in every process.
#include "fusion/plugin.hpp"
#include "fusion/testing/fixtures.hpp"

namespace {

using fusion::ComponentInfo;
using fusion::Context;
using fusion::Options;

fusion::testing::TinySetup setup_of(int64_t tasks, int64_t seed) {
  fusion::testing::TinySetupOptions o;
  o.num_tasks = tasks;
  o.seed = static_cast<uint64_t>(seed);
  return fusion::testing::make_tiny_setup(o);
}

struct TinyOptions {
  int64_t tasks = 2;
  int64_t seed = 0;
  static void bind(Options<TinyOptions>& o) {
    o("tasks", &TinyOptions::tasks, "tasks, and experts").range(1, 16);
    o("seed", &TinyOptions::seed, "seed of the tiny world").min(0);
  }
};

class TinyModels : public fusion::ModelPool {
 public:
  using Options = TinyOptions;
  TinyModels(const Options& o, const Context&) : pool_(setup_of(o.tasks, o.seed).models) {}
  static ComponentInfo info() { return {"tiny_models", "the test kit's tiny models (distributed tests)", "", {}, {}}; }
  std::vector<std::string> expert_names() const override { return pool_->expert_names(); }
  bool has_pretrained() const override { return pool_->has_pretrained(); }
  fusion::ConstModelPtr pretrained() override { return pool_->pretrained(); }
  fusion::ModelPtr load(const std::string& name) override { return pool_->load(name); }
  void save(const fusion::Model& m, const std::filesystem::path& dir) const override { pool_->save(m, dir); }

 private:
  std::shared_ptr<fusion::testing::MemoryModelPool> pool_;
};

class TinyTasks : public fusion::TaskPool {
 public:
  using Options = TinyOptions;
  explicit TinyTasks(const Options& o) : pool_(setup_of(o.tasks, o.seed).tasks) {}
  static ComponentInfo info() { return {"tiny_tasks", "the test kit's synthetic tasks (distributed tests)", "", {}, {}}; }
  std::vector<std::string> task_names() const override { return pool_->task_names(); }
  fusion::Task& task(const std::string& name) override { return pool_->task(name); }
  nlohmann::json evaluate(const fusion::Model& model) override { return pool_->evaluate(model); }

 private:
  std::shared_ptr<fusion::testing::MemoryTaskPool> pool_;
};

}  // namespace

FUSION_PLUGIN("distributed_test_tiny", "0.0.1", reg) {
  reg.add<TinyModels>();
  reg.add<TinyTasks>();
}
