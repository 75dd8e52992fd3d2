// `fusion run` over several processes, end to end (Gloo on 127.0.0.1): the (model, task) pairs of a run
// spread over the ranks give the one-process report; a PWEMoE-LS run over 2 ranks resumed from a
// checkpoint ends with the routers of the uninterrupted run and of one process; SIGTERM/SIGINT to a
// run, a rank or the --nproc launcher leaves no temporary file and no report, says so in one line and
// exits with 128 + the signal.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "fusion/safetensors.hpp"
#include "run_binary.hpp"
#include "scratch_dir.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using fusion::testing::lines_of;
using fusion::testing::free_port;
using fusion::testing::Outcome;
using fusion::testing::read_text;
using fusion::testing::shell_quote;

class DistributedEval : public fusion::testing::ScratchDirTest {
 protected:
  DistributedEval() : ScratchDirTest("fusion_eval_resume_") {}
  std::string command(const std::vector<std::string>& args, const std::string& env = "") const {
    const std::string plugins = std::string(FUSION_TINY_PLUGIN) + ":" + FUSION_PWE_MOE_PLUGIN + ":" +
                                FUSION_HOST_TEST_GOOD_PLUGIN;
    std::string cmd = "env " + env + " OMP_WAIT_POLICY=PASSIVE FUSION_NO_DEFAULT_PLUGINS=1 FUSION_PLUGIN_PATH=" +
                      shell_quote(plugins) + " " + shell_quote(FUSION_BINARY);
    for (const auto& a : args) cmd += " " + shell_quote(a);
    return cmd;
  }
  Outcome fusion(const std::vector<std::string>& args, const std::string& env = "") {
    return fusion::testing::run_in(dir_, command(args, env));
  }
  json report(const std::string& out) const { return json::parse(read_text(dir_ / out / "report.json")); }
  // A PWEMoE-LS run on 2 tiny tasks.
  void write_pwe(int steps, int save_interval) {
    std::ofstream(dir_ / "run.toml") << "progress = false\ntimeout_s = 20\n[method]\nname = \"pwe_moe_ls\"\n"
                                     << "num_steps = " << steps << "\nsave_interval = " << save_interval
                                     << "\nbatch_size = 8\nlr = 5e-2\neval_grid_m = 3\n"
                                        "[modelpool]\nname = \"tiny_models\"\ntasks = 2\n"
                                        "[taskpool]\nname = \"tiny_tasks\"\ntasks = 2\n";
  }
  fs::path checkpoint(const std::string& out, int step) const {
    return dir_ / out / "checkpoints" / ("routers_step=" + std::to_string(step) + ".safetensors");
  }
  // The largest difference between two router checkpoints (their tensors, optimizer state included).
  double difference(const fs::path& a, const fs::path& b) {
    const auto ca = fusion::load_safetensors(a);
    const auto cb = fusion::load_safetensors(b);
    EXPECT_GT(ca.size(), 0u);
    EXPECT_EQ(ca.size(), cb.size());
    double m = 0;
    for (const auto& [k, v] : ca)
      m = std::max(m, (v.to(at::kDouble) - cb.at(k).to(at::kDouble)).abs().max().item<double>());
    return m;
  }
};

// --- Item 4: the (model, task) pairs of a run spread over the ranks.

