// `fusion run` over several processes, end to end: the same run in one process, with --nproc 2 and 3
// (Gloo on 127.0.0.1), gives the same routers (within 1e-6) and the same reports; each fault of a run
// over several processes ends every rank within the timeout with one line naming the rank and the cause.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "fusion/safetensors.hpp"
#include "run_binary.hpp"
#include "scratch_dir.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using fusion::testing::free_port;
using fusion::testing::Outcome;
using fusion::testing::read_text;
using fusion::testing::shell_quote;

class Distributed : public fusion::testing::ScratchDirTest {
 protected:
  Distributed() : ScratchDirTest("fusion_distributed_") {}
  // A PWEMoE run on `tasks` tiny tasks. FUSION_TEST_BACKEND (gloo, nccl; unset: the run's default,
  // "auto") names [run] backend: scripts/gpu-test.sh runs the 2-rank tests over NCCL on 2+ GPUs.
  void write_pwe(const std::string& method, int tasks, int steps) {
    const char* backend = std::getenv("FUSION_TEST_BACKEND");
    std::ofstream(dir_ / "run.toml") << (backend && *backend ? "backend = \"" + std::string(backend) + "\"\n" : "")
                                     << "progress = false\ntimeout_s = 20\n[method]\nname = \"" << method
                                     << "\"\nnum_steps = " << steps << "\nsave_interval = " << steps
                                     << "\nbatch_size = 8\nlr = 5e-2\neval_grid_m = 3\n"
                                        "[modelpool]\nname = \"tiny_models\"\ntasks = "
                                     << tasks << "\n[taskpool]\nname = \"tiny_tasks\"\ntasks = " << tasks << "\n";
  }
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

  // The same evaluation of every model, in the same order, within `tol`.
  void expect_same_models(const json& a, const json& b, double tol) {
    ASSERT_EQ(a["models"].size(), b["models"].size());
    for (size_t i = 0; i < a["models"].size(); ++i) {
      const json& x = a["models"][i];
      const json& y = b["models"][i];
      EXPECT_EQ(x["label"], y["label"]);
      for (const auto& [task, r] : x["report"].items()) {
        if (!r.is_object() || !r.contains("accuracy")) continue;
        EXPECT_NEAR(r["accuracy"].get<double>(), y["report"][task]["accuracy"].get<double>(), tol) << task;
        EXPECT_NEAR(r["loss"].get<double>(), y["report"][task]["loss"].get<double>(), tol) << task;
      }
    }
  }
  // The largest difference between two runs' router checkpoints at `step`.
  double router_difference(const std::string& a, const std::string& b, int step) {
    const auto ca = fusion::load_safetensors(dir_ / a / "checkpoints" / ("routers_step=" + std::to_string(step) + ".safetensors"));
    const auto cb = fusion::load_safetensors(dir_ / b / "checkpoints" / ("routers_step=" + std::to_string(step) + ".safetensors"));
    EXPECT_GT(ca.size(), 0u);
    EXPECT_EQ(ca.size(), cb.size());
    double m = 0;
    for (const auto& [k, v] : ca) m = std::max(m, (v.to(at::kDouble) - cb.at(k).to(at::kDouble)).abs().max().item<double>());
    return m;
  }
  // One process, then --nproc `ranks`: the routers within `tol`, the reports alike.
  void expect_distributed_equals_one_process(const std::string& method, int tasks, int ranks, double tol) {
    const int steps = 12;
    write_pwe(method, tasks, steps);
    Outcome one = fusion({"run", "run.toml", "out_dir=one"});
    ASSERT_EQ(one.code, 0) << one.err;
    Outcome many = fusion({"run", "--nproc", std::to_string(ranks), "run.toml", "out_dir=many"});
    ASSERT_EQ(many.code, 0) << many.err;
    EXPECT_NE(many.err.find(std::to_string(ranks) + " processes"), std::string::npos) << many.err;
    const double d = router_difference("one", "many", steps);
    EXPECT_LE(d, tol);
    // The routers moved: a distributed run that trained nothing would fail here.
    EXPECT_GT(read_text(dir_ / "one" / "train_log.csv").size(), 0u);
    expect_same_models(report("one"), report("many"), 1e-5);
    EXPECT_EQ(read_text(dir_ / "one" / "train_log.csv").substr(0, 40), read_text(dir_ / "many" / "train_log.csv").substr(0, 40));
  }
};

