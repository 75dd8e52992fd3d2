// `fusion run`'s configuration stage: the [run] options binding, and the resolved configuration
// written from typed values (config.toml, report.json's "config").
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <thread>

#include "run_config.hpp"

namespace fusion::host {
namespace {

using json = nlohmann::json;

// The [run] table as it was declared by hand before the binding: `fusion describe run` must not
// change, option by option.
Schema handwritten_run_schema() {
  Schema s;
  s.add_optional("out_dir", ValueType::String,
                 "output folder of the run (default: outputs/<method name>)");
  s.add("device", std::string("auto"),
        "\"auto\" (CUDA when LibTorch has it and a GPU is there, else CPU), \"cpu\", \"cuda\" or "
        "\"cuda:N\"");
  s.add("dtype", std::string("float32"),
        "floating-point type of the models; \"bfloat16\" (\"float16\" on CUDA) is mixed precision: weights, "
        "merges and saved models in float32, the network's GEMMs in the 16-bit type (float32 where the CPU has no "
        "bfloat16 instructions)")
      .one_of({"float32", "float16", "bfloat16", "float64"});
  s.add("seed", int64_t{42}, "seed of every random generator").range(0, std::nullopt);
  unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  s.add("threads", static_cast<int64_t>(hw), "intra-op CPU threads (default: all cores)")
      .range(1, 4096);
  s.add("plugins", std::vector<std::string>{},
        "more plugin libraries or folders to load, after the default search path");
  s.add("progress", true, "show progress bars");
  s.add_optional("save_models", ValueType::Bool,
                 "save every resulting model under models/ (default: false with a [taskpool], "
                 "models are always saved without one)");
  s.add("compare", std::vector<std::string>{},
        "report.json files of other runs to draw beside this one in pareto.svg");
  s.add("eval_cache_mb", int64_t{1024},
        "MiB of decoded and preprocessed test images the task pool keeps in memory from one evaluated model to the "
        "next (a Pareto set, a λ sweep), so each is decoded once per run; what does not fit is decoded for every "
        "model, with the same results (0: none)")
      .range(0, int64_t{1} << 30);
  s.add("backend", std::string("auto"),
        "how the processes of a run over several (fusion run --nproc N, or torchrun's RANK/WORLD_SIZE/MASTER_ADDR/"
        "MASTER_PORT) talk: \"gloo\" (CPU tensors), \"nccl\" (CUDA, where LibTorch has it), \"auto\" (NCCL for a CUDA "
        "device where available, else Gloo)")
      .one_of({"auto", "gloo", "nccl"});
  s.add("timeout_s", int64_t{60},
        "seconds a process of a run over several waits for the others (rendezvous, each collective) before it stops "
        "with an error naming its rank")
      .range(1, 86400);
  return s;
}

TEST(RunOptions, SchemaIsTheHandwrittenOne) {
  const Schema want = handwritten_run_schema();
  const Schema& got = run_schema();
  ASSERT_EQ(got.options().size(), want.options().size());
  for (size_t i = 0; i < want.options().size(); ++i) {
    const OptionSpec& w = want.options()[i];
    const OptionSpec& g = got.options()[i];
    SCOPED_TRACE(w.name);
    EXPECT_EQ(g.name, w.name);
    EXPECT_EQ(g.type, w.type);
    EXPECT_EQ(g.doc, w.doc);
    EXPECT_EQ(g.min, w.min);
    EXPECT_EQ(g.max, w.max);
    EXPECT_EQ(g.choices, w.choices);
    EXPECT_EQ(g.optional_no_default, w.optional_no_default);
    ASSERT_EQ(g.default_value.has_value(), w.default_value.has_value());
    if (w.default_value) EXPECT_EQ(to_toml_string(*g.default_value), to_toml_string(*w.default_value));
  }
}

TEST(RunOptions, ReadFromTheRunTable) {
  const Config cfg = Config::validate(
      "run", {{"seed", int64_t{3}}, {"compare", std::vector<std::string>{"a/report.json"}},
              {"save_models", false}},
      run_schema(), {});
  const RunOptions o = read_options<RunOptions>(cfg);
  EXPECT_EQ(o.seed, 3);
  EXPECT_EQ(o.device, "auto");
  EXPECT_EQ(o.threads, hardware_threads());
  EXPECT_EQ(o.compare, std::vector<std::string>{"a/report.json"});
  EXPECT_EQ(o.save_models, std::optional<bool>(false));
  EXPECT_FALSE(o.out_dir.has_value());
  EXPECT_EQ(run_key(&RunOptions::save_models), "run.save_models");
}

TEST(ResolveDevice, MalformedNamesTheOption) {
  EXPECT_EQ(resolve_device("cpu"), at::Device(at::kCPU));
  try {
    resolve_device("gpu");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "run.device: expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got \"gpu\"");
  }
}

ResolvedSections sample_sections() {
  std::map<std::string, Value> run = {{"seed", int64_t{3}},
                                      {"out_dir", std::string("out dir/\"x\"")},
                                      {"save_models", false},
                                      {"plugins", std::vector<std::string>{}},
                                      {"compare", std::vector<std::string>{"a/report.json", "it's"}}};
  std::map<std::string, Value> method = {
      {"name", std::string("m")},
      {"scaling_factor", 0.1 + 0.2},
      {"tiny", 1e-5},
      {"whole", -2.0},
      {"lambdas", std::vector<double>{0.0, 0.9, 1.0}},
      {"grid", std::vector<std::vector<double>>{{0.5, 1.0}, {2.0, 3.5}}},
      {"steps", int64_t{-1}},
      {"text", std::string("line\nbreak\ttab")}};
  std::map<std::string, Value> pool = {
      {"name", std::string("safetensors")},
      {"pretrained", std::string("base")},
      {"models", StringMap{{"zeta", "z"}, {"alpha.v2", "a"}, {"mid", "m"}}},
      {"empty", StringMap{}}};
  return {{"run", run}, {"method", method}, {"modelpool", pool}};
}

TEST(ResolvedConfig, TomlIsTheLayoutOfToday) {
  // Keys in order, floats exact, lists as toml++ writes them, tables of strings after the plain
  // keys; a table's entries in the run's order.
  EXPECT_EQ(resolved_config_toml(sample_sections()),
            "[run]\n"
            "compare = [ 'a/report.json', \"it's\" ]\n"
            "out_dir = \"out dir/\\\"x\\\"\"\n"
            "plugins = []\n"
            "save_models = false\n"
            "seed = 3\n"
            "\n"
            "[method]\n"
            "grid = [ [ 0.5, 1.0 ], [ 2.0, 3.5 ] ]\n"
            "lambdas = [ 0.0, 0.90000000000000002, 1.0 ]\n"
            "name = \"m\"\n"
            "scaling_factor = 0.30000000000000004\n"
            "steps = -1\n"
            "text = \"line\\nbreak\\ttab\"\n"
            "tiny = 1e-05\n"
            "whole = -2.0\n"
            "\n"
            "[modelpool]\n"
            "name = \"safetensors\"\n"
            "pretrained = \"base\"\n"
            "\n"
            "[modelpool.empty]\n"
            "\n"
            "[modelpool.models]\n"
            "zeta = \"z\"\n"
            "\"alpha.v2\" = \"a\"\n"
            "mid = \"m\"\n");
}

// Before, the resolved config was written by turning each value into TOML text, applying it as an
// override to the document and writing the document. The typed writer gives the same bytes, but
// for the order of a table of strings (the experts' order; the round trip sorted it by name).
TEST(ResolvedConfig, TomlIsWhatTheTextRoundTripWrote) {
  ResolvedSections sections = sample_sections();
  RunConfig doc = RunConfig::from_string("", "empty.toml");
  for (auto& [section, values] : sections)
    for (auto& [key, value] : values) {
      if (auto* table = std::get_if<StringMap>(&value))
        std::sort(table->begin(), table->end());
      doc.apply_override(section + "." + key + "=" + to_toml_string(value));
    }
  EXPECT_EQ(resolved_config_toml(sections), doc.to_toml());
}

TEST(ResolvedConfig, TomlReadsBackAsTheSameValues) {
  const ResolvedSections sections = sample_sections();
  const RunConfig back = RunConfig::from_string(resolved_config_toml(sections), "config.toml");
  EXPECT_EQ(back.sections(), (std::vector<std::string>{"run", "method", "modelpool"}));
  for (const auto& [section, values] : sections) {
    const auto read = back.section(section);
    ASSERT_EQ(read.size(), values.size()) << section;
    for (const auto& [key, value] : values) {
      SCOPED_TRACE(section + "." + key);
      ASSERT_TRUE(read.count(key));
      const Value& got = read.at(key);
      if (std::holds_alternative<std::vector<std::string>>(value) &&
          std::get<std::vector<std::string>>(value).empty()) {
        EXPECT_TRUE(std::get<std::vector<double>>(got).empty());  // an empty list reads as any list
      } else if (std::holds_alternative<double>(value)) {
        EXPECT_EQ(std::get<double>(got), std::get<double>(value));  // bit-exact
      } else {
        EXPECT_EQ(got, value);
      }
    }
  }
}

TEST(ResolvedConfig, Json) {
  const json j = resolved_config_json(sample_sections());
  EXPECT_EQ(j["run"]["compare"], json({"a/report.json", "it's"}));
  EXPECT_EQ(j["run"]["save_models"], false);
  EXPECT_EQ(j["method"]["steps"], -1);
  EXPECT_DOUBLE_EQ(j["method"]["scaling_factor"].get<double>(), 0.1 + 0.2);
  EXPECT_EQ(j["method"]["grid"], json({{0.5, 1.0}, {2.0, 3.5}}));
  EXPECT_EQ(j["modelpool"]["models"], json({{"zeta", "z"}, {"alpha.v2", "a"}, {"mid", "m"}}));
  EXPECT_EQ(j["modelpool"]["empty"], json::object());
}

}  // namespace
}  // namespace fusion::host