// One model (the pretrained vector) and 3 tasks (task i scores weight i): with whole models spread,
// ranks 1 and 2 would have nothing to do; the pairs give each rank one or two tasks.
TEST_F(DistributedEval, OneModelThreeTasksOverTwoAndThreeRanksEqualsOneProcess) {
  std::ofstream(dir_ / "run.toml") << "progress = false\ntimeout_s = 20\n[method]\nname = \"test_pretrained\"\n"
                                      "[modelpool]\nname = \"test_pool\"\npretrained = [0.125, 0.625, 0.9375]\n"
                                      "[taskpool]\nname = \"test_tasks\"\ntasks = [\"a\", \"b\", \"c\"]\n";
  Outcome one = fusion({"run", "run.toml", "out_dir=one"});
  ASSERT_EQ(one.code, 0) << one.err;
  const json expected = report("one")["models"];
  ASSERT_EQ(expected.size(), 1u);
  EXPECT_DOUBLE_EQ(expected[0]["report"]["b"]["accuracy"].get<double>(), 0.625);
  EXPECT_DOUBLE_EQ(expected[0]["report"]["average"]["accuracy"].get<double>(), (0.125 + 0.625 + 0.9375) / 3);
  for (const int ranks : {2, 3}) {
    const std::string out = "many" + std::to_string(ranks);
    Outcome many = fusion({"run", "--nproc", std::to_string(ranks), "run.toml", "out_dir=" + out});
    ASSERT_EQ(many.code, 0) << many.err;
    EXPECT_EQ(report(out)["models"], expected) << ranks;
    EXPECT_EQ(read_text(dir_ / out / "results.csv"), read_text(dir_ / "one" / "results.csv")) << ranks;
    const std::string plan = "evaluation: 1 model x 3 tasks = 3 (model, task) pairs over " + std::to_string(ranks) +
                             " processes, " + (ranks == 2 ? "1 or 2" : "1") + " each";
    EXPECT_NE(read_text(dir_ / out / "log.txt").find(plan), std::string::npos) << read_text(dir_ / out / "log.txt");
    // the resolved backend, not "auto"
    EXPECT_NE(many.err.find(std::to_string(ranks) + " processes (gloo backend (auto), timeout 20 s)"),
              std::string::npos) << many.err;
  }
}

// Pairs that cut through models (2 models x 3 tasks over 4 ranks: blocks of 1 and 2 pairs), with the
// models saved by rank 0: report, results.csv and saved models as in one process.
TEST_F(DistributedEval, PairsAcrossModelsWithSavedModelsEqualOneProcess) {
  std::ofstream(dir_ / "run.toml") << "progress = false\ntimeout_s = 20\nsave_models = true\n[method]\n"
                                      "name = \"test_sweep\"\nlambdas = [0.25, 0.75]\n[modelpool]\nname = \"test_pool\"\n"
                                      "pretrained = [0.1, 0.2, 0.3]\nexperts = [[0.5, 0.1, 0.3], [0.2, 0.9, 0.4], "
                                      "[0.1, 0.2, 0.95]]\nnames = [\"a\", \"b\", \"c\"]\n"
                                      "[taskpool]\nname = \"test_tasks\"\ntasks = [\"a\", \"b\", \"c\"]\n";
  Outcome one = fusion({"run", "run.toml", "out_dir=one"});
  ASSERT_EQ(one.code, 0) << one.err;
  Outcome many = fusion({"run", "--nproc=4", "run.toml", "out_dir=many", "backend=gloo"});
  ASSERT_EQ(many.code, 0) << many.err;
  EXPECT_EQ(report("one")["models"], report("many")["models"]);
  EXPECT_EQ(report("one")["hypervolume"], report("many")["hypervolume"]);
  EXPECT_EQ(read_text(dir_ / "one" / "results.csv"), read_text(dir_ / "many" / "results.csv"));
  ASSERT_EQ(report("many")["models"].size(), 2u);
  for (const auto& m : report("one")["models"]) {
    const std::string path = m["path"].get<std::string>();
    EXPECT_EQ(read_text(dir_ / "one" / path / "weights.txt"), read_text(dir_ / "many" / path / "weights.txt")) << path;
  }
  EXPECT_NE(read_text(dir_ / "many" / "log.txt").find("2 models x 3 tasks = 6 (model, task) pairs over 4 processes, 1 or 2 each"),
            std::string::npos);
  EXPECT_NE(many.err.find("4 processes (gloo backend, timeout"), std::string::npos) << many.err;
}

