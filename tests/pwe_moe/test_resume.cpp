// Resuming PWEMoE training (docs/pwe_moe.md, "Resuming"): every checkpoint records the options
// that define the training; a resume whose options differ is refused with one error listing each
// difference, before anything is read or written; a larger num_steps continues on the new
// schedule; options that do not change the training may change; a checkpoint without a record
// resumes with a warning.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "fusion/safetensors.hpp"
#include "pwe_moe.hpp"
#include "router_checkpoints.hpp"
#include "tiny_model.hpp"
#include "training_record.hpp"
#include "training_support.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace fusion::methods;
using pwe_test::context;
using pwe_test::fresh_dir;
using pwe_test::max_diff;
using pwe_test::routers_of;
using pwe_test::small_options;

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// The first `n` comma-separated fields of a CSV line (train_log.csv has no quoted fields).
std::string fields(const std::string& line, int n) {
  std::string out;
  std::istringstream in(line);
  std::string f;
  for (int i = 0; i < n && std::getline(in, f, ','); ++i) out += (i ? "," : "") + f;
  return out;
}

json record_of(const fs::path& ckpt) {
  const auto meta = router_checkpoint_metadata(ckpt);
  auto it = meta.find(kTrainingRecordKey);
  if (it == meta.end()) return nullptr;
  return json::parse(it->second);
}

