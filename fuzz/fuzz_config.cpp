// libFuzzer target for the run configuration (sdk/src/config.cpp): the TOML document
// (RunConfig::from_string, with toml++ compiled into the target so that its parser is instrumented
// too), the command line's `key=value` overrides (RunConfig::apply_override: `fusion run CONFIG
// [key=value ...]` and `fusion check --set`, through testing::conformance_config, both end there),
// the sections as typed values (RunConfig::section, Config::validate against schemas that use
// every option type, bound and check, read_options, Config::get) and the TOML written back
// (RunConfig::to_toml for run_dir/config.toml, to_toml_string for the resolved values).
//
// Input: the TOML document, then up to 8 overrides, each after a NUL byte (neither a TOML document
// nor a command-line argument can hold one). Bad input must end in fusion::Error (one line); a
// crash, a sanitizer report or another exception is a bug, and so is TOML written back that does
// not read again to the same values.
#include <toml++/toml.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fusion/config.hpp"
#include "fusion/options.hpp"
#include "fuzz_support.hpp"

namespace fz = fusion::fuzz;
using fusion::Config;
using fusion::RunConfig;
using fusion::StringMap;
using fusion::Value;

namespace {

// The host's [run] table (host/run_config.cpp, RunOptions::bind), with a fixed thread default.
struct RunOptions {
  std::optional<std::string> out_dir;
  std::string device = "auto";
  std::string dtype = "float32";
  int64_t seed = 42;
  int64_t threads = 2;
  std::vector<std::string> plugins;
  bool progress = true;
  std::optional<bool> save_models;
  std::vector<std::string> compare;

  static void bind(fusion::Options<RunOptions>& o) {
    o("out_dir", &RunOptions::out_dir, "output folder");
    o("device", &RunOptions::device, "device");
    o("dtype", &RunOptions::dtype, "dtype").one_of({"float32", "float16", "bfloat16", "float64"});
    o("seed", &RunOptions::seed, "seed").min(0);
    o("threads", &RunOptions::threads, "threads").range(1, 4096);
    o("plugins", &RunOptions::plugins, "plugins");
    o("progress", &RunOptions::progress, "progress");
    o("save_models", &RunOptions::save_models, "save models");
    o("compare", &RunOptions::compare, "compare");
  }
};

// A component section with every option type the SDK has, as methods and pools declare them.
struct Sub {
  int steps = 10;  // an int member: a narrowing read
  static void bind(fusion::Options<Sub>& o) { o("steps", &Sub::steps, "steps").range(0, 1e6); }
};

struct ComponentOptions {
  double scaling_factor = 0.3;
  std::optional<std::vector<double>> scaling_factors;
  std::vector<double> weights;
  std::vector<std::vector<double>> matrix;
  std::vector<std::string> tasks;
  std::string mode = "a";
  StringMap models;
  std::string pretrained;
  bool flag = false;
  double lr = 1e-3;
  Sub sub;

