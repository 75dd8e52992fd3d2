// method.eval_preferences: chosen preference vectors evaluated beside the grid (or instead of it),
// normalised as the grid's points are, labelled and tagged in the Result, and shown by the host's
// results.csv and Pareto view; bad entries refused naming method.eval_preferences[i].
#include <gtest/gtest.h>

#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "fusion/config.hpp"
#include "fusion/options.hpp"
#include "pwe_moe.hpp"
#include "reports.hpp"
#include "tiny_model.hpp"
#include "training_support.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace fusion::methods;
using pwe_test::context;
using pwe_test::fresh_dir;
using pwe_test::small_options;

std::vector<std::string> labels_of(const fusion::Result& r) {
  std::vector<std::string> out;
  for (const auto& m : r.models) out.push_back(m.label);
  return out;
}

bool same_parameters(const fusion::Model& a, const fusion::Model& b) {
  for (const auto& [k, v] : a.parameters())
    if (!at::equal(v, b.parameters().at(k))) return false;
  return true;
}

// The host's report of each model (host/reports.hpp), evaluated on the blob tasks as the host does.
std::vector<fusion::host::ModelReport> host_reports(const fusion::Result& res, pwe_test::BlobTaskPool& tasks) {
  std::vector<fusion::host::ModelReport> out;
  for (const auto& m : res.models) {
    fusion::ConstModelPtr model = m.make();
    json report = json::object();
    for (const auto& t : tasks.tasks) report[t->name()] = t->evaluate(*model);
    out.push_back({m.label, m.metadata, fusion::host::Evaluation::from_task_pool(report, tasks.task_names()), {}});
  }
  return out;
}

TEST(PweEvalPreferences, EvaluatedBesideTheGridNormalisedAndTagged) {
  auto s = pwe_test::make_blob_setup(2);
  PweMoeOptions o = small_options(10, 10);
  o.eval_random = 1;
  o.eval_preferences = {{1.0, 3.0}, {2.0, 0.0}};
  const fusion::Result res = PweMoeLs(o).run(*s.pool, s.tasks.get(), context(fresh_dir("chosen")));
  // the grid (11), the chosen ones, then the random one
  ASSERT_EQ(res.models.size(), 11u + 2u + 1u);
  const fusion::ResultModel& quarter = res.models[11];
  EXPECT_EQ(quarter.label, "r=[0.25,0.75]");
  EXPECT_EQ(quarter.metadata, (json{{"preference", {0.25, 0.75}}, {"source", "eval_preferences"}}));
  // (2, 0) is the grid's (1, 0): evaluated again, under a label of its own
  const fusion::ResultModel& one_hot = res.models[12];
  EXPECT_EQ(one_hot.label, "r=[1.0000,0.0000]");
  EXPECT_EQ(one_hot.metadata, (json{{"preference", {1.0, 0.0}}, {"source", "eval_preferences"}}));
  EXPECT_EQ(res.models[10].label, "r=[1.00,0.00]");
  EXPECT_EQ(res.models[10].metadata.at("source"), "grid");
  EXPECT_TRUE(same_parameters(*one_hot.make(), *res.models[10].make()));
  EXPECT_EQ(res.models[13].metadata.at("source"), "random");
  EXPECT_FALSE(res.sweep);  // the chosen points are not on the grid's line, in its order

  // The host's results.csv has a row per chosen point with its preference and source, and its
  // Pareto view plots them (one unjoined series of every evaluated point).
  const std::vector<fusion::host::ModelReport> reports = host_reports(res, *s.tasks);
  const std::string csv = fusion::host::results_csv(reports, s.tasks->task_names());
  EXPECT_EQ(csv.rfind("label,preference,source,task0.accuracy,task0.loss,task1.accuracy,task1.loss,average.accuracy\n",
                      0),
            0u)
      << csv;
  EXPECT_NE(csv.find("\n\"r=[0.25,0.75]\",\"[0.25,0.75]\",eval_preferences,"), std::string::npos) << csv;
  EXPECT_NE(csv.find("\n\"r=[1.0000,0.0000]\",\"[1.0,0.0]\",eval_preferences,"), std::string::npos) << csv;
  fusion::Logger log(fusion::LogLevel::Warn);
  const auto view = fusion::host::pareto_view(reports, s.tasks->task_names(), "pwe_moe_ls", res.sweep, {}, log);
  ASSERT_TRUE(view.has_value());
  ASSERT_EQ(view->series.size(), 1u);
  EXPECT_FALSE(view->series[0].joined);
  ASSERT_EQ(view->series[0].points.size(), 14u);
  EXPECT_EQ(view->series[0].points[11], *reports[11].evaluation->accuracies());
}