std::vector<std::string> files_in(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// A PWEMoE run (LS unless `epo`) on `pool` and the blob tasks; the error's message, or "<no error>".
std::string run_error(fusion::ModelPool& pool, fusion::TaskPool& tasks, const fs::path& dir, PweMoeOptions o,
                      uint64_t seed = 42, bool epo = false) {
  try {
    if (epo) PweMoeEpo(o).run(pool, &tasks, context(dir, seed));
    else PweMoeLs(o).run(pool, &tasks, context(dir, seed));
  } catch (const fusion::Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(PweResume, EveryCheckpointRecordsTheOptionsThatDefineTheTraining) {
  auto s = pwe_test::make_blob_setup(2);
  const fs::path dir = fresh_dir("record");
  PweMoeLs(small_options(20, 10)).run(*s.pool, s.tasks.get(), context(dir));
  for (const char* name : {"routers_step=10.safetensors", "routers_step=20.safetensors"}) {
    const json r = record_of(dir / "checkpoints" / name);
    ASSERT_FALSE(r.is_null()) << name;
    EXPECT_EQ(r.at("format"), 1);
    EXPECT_EQ(r.at("run"), (json{{"seed", 42}, {"dtype", "float32"}}));
    EXPECT_EQ(r.at("modelpool"), (json{{"models", {"task0", "task1"}}}));
    EXPECT_EQ(r.at("method"), (json{{"name", "pwe_moe_ls"},
                                    {"init_lambda", 0.3},
                                    {"router_hidden_layers", 2},
                                    {"upscale", {"*.mlp.*"}},
                                    {"upscale_attn", false},
                                    {"lr", 0.05},
                                    {"num_steps", 20},
                                    {"save_interval", 10},
                                    {"batch_size", 8},
                                    {"alpha", 1.0}}));
    EXPECT_EQ(r.at("lr_schedule"), json::parse(R"([{"from_step": 0, "num_steps": 20}])"));
  }
  // EPO also records its own setting
  const fusion::Context ctx7 = context(fresh_dir("record_epo"), 7);
  const json epo = PweMoeEpo(small_options()).training_record({"a", "b"}, ctx7);
  EXPECT_EQ(epo.at("method").at("name"), "pwe_moe_epo");
  EXPECT_EQ(epo.at("method").at("epo_eps"), 1e-4);
  EXPECT_EQ(epo.at("run").at("seed"), 7);
  EXPECT_FALSE(PweMoeLs(small_options()).training_record({"a", "b"}, ctx7).at("method").contains("epo_eps"));
}

TEST(PweResume, OtherTrainingOptionsAreRefusedInOneErrorListingEachDifference) {
  auto s = pwe_test::make_blob_setup(2);
  const fs::path dir = fresh_dir("refused");
  PweMoeLs(small_options(20, 10)).run(*s.pool, s.tasks.get(), context(dir));
  const std::string ckpt = (dir / "checkpoints" / "routers_step=20.safetensors").string();
  const std::string log_before = read_text(dir / "train_log.csv");
  const auto files_before = files_in(dir / "checkpoints");
  const int loads_before = s.pool->loads;
  auto resumed = [] {
    PweMoeOptions o = small_options(20, 10);
    o.resume = true;
    return o;
  };
  const std::string head = "pwe_moe_ls: method.resume = true, but " + ckpt + " was trained with other options: ";
  const std::string tail = ". Set them back to continue it, or train anew in another run.out_dir";

  // lr, batch_size and the seed at once: one error, each difference in the record's order (run,
  // method, modelpool; the checkpoint's keys alphabetically, then those only this run has)
  PweMoeOptions o = resumed();
  o.lr = 0.01;
  o.batch_size = 16;
  EXPECT_EQ(run_error(*s.pool, *s.tasks, dir, o, 7),
            head + "run.seed: checkpoint 42, config 7; method.batch_size: checkpoint 8, config 16; "
                   "method.lr: checkpoint 0.05, config 0.01" + tail);
  // refused before any weight is read and before anything is written
  EXPECT_EQ(s.pool->loads, loads_before);
  EXPECT_EQ(read_text(dir / "train_log.csv"), log_before);
  EXPECT_EQ(files_in(dir / "checkpoints"), files_before);

  // each other option that changes the trajectory, alone
  const std::vector<std::pair<std::function<void(PweMoeOptions&)>, std::string>> one_change = {
      {[](PweMoeOptions& p) { p.model.init_lambda = 0.5; }, "method.init_lambda: checkpoint 0.3, config 0.5"},
      {[](PweMoeOptions& p) { p.model.router_hidden_layers = 1; },
       "method.router_hidden_layers: checkpoint 2, config 1"},
      {[](PweMoeOptions& p) { p.model.upscale = {"*.mlp.*", "*.self_attn.*"}; },
       "method.upscale: checkpoint [\"*.mlp.*\"], config [\"*.mlp.*\", \"*.self_attn.*\"]"},
      {[](PweMoeOptions& p) { p.model.upscale_attn = true; }, "method.upscale_attn: checkpoint false, config true"},
      {[](PweMoeOptions& p) { p.save_interval = 5; }, "method.save_interval: checkpoint 10, config 5"},
      {[](PweMoeOptions& p) { p.alpha = 2; }, "method.alpha: checkpoint 1.0, config 2.0"},
      {[](PweMoeOptions& p) { p.num_steps = 15; },
       "method.num_steps: checkpoint 20, config 15 (below the checkpoint's step, 20)"},
  };
  for (const auto& [change, difference] : one_change) {
    PweMoeOptions p = resumed();
    change(p);
    EXPECT_EQ(run_error(*s.pool, *s.tasks, dir, p), head + difference + tail);
  }
  // another method (EPO records epo_eps, LS does not: a key only this run has comes last)
  EXPECT_EQ(run_error(*s.pool, *s.tasks, dir, resumed(), 42, /*epo=*/true),
            "pwe_moe_epo: method.resume = true, but " + ckpt +
                " was trained with other options: method.name: checkpoint \"pwe_moe_ls\", config \"pwe_moe_epo\"; "
                "method.epo_eps: checkpoint (none), config 0.0001" + tail);
  // another dtype of the models
  {
    fusion::Context::Settings settings;
    settings.run_dir = dir;
    settings.progress = false;
    settings.dtype = at::kDouble;
    try {
      PweMoeLs(resumed()).run(*s.pool, s.tasks.get(), fusion::Context(settings));
      ADD_FAILURE() << "no error";
    } catch (const fusion::Error& e) {
      EXPECT_EQ(std::string(e.what()), head + "run.dtype: checkpoint \"float32\", config \"float64\"" + tail);
    }
  }
  // the experts in another order
  pwe_test::MemoryPool reversed(s.pretrained, {{"task1", s.pool->load("task1")}, {"task0", s.pool->load("task0")}});
  EXPECT_EQ(run_error(reversed, *s.tasks, dir, resumed()),
            head + "modelpool.models: checkpoint [\"task0\", \"task1\"], config [\"task1\", \"task0\"]" + tail);
  // train() checks too (a caller that builds the model itself)
  {
    PweMoeOptions p = resumed();
    p.lr = 0.02;
    PweMoeLs ls(p);
    auto ctx = context(dir);
    auto pwe = ParetoWeightEnsembling::from_pool(*s.pool, ctx, p.model, "pwe_moe_ls");
    std::vector<fusion::Task*> tasks{s.tasks->tasks[0].get(), s.tasks->tasks[1].get()};
    try {
      ls.train(*pwe, tasks, ctx);
      ADD_FAILURE() << "no error";
    } catch (const fusion::Error& e) {
      EXPECT_EQ(std::string(e.what()), head + "method.lr: checkpoint 0.05, config 0.02" + tail);
    }
  }
  EXPECT_EQ(read_text(dir / "train_log.csv"), log_before);
  EXPECT_EQ(files_in(dir / "checkpoints"), files_before);

  // Options that do not change the training may change: evaluation, exports, EPO's setting for LS.
  PweMoeOptions eval_only = resumed();
  eval_only.eval_grid_m = 3;
  eval_only.eval_random = 1;
  eval_only.eval_preferences = {{1.0, 1.0}};
  eval_only.export_preferences = {{0.5, 0.5}};
  eval_only.epo_eps = 0.5;
  const fusion::Result res = PweMoeLs(eval_only).run(*s.pool, s.tasks.get(), context(dir));
  EXPECT_EQ(res.models.size(), 3u + 1u + 1u);
  EXPECT_EQ(res.info.at("training").at("start_step"), 20);  // nothing left to train
  EXPECT_EQ(read_text(dir / "train_log.csv"), log_before);
}

TEST(PweResume, LargerNumStepsContinuesOnTheScheduleOfTheNewCount) {
  auto s = pwe_test::make_blob_setup(2);
  const fs::path x = fresh_dir("extend"), u = fresh_dir("extend_uninterrupted"), again = fresh_dir("extend_again");
  PweMoeLs(small_options(20, 10)).run(*s.pool, s.tasks.get(), context(x));
  fs::copy(x, again, fs::copy_options::recursive);
  const auto log20 = lines_of(read_text(x / "train_log.csv"));
  ASSERT_EQ(log20.size(), 21u);

  auto logger = std::make_shared<fusion::Logger>(fusion::LogLevel::Info);
  logger->set_file(x / "log.txt");
  PweMoeOptions o = small_options(40, 10);
  o.resume = true;
  const fusion::Result res = PweMoeLs(o).run(*s.pool, s.tasks.get(), context(x, 42, logger));
  EXPECT_EQ(res.info.at("training").at("start_step"), 20);
  const json schedule = json::parse(R"([{"from_step": 0, "num_steps": 20}, {"from_step": 20, "num_steps": 40}])");
  EXPECT_EQ(res.info.at("training").at("lr_schedule"), schedule);
  for (const char* name : {"routers_step=30.safetensors", "routers_step=40.safetensors"}) {
    const json r = record_of(x / "checkpoints" / name);
    EXPECT_EQ(r.at("method").at("num_steps"), 40) << name;
    EXPECT_EQ(r.at("lr_schedule"), schedule) << name;
  }
  EXPECT_NE(read_text(x / "log.txt")
                .find("pwe_moe_ls: method.num_steps = 40, the checkpoint's training had 20: training continues from "
                      "step 20 to 40 with the learning rates of a 40-step cosine schedule from step 21 on (0.0275; "
                      "the checkpoint's step 20 used 0.005277), so the routers will be those of neither an uninterrupted "
                      "20-step nor 40-step run"),
            std::string::npos)
      << read_text(x / "log.txt");

  // Steps 1-20 are the 20-step run's; steps 21-40 take the preferences and learning rates (and
  // batches: the same streams) of an uninterrupted 40-step run.
  PweMoeLs(small_options(40, 10)).run(*s.pool, s.tasks.get(), context(u));
  const auto log_x = lines_of(read_text(x / "train_log.csv"));
  const auto log_u = lines_of(read_text(u / "train_log.csv"));
  ASSERT_EQ(log_x.size(), 41u);
  ASSERT_EQ(log_u.size(), 41u);
  EXPECT_EQ(log_x[0], log_u[0]);  // the header
  for (size_t i = 1; i <= 20; ++i) EXPECT_EQ(log_x[i], log20[i]) << i;
  for (size_t i = 21; i <= 40; ++i) {
    // step, loss, lr, mode, lp_failed, r_task0, r_task1: all but the loss (other routers) agree
    const std::string a = fields(log_x[i], 7), b = fields(log_u[i], 7);
    EXPECT_EQ(fields(a, 1), fields(b, 1)) << i;
    EXPECT_EQ(a.substr(a.find(',', a.find(',') + 1)), b.substr(b.find(',', b.find(',') + 1))) << i;
  }
  // ... so the routers are not the uninterrupted run's (its first 20 steps had other learning rates)
  const auto extended = routers_of(x / "checkpoints" / "routers_step=40.safetensors");
  EXPECT_GT(max_diff(extended, routers_of(u / "checkpoints" / "routers_step=40.safetensors")), 1e-5);

  // The extension is itself a training that resumes: interrupted after step 30 and resumed with
  // num_steps = 40, it ends with the uninterrupted extension's routers.
  PweMoeOptions o30 = small_options(40, 10);
  o30.resume = true;
  PweMoeLs(o30).run(*s.pool, s.tasks.get(), context(again));
  fs::remove(again / "checkpoints" / "routers_step=40.safetensors");
  PweMoeLs(o30).run(*s.pool, s.tasks.get(), context(again));
  EXPECT_LE(max_diff(extended, routers_of(again / "checkpoints" / "routers_step=40.safetensors")), 1e-6);
  EXPECT_EQ(record_of(again / "checkpoints" / "routers_step=40.safetensors").at("lr_schedule"), schedule);

  // A num_steps between the checkpoint's step and the record's also continues (to that count); one
  // equal to the step trains nothing.
  const fs::path mid = fresh_dir("extend_mid");
  PweMoeLs(small_options(40, 10)).run(*s.pool, s.tasks.get(), context(mid));
  fs::remove(mid / "checkpoints" / "routers_step=40.safetensors");
  fs::remove(mid / "checkpoints" / "routers_step=30.safetensors");
  PweMoeOptions o25 = small_options(25, 10);
  o25.resume = true;
  const fusion::Result r25 = PweMoeLs(o25).run(*s.pool, s.tasks.get(), context(mid));
  EXPECT_EQ(r25.info.at("training").at("start_step"), 20);
  EXPECT_TRUE(fs::exists(mid / "checkpoints" / "routers_step=25.safetensors"));
  EXPECT_EQ(lines_of(read_text(mid / "train_log.csv")).size(), 26u);
}

TEST(PweResume, CheckpointWithoutARecordResumesWithAWarning) {
  auto s = pwe_test::make_blob_setup(2);
  const fs::path dir = fresh_dir("legacy");
  PweMoeLs(small_options(20, 10)).run(*s.pool, s.tasks.get(), context(dir));
  // the checkpoint as it was written before records existed
  const fs::path ckpt = dir / "checkpoints" / "routers_step=20.safetensors";
  std::map<std::string, std::string> meta;
  fusion::StateDict sd;
  {
    fusion::SafetensorsFile file(ckpt);
    meta = file.metadata();
    sd = file.read_all(at::kCPU, at::kFloat);
  }
  ASSERT_EQ(meta.erase(kTrainingRecordKey), 1u);
  fusion::save_safetensors(ckpt, sd, meta);

  auto logger = std::make_shared<fusion::Logger>(fusion::LogLevel::Info);
  logger->set_file(dir / "log.txt");
  PweMoeOptions o = small_options(30, 10);
  o.resume = true;
  o.lr = 0.01;  // not checked: nothing to compare with
  const fusion::Result res = PweMoeLs(o).run(*s.pool, s.tasks.get(), context(dir, 42, logger));
  EXPECT_EQ(res.info.at("training").at("start_step"), 20);
  EXPECT_NE(read_text(dir / "log.txt")
                .find("pwe_moe_ls: " + ckpt.string() +
                      " records no training options (it was written before they were recorded): resuming without "
                      "checking that this run's options are those it was trained with"),
            std::string::npos)
      << read_text(dir / "log.txt");
  // the checkpoints written after the resume record this run's options; the schedule from step 20
  const json r = record_of(dir / "checkpoints" / "routers_step=30.safetensors");
  EXPECT_EQ(r.at("method").at("lr"), 0.01);
  EXPECT_EQ(r.at("lr_schedule"), json::parse(R"([{"from_step": 20, "num_steps": 30}])"));
}

TEST(PweResume, AMalformedRecordIsRefused) {
  auto s = pwe_test::make_blob_setup(2);
  const fs::path dir = fresh_dir("malformed");
  PweMoeLs(small_options(10, 10)).run(*s.pool, s.tasks.get(), context(dir));
  const fs::path ckpt = dir / "checkpoints" / "routers_step=10.safetensors";
  fusion::SafetensorsFile file(ckpt);
  auto meta = file.metadata();
  const fusion::StateDict sd = file.read_all(at::kCPU, at::kFloat);
  for (const std::string bad : {"not json", "{\"run\": {}}"}) {
    meta[kTrainingRecordKey] = bad;
    fusion::save_safetensors(ckpt, sd, meta);
    PweMoeOptions o = small_options(10, 10);
    o.resume = true;
    EXPECT_EQ(run_error(*s.pool, *s.tasks, dir, o),
              ckpt.string() + ": the checkpoint's metadata \"training\" is not a training record (a JSON object with "
                              "\"run\", \"method\" and \"modelpool\")");
  }
}

TEST(PweResume, ComparisonShowsValuesAndMissingKeys) {
  const json a = {{"run", {{"seed", 1}}}, {"method", {{"num_steps", 10}, {"x", {1, 2}}}}, {"modelpool", json::object()}};
  json b = a;
  b["method"]["num_steps"] = 30;
  b["method"].erase("x");
  b["method"]["y"] = "s";
  const TrainingComparison c = compare_training_records(a, b, 10);
  EXPECT_EQ(c.refused, (std::vector<std::string>{"method.x: checkpoint [1, 2], config (none)",
                                                 "method.y: checkpoint (none), config \"s\""}));
  ASSERT_TRUE(c.num_steps_changed_from.has_value());
  EXPECT_EQ(*c.num_steps_changed_from, 10);
  EXPECT_FALSE(compare_training_records(a, a, 5).num_steps_changed_from.has_value());
  EXPECT_TRUE(compare_training_records(a, a, 5).refused.empty());
}

}  // namespace