// A task pool with an evaluate() of its own (tiny_tasks forwards to its test pool) is evaluated one
// whole model per rank, through it.
TEST_F(DistributedEval, APoolWithItsOwnEvaluateIsEvaluatedWholeModels) {
  write_pwe(2, 2);
  Outcome many = fusion({"run", "--nproc", "2", "run.toml", "out_dir=many"});
  ASSERT_EQ(many.code, 0) << many.err;
  EXPECT_NE(read_text(dir_ / "many" / "log.txt")
                .find("over 2 processes, each evaluated whole by one (task pool 'tiny_tasks' has an evaluate() of its own)"),
            std::string::npos)
      << read_text(dir_ / "many" / "log.txt");
}

// --- PWEMoE-LS over 2 ranks resumed from a checkpoint.

// Interrupted after the step-6 checkpoint (its step-12 checkpoint removed, as the one-process resume
// tests do), then resumed over 2 ranks: the routers and Adam state of the uninterrupted 2-rank run and
// of one process, within 1e-6; train_log.csv of the uninterrupted run.
TEST_F(DistributedEval, PweMoeLsResumedOverTwoRanksEqualsUninterruptedAndOneProcess) {
  write_pwe(12, 6);
  Outcome one = fusion({"run", "run.toml", "out_dir=one"});
  ASSERT_EQ(one.code, 0) << one.err;
  Outcome full = fusion({"run", "--nproc", "2", "run.toml", "out_dir=full"});
  ASSERT_EQ(full.code, 0) << full.err;
  Outcome cut = fusion({"run", "--nproc", "2", "run.toml", "out_dir=cut"});
  ASSERT_EQ(cut.code, 0) << cut.err;
  fs::remove(checkpoint("cut", 12));
  fs::remove(dir_ / "cut" / "report.json");
  Outcome resumed = fusion({"run", "--nproc", "2", "run.toml", "out_dir=cut", "method.resume=true"});
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("pwe_moe_ls: resuming from cut/checkpoints/routers_step=6.safetensors (step 6)"),
            std::string::npos) << resumed.err;
  EXPECT_EQ(report("cut")["info"]["training"]["start_step"], 6);
  EXPECT_LE(difference(checkpoint("cut", 12), checkpoint("full", 12)), 1e-6);
  EXPECT_LE(difference(checkpoint("cut", 12), checkpoint("one", 12)), 1e-6);
  // the resumed run trained: its routers are not those it resumed from
  EXPECT_GT(difference(checkpoint("cut", 12), checkpoint("cut", 6)), 1e-4);
  const auto log_cut = lines_of(read_text(dir_ / "cut" / "train_log.csv"));
  const auto log_full = lines_of(read_text(dir_ / "full" / "train_log.csv"));
  ASSERT_EQ(log_cut.size(), 13u);
  ASSERT_EQ(log_full.size(), 13u);
  for (size_t i = 0; i < 13; ++i)  // all but the last column (seconds)
    EXPECT_EQ(log_cut[i].substr(0, log_cut[i].rfind(',')), log_full[i].substr(0, log_full[i].rfind(','))) << i;
  ASSERT_EQ(report("cut")["models"].size(), report("one")["models"].size());
  for (size_t i = 0; i < report("one")["models"].size(); ++i) {
    for (const std::string task : {"task0", "task1"}) {
      EXPECT_NEAR(report("one")["models"][i]["report"][task]["accuracy"].get<double>(),
                  report("cut")["models"][i]["report"][task]["accuracy"].get<double>(), 1e-5);
    }
  }
}

