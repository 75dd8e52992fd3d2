// End-to-end: the `fusion` binary with the real gpt2, text_classification and method plugins on tiny
// GPT-2 checkpoints written here (a pretrained body and two GPT2ForSequenceClassification experts
// with different class counts: sst2 with 2, mnli with 3), a tiny tokenizer folder and GLUE-layout
// TSV files. Every method runs and reports each task's accuracy and loss; task arithmetic's figures
// equal a direct computation (merged body + each expert's own head, example by example); heads are
// never merged; a task without a head, a head of another class count or a tokenizer without merges.txt
// is refused before the run; bfloat16 mixed precision stays close to float32.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "fusion/gpt2/model.hpp"
#include "fusion/gpt2/tokenizer.hpp"
#include "fusion/safetensors.hpp"
#include "run_binary.hpp"
#include "support.hpp"

namespace fusion::text_classification {
namespace {

using namespace testing;
using json = nlohmann::json;
using fusion::testing::Outcome;

const fs::path kBinary = FUSION_BINARY;
const std::string kPlugins = FUSION_E2E_PLUGINS;

struct Row {
  std::string text, pair;
  int64_t label;
};

// The test splits (the train splits hold these rows and a few more).
const std::vector<Row> kSst2 = {{"the heat is on", "", 1},         {"they hate the theme", "", 0},
                                {"a thin thread, then", "", 1},    {"the end", "", 0},
                                {"there the three hens sit", "", 1}, {"nothing here", "", 0}};
const std::vector<Row> kMnli = {{"the cat sat", "a cat sat", 0},         {"the sun set", "the moon rose", 2},
                                {"they ate at ten", "they were hungry", 1}, {"he hit the net", "he missed", 2},
                                {"the tea is hot", "tea is warm", 0},     {"then the theft", "a thief", 1}};
const std::vector<std::string> kSst2Labels = {"negative", "positive"};
const std::vector<std::string> kMnliLabels = {"entailment", "neutral", "contradiction"};

class E2EText : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / (std::string("fusion_e2e_text_") + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    write_tiny_tokenizer(dir_ / "tokenizer");
    auto body = tiny_body(1);
    gpt2::save_gpt2(*body, dir_ / "pretrained");
    // Experts: the pretrained body plus a small task vector on every matrix, with their own heads.
    save_expert("sst2", kSst2Labels, *body, 11);
    save_expert("mnli", kMnliLabels, *body, 12);
    std::string sst2 = "sentence\tlabel\n", mnli =
        "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
        "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n";
    for (const Row& r : kSst2) sst2 += r.text + " \t" + std::to_string(r.label) + "\n";
    for (size_t i = 0; i < kMnli.size(); ++i) {
      const Row& r = kMnli[i];
      mnli += std::to_string(i) + "\t1\t1n\tfiction\t( x\t( y\t(ROOT x)\t(ROOT y)\t" + r.text + "\t" + r.pair + "\t" +
              kMnliLabels[r.label] + "\t" + kMnliLabels[r.label] + "\n";
    }
    write_text(dir_ / "data" / "SST-2" / "dev.tsv", sst2);
    write_text(dir_ / "data" / "SST-2" / "train.tsv", sst2 + "the theory\t1\nhe left\t0\n");
    write_text(dir_ / "data" / "MNLI" / "dev_matched.tsv", mnli);
    write_text(dir_ / "data" / "MNLI" / "train.tsv",
               mnli + "9\t1\t1n\tfiction\t( x\t( y\t(ROOT x)\t(ROOT y)\tthe hen\tthe hen\tentailment\tentailment\n");
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }

  void save_expert(const std::string& name, const std::vector<std::string>& labels, const gpt2::Gpt2Model& body,
                   uint64_t seed) {
    auto expert = tiny_classifier(labels, seed);
    StateDict p;
    for (const auto& [k, v] : expert->parameters()) {
      const at::Tensor* pre = body.parameters().find(k);
      p.set(k, pre == nullptr ? v : pre->dim() >= 2 ? *pre + 0.5 * v : *pre);
    }
    gpt2::save_gpt2(gpt2::Gpt2Model(p, expert->config(), gpt2::Gpt2Head::kSequenceClassification), dir_ / name);
  }

  // A run of `method` (its [method] lines) on both tasks; `experts` are the [modelpool.models] lines.
  void write_config(const std::string& method, const std::string& experts = "",
                    const std::string& extra_run = "") {
    std::ofstream(dir_ / "run.toml")
        << "[run]\nout_dir = \"out\"\nprogress = false\nthreads = 1\n" << extra_run << "[method]\n" << method
        << "\n[modelpool]\nname = \"gpt2\"\npretrained = \"pretrained\"\n[modelpool.models]\n"
        << (experts.empty() ? "sst2 = \"sst2\"\nmnli = \"mnli\"\n" : experts)
        << "[taskpool]\nname = \"text_classification\"\ntokenizer = \"tokenizer\"\ndata_dir = \"data\"\n"
           "tasks = [\"sst2\", \"mnli\"]\nbatch_size = 4\n";
  }

