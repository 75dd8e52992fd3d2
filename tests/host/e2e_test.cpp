// End-to-end: the built `fusion` binary, run with small configs in a temporary folder and the
// purpose-built test plugin (FUSION_NO_DEFAULT_PLUGINS=1, FUSION_PLUGIN_PATH=<test plugins>).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include <torch/version.h>

#include "fusion/config.hpp"
#include "fusion/safetensors.hpp"
#include "run_binary.hpp"
#include "fusion/version.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const fs::path kBinary = FUSION_BINARY;
const fs::path kPlugins = FUSION_HOST_TEST_PLUGIN_DIR;
const fs::path kSimpleAverage = FUSION_SIMPLE_AVERAGE_PLUGIN;  // a real method that needs experts
const fs::path kTaskArithmetic = FUSION_TASK_ARITHMETIC_PLUGIN;
const fs::path kTiesMerging = FUSION_TIES_MERGING_PLUGIN;
const std::string kAbi = std::to_string(FUSION_ABI_VERSION);

using fusion::testing::lines_of;
using fusion::testing::Outcome;
std::string quote(const std::string& s) { return fusion::testing::shell_quote(s); }
std::string read(const fs::path& p) { return fusion::testing::read_text(p); }

constexpr const char* kSweep = R"(out_dir = "out"
progress = false

[method]
name = "test_sweep"
lambdas = [0.0, 0.5, 1.0]

[modelpool]
name = "test_pool"
pretrained = [0.5, 0.5]
experts = [[0.9, 0.2], [0.2, 0.6]]
names = ["a", "b"]

[taskpool]
name = "test_tasks"
tasks = ["a", "b"]
)";

class E2E : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           (std::string("fusion_e2e_") + info->test_suite_name() + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }

  Outcome fusion(const std::vector<std::string>& args,
                 std::string plugin_path = (kPlugins / "good").string()) {
    std::string cmd = "env " + omp_env_ +
                      " FUSION_NO_DEFAULT_PLUGINS=1 FUSION_PLUGIN_PATH=" + quote(plugin_path) +
                      " " + quote(kBinary.string());
    for (const auto& a : args) cmd += " " + quote(a);
    return fusion::testing::run_in(dir_, cmd);
  }

  fs::path write(const std::string& name, const std::string& text) {
    fs::path p = dir_ / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
    return p;
  }

  // A bad input: exit 1, one `fusion: error:` line containing `needle`, no report.json anywhere.
  void expect_failure(const Outcome& o, const std::string& needle) {
    EXPECT_EQ(o.code, 1) << o.err;
    auto errs = o.error_lines();
    ASSERT_EQ(errs.size(), 1u) << o.err;
    EXPECT_NE(errs[0].find(needle), std::string::npos) << errs[0];
    for (const auto& e : fs::recursive_directory_iterator(dir_))
      EXPECT_NE(e.path().filename(), "report.json") << e.path();
  }

  // Runs test_pretrained (the pretrained model, saved) on the built-in `safetensors` pool whose
  // pretrained file holds `base`, with `models_table` appended to the config; checks that the saved
  // model is `base` and returns the report.
  json run_builtin_pool(const fusion::StateDict& base, const std::string& models_table) {
    fusion::save_safetensors(dir_ / "base.safetensors", base);
    write("st.toml", std::string(R"(out_dir = "st"
  progress = false
  [method]
  name = "test_pretrained"
  [modelpool]
  name = "safetensors"
  pretrained = "base.safetensors"
  )") + models_table);
    Outcome o = fusion({"run", "st.toml"});
    EXPECT_EQ(o.code, 0) << o.err;
    json r = json::parse(read(dir_ / "st" / "report.json"));
    EXPECT_EQ(r["models"].size(), 1u);
    EXPECT_EQ(r["sweep"], false);  // one model, not a curve
    const fusion::StateDict back =
        fusion::load_safetensors(dir_ / "st" / r["models"][0]["path"].get<std::string>());
    EXPECT_TRUE(back.contains("layer.weight") && at::equal(back.at("layer.weight"), base.at("layer.weight")));
    return r;
  }

  fs::path dir_;
  /// OpenMP's environment for `fusion`; "-u OMP_WAIT_POLICY" runs without it (then `fusion run`
  /// executes itself again with it, before LibTorch's constructors)
  std::string omp_env_ = "OMP_WAIT_POLICY=PASSIVE";
};