TEST(PweEvalPreferences, InsteadOfTheGridWithEvalGridOff) {
  auto s = pwe_test::make_blob_setup(2);
  PweMoeOptions o = small_options(10, 10);
  o.eval_grid = false;
  o.eval_preferences = {{0.3, 0.7}, {1.0, 1.0}};
  const fusion::Result res = PweMoeLs(o).run(*s.pool, s.tasks.get(), context(fresh_dir("instead")));
  EXPECT_EQ(labels_of(res), (std::vector<std::string>{"r=[0.30,0.70]", "r=[0.50,0.50]"}));
  EXPECT_EQ(res.models[1].metadata.at("preference").get<std::vector<double>>(), (std::vector<double>{0.5, 0.5}));
  EXPECT_FALSE(res.sweep);
  // checkpoint_path (no training) evaluates them too
  PweMoeOptions from_ckpt = small_options(10, 10);
  from_ckpt.eval_grid = false;
  from_ckpt.eval_preferences = {{0.3, 0.7}};
  const fs::path trained = fresh_dir("instead_trained");
  PweMoeLs(small_options(10, 10)).run(*s.pool, s.tasks.get(), context(trained));
  from_ckpt.checkpoint_path = (trained / "checkpoints" / "routers_step=10.safetensors").string();
  const fusion::Result r2 = PweMoeLs(from_ckpt).run(*s.pool, nullptr, context(fresh_dir("instead_eval")));
  EXPECT_EQ(labels_of(r2), (std::vector<std::string>{"r=[0.30,0.70]"}));
  EXPECT_TRUE(same_parameters(*r2.models[0].make(), *res.models[0].make()));
}

TEST(PweEvalPreferences, BadEntriesAreRefusedNamingTheOption) {
  const fusion::Schema& schema = fusion::schema_of<PweMoeOptions>();
  auto refused = [&](std::vector<std::vector<double>> v) {
    try {
      fusion::Config::validate("method", {{"eval_preferences", v}}, schema);
    } catch (const fusion::Error& e) {
      return std::string(e.what());
    }
    return std::string("<no error>");
  };
  // when the config is read, before anything runs
  EXPECT_EQ(refused({{0.5, 0.5}, {-1.0, 2.0}}), "method.eval_preferences[1]: preference entry 0 is negative (-1)");
  EXPECT_EQ(refused({{0.0, 0.0}}), "method.eval_preferences[0]: the preference vector is all zero");
  EXPECT_EQ(refused({{1.0, std::numeric_limits<double>::infinity()}}),
            "method.eval_preferences[0][1]: expected a finite number, got inf");
  EXPECT_EQ(refused({{0.5, 0.5}, {}}), "<no error>");  // its length is checked against the experts
  const fusion::Config c = fusion::Config::validate("method", {{"eval_preferences", std::vector<std::vector<double>>{
                                                                                         {1, 2}, {3, 4}}}},
                                                    schema);
  EXPECT_EQ(fusion::read_options<PweMoeOptions>(c).eval_preferences,
            (std::vector<std::vector<double>>{{1, 2}, {3, 4}}));

  // by run(): the length before any weight is read; the values (for options filled in code) before training
  auto s = pwe_test::make_blob_setup(2);
  auto msg_of = [&](PweMoeOptions o, const fs::path& dir) {
    try {
      PweMoeLs(o).run(*s.pool, s.tasks.get(), context(dir));
    } catch (const fusion::Error& e) {
      return std::string(e.what());
    }
    return std::string("<no error>");
  };
  const int loads = s.pool->loads;
  PweMoeOptions o = small_options(10, 10);
  o.eval_preferences = {{0.5, 0.5}, {0.2, 0.3, 0.5}};
  EXPECT_EQ(msg_of(o, fresh_dir("bad_length")),
            "method.eval_preferences[1]: the preference vector has 3 entries, expected one per task (T = 2)");
  o.eval_preferences = {{}};
  EXPECT_EQ(msg_of(o, fresh_dir("bad_length")),
            "method.eval_preferences[0]: the preference vector has 0 entries, expected one per task (T = 2)");
  EXPECT_EQ(s.pool->loads, loads);
  const fs::path dir = fresh_dir("bad_value");
  o.eval_preferences = {{1.0, -0.5}};
  EXPECT_EQ(msg_of(o, dir), "method.eval_preferences[0]: preference entry 1 is negative (-0.5)");
  EXPECT_FALSE(fs::exists(dir / "train_log.csv"));
}