  Outcome fusion(const std::vector<std::string>& args, const std::string& env = "") {
    std::string cmd = "env " + env + (env.empty() ? "" : " ") + "OMP_WAIT_POLICY=PASSIVE FUSION_NO_DEFAULT_PLUGINS=1 FUSION_PLUGIN_PATH=" +
                      fusion::testing::shell_quote(kPlugins) + " " + fusion::testing::shell_quote(kBinary.string());
    for (const auto& a : args) cmd += " " + fusion::testing::shell_quote(a);
    return fusion::testing::run_in(dir_, cmd);
  }

  // Runs `method`; exit 0 and every model's report has both tasks' accuracy and loss. The report.
  json run_ok(const std::string& method, const std::string& extra_run = "") {
    write_config(method, "", extra_run);
    Outcome o = fusion({"run", "run.toml"});
    EXPECT_EQ(o.code, 0) << o.err;
    last_err_ = o.err;
    const json r = json::parse(fusion::testing::read_text(dir_ / "out" / "report.json"));
    EXPECT_FALSE(r.at("models").empty());
    for (const json& m : r.at("models")) {
      for (const char* task : {"sst2", "mnli"}) {
        const json& t = m.at("report").at(task);
        EXPECT_GE(t.at("accuracy").get<double>(), 0.0);
        EXPECT_LE(t.at("accuracy").get<double>(), 1.0);
        EXPECT_GT(t.at("loss").get<double>(), 0.0);
        EXPECT_EQ(t.at("num_samples").get<int64_t>(), 6);
      }
    }
    return r;
  }

  // exit 1, exactly `line` as the one error line, no report.json, and the method never ran.
  void expect_refused(const Outcome& o, const std::string& line) {
    EXPECT_EQ(o.code, 1) << o.err;
    const auto errs = o.error_lines();
    ASSERT_EQ(errs.size(), 1u) << o.err;
    EXPECT_EQ(errs[0], "fusion: error: " + line);
    EXPECT_FALSE(fs::exists(dir_ / "out" / "report.json"));
    EXPECT_EQ(o.err.find("running task_arithmetic"), std::string::npos) << o.err;
  }

  // {accuracy, loss} of `body_params` with the head of expert `task` on that task's rows, example by
  // example without padding through a GPT2ForSequenceClassification.
  std::pair<double, double> direct(const StateDict& body_params, const std::string& task) const {
    const auto expert = gpt2::load_gpt2(dir_ / task);
    StateDict p = body_params;
    p.set("score.weight", expert->parameters().at("score.weight"));
    gpt2::Gpt2Model classifier(p, expert->config(), gpt2::Gpt2Head::kSequenceClassification);
    const auto tok = gpt2::Gpt2Tokenizer::from_folder(dir_ / "tokenizer");
    const std::vector<Row>& rows = task == "sst2" ? kSst2 : kMnli;
    double loss = 0, correct = 0;
    for (const Row& r : rows) {
      gpt2::EncodeOptions o;
      o.padding = gpt2::Padding::none;
      const auto ids = r.pair.empty() ? tok.encode_plus(r.text + " ", o).ids : tok.encode_plus(r.text, r.pair, o).ids;
      at::Tensor z = classifier.forward(at::tensor(ids, at::kLong).unsqueeze(0));
      loss += at::cross_entropy_loss(z, at::tensor(std::vector<int64_t>{r.label}, at::kLong)).item<double>();
      correct += z.argmax(1).item<int64_t>() == r.label;
    }
    return {correct / rows.size(), loss / rows.size()};
  }

  StateDict body_of(const std::string& folder) const {
    return gpt2::load_gpt2(dir_ / folder, gpt2::Gpt2Head::kNone)->parameters();
  }