TEST_F(E2E, Help) {
  Outcome o = fusion({"--help"});
  EXPECT_EQ(o.code, 0);
  EXPECT_NE(o.out.find("fusion run CONFIG.toml [key=value ...]"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("fusion plugins"), std::string::npos);
  EXPECT_NE(o.out.find("fusion describe NAME"), std::string::npos);
  EXPECT_NE(o.out.find("FUSION_PLUGIN_PATH"), std::string::npos);
}

TEST_F(E2E, Version) {
  Outcome o = fusion({"--version"});
  EXPECT_EQ(o.code, 0);
  auto lines = lines_of(o.out);
  ASSERT_EQ(lines.size(), 5u) << o.out;
  EXPECT_EQ(lines[0], std::string("fusion ") + FUSION_VERSION_STRING);
  EXPECT_EQ(lines[1], "SDK ABI " + kAbi);
  EXPECT_EQ(lines[2], std::string("LibTorch ") + TORCH_VERSION);
  EXPECT_EQ(lines[3].rfind("CUDA: ", 0), 0u);
  EXPECT_EQ(lines[4].rfind("BLAS: ", 0), 0u);
}

TEST_F(E2E, UsageErrorsExitTwo) {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"frobnicate"}, {"--frob"}, {}, {"run"}, {"describe"}, {"plugins", "extra"}}) {
    Outcome o = fusion(args);
    EXPECT_EQ(o.code, 2) << o.err;
    ASSERT_EQ(o.error_lines().size(), 1u) << o.err;
    EXPECT_EQ(lines_of(o.err).size(), 1u) << o.err;
  }
  EXPECT_NE(fusion({"frobnicate"}).err.find("unknown command 'frobnicate'"), std::string::npos);
  EXPECT_NE(fusion({"--frob"}).err.find("--frob"), std::string::npos);
}