// The host makes, evaluates and drops the Pareto set's models one at a time: each is merged into
// the tensors of the one before (no new allocation) when that one is dropped, into fresh tensors
// while it is held; either way bit for bit merge_and_unload's values, and a tensor someone still
// holds is never overwritten.
TEST(PweEvalPreferences, GridModelsAreMergedInPlaceOverTheDroppedOne) {
  auto s = pwe_test::make_blob_setup(2);
  const fusion::Result res = PweMoeLs(small_options(10, 10)).run(*s.pool, s.tasks.get(), context(fresh_dir("in_place")));
  ASSERT_EQ(res.models.size(), 11u);
  using Params = std::map<std::string, at::Tensor>;
  auto copy_of = [](const fusion::Model& m) {
    Params out;
    for (const auto& [k, v] : m.parameters()) out[k] = v.clone();
    return out;
  };
  auto data_of = [](const fusion::Model& m) {
    std::map<std::string, const void*> out;
    for (const auto& [k, v] : m.parameters()) out[k] = v.data_ptr();
    return out;
  };
  auto equals = [](const fusion::Model& m, const Params& want) {
    for (const auto& [k, v] : m.parameters())
      if (!at::equal(v, want.at(k))) return false;
    return true;
  };
  // Both held at once: the second cannot reuse the first's tensors. Made by merge_and_unload.
  fusion::ConstModelPtr a = res.models[2].make();
  fusion::ConstModelPtr b = res.models[8].make();
  const Params want_a = copy_of(*a), want_b = copy_of(*b);
  std::vector<std::string> upscaled;  // the keys whose tensors differ between the two preferences
  for (const auto& [k, v] : want_a)
    if (!at::equal(v, want_b.at(k))) upscaled.push_back(k);
  ASSERT_FALSE(upscaled.empty());
  for (const std::string& k : upscaled) EXPECT_NE(a->parameters().at(k).data_ptr(), b->parameters().at(k).data_ptr());
  const auto where_b = data_of(*b);
  a.reset();
  b.reset();

  // b dropped: a is merged into b's tensors, with a's values.
  fusion::ConstModelPtr a2 = res.models[2].make();
  EXPECT_EQ(data_of(*a2), where_b);
  EXPECT_TRUE(equals(*a2, want_a));
  a2.reset();
  fusion::ConstModelPtr b2 = res.models[8].make();
  EXPECT_EQ(data_of(*b2), where_b);
  EXPECT_TRUE(equals(*b2, want_b));

  // One tensor of b2 kept (the model dropped): the next model goes to fresh tensors.
  const at::Tensor kept = b2->parameters().at(upscaled.front());
  b2.reset();
  fusion::ConstModelPtr a3 = res.models[2].make();
  EXPECT_NE(a3->parameters().at(upscaled.front()).data_ptr(), kept.data_ptr());
  EXPECT_TRUE(at::equal(kept, want_b.at(upscaled.front())));
  EXPECT_TRUE(equals(*a3, want_a));
}

}  // namespace