TEST_F(Distributed, PweMoeLsTwoRanksEqualsOneProcess) {
  expect_distributed_equals_one_process("pwe_moe_ls", 2, 2, 1e-6);
}
TEST_F(Distributed, PweMoeLsThreeRanksEqualsOneProcess) {
  expect_distributed_equals_one_process("pwe_moe_ls", 3, 3, 1e-6);
}
TEST_F(Distributed, PweMoeEpoTwoRanksEqualsOneProcess) {
  expect_distributed_equals_one_process("pwe_moe_epo", 2, 2, 1e-6);
}
TEST_F(Distributed, PweMoeEpoThreeRanksEqualsOneProcess) {
  expect_distributed_equals_one_process("pwe_moe_epo", 3, 3, 1e-6);
}

// A λ sweep's models spread over 3 ranks: the report of one process; only rank 0 writes.
TEST_F(Distributed, SweepEvaluationOverThreeRanksEqualsOneProcess) {
  std::ofstream(dir_ / "run.toml") << "progress = false\ntimeout_s = 20\n[method]\nname = \"test_sweep\"\n"
                                      "lambdas = [0.1, 0.3, 0.5, 0.7, 0.9]\n[modelpool]\nname = \"test_pool\"\n"
                                      "pretrained = [0.1, 0.2]\nexperts = [[0.5, 0.1], [0.2, 0.9]]\nnames = [\"a\", \"b\"]\n"
                                      "[taskpool]\nname = \"test_tasks\"\n";
  Outcome one = fusion({"run", "run.toml", "out_dir=one"});
  ASSERT_EQ(one.code, 0) << one.err;
  Outcome many = fusion({"run", "--nproc=3", "run.toml", "out_dir=many"});
  ASSERT_EQ(many.code, 0) << many.err;
  EXPECT_EQ(report("one")["models"], report("many")["models"]);
  EXPECT_EQ(read_text(dir_ / "one" / "results.csv"), read_text(dir_ / "many" / "results.csv"));
  EXPECT_EQ(report("one")["hypervolume"], report("many")["hypervolume"]);
}

// --- Faults: each ends within the timeout (3 s here) with one line naming the rank and the cause.

std::string env_of(int rank, int world, int port, const std::string& addr = "127.0.0.1") {
  return "RANK=" + std::to_string(rank) + " WORLD_SIZE=" + std::to_string(world) + " MASTER_ADDR=" + addr +
         " MASTER_PORT=" + std::to_string(port);
}