  static void bind(fusion::Options<ComponentOptions>& o) {
    o("scaling_factor", &ComponentOptions::scaling_factor, "λ").min(0.0);
    o("scaling_factors", &ComponentOptions::scaling_factors, "λ sweep").range(-1, 1);
    o("weights", &ComponentOptions::weights, "weights").check([](const std::vector<double>& w) {
      return w.size() > 64 ? std::string(": at most 64 weights") : std::string();
    });
    o("matrix", &ComponentOptions::matrix, "matrix").range(-10, 10);
    o("tasks", &ComponentOptions::tasks, "tasks").one_of({"mnist", "svhn", "task0"});
    o("mode", &ComponentOptions::mode, "mode").one_of({"a", "b"});
    o("models", &ComponentOptions::models, "experts").check([](const StringMap& m) {
      for (const auto& [name, path] : m)
        if (name == "pretrained") return std::string(".pretrained: reserved");
      return std::string();
    });
    o("pretrained", &ComponentOptions::pretrained, "path").check([](const std::string& p) {
      return p.empty() ? std::string(": the path is empty") : std::string();
    });
    o("flag", &ComponentOptions::flag, "flag");
    o("lr", &ComponentOptions::lr, "lr").allow_non_finite();
    o.include(&ComponentOptions::sub);
  }
};

// One section's values, or "error" (which error may differ: the keys of a table are read in
// document order, and to_toml writes a table's sub-tables after its values).
std::string describe_section(const RunConfig& rc, const std::string& s) {
  try {
    std::string out;
    for (const auto& [k, v] : rc.section(s)) out += k + "=" + fusion::to_toml_string(v) + ";";
    return out;
  } catch (const fusion::Error& e) {
    fz::check_error(e);
    return "error";
  }
}

// A value as the resolved config.toml writes it must read back as the same value.
void check_value_round_trip(const Value& v) {
  const std::string text = fusion::to_toml_string(v);
  try {
    const RunConfig back = RunConfig::from_string("[s]\nv = " + text + "\n", "round trip");
    const auto values = back.section("s");
    const auto it = values.find("v");
    if (it == values.end()) fz::fail("value written back is lost: " + text);
    // An empty list reads back as an empty list of floats, whatever its type was.
    const std::string again = fusion::to_toml_string(it->second);
    if (again != text) fz::fail("value written back reads as another value: " + text + " -> " + again);
  } catch (const fusion::Error& e) {
    fz::fail("value written back does not read again: " + text + " (" + e.what() + ")");
  }
}

template <class T>
void validate_and_read(const RunConfig& rc, const std::string& s, const std::vector<std::string>& ignore) {
  try {
    const Config c = Config::validate(s, rc.section(s), fusion::schema_of<T>(), ignore);
    (void)fusion::read_options<T>(c);
    for (const auto& [name, v] : c.values()) {
      switch (fusion::type_of(v)) {
        case fusion::ValueType::Bool: (void)c.get<bool>(name); break;
        case fusion::ValueType::Int: (void)c.get<int64_t>(name); break;
        case fusion::ValueType::Double: (void)c.get<double>(name); break;
        case fusion::ValueType::String: (void)c.get<std::string>(name); break;
        case fusion::ValueType::DoubleList: (void)c.get<std::vector<double>>(name); break;
        case fusion::ValueType::StringList: (void)c.get<std::vector<std::string>>(name); break;
        case fusion::ValueType::DoubleMatrix: (void)c.get<std::vector<std::vector<double>>>(name); break;
        case fusion::ValueType::StringMap: (void)c.get<StringMap>(name); break;
      }
      check_value_round_trip(v);
    }
  } catch (const fusion::Error& e) {
    fz::check_error(e);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = fz::split(fz::as_text(data, size), std::string_view("\0", 1), 9);
  std::optional<RunConfig> rc;
  try {
    rc = RunConfig::from_string(std::string(parts[0]), "fuzz.toml");
  } catch (const fusion::Error& e) {
    fz::check_error(e);
    return 0;
  }
  for (size_t i = 1; i < parts.size(); ++i) {
    try {
      rc->apply_override(std::string(parts[i]));
    } catch (const fusion::Error& e) {
      fz::check_error(e);
    }
  }

  const std::vector<std::string> sections = rc->sections();
  std::map<std::string, std::string> before;
  for (const auto& s : sections) {
    if (!rc->has_section(s)) fz::fail("sections() lists '" + s + "', has_section denies it");
    (void)rc->component_name(s);
    before[s] = describe_section(*rc, s);
    if (s == "run") {
      validate_and_read<RunOptions>(*rc, s, {});
    } else {
      validate_and_read<ComponentOptions>(*rc, s, {"name"});
    }
  }

  // run_dir/config.toml: read again, the same sections with the same values.
  const std::string written = rc->to_toml();
  try {
    const RunConfig back = RunConfig::from_string(written, "written");
    std::map<std::string, std::string> after;
    for (const auto& s : back.sections()) after[s] = describe_section(back, s);
    if (after != before) fz::fail("to_toml reads back as other values:\n" + written);
  } catch (const fusion::Error& e) {
    fz::fail(std::string("to_toml does not read again: ") + e.what() + "\n" + written);
  }
  return 0;
}
