// SDK 1.0: options declared once (fusion/options.hpp), registration by type, requirements
// (fusion/component.hpp), and the shared helpers (files, seeds, dtype names, the training log).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>

#include "error_of.hpp"
#include "fusion/component.hpp"
#include "fusion/dtype.hpp"
#include "fusion/files.hpp"
#include "fusion/options.hpp"
#include "fusion/plugin.hpp"
#include "fusion/seed.hpp"
#include "fusion/train_log.hpp"
#include "support.hpp"

namespace {

namespace fs = std::filesystem;
using fusion::Config;
using fusion::testing::error_of;
using fusion::Options;
using fusion::Value;
using fusion::ValueType;

struct Inner {
  int64_t depth = 3;
  std::string mode = "fast";
  static void bind(Options<Inner>& o) {
    o("depth", &Inner::depth, "how deep").range(1, 8);
    o("mode", &Inner::mode, "how").one_of({"fast", "slow"});
  }
};

struct Opts {
  double lr = 1e-2;
  int steps = 100;
  bool flag = true;
  std::vector<double> weights;
  std::optional<std::vector<double>> sweep;
  std::string path;
  Inner inner;
  static void bind(Options<Opts>& o) {
    o("lr", &Opts::lr, "learning rate").min(0.0);
    o("steps", &Opts::steps, "steps").min(1);
    o("flag", &Opts::flag, "a flag");
    o("weights", &Opts::weights, "weights").check([](const std::vector<double>& w) {
      return w.size() > 3 ? "has more than 3 entries" : "";
    });
    o("sweep", &Opts::sweep, "a sweep");
    o("path", &Opts::path, "a path").required();
    o.include(&Opts::inner);
  }
};

Config validate(std::map<std::string, Value> values) {
  return Config::validate("method", values, fusion::schema_of<Opts>());
}

TEST(Options, SchemaComesFromTheBindingWithTheStructsDefaults) {
  const fusion::Schema& s = fusion::schema_of<Opts>();
  std::vector<std::string> names;
  for (const auto& o : s.options()) names.push_back(o.name);
  EXPECT_EQ(names, (std::vector<std::string>{"lr", "steps", "flag", "weights", "sweep", "path", "depth", "mode"}));
  EXPECT_EQ(s.find("lr")->type, ValueType::Double);
  EXPECT_EQ(std::get<double>(*s.find("lr")->default_value), 1e-2);
  EXPECT_EQ(s.find("steps")->type, ValueType::Int);
  EXPECT_EQ(std::get<int64_t>(*s.find("steps")->default_value), 100);
  EXPECT_EQ(s.find("weights")->type, ValueType::DoubleList);
  EXPECT_TRUE(std::get<std::vector<double>>(*s.find("weights")->default_value).empty());
  EXPECT_TRUE(s.find("sweep")->optional_no_default);
  EXPECT_FALSE(s.find("sweep")->default_value.has_value());
  EXPECT_FALSE(s.find("path")->default_value.has_value());  // required
  EXPECT_FALSE(s.find("path")->optional_no_default);
  EXPECT_EQ(std::get<int64_t>(*s.find("depth")->default_value), 3);
  EXPECT_EQ(*s.find("depth")->max, 8.0);
  EXPECT_EQ(s.find("mode")->choices, (std::vector<std::string>{"fast", "slow"}));
}

TEST(Options, ReadFillsTheStructIncludingIncludedMembers) {
  Opts o = fusion::read_options<Opts>(
      validate({{"lr", int64_t{2}}, {"path", std::string("p")}, {"depth", int64_t{5}}, {"sweep", std::vector<double>{0.1}}}));
  EXPECT_EQ(o.lr, 2.0);
  EXPECT_EQ(o.steps, 100);
  EXPECT_EQ(o.path, "p");
  EXPECT_EQ(o.inner.depth, 5);
  EXPECT_EQ(o.inner.mode, "fast");
  ASSERT_TRUE(o.sweep.has_value());
  EXPECT_EQ(*o.sweep, std::vector<double>{0.1});
  Opts d = fusion::read_options<Opts>(validate({{"path", std::string("p")}}));
  EXPECT_FALSE(d.sweep.has_value());
}

TEST(Options, ErrorsNameSectionAndKey) {
  const std::string p = "p";
  EXPECT_EQ(error_of([&] { validate({}); }), "method.path: required option missing (string: a path)");
  EXPECT_EQ(error_of([&] { validate({{"path", p}, {"lr", -1.0}}); }),
            "method.lr: expected a value in [0, inf], got -1.0");
  EXPECT_EQ(error_of([&] { validate({{"path", p}, {"depth", int64_t{9}}}); }),
            "method.depth: expected a value in [1, 8], got 9");
  EXPECT_EQ(error_of([&] { validate({{"path", p}, {"mode", std::string("medium")}}); }),
            "method.mode: expected one of \"fast\", \"slow\", got \"medium\"");
  EXPECT_EQ(error_of([&] { validate({{"path", p}, {"weights", std::vector<double>{1, 2, 3, 4}}}); }),
            "method.weights has more than 3 entries");
  EXPECT_EQ(error_of([&] { validate({{"path", p}, {"flag", std::string("yes")}}); }),
            "method.flag: expected bool, got string \"yes\"");
}

TEST(Options, NonFiniteNumbersAreRefusedWhenRead) {
  const std::string p = "p";
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_EQ(error_of([&] { validate({{"path", p}, {"lr", inf}}); }), "method.lr: expected a finite number, got inf");
  EXPECT_EQ(error_of([&] { validate({{"path", p}, {"lr", std::nan("")}}); }),
            "method.lr: expected a finite number, got nan");
  EXPECT_EQ(error_of([&] { validate({{"path", p}, {"weights", std::vector<double>{1.0, -inf}}}); }),
            "method.weights[1]: expected a finite number, got -inf");
}

TEST(Options, OptionNameFindsTheBoundName) {
  EXPECT_EQ(fusion::option_name(&Opts::weights), "weights");
  EXPECT_EQ(fusion::option_name(&Opts::path), "path");
  EXPECT_EQ(fusion::option_name(&Inner::mode), "mode");
}

// ---------------------------------------------------------------------------------------------
// Registration by type and requirements

class Empty : public fusion::ModelPool {
 public:
  explicit Empty(bool pretrained, size_t experts) : pretrained_(pretrained), experts_(experts) {}
  std::vector<std::string> expert_names() const override {
    std::vector<std::string> out;
    for (size_t i = 0; i < experts_; ++i) out.push_back("e" + std::to_string(i));
    return out;
  }
  bool has_pretrained() const override { return pretrained_; }
  fusion::ConstModelPtr pretrained() override { FUSION_FAIL("no weights may be read"); }
  fusion::ModelPtr load(const std::string&) override { FUSION_FAIL("no weights may be read"); }
  void save(const fusion::Model&, const fs::path&) const override {}