TEST_F(E2E, PluginsListsComponentsAndRefusals) {
  Outcome o = fusion({"plugins"}, (kPlugins / "good").string() + ":" + (kPlugins / "bad").string());
  EXPECT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(o.err, "");  // refusals are listed on stdout, not warned about
  EXPECT_NE(o.out.find("safetensors"), std::string::npos) << o.out;
  // Each plugin with its ABI and the SDK API level it was built against.
  EXPECT_NE(o.out.find("host_test_good 1.2.3 (ABI " + kAbi + ", API level " +
                       std::to_string(FUSION_API_LEVEL) + ", SDK " + FUSION_VERSION_STRING),
            std::string::npos)
      << o.out;
  EXPECT_NE(o.out.find("built-in (fusion " + std::string(FUSION_VERSION_STRING) + ", ABI " + kAbi +
                       ", API level " + std::to_string(FUSION_API_LEVEL) + ")"),
            std::string::npos)
      << o.out;
  EXPECT_NE(o.out.find("fusion_host_test_good.so"), std::string::npos);
  EXPECT_NE(o.out.find("algorithm  test_sweep"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("a sweep over task arithmetic"), std::string::npos);
  EXPECT_NE(o.out.find("taskpool   test_tasks"), std::string::npos);
  EXPECT_NE(o.out.find("refused:"), std::string::npos);
  EXPECT_NE(o.out.find("fusion_host_test_wrong_abi.so: built for ABI 999, host has ABI " + kAbi),
            std::string::npos)
      << o.out;
  EXPECT_NE(o.out.find("fusion_host_test_init_throws.so: init failed: init failed on purpose"),
            std::string::npos);
}

TEST_F(E2E, DescribeComponent) {
  Outcome o = fusion({"describe", "test_sweep"});
  EXPECT_EQ(o.code, 0) << o.err;
  EXPECT_NE(o.out.find("test_sweep: algorithm"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("lambdas  list of float, default [0.0, 0.5, 1.0], in [0, 1]"),
            std::string::npos)
      << o.out;
  EXPECT_NE(o.out.find("mode     string, default \"sum\", one of \"sum\", \"mean\""),
            std::string::npos)
      << o.out;
  EXPECT_NE(o.out.find("[method] table"), std::string::npos);
  // An algorithm's requirements, as the host checks them.
  EXPECT_NE(o.out.find("\n  needs: a pretrained model, at least 1 expert\n"), std::string::npos) << o.out;
  o = fusion({"describe", "test_pool"});
  EXPECT_NE(o.out.find("pretrained  list of float, required"), std::string::npos) << o.out;
  EXPECT_EQ(o.out.find("needs:"), std::string::npos) << o.out;  // pools declare none
  o = fusion({"describe", "test_pretrained"});
  EXPECT_NE(o.out.find("reference: https://example.org/test\n  needs: a pretrained model\n"),
            std::string::npos)
      << o.out;
  o = fusion({"describe", "run"});
  EXPECT_EQ(o.code, 0);
  EXPECT_NE(o.out.find("device"), std::string::npos);
  EXPECT_NE(o.out.find("out_dir"), std::string::npos);
  o = fusion({"describe", "nope"});
  EXPECT_EQ(o.code, 1);
  ASSERT_EQ(o.error_lines().size(), 1u);
  EXPECT_NE(o.err.find("unknown component 'nope'"), std::string::npos) << o.err;
}

TEST_F(E2E, RunWritesConfigLogResultsAndReport) {
  write("sweep.toml", kSweep);
  omp_env_ = "-u OMP_WAIT_POLICY";
  Outcome o = fusion({"run", "sweep.toml", "seed=3"});
  ASSERT_EQ(o.code, 0) << o.err;
  const fs::path out = dir_ / "out";
  for (const char* f : {"config.toml", "log.txt", "results.csv", "report.json"})
    EXPECT_TRUE(fs::exists(out / f)) << f;
  EXPECT_FALSE(fs::exists(out / "models"));  // a task pool and save_models unset: nothing saved

  // The resolved config: defaults filled in, overrides applied, and it parses back.
  auto rc = fusion::RunConfig::from_file(out / "config.toml");
  EXPECT_EQ(std::get<std::string>(rc.section("method").at("mode")), "sum");
  EXPECT_EQ(std::get<int64_t>(rc.section("run").at("seed")), 3);
  EXPECT_EQ(std::get<bool>(rc.section("run").at("save_models")), false);
  EXPECT_EQ(std::get<std::string>(rc.section("run").at("device")), "auto");

  json r = json::parse(read(out / "report.json"));
  EXPECT_EQ(r["method"], "test_sweep");
  EXPECT_EQ(r["modelpool"], "test_pool");
  EXPECT_EQ(r["taskpool"], "test_tasks");
  EXPECT_EQ(r["seed"], 3);
  EXPECT_EQ(r["dtype"], "float32");
  EXPECT_EQ(r["omp_wait_policy"], "PASSIVE");  // `fusion run` executed itself again with it
  EXPECT_EQ(r["command"].back(), "seed=3");
  EXPECT_EQ(r["tasks"], json({"a", "b"}));
  EXPECT_EQ(r["config"]["method"]["lambdas"], json({0.0, 0.5, 1.0}));
  EXPECT_GT(r["peak_rss_mb"].get<double>(), 1.0);
  // The BLAS as `fusion --version` names it (its last line, "BLAS: ...").
  const std::string version = fusion({"--version"}).out;
  const size_t blas_at = version.rfind("BLAS: ");
  ASSERT_NE(blas_at, std::string::npos) << version;
  EXPECT_EQ(r["blas"], version.substr(blas_at + 6, version.find('\n', blas_at) - blas_at - 6));
  for (const char* t : {"load_s", "merge_s", "eval_s", "total_s"})
    EXPECT_GE(r["timings"][t].get<double>(), 0.0) << t;
  EXPECT_EQ(r["info"]["trainable_params"], 0);
  EXPECT_EQ(r["sweep"], true);  // test_sweep's models trace one curve
  ASSERT_EQ(r["plugins"].size(), 1u);
  EXPECT_EQ(r["plugins"][0]["name"], "host_test_good");
  EXPECT_TRUE(r["refused_plugins"].empty());
  ASSERT_EQ(r["models"].size(), 3u);
  // θ₀ = (0.5, 0.5), τ = (0.4, -0.3) + (-0.3, 0.1) = (0.1, -0.2): λ = 0.5 gives (0.55, 0.4).
  const json& m = r["models"][1];
  EXPECT_EQ(m["label"], "lambda=0.50");
  EXPECT_EQ(m["metadata"]["scaling_factor"], 0.5);
  EXPECT_TRUE(m["path"].is_null());
  EXPECT_NEAR(m["report"]["a"]["accuracy"].get<double>(), 0.55, 1e-6);
  EXPECT_NEAR(m["report"]["b"]["accuracy"].get<double>(), 0.40, 1e-6);
  EXPECT_NEAR(m["report"]["b"]["loss"].get<double>(), 0.60, 1e-6);
  EXPECT_NEAR(m["report"]["average"]["accuracy"].get<double>(), 0.475, 1e-6);
  EXPECT_EQ(m["report"]["model_info"]["all_params"], 2);
  // Points (0.5, 0.5), (0.55, 0.4), (0.6, 0.3): 0.25 + 0.05·0.4 + 0.05·0.3.
  EXPECT_NEAR(r["hypervolume"].get<double>(), 0.285, 1e-6);
  EXPECT_EQ(r["pareto_front"], json({"lambda=0.00", "lambda=0.50", "lambda=1.00"}));
  if (r.contains("pareto_plot")) EXPECT_GT(fs::file_size(out / "pareto.svg"), 100u);

  auto csv = lines_of(read(out / "results.csv"));
  ASSERT_EQ(csv.size(), 4u);
  EXPECT_EQ(csv[0], "label,index,scaling_factor,a.accuracy,a.loss,b.accuracy,b.loss,average.accuracy");
  EXPECT_EQ(csv[2].rfind("lambda=0.50,1,0.5,0.55", 0), 0u) << csv[2];

  std::string log = read(out / "log.txt");
  EXPECT_NE(log.find("running test_sweep"), std::string::npos) << log;
  EXPECT_NE(log.find("model 2/3 'lambda=0.50': a=0.55"), std::string::npos) << log;
}

// `fusion run` without OMP_WAIT_POLICY: libgomp starts once, passive (GOMP_SPINCOUNT 0), since the
// new start happens before any library's constructor. Re-executing from main would start libgomp
// twice; not re-executing would leave it spinning (300000). Other commands keep OpenMP's default.
TEST_F(E2E, RunMakesOpenMpPassiveBeforeItStarts) {
  write("sweep.toml", kSweep);
  omp_env_ = "-u OMP_WAIT_POLICY OMP_DISPLAY_ENV=verbose";
  const Outcome o = fusion({"run", "sweep.toml"});
  ASSERT_EQ(o.code, 0) << o.err;
  const auto count = [](const std::string& text, const std::string& what) {
    size_t n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  };
  const std::string all = o.out + o.err;
  if (count(all, "OPENMP DISPLAY ENVIRONMENT BEGIN") == 0) GTEST_SKIP() << "LibTorch's OpenMP is not libgomp";
  EXPECT_EQ(count(all, "OPENMP DISPLAY ENVIRONMENT BEGIN"), 1u) << all;
  EXPECT_EQ(count(all, "GOMP_SPINCOUNT = '0'"), 1u) << all;
  const Outcome p = fusion({"plugins"});
  ASSERT_EQ(p.code, 0) << p.err;
  EXPECT_EQ(count(p.out + p.err, "GOMP_SPINCOUNT = '300000'"), 1u) << p.out + p.err;
}

TEST_F(E2E, WithoutTaskPoolModelsAreSaved) {
  std::string cfg = kSweep;
  cfg = cfg.substr(0, cfg.find("[taskpool]"));
  write("merge.toml", cfg);
  Outcome o = fusion({"run", "merge.toml", "method.lambdas=[0.25]"});
  ASSERT_EQ(o.code, 0) << o.err;
  const fs::path out = dir_ / "out";
  json r = json::parse(read(out / "report.json"));
  ASSERT_EQ(r["models"].size(), 1u);
  EXPECT_EQ(r["models"][0]["path"], "models/lambda=0.25");
  EXPECT_TRUE(r["models"][0]["report"].is_null());
  EXPECT_FALSE(r.contains("hypervolume"));
  EXPECT_TRUE(r["taskpool"].is_null());
  auto w = lines_of(read(out / "models" / "lambda=0.25" / "weights.txt"));
  ASSERT_EQ(w.size(), 2u);
  EXPECT_NEAR(std::stod(w[0]), 0.525, 1e-6);
  EXPECT_NEAR(std::stod(w[1]), 0.45, 1e-6);
  EXPECT_EQ(lines_of(read(out / "results.csv"))[0], "label,index,scaling_factor");
}

TEST_F(E2E, SaveModelsWithTaskPoolAndDefaultOutDir) {
  std::string cfg = kSweep;
  cfg.erase(0, cfg.find('\n') + 1);  // no out_dir: outputs/<method name>
  write("sweep.toml", cfg);
  Outcome o = fusion({"run", "sweep.toml", "save_models=true", "method.lambdas=[1, 0]"});
  ASSERT_EQ(o.code, 0) << o.err;
  const fs::path out = dir_ / "outputs" / "test_sweep";
  EXPECT_TRUE(fs::exists(out / "models" / "lambda=1.00" / "weights.txt"));
  EXPECT_TRUE(fs::exists(out / "models" / "lambda=0.00" / "weights.txt"));
  json r = json::parse(read(out / "report.json"));
  EXPECT_EQ(r["config"]["run"]["out_dir"], "outputs/test_sweep");
  EXPECT_FALSE(r["models"][0]["report"].is_null());
}

TEST_F(E2E, CompareDrawsAnotherRun) {
  write("sweep.toml", kSweep);
  ASSERT_EQ(fusion({"run", "sweep.toml"}).code, 0);
  std::string cfg = kSweep;
  cfg.replace(cfg.find("test_sweep"), 10, "test_pretrained");
  cfg.replace(cfg.find("lambdas = [0.0, 0.5, 1.0]"), 25, "label = \"base\"");
  cfg.replace(cfg.find("\"out\""), 5, "\"out2\"");
  write("pre.toml", cfg);
  Outcome o = fusion({"run", "pre.toml", "compare=[\"out/report.json\"]"});
  ASSERT_EQ(o.code, 0) << o.err;
  json r = json::parse(read(dir_ / "out2" / "report.json"));
  ASSERT_EQ(r["models"].size(), 1u);
  EXPECT_EQ(r["models"][0]["label"], "base");
  EXPECT_NEAR(r["hypervolume"].get<double>(), 0.25, 1e-6);
  if (r.contains("pareto_plot")) {
    std::string svg = read(dir_ / "out2" / "pareto.svg");
    EXPECT_NE(svg.find("<svg"), std::string::npos);
  }
  o = fusion({"run", "pre.toml", "compare=[\"missing/report.json\"]", "out_dir=out3"});
  EXPECT_EQ(o.code, 1);
  ASSERT_EQ(o.error_lines().size(), 1u) << o.err;
  EXPECT_NE(o.err.find("run.compare[0]: cannot read report 'missing/report.json'"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir_ / "out3"));
}

// ---- bad input: one line, exit 1, no report.json -------------------------------------------

TEST_F(E2E, MissingConfigFile) {
  expect_failure(fusion({"run", "nope.toml"}), "fusion: error: nope.toml: config file not found");
}

TEST_F(E2E, TomlSyntaxError) {
  write("bad.toml", "[method]\nname = \"test_sweep\"\nlambdas = [0.0,\n\n[modelpool\n");
  Outcome o = fusion({"run", "bad.toml"});
  expect_failure(o, "bad.toml:");
  EXPECT_NE(o.err.find("TOML syntax error"), std::string::npos);
}

TEST_F(E2E, UnknownComponent) {
  write("c.toml", kSweep);
  Outcome o = fusion({"run", "c.toml", "method.name=task_arithmetc"});
  expect_failure(o, "method.name: unknown algorithm 'task_arithmetc'; known: test_pretrained, test_sweep");
  expect_failure(fusion({"run", "c.toml", "taskpool.name=nope"}), "taskpool.name: unknown taskpool 'nope'");
}

TEST_F(E2E, UnknownComponentNamesRefusedPlugins) {
  write("c.toml", kSweep);
  Outcome o = fusion({"run", "c.toml"}, (kPlugins / "bad").string());
  expect_failure(o, "method.name: unknown algorithm 'test_sweep'");
  EXPECT_NE(o.err.find("refused plugins:"), std::string::npos) << o.err;
  EXPECT_NE(o.err.find("fusion_host_test_wrong_abi.so (built for ABI 999, host has ABI " + kAbi + ")"),
            std::string::npos);
}

TEST_F(E2E, UnknownOption) {
  write("c.toml", kSweep);
  expect_failure(fusion({"run", "c.toml", "method.lambda=0.3"}),
                 "method.lambda: unknown option; known options: lambdas, fail_at, mode");
  expect_failure(fusion({"run", "c.toml", "run.colour=blue"}), "run.colour: unknown option");
  write("s.toml", std::string(kSweep) + "[extra]\nx = 1\n");
  expect_failure(fusion({"run", "s.toml"}), "unknown section [extra]");
}

TEST_F(E2E, WrongType) {
  write("c.toml", kSweep);
  expect_failure(fusion({"run", "c.toml", "method.lambdas=abc"}),
                 "method.lambdas: expected list of float, got string \"abc\"");
  expect_failure(fusion({"run", "c.toml", "seed=\"x\""}), "run.seed: expected int, got string \"x\"");
  expect_failure(fusion({"run", "c.toml", "method.name=3"}), "method.name: expected string, got int 3");
}

TEST_F(E2E, OutOfRange) {
  write("c.toml", kSweep);
  expect_failure(fusion({"run", "c.toml", "method.lambdas=[0.5, 2]"}),
                 "method.lambdas[1]: expected a value in [0, 1], got 2.0");
  // Non-finite numbers are refused when the option is read, before any component is made.
  expect_failure(fusion({"run", "c.toml", "method.lambdas=[0.5, inf]"}),
                 "method.lambdas[1]: expected a finite number, got inf");
  expect_failure(fusion({"run", "c.toml", "method.lambdas=[nan]"}), "method.lambdas[0]: expected a finite number, got nan");
  expect_failure(fusion({"run", "c.toml", "dtype=int8"}),
                 "run.dtype: expected one of \"float32\", \"float16\", \"bfloat16\", \"float64\", got \"int8\"");
  expect_failure(fusion({"run", "c.toml", "threads=0"}), "run.threads: expected a value in [1, 4096], got 0");
  expect_failure(fusion({"run", "c.toml", "device=gpu"}), "run.device: expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got \"gpu\"");
}

TEST_F(E2E, CudaWithoutCuda) {
  if (fusion({"--version"}).out.find("CUDA: available") != std::string::npos)
    GTEST_SKIP() << "a GPU is present";
  write("c.toml", kSweep);
  expect_failure(fusion({"run", "c.toml", "device=cuda"}), "run.device: \"cuda\" asked for, but");
}

TEST_F(E2E, MalformedOverride) {
  write("c.toml", kSweep);
  expect_failure(fusion({"run", "c.toml", "method.lambdas"}),
                 "override 'method.lambdas': expected key=value");
  expect_failure(fusion({"run", "c.toml", "method..x=1"}), "override 'method..x=1'");
}

TEST_F(E2E, UnwritableOutDir) {
  write("c.toml", kSweep);
  write("afile", "a file where a folder should be\n");
  Outcome o = fusion({"run", "c.toml", "out_dir=afile/sub"});
  expect_failure(o, "run.out_dir: cannot create output folder 'afile/sub'");
  EXPECT_FALSE(fs::exists(dir_ / "out"));
}

TEST_F(E2E, MissingSectionsAndPlugins) {
  write("nomethod.toml", "[modelpool]\nname = \"test_pool\"\npretrained = [1.0]\n");
  expect_failure(fusion({"run", "nomethod.toml"}), "nomethod.toml: no [method] section");
  write("c.toml", kSweep);
  expect_failure(fusion({"run", "c.toml", "plugins=[\"nowhere.so\"]"}),
                 "run.plugins[0]: 'nowhere.so' does not exist");
  expect_failure(fusion({"run", "c.toml", "modelpool.pretrained=[]", "modelpool.experts=[]",
                         "modelpool.names=[\"x\"]"}),
                 "modelpool.names: 1 names for 0 experts");
}

TEST_F(E2E, ExplicitPluginRefusedIsAnError) {
  write("c.toml", kSweep);
  expect_failure(fusion({"run", "c.toml", "plugins=[\"" + (kPlugins / "bad" / "fusion_host_test_wrong_abi.so").string() + "\"]"}),
                 "built for ABI 999, host has ABI " + kAbi);
}

TEST_F(E2E, FailureDuringTheRunLeavesNoReport) {
  write("c.toml", kSweep);
  Outcome o = fusion({"run", "c.toml", "method.fail_at=1"});
  expect_failure(o, "test_sweep: failing on purpose at model 1");
  EXPECT_TRUE(fs::exists(dir_ / "out" / "config.toml"));
  EXPECT_FALSE(fs::exists(dir_ / "out" / "results.csv"));
}

TEST_F(E2E, BuiltinSafetensorsPool) {
  fusion::StateDict base, expert;
  base.set("layer.weight", at::tensor({1.0f, 2.0f, 3.0f}));
  expert.set("layer.weight", at::tensor({2.0f, 2.0f, 2.0f}));
  fusion::save_safetensors(dir_ / "expert.safetensors", expert);
  run_builtin_pool(base, "[modelpool.models]\ne = \"expert.safetensors\"\n");
}

TEST_F(E2E, NonFiniteWeightsAreRefusedAsTheyAreRead) {
  // A NaN or ±Inf in a model's weights is refused while the pool reads them, for every method
  // (not noticed later as a NaN loss or metric): one line naming the option, the file, the tensor
  // and the element; exit 1; no report.json and no merged model.
  fusion::StateDict base, good, broken;
  base.set("layer.weight", at::tensor({1.0f, 2.0f, 3.0f}));
  good.set("layer.weight", at::tensor({2.0f, 2.0f, 2.0f}));
  broken.set("layer.weight", at::tensor({2.0f, std::numeric_limits<float>::quiet_NaN(), 2.0f}));
  fusion::save_safetensors(dir_ / "base.safetensors", base);
  fusion::save_safetensors(dir_ / "good.safetensors", good);
  fusion::save_safetensors(dir_ / "broken.safetensors", broken);
  write("st.toml", R"(out_dir = "st"
progress = false
[method]
name = "task_arithmetic"
[modelpool]
name = "safetensors"
pretrained = "base.safetensors"
[modelpool.models]
good = "good.safetensors"
broken = "broken.safetensors"
)");
  const std::string plugins = kSimpleAverage.string() + ":" + kTaskArithmetic.string() + ":" +
                              kTiesMerging.string() + ":" + (kPlugins / "good").string();
  // The path as the config gives it.
  const std::string line = "fusion: error: modelpool.models.broken: broken.safetensors: tensor 'layer.weight': "
                           "F32 element 1 holds nan (weights must be finite)";
  for (const char* method : {"task_arithmetic", "simple_average", "ties_merging"}) {
    SCOPED_TRACE(method);
    Outcome o = fusion({"run", "st.toml", std::string("method.name=") + method}, plugins);
    expect_failure(o, line);
    EXPECT_EQ(o.error_lines(), std::vector<std::string>{line});
    EXPECT_FALSE(fs::exists(dir_ / "st" / "models"));
  }
  // The pretrained model, here BF16, is read through the same check.
  base.set("layer.weight", at::tensor({1.0f, -std::numeric_limits<float>::infinity(), 3.0f}).to(at::kBFloat16));
  fusion::save_safetensors(dir_ / "base.safetensors", base);
  Outcome o = fusion({"run", "st.toml", "method.name=test_pretrained"}, plugins);
  expect_failure(o, "fusion: error: modelpool.pretrained: base.safetensors: tensor 'layer.weight': BF16 element 1 "
                    "holds -inf (weights must be finite)");
  EXPECT_FALSE(fs::exists(dir_ / "st" / "models"));
}

TEST_F(E2E, SafetensorsPoolWithoutExperts) {
  // `models` may be left out: a method that needs only the pretrained model runs.
  fusion::StateDict base;
  base.set("layer.weight", at::tensor({1.0f, -1.0f}));
  const json r = run_builtin_pool(base, "");
  EXPECT_EQ(r["config"]["modelpool"]["models"], json::object());
}

TEST_F(E2E, MethodThatNeedsExpertsOnAPoolWithoutThem) {
  // The pool accepts no experts; the method declares that it needs one, the host says so in the
  // one format of check_requirements, and the run leaves no report and no model behind.
  fusion::StateDict base;
  base.set("layer.weight", at::tensor({1.0f, -1.0f}));
  fusion::save_safetensors(dir_ / "base.safetensors", base);
  write("st.toml", R"(out_dir = "st"
progress = false
[method]
name = "simple_average"
[modelpool]
name = "safetensors"
pretrained = "base.safetensors"
)");
  Outcome o = fusion({"run", "st.toml"}, kSimpleAverage.string());
  expect_failure(o, "fusion: error: simple_average needs at least 1 expert, the model pool has 0: "
                    "add them under [modelpool.models]");
  EXPECT_FALSE(fs::exists(dir_ / "st" / "models"));
}

TEST_F(E2E, RequirementsAreCheckedBeforeAnyWeightIsRead) {
  // The pretrained file is not a safetensors file: reading it fails (test_pretrained shows it).
  // A method whose requirement the pool does not meet is refused first, so nothing is read.
  write("corrupt.safetensors", "this is not a safetensors file\n");
  write("st.toml", R"(out_dir = "st"
progress = false
[method]
name = "test_pretrained"
[modelpool]
name = "safetensors"
pretrained = "corrupt.safetensors"
)");
  Outcome read = fusion({"run", "st.toml"});
  expect_failure(read, "corrupt.safetensors");
  EXPECT_EQ(read.error_lines()[0].find(" needs "), std::string::npos) << read.err;

  const std::string needs_experts =
      "fusion: error: test_sweep needs at least 1 expert, the model pool has 0: add them under "
      "[modelpool.models]";
  Outcome o = fusion({"run", "st.toml", "method.name=test_sweep", "out_dir=st2"});
  expect_failure(o, needs_experts);
  EXPECT_EQ(o.error_lines()[0], needs_experts);
  EXPECT_EQ(o.err.find("running test_sweep"), std::string::npos) << o.err;  // the method never ran
  EXPECT_FALSE(fs::exists(dir_ / "st2" / "models"));
  // The same with a real method.
  o = fusion({"run", "st.toml", "method.name=simple_average", "out_dir=st3"},
             kSimpleAverage.string());
  expect_failure(o, "fusion: error: simple_average needs at least 1 expert, the model pool has 0");
}

TEST_F(E2E, RequirementsOfATestMethodOnTheTestPool) {
  write("c.toml", kSweep);
  expect_failure(fusion({"run", "c.toml", "modelpool.experts=[]", "modelpool.names=[]"}),
                 "fusion: error: test_sweep needs at least 1 expert, the model pool has 0: add "
                 "them under [modelpool.models]");
}

TEST_F(E2E, ResolvedConfigRunsAgainWithTheSameValues) {
  // config.toml holds every resolved value; run again, it gives the same results. The experts keep
  // the run's order (not sorted by name): the order of [modelpool.models] is the experts' order.
  fusion::StateDict base, zeta, alpha;
  base.set("layer.weight", at::tensor({1.0f, 2.0f}));
  zeta.set("layer.weight", at::tensor({2.0f, 2.0f}));
  alpha.set("layer.weight", at::tensor({1.0f, 4.0f}));
  fusion::save_safetensors(dir_ / "base.safetensors", base);
  fusion::save_safetensors(dir_ / "zeta.safetensors", zeta);
  fusion::save_safetensors(dir_ / "alpha.safetensors", alpha);
  write("st.toml", R"(out_dir = "first"
progress = false
[method]
name = "test_pretrained"
label = "a \"quoted\", label"
[modelpool]
name = "safetensors"
pretrained = "base.safetensors"
[modelpool.models]
zeta = "zeta.safetensors"
"alpha.v2" = "alpha.safetensors"
)");
  ASSERT_EQ(fusion({"run", "st.toml", "seed=9"}).code, 0);
  const std::string text = read(dir_ / "first" / "config.toml");
  EXPECT_EQ(text.rfind("[run]\n", 0), 0u) << text;
  EXPECT_LT(text.find("zeta = "), text.find("\"alpha.v2\" = ")) << text;
  auto rc = fusion::RunConfig::from_file(dir_ / "first" / "config.toml");
  EXPECT_EQ(std::get<fusion::StringMap>(rc.section("modelpool").at("models")),
            (fusion::StringMap{{"zeta", "zeta.safetensors"}, {"alpha.v2", "alpha.safetensors"}}));
  EXPECT_EQ(std::get<std::string>(rc.section("method").at("label")), "a \"quoted\", label");
  EXPECT_EQ(std::get<int64_t>(rc.section("run").at("seed")), 9);
  EXPECT_EQ(std::get<bool>(rc.section("run").at("save_models")), true);

  Outcome again = fusion({"run", "first/config.toml", "out_dir=second"});
  ASSERT_EQ(again.code, 0) << again.err;
  json first = json::parse(read(dir_ / "first" / "report.json"));
  json second = json::parse(read(dir_ / "second" / "report.json"));
  EXPECT_EQ(second["config"]["run"]["out_dir"], "second");
  second["config"]["run"]["out_dir"] = "first";
  EXPECT_EQ(first["config"], second["config"]);
  EXPECT_EQ(read(dir_ / "first" / "results.csv"), read(dir_ / "second" / "results.csv"));
  // The second config.toml differs from the first only in out_dir.
  std::string text2 = read(dir_ / "second" / "config.toml");
  text2.replace(text2.find("out_dir = \"second\""), 18, "out_dir = \"first\"");
  EXPECT_EQ(text2, text);
}

}  // namespace