  fs::path dir_;
  std::string last_err_;  // stderr of the last run_ok
};

TEST_F(E2EText, TaskArithmeticSweepEqualsADirectComputationWithEachExpertsOwnHead) {
  const json r = run_ok("name = \"task_arithmetic\"\nscaling_factors = [0.0, 0.5, 1.0]", "save_models = true\n");
  ASSERT_EQ(r["models"].size(), 3u) << r.dump(1);
  const StateDict pre = body_of("pretrained"), a = body_of("sst2"), b = body_of("mnli");
  for (size_t k = 0; k < 3; ++k) {
    const double lambda = 0.5 * static_cast<double>(k);
    StateDict merged;
    for (const auto& [key, v] : pre) merged.set(key, v + lambda * ((a.at(key) - v) + (b.at(key) - v)));
    for (const char* task : {"sst2", "mnli"}) {
      const auto [acc, loss] = direct(merged, task);
      const json& got = r["models"][k]["report"][task];
      EXPECT_DOUBLE_EQ(got["accuracy"].get<double>(), acc) << "λ " << lambda << " " << task;
      EXPECT_NEAR(got["loss"].get<double>(), loss, 1e-5) << "λ " << lambda << " " << task;
    }
  }
  // The sweep's models differ (so the comparison above tells λ apart).
  for (const char* task : {"sst2", "mnli"})
    EXPECT_GT(std::abs(r["models"][0]["report"][task]["loss"].get<double>() -
                       r["models"][2]["report"][task]["loss"].get<double>()),
              1e-3)
        << task;
  // λ = 0 is the pretrained body: still each task with its own head (different class counts).
  EXPECT_EQ(r["models"][0]["report"]["sst2"]["labels"], json(kSst2Labels));
  EXPECT_EQ(r["models"][0]["report"]["mnli"]["labels"], json(kMnliLabels));
  // The saved merged models are bodies: no head was merged into them.
  size_t saved = 0;
  for (const auto& entry : fs::recursive_directory_iterator(dir_ / "out" / "models")) {
    if (entry.path().extension() != ".safetensors") continue;
    ++saved;
    SafetensorsFile f(entry.path());
    EXPECT_EQ(f.find("score.weight"), nullptr) << entry.path();
    EXPECT_NE(f.find("transformer.h.1.mlp.c_fc.weight"), nullptr) << entry.path();
  }
  EXPECT_EQ(saved, 3u);
}

TEST_F(E2EText, IndividualExpertsEqualTheirOwnClassifiers) {
  const json r = run_ok("name = \"individual\"");
  ASSERT_EQ(r["models"].size(), 2u);
  // Expert sst2 evaluated on sst2 is the sst2 checkpoint itself; on mnli, its body with mnli's head.
  for (size_t k = 0; k < 2; ++k) {
    const std::string expert = k == 0 ? "sst2" : "mnli";
    for (const char* task : {"sst2", "mnli"}) {
      const auto [acc, loss] = direct(body_of(expert), task);
      EXPECT_DOUBLE_EQ(r["models"][k]["report"][task]["accuracy"].get<double>(), acc) << expert << " " << task;
      EXPECT_NEAR(r["models"][k]["report"][task]["loss"].get<double>(), loss, 1e-5) << expert << " " << task;
    }
  }
}

TEST_F(E2EText, PretrainedSimpleAverageAndTiesRun) {
  const json pre = run_ok("name = \"pretrained\"");
  const auto [acc, loss] = direct(body_of("pretrained"), "mnli");
  EXPECT_NEAR(pre["models"][0]["report"]["mnli"]["loss"].get<double>(), loss, 1e-5);
  EXPECT_DOUBLE_EQ(pre["models"][0]["report"]["mnli"]["accuracy"].get<double>(), acc);
  fs::remove_all(dir_ / "out");
  const json avg = run_ok("name = \"simple_average\"");
  EXPECT_EQ(avg["models"].size(), 1u);
  fs::remove_all(dir_ / "out");
  const json ties = run_ok("name = \"ties_merging\"\nscaling_factors = [0.3, 0.6]");
  EXPECT_EQ(ties["models"].size(), 2u);
}

TEST_F(E2EText, PweMoeLsAndEpoTrainAFewStepsAndEvaluateTheirParetoSets) {
  for (const std::string name : {"pwe_moe_ls", "pwe_moe_epo"}) {
    fs::remove_all(dir_ / "out");
    const json r = run_ok("name = \"" + name + "\"\nnum_steps = 3\nbatch_size = 2\neval_grid_m = 3\nlr = 0.01");
    EXPECT_EQ(r["models"].size(), 3u) << name;
    // Each block's MLP (c_fc and c_proj; 2 blocks) got a router.
    EXPECT_NE(last_err_.find(name + ": 2 upscaled groups"), std::string::npos) << last_err_;
    // Trained: the log has every step; the grid's one-hot ends differ from each other.
    const std::string log = fusion::testing::read_text(dir_ / "out" / "train_log.csv");
    EXPECT_EQ(fusion::testing::lines_of(log).size(), 4u) << log;
    EXPECT_NE(r["models"][0]["report"]["sst2"]["loss"], r["models"][2]["report"]["sst2"]["loss"]);
  }
}

TEST_F(E2EText, PweMoeUpscalesGpt2AttentionWhenAsked) {
  const json r = run_ok("name = \"pwe_moe_ls\"\nnum_steps = 2\nbatch_size = 2\neval_grid = false\n"
                        "eval_preferences = [[0.5, 0.5]]\nupscale_attn = true");
  EXPECT_EQ(r["models"].size(), 1u);
  EXPECT_NE(last_err_.find("pwe_moe_ls: 4 upscaled groups"), std::string::npos) << last_err_;
}

// [run] dtype = "bfloat16" (emulated where the CPU has no bf16 instructions: FUSION_FORCE_BF16=1):
// GPT-2's GEMMs in bf16, the rest float32, so each task's loss stays within 2 % of float32's yet
// differs from it; PWEMoE trains through the mixed-precision forward.
TEST_F(E2EText, Bfloat16MixedPrecisionStaysCloseToFloat32) {
  const json r32 = run_ok("name = \"task_arithmetic\"\nscaling_factor = 0.5");
  Outcome o = fusion({"run", "run.toml", "run.out_dir=out16", "run.dtype=bfloat16"}, "FUSION_FORCE_BF16=1");
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_TRUE(o.err.find("GEMMs in bfloat16") != std::string::npos ||
              o.err.find("computing in emulated bfloat16") != std::string::npos)
      << o.err;
  const json r16 = json::parse(fusion::testing::read_text(dir_ / "out16" / "report.json"));
  for (const char* task : {"sst2", "mnli"}) {
    const double l32 = r32["models"][0]["report"][task]["loss"].get<double>();
    const double l16 = r16["models"][0]["report"][task]["loss"].get<double>();
    EXPECT_LT(std::abs(l16 - l32), 2e-2 * std::max(1.0, l32)) << task;
    EXPECT_NE(l16, l32) << task << ": the bf16 run computed in float32";
    EXPECT_EQ(r16["models"][0]["report"][task]["num_samples"].get<int64_t>(), 6);
  }
  write_config("name = \"pwe_moe_ls\"\nnum_steps = 2\nbatch_size = 2\neval_grid = false\n"
               "eval_preferences = [[0.5, 0.5]]", "", "dtype = \"bfloat16\"\n");
  Outcome pwe = fusion({"run", "run.toml", "run.out_dir=out_pwe"}, "FUSION_FORCE_BF16=1");
  ASSERT_EQ(pwe.code, 0) << pwe.err;
  const json rp = json::parse(fusion::testing::read_text(dir_ / "out_pwe" / "report.json"));
  EXPECT_GT(rp["models"][0]["report"]["mnli"]["loss"].get<double>(), 0.0);
}

TEST_F(E2EText, DescribeSaysHeadsAreNeverMerged) {
  Outcome o = fusion({"describe", "text_classification"});
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_NE(o.out.find("Heads are never merged: each task is evaluated with the merged body and its own expert's "
                       "head"),
            std::string::npos)
      << o.out;
  Outcome pool = fusion({"describe", "gpt2"});
  ASSERT_EQ(pool.code, 0) << pool.err;
  EXPECT_NE(pool.out.find("heads (score, lm_head) are never merged"), std::string::npos) << pool.out;
}

TEST_F(E2EText, NoHeadAHeadOfAnotherClassCountOrNoMergesAreRefusedBeforeTheRun) {
  write_config("name = \"task_arithmetic\"", "sst2 = \"sst2\"\n");
  expect_refused(fusion({"run", "run.toml"}),
                 "task 'mnli': no classification head: add an expert 'mnli' under [modelpool.models] (its "
                 "score.weight is the task's head), or set taskpool.experts.mnli or taskpool.heads.mnli");
  write_config("name = \"task_arithmetic\"", "sst2 = \"sst2\"\nmnli = \"sst2\"\n");
  expect_refused(fusion({"run", "run.toml"}),
                 "task 'mnli': the head score.weight [2, 16] of 'sst2' (modelpool.models.mnli) has 2 classes but the task has 3 (entailment, neutral, "
                     "contradiction)");
  // A tokenizer folder without merges.txt.
  fs::remove(dir_ / "tokenizer" / "merges.txt");
  write_config("name = \"task_arithmetic\"");
  Outcome o = fusion({"run", "run.toml"});
  expect_refused(o, "taskpool.tokenizer: gpt2 tokenizer: the merge list tokenizer/merges.txt is missing");
}

TEST_F(E2EText, ALabelOutsideTheTasksClassesIsRefusedBeforeTheRun) {
  write_text(dir_ / "data" / "SST-2" / "dev.tsv", "sentence\tlabel\nthe heat is on \t1\nthe end \t2\n");
  write_config("name = \"task_arithmetic\"");
  expect_refused(fusion({"run", "run.toml"}),
                 "task 'sst2' test split: data/SST-2/dev.tsv:3: label '2' is not one of negative, positive (nor an "
                 "index 0..1)");
}

}  // namespace
}  // namespace fusion::text_classification