 private:
  bool pretrained_;
  size_t experts_;
};

class Method : public fusion::Algorithm {
 public:
  using Options = Opts;
  Method(Opts o, const fusion::Context& ctx) : options(std::move(o)), seed(ctx.seed()) {}
  static fusion::ComponentInfo info() {
    return {"method_x", "a test method", "", {}, fusion::Requirements().pretrained().experts(2).task_pool()};
  }
  fusion::Result run(fusion::ModelPool&, fusion::TaskPool*, const fusion::Context&) override { return {}; }
  Opts options;
  uint64_t seed;
};

class Plain : public fusion::Algorithm {
 public:
  static fusion::ComponentInfo info() { return {"plain", "no options", "", {}, {}}; }
  fusion::Result run(fusion::ModelPool&, fusion::TaskPool*, const fusion::Context&) override { return {}; }
};

class Recorder : public fusion::Registrar {
 public:
  void add_algorithm(fusion::ComponentInfo info, fusion::AlgorithmFactory f) override {
    infos.push_back(std::move(info));
    algorithms.push_back(std::move(f));
  }
  void add_model_pool(fusion::ComponentInfo, fusion::ModelPoolFactory) override {}
  void add_task_pool(fusion::ComponentInfo, fusion::TaskPoolFactory) override {}
  std::vector<fusion::ComponentInfo> infos;
  std::vector<fusion::AlgorithmFactory> algorithms;
};

TEST(Registrar, AddTakesInfoSchemaAndFactoryFromTheType) {
  Recorder reg;
  reg.add<Method>();
  reg.add<Plain>();
  ASSERT_EQ(reg.infos.size(), 2u);
  EXPECT_EQ(reg.infos[0].name, "method_x");
  EXPECT_NE(reg.infos[0].schema.find("depth"), nullptr);
  EXPECT_EQ(reg.infos[0].requirements.min_experts, 2);
  EXPECT_TRUE(reg.infos[1].schema.empty());

  fusion::Context::Settings settings;
  settings.seed = 7;
  const fusion::Context ctx = fusion::Context(settings).with_config(
      validate({{"path", std::string("here")}, {"steps", int64_t{5}}}));
  auto made = reg.algorithms[0](ctx);
  auto* m = dynamic_cast<Method*>(made.get());
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->options.path, "here");
  EXPECT_EQ(m->options.steps, 5);
  EXPECT_EQ(m->seed, 7u);
  EXPECT_NE(dynamic_cast<Plain*>(reg.algorithms[1](fusion::Context()).get()), nullptr);
}