// A 6-step run over 2 ranks extended to 12 steps over 2 ranks equals the same extension in one process.
TEST_F(DistributedEval, PweMoeLsExtendedOverTwoRanksEqualsOneProcess) {
  write_pwe(6, 6);
  for (const std::string out : {"one", "many"}) {
    const std::vector<std::string> nproc = out == "one" ? std::vector<std::string>{} : std::vector<std::string>{"--nproc", "2"};
    std::vector<std::string> first{"run"}, second{"run"};
    first.insert(first.end(), nproc.begin(), nproc.end());
    second.insert(second.end(), nproc.begin(), nproc.end());
    for (const std::string& a : std::vector<std::string>{"run.toml", "out_dir=" + out}) first.push_back(a);
    for (const std::string& a : std::vector<std::string>{"run.toml", "out_dir=" + out, "method.resume=true", "method.num_steps=12"})
      second.push_back(a);
    Outcome o = fusion(first);
    ASSERT_EQ(o.code, 0) << o.err;
    o = fusion(second);
    ASSERT_EQ(o.code, 0) << o.err;
    EXPECT_NE(o.err.find("training continues from step 6 to 12"), std::string::npos) << o.err;
  }
  EXPECT_LE(difference(checkpoint("many", 12), checkpoint("one", 12)), 1e-6);
  EXPECT_LE(difference(checkpoint("many", 6), checkpoint("one", 6)), 1e-6);
  EXPECT_GT(difference(checkpoint("many", 12), checkpoint("many", 6)), 1e-4);
}

// --- SIGTERM / SIGINT

// Temporary files and folders (the patterns of write_file_atomic, save_safetensors and
// write_directory_atomic) anywhere under `dir`.
std::vector<std::string> temporaries_under(const fs::path& dir) {
  std::vector<std::string> found;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.find(".tmp") != std::string::npos) found.push_back(e.path().string());
  }
  return found;
}

// A temporary file and folder as unfinished atomic writes leave them, planted in the run folder
// before the signal (a write in flight at that moment is rarely caught by a test).
void plant_temporaries(const fs::path& out) {
  std::ofstream(out / "checkpoints" / ".routers_step=99.safetensors.tmp-0badc0de") << "half";
  fs::create_directories(out / "models" / "merged.tmp-12345678");
  std::ofstream(out / "models" / "merged.tmp-12345678" / "model.safetensors") << "half";
}