double seconds_of(const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST_F(Distributed, APeerThatNeverJoins) {
  write_pwe("pwe_moe_ls", 2, 4);
  Outcome o;
  const double s = seconds_of([&] { o = fusion({"run", "run.toml", "out_dir=out", "timeout_s=3"}, env_of(0, 2, free_port())); });
  EXPECT_EQ(o.code, 1);
  ASSERT_EQ(o.error_lines().size(), 1u) << o.err;
  EXPECT_NE(o.error_lines()[0].find("fusion: error: rank 0: rank 1 of WORLD_SIZE=2 did not join the rendezvous"),
            std::string::npos) << o.err;
  EXPECT_LT(s, 15.0);
  EXPECT_FALSE(fs::exists(dir_ / "out"));
}

TEST_F(Distributed, AnUnreachableRendezvous) {
  write_pwe("pwe_moe_ls", 2, 4);
  Outcome o;
  const double s = seconds_of([&] { o = fusion({"run", "run.toml", "out_dir=out", "timeout_s=3"}, env_of(1, 2, free_port())); });
  EXPECT_EQ(o.code, 1);
  ASSERT_EQ(o.error_lines().size(), 1u) << o.err;
  EXPECT_NE(o.error_lines()[0].find("fusion: error: rank 1: cannot reach the rendezvous at 127.0.0.1:"),
            std::string::npos) << o.err;
  EXPECT_LT(s, 15.0);
  EXPECT_FALSE(fs::exists(dir_ / "out"));
}

TEST_F(Distributed, AWrongWorldSize) {
  write_pwe("pwe_moe_ls", 2, 4);
  const int port = free_port();
  const std::string cmd = "(" + command({"run", "run.toml", "out_dir=out", "timeout_s=3"}, env_of(0, 2, port)) +
                          " 2> r0.txt; echo $? > rc0) & " + command({"run", "run.toml", "out_dir=out", "timeout_s=3"}, env_of(1, 3, port)) +
                          " 2> r1.txt; echo $? > rc1; wait";
  const double s = seconds_of([&] { fusion::testing::run_in(dir_, "{ " + cmd + "; }"); });
  EXPECT_LT(s, 15.0);
  EXPECT_EQ(read_text(dir_ / "rc0"), "1\n");
  EXPECT_EQ(read_text(dir_ / "rc1"), "1\n");
  EXPECT_NE(read_text(dir_ / "r0.txt").find("fusion: error: rank 0: rank 1 has WORLD_SIZE=3, rank 0 has WORLD_SIZE=2"),
            std::string::npos) << read_text(dir_ / "r0.txt");
  EXPECT_NE(read_text(dir_ / "r1.txt").find("fusion: error: rank 1: the rendezvous failed on rank 0: rank 1 has WORLD_SIZE=3"),
            std::string::npos) << read_text(dir_ / "r1.txt");
  EXPECT_FALSE(fs::exists(dir_ / "out" / "report.json"));
}

// Rank 1 killed in the middle of training: rank 0 stops at its next collective within the timeout.
TEST_F(Distributed, ARankThatDies) {
  write_pwe("pwe_moe_ls", 2, 100000);
  const int port = free_port();
  // Rank 1 is killed once rank 0 has logged a training step (both ranks are in the training loop).
  const std::string cmd = "(" + command({"run", "run.toml", "out_dir=out", "timeout_s=5"}, env_of(0, 2, port)) +
                          " 2> r0.txt; echo $? > rc0) & " + command({"run", "run.toml", "out_dir=out", "timeout_s=5"}, env_of(1, 2, port)) +
                          " 2> r1.txt & p1=$!; for i in $(seq 600); do [ -s out/train_log.csv ] && break; sleep 0.1; done; "
                          "date +%s.%N > killed; kill -9 $p1; wait";
  fusion::testing::run_in(dir_, "{ " + cmd + "; }");
  const double killed = std::stod(read_text(dir_ / "killed"));
  const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  EXPECT_LT(now - killed, 5.0 + 10.0);  // the timeout, and the margin of a loaded machine
  EXPECT_EQ(read_text(dir_ / "rc0"), "1\n");
  const Outcome r0{1, "", read_text(dir_ / "r0.txt")};
  ASSERT_EQ(r0.error_lines().size(), 1u) << r0.err;
  EXPECT_EQ(r0.error_lines()[0].rfind("fusion: error: rank 0: all_gather (gloo) failed: a peer rank exited", 0), 0u) << r0.err;
  EXPECT_FALSE(fs::exists(dir_ / "out" / "report.json"));
}

// --nproc: a rank that fails stops the others at once, and the launcher exits with its status.
TEST_F(Distributed, LauncherStopsTheOthersWhenARankFails) {
  write_pwe("pwe_moe_ls", 3, 4);  // 3 ranks for 3 tasks, but a bad option everywhere
  Outcome o;
  const double s = seconds_of([&] { o = fusion({"run", "--nproc", "2", "run.toml", "out_dir=out", "method.lr=-1"}); });
  EXPECT_EQ(o.code, 1) << o.err;
  EXPECT_LT(s, 15.0);
  EXPECT_NE(o.err.find("fusion: error: rank "), std::string::npos) << o.err;
  EXPECT_FALSE(fs::exists(dir_ / "out" / "report.json"));
}

}  // namespace