TEST(Requirements, CheckedInOneFormatWithoutReadingWeights) {
  const fusion::ComponentInfo info = Method::info();
  EXPECT_EQ(info.requirements.describe(), "a pretrained model, at least 2 experts, a task pool");
  Empty no_pretrained(false, 2), one_expert(true, 1), fine(true, 2);
  EXPECT_EQ(error_of([&] { fusion::check_requirements(info, no_pretrained, nullptr); }),
            "method_x needs a pretrained model: set modelpool.pretrained");
  EXPECT_EQ(error_of([&] { fusion::check_requirements(info, one_expert, nullptr); }),
            "method_x needs at least 2 experts, the model pool has 1: add them under [modelpool.models]");
  EXPECT_EQ(error_of([&] { fusion::check_requirements(info, fine, nullptr); }),
            "method_x needs a task pool: add a [taskpool] section");
  EXPECT_NO_THROW(fusion::check_requirements(Plain::info(), no_pretrained, nullptr));
  EXPECT_EQ(fusion::Requirements().describe(), "nothing");
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

std::string read_all(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class Files : public fusion::testing::TempDirTest {};

TEST_F(Files, DirectoryWriteReplacesAtomicallyAndLeavesNothingOnFailure) {
  const fs::path root = dir_;
  const fs::path dir = root / "model";
  fusion::write_directory_atomic(dir, [](const fs::path& tmp) { fusion::write_file_atomic(tmp / "a.txt", "one"); });
  EXPECT_EQ(read_all(dir / "a.txt"), "one");
  // Replacing: the new contents only, the old file gone, no temporary folder left.
  fusion::write_directory_atomic(dir, [&](const fs::path& tmp) {
    EXPECT_TRUE(fs::exists(dir / "a.txt"));  // the old folder is still in place while filling
    fusion::write_file_atomic(tmp / "b.txt", "two");
  });
  EXPECT_FALSE(fs::exists(dir / "a.txt"));
  EXPECT_EQ(read_all(dir / "b.txt"), "two");
  // A failing fill leaves the folder as it was.
  EXPECT_THROW(fusion::write_directory_atomic(dir, [](const fs::path& tmp) {
                 fusion::write_file_atomic(tmp / "c.txt", "three");
                 FUSION_FAIL("fill failed");
               }),
               fusion::Error);
  EXPECT_EQ(read_all(dir / "b.txt"), "two");
  EXPECT_FALSE(fs::exists(dir / "c.txt"));
  size_t entries = 0;
  for (const auto& e : fs::directory_iterator(root)) entries += e.path().filename() == "model" ? 0 : 1;
  EXPECT_EQ(entries, 0u);
  // A file in the way is refused with the folder's name.
  fusion::write_file_atomic(root / "file", "x");
  EXPECT_NE(error_of([&] { fusion::write_directory_atomic(root / "file", [](const fs::path&) {}); })
                .find("a file of that name exists"),
            std::string::npos);
}

TEST(Seeds, DerivedSeedsAreStableAndDistinct) {
  EXPECT_EQ(fusion::derive_seed(42, 1, 2), fusion::derive_seed(42, 1, 2));
  std::set<uint64_t> seen;
  for (uint64_t seed : {0ull, 42ull})
    for (uint64_t a : {0ull, 1ull})
      for (uint64_t b : {0ull, 1ull, 2ull}) seen.insert(fusion::derive_seed(seed, a, b));
  EXPECT_EQ(seen.size(), 12u);
  // SplitMix64's published first output for state 0 (Vigna's reference implementation).
  EXPECT_EQ(fusion::splitmix64(0), 0xE220A8397B1DCDAFull);
}

TEST(Dtypes, NamesRoundTripAndUnknownIsAnError) {
  for (at::ScalarType t : {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble, at::kLong, at::kBool})
    EXPECT_EQ(fusion::parse_dtype(fusion::dtype_name(t), "x"), t);
  EXPECT_EQ(fusion::dtype_name(at::kBFloat16), "bfloat16");
  EXPECT_THROW(fusion::dtype_name(at::kComplexFloat), fusion::Error);
  EXPECT_EQ(error_of([] { fusion::parse_dtype("float8", "run.dtype"); }), "run.dtype: unknown dtype \"float8\"");
}

class TrainLogTest : public fusion::testing::TempDirTest {};

TEST_F(TrainLogTest, RowsAreWrittenAsTheyComeAndResumeKeepsTheEarlierOnes) {
  const fs::path path = dir_ / "train_log.csv";
  {
    fusion::TrainLog log(path, {"step", "loss", "mode"});
    for (int64_t s = 1; s <= 3; ++s) log.add({s, 0.5 / static_cast<double>(s), std::string("ls")});
    EXPECT_EQ(read_all(path), "step,loss,mode\n1,0.5,ls\n2,0.25,ls\n3,0.16666667,ls\n");
    EXPECT_THROW(log.add({int64_t{4}}), fusion::Error);
  }
  fusion::TrainLog resumed(path, {"step", "loss", "mode"}, 2);
  EXPECT_EQ(resumed.rows(), 2u);
  resumed.add({int64_t{3}, 0.125, std::string("ls")});
  EXPECT_EQ(read_all(path), "step,loss,mode\n1,0.5,ls\n2,0.25,ls\n3,0.125,ls\n");
}

}  // namespace