// Waits (≤ 60 s) until `file` exists and is not empty.
bool wait_for(const fs::path& file) {
  for (int i = 0; i < 600; ++i) {
    std::error_code ec;
    if (fs::exists(file, ec) && fs::file_size(file, ec) > 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

// One process, SIGTERM in the middle of training: exit status 143, one line, no temporary file, no
// report; the checkpoints written stay whole (the run resumes from them).
TEST_F(DistributedEval, SigtermToOneProcessLeavesNothingHalfWritten) {
  write_pwe(100000, 5);
  const std::string cmd = command({"run", "run.toml", "out_dir=out"}) + " 2> err.txt & p=$!; "
                          "for i in $(seq 600); do [ -s out/checkpoints/routers_step=5.safetensors ] && break; sleep 0.1; done; "
                          "echo > planted; while [ -e planted ]; do sleep 0.05; done; kill -TERM $p; wait $p; echo $? > rc";
  std::thread planter([&] {
    if (!wait_for(dir_ / "planted")) return;
    plant_temporaries(dir_ / "out");
    fs::remove(dir_ / "planted");
  });
  fusion::testing::run_in(dir_, "{ " + cmd + "; }");
  planter.join();
  EXPECT_EQ(read_text(dir_ / "rc"), "143\n");
  const Outcome o{143, "", read_text(dir_ / "err.txt")};
  ASSERT_EQ(o.error_lines().size(), 1u) << o.err;
  EXPECT_EQ(o.error_lines()[0], "fusion: error: interrupted by SIGTERM: stopped; its temporary files were removed "
                                "(exit status 143)");
  EXPECT_EQ(temporaries_under(dir_ / "out"), std::vector<std::string>{});
  EXPECT_FALSE(fs::exists(dir_ / "out" / "report.json"));
  EXPECT_NE(read_text(dir_ / "out" / "log.txt").find("error: interrupted by SIGTERM"), std::string::npos);
  // the checkpoints are whole: resuming from the latest one works
  const auto sd = fusion::load_safetensors(checkpoint("out", 5));
  EXPECT_GT(sd.size(), 0u);
}

// --nproc 2, SIGTERM to the launcher: it passes it on, both ranks stop (each says so in one line),
// nothing half-written, no report, the launcher exits with 143 and leaves no rank behind.
TEST_F(DistributedEval, SigtermToTheLauncherStopsEveryRank) {
  write_pwe(100000, 5);
  const std::string cmd = command({"run", "--nproc", "2", "run.toml", "out_dir=out"}) + " 2> err.txt & p=$!; "
                          "for i in $(seq 600); do [ -s out/checkpoints/routers_step=5.safetensors ] && break; sleep 0.1; done; "
                          "pgrep -P $p > ranks; echo > planted; while [ -e planted ]; do sleep 0.05; done; "
                          "kill -TERM $p; wait $p; echo $? > rc; for r in $(cat ranks); do kill -0 $r 2>/dev/null && echo $r; done > alive";
  std::thread planter([&] {
    if (!wait_for(dir_ / "planted")) return;
    plant_temporaries(dir_ / "out");
    fs::remove(dir_ / "planted");
  });
  fusion::testing::run_in(dir_, "{ " + cmd + "; }");
  planter.join();
  EXPECT_EQ(read_text(dir_ / "rc"), "143\n");
  EXPECT_EQ(lines_of(read_text(dir_ / "ranks")).size(), 2u);
  EXPECT_EQ(read_text(dir_ / "alive"), "");
  const Outcome o{143, "", read_text(dir_ / "err.txt")};
  std::vector<std::string> lines = o.error_lines();
  std::sort(lines.begin(), lines.end());
  ASSERT_EQ(lines.size(), 2u) << o.err;
  for (int r = 0; r < 2; ++r)
    EXPECT_EQ(lines[static_cast<size_t>(r)], "fusion: error: rank " + std::to_string(r) +
                                                 ": interrupted by SIGTERM: stopped; its temporary files were removed "
                                                 "(exit status 143)");
  EXPECT_EQ(temporaries_under(dir_ / "out"), std::vector<std::string>{});
  EXPECT_FALSE(fs::exists(dir_ / "out" / "report.json"));
}

// Two ranks started as a launcher would (torchrun's environment); SIGINT (Ctrl-C) to rank 1 only:
// rank 1 exits with 130 in one line, rank 0 stops at its next collective with its one line; no report.
// (The shell starts background jobs with SIGINT ignored, which fusion keeps: env --default-signal undoes it.)
TEST_F(DistributedEval, SigintToOneRank) {
  write_pwe(100000, 5);
  const int port = free_port();
  auto env_of = [&](int rank) {
    return "RANK=" + std::to_string(rank) + " WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port);
  };
  const std::string cmd = "(" + command({"run", "run.toml", "out_dir=out", "timeout_s=5"}, env_of(0)) +
                          " 2> r0.txt; echo $? > rc0) & " + command({"run", "run.toml", "out_dir=out", "timeout_s=5"}, "--default-signal=INT " + env_of(1)) +
                          " 2> r1.txt & p1=$!; for i in $(seq 600); do [ -s out/train_log.csv ] && break; sleep 0.1; done; "
                          "kill -INT $p1; wait $p1; echo $? > rc1; wait";
  fusion::testing::run_in(dir_, "{ " + cmd + "; }");
  EXPECT_EQ(read_text(dir_ / "rc1"), "130\n");
  const Outcome r1{130, "", read_text(dir_ / "r1.txt")};
  ASSERT_EQ(r1.error_lines().size(), 1u) << r1.err;
  EXPECT_EQ(r1.error_lines()[0], "fusion: error: rank 1: interrupted by SIGINT: stopped; its temporary files were "
                                 "removed (exit status 130)");
  EXPECT_EQ(read_text(dir_ / "rc0"), "1\n");
  const Outcome r0{1, "", read_text(dir_ / "r0.txt")};
  ASSERT_EQ(r0.error_lines().size(), 1u) << r0.err;
  EXPECT_EQ(r0.error_lines()[0].rfind("fusion: error: rank 0: all_gather (gloo) failed: a peer rank exited", 0), 0u) << r0.err;
  EXPECT_EQ(temporaries_under(dir_ / "out"), std::vector<std::string>{});
  EXPECT_FALSE(fs::exists(dir_ / "out" / "report.json"));
}

}  // namespace
