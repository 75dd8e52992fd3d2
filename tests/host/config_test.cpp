// Schema, Config and RunConfig: types, ranges, choices, unknown keys, overrides, syntax errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "error_of.hpp"
#include "fusion/config.hpp"

namespace fusion {
namespace {

using fusion::testing::error_of;

Schema method_schema() {
  Schema s;
  s.add("scaling_factor", 0.3, "λ").range(0.0, 1.0);
  s.add("steps", int64_t{10}, "steps").range(1, 100);
  s.add("merge_func", std::string("sum"), "how").one_of({"sum", "mean", "max"});
  s.add("remove_keys", std::vector<std::string>{}, "keys left out");
  s.add("weights", std::vector<double>{}, "weights").range(0.0, std::nullopt);
  s.add_required("path", ValueType::String, "where");
  s.add_optional("limit", ValueType::Int, "optional limit");
  return s;
}

TEST(Value, TypeNamesAndToml) {
  EXPECT_STREQ(type_name(ValueType::Double), "float");
  EXPECT_STREQ(type_name(ValueType::StringList), "list of string");
  EXPECT_EQ(type_of(Value(int64_t{3})), ValueType::Int);
  EXPECT_EQ(to_toml_string(Value(0.3)), "0.3");
  EXPECT_EQ(to_toml_string(Value(1.0)), "1.0");
  EXPECT_EQ(to_toml_string(Value(100.0)), "100.0");
  EXPECT_EQ(to_toml_string(Value(1e-5)), "1e-05");
  EXPECT_EQ(to_toml_string(Value(1e300)), "1e+300");
  EXPECT_EQ(to_toml_string(Value(int64_t{-7})), "-7");
  EXPECT_EQ(to_toml_string(Value(std::string("a\"b\\c\n"))), "\"a\\\"b\\\\c\\n\"");
  EXPECT_EQ(to_toml_string(Value(std::vector<double>{1.0, 0.25})), "[1.0, 0.25]");
  EXPECT_EQ(to_toml_string(Value(std::vector<std::vector<double>>{{1, 2}, {3, 4}})),
            "[[1.0, 2.0], [3.0, 4.0]]");
  EXPECT_EQ(to_toml_string(Value(StringMap{{"a", "x"}, {"b.c", "y"}})),
            "{ a = \"x\", \"b.c\" = \"y\" }");
  EXPECT_EQ(to_toml_string(Value(true)), "true");
}

TEST(Schema, RejectsDuplicateOption) {
  Schema s;
  s.add("x", 1.0, "");
  EXPECT_NE(error_of([&] { s.add("x", 2.0, ""); }).find("'x' declared twice"), std::string::npos);
  EXPECT_EQ(s.find("x")->type, ValueType::Double);
  EXPECT_EQ(s.find("y"), nullptr);
}

TEST(Config, DefaultsAndGivenValues) {
  Config c = Config::validate("method", {{"path", std::string("/m")}, {"steps", int64_t{5}},
                                         {"name", std::string("ta")}},
                              method_schema());
  EXPECT_EQ(c.section(), "method");
  EXPECT_DOUBLE_EQ(c.get<double>("scaling_factor"), 0.3);
  EXPECT_EQ(c.get<int64_t>("steps"), 5);
  EXPECT_DOUBLE_EQ(c.get<double>("steps"), 5.0);  // an int reads as a double too
  EXPECT_EQ(c.get<std::string>("path"), "/m");
  EXPECT_FALSE(c.has("limit"));
  EXPECT_FALSE(c.has("name"));
  // Schema order.
  ASSERT_EQ(c.values().size(), 6u);
  EXPECT_EQ(c.values()[0].first, "scaling_factor");
  EXPECT_EQ(c.values()[5].first, "path");
  EXPECT_NE(error_of([&] { c.get<std::string>("steps"); }).find("method.steps"), std::string::npos);
  EXPECT_NE(error_of([&] { c.get<int64_t>("limit"); }).find("method.limit"), std::string::npos);
}

TEST(Config, IntAcceptedForFloat) {
  Config c = Config::validate("method", {{"path", std::string("p")}, {"scaling_factor", int64_t{1}}},
                              method_schema());
  EXPECT_EQ(type_of(c.value("scaling_factor")), ValueType::Double);
  EXPECT_DOUBLE_EQ(c.get<double>("scaling_factor"), 1.0);
}

TEST(Config, WrongTypeNamesKeyAndValue) {
  auto msg = error_of([] {
    Config::validate("method", {{"path", std::string("p")}, {"scaling_factor", std::string("abc")}},
                     method_schema());
  });
  EXPECT_EQ(msg, "method.scaling_factor: expected float, got string \"abc\"");
  msg = error_of([] {
    Config::validate("method", {{"path", std::string("p")}, {"steps", 2.5}}, method_schema());
  });
  EXPECT_EQ(msg, "method.steps: expected int, got float 2.5");
  msg = error_of([] {
    Config::validate("method", {{"path", std::string("p")}, {"remove_keys", std::string("a")}},
                     method_schema());
  });
  EXPECT_EQ(msg, "method.remove_keys: expected list of string, got string \"a\"");
}

TEST(Config, EmptyListFitsAnyListType) {
  Config c = Config::validate(
      "method", {{"path", std::string("p")}, {"remove_keys", std::vector<double>{}}}, method_schema());
  EXPECT_TRUE(c.get<std::vector<std::string>>("remove_keys").empty());
}

TEST(Config, RangesAndChoices) {
  EXPECT_EQ(error_of([] {
              Config::validate("method", {{"path", std::string("p")}, {"scaling_factor", 1.5}},
                               method_schema());
            }),
            "method.scaling_factor: expected a value in [0, 1], got 1.5");
  EXPECT_EQ(error_of([] {
              Config::validate("method", {{"path", std::string("p")}, {"steps", int64_t{0}}},
                               method_schema());
            }),
            "method.steps: expected a value in [1, 100], got 0");
  EXPECT_EQ(error_of([] {
              Config::validate("method",
                               {{"path", std::string("p")}, {"weights", std::vector<double>{1, -2}}},
                               method_schema());
            }),
            "method.weights[1]: expected a value in [0, inf], got -2.0");
  EXPECT_EQ(error_of([] {
              Config::validate("method",
                               {{"path", std::string("p")}, {"merge_func", std::string("median")}},
                               method_schema());
            }),
            "method.merge_func: expected one of \"sum\", \"mean\", \"max\", got \"median\"");
  // Bounds are inclusive.
  EXPECT_NO_THROW(Config::validate("method", {{"path", std::string("p")}, {"scaling_factor", 1.0}},
                                   method_schema()));
}

TEST(Config, UnknownKeyListsKnownOnes) {
  auto msg = error_of([] {
    Config::validate("method", {{"path", std::string("p")}, {"scaling_factr", 0.1}}, method_schema());
  });
  EXPECT_EQ(msg, "method.scaling_factr: unknown option; known options: scaling_factor, steps, "
                 "merge_func, remove_keys, weights, path, limit");
  msg = error_of([] { Config::validate("method", {{"x", 1.0}}, Schema{}); });
  EXPECT_EQ(msg, "method.x: unknown option (this component takes no options)");
}

TEST(Config, MissingRequired) {
  auto msg = error_of([] { Config::validate("method", {}, method_schema()); });
  EXPECT_EQ(msg, "method.path: required option missing (string: where)");
}

class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("fusion_cfg_test_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
            "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path write(const std::string& name, const std::string& text) {
    auto p = dir_ / name;
    std::ofstream(p) << text;
    return p;
  }
  std::filesystem::path dir_;
};

using RunConfigTest = TempDir;

constexpr const char* kDoc = R"(device = "cpu"

[method]
name = "task_arithmetic"
scaling_factor = 0.3

[modelpool]
name = "safetensors"
pretrained = "models/base"
[modelpool.models]
mnist = "models/mnist"
svhn = "models/svhn"

[run]
seed = 7
)";

TEST_F(RunConfigTest, SectionsValuesAndTopLevelRunKeys) {
  RunConfig rc = RunConfig::from_string(kDoc, "test.toml");
  EXPECT_EQ(rc.sections(), (std::vector<std::string>{"method", "modelpool", "run"}));
  EXPECT_TRUE(rc.has_section("run"));
  EXPECT_FALSE(rc.has_section("taskpool"));
  auto run = rc.section("run");
  EXPECT_EQ(std::get<std::string>(run.at("device")), "cpu");
  EXPECT_EQ(std::get<int64_t>(run.at("seed")), 7);
  EXPECT_EQ(rc.component_name("method"), "task_arithmetic");
  EXPECT_EQ(rc.component_name("taskpool"), "");
  auto pool = rc.section("modelpool");
  auto models = std::get<StringMap>(pool.at("models"));
  ASSERT_EQ(models.size(), 2u);
  EXPECT_EQ(models[0], (std::pair<std::string, std::string>{"mnist", "models/mnist"}));
  EXPECT_TRUE(rc.section("nothing").empty());
}

TEST_F(RunConfigTest, TopLevelKeyGivenTwice) {
  auto msg = error_of([] { RunConfig::from_string("seed = 1\n[run]\nseed = 2\n", "x.toml"); });
  EXPECT_EQ(msg.rfind("x.toml:1:", 0), 0u) << msg;
  EXPECT_NE(msg.find("run.seed"), std::string::npos) << msg;
}

TEST_F(RunConfigTest, SyntaxErrorNamesFileLineColumn) {
  auto p = write("bad.toml", "[method]\nname = \"ta\"\nscaling_factor = = 3\n");
  auto msg = error_of([&] { RunConfig::from_file(p); });
  EXPECT_EQ(msg.rfind(p.string() + ":3:", 0), 0u) << msg;
  EXPECT_NE(msg.find("TOML syntax error"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos);
}

TEST_F(RunConfigTest, MissingFile) {
  auto msg = error_of([&] { RunConfig::from_file(dir_ / "nope.toml"); });
  EXPECT_EQ(msg, (dir_ / "nope.toml").string() + ": config file not found");
  msg = error_of([&] { RunConfig::from_file(dir_); });
  EXPECT_NE(msg.find("is a directory"), std::string::npos);
}

TEST_F(RunConfigTest, Overrides) {
  RunConfig rc = RunConfig::from_string(kDoc, "t.toml");
  rc.apply_override("method.scaling_factor=0.5");
  rc.apply_override("method.merge_func=mean");              // bare word: a string
  rc.apply_override("method.remove_keys=[\"a\", \"b\"]");   // TOML array
  rc.apply_override("device=cuda:1");                       // no dot: [run]
  rc.apply_override("modelpool.models.cars=models/cars");   // nested table
  rc.apply_override("taskpool.name=\"image_classification\"");  // a new section
  rc.apply_override(" method.steps = 3 ");
  rc.apply_override("method.flag=true");
  auto m = rc.section("method");
  EXPECT_DOUBLE_EQ(std::get<double>(m.at("scaling_factor")), 0.5);
  EXPECT_EQ(std::get<std::string>(m.at("merge_func")), "mean");
  EXPECT_EQ(std::get<std::vector<std::string>>(m.at("remove_keys")),
            (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(std::get<int64_t>(m.at("steps")), 3);
  EXPECT_EQ(std::get<bool>(m.at("flag")), true);
  EXPECT_EQ(std::get<std::string>(rc.section("run").at("device")), "cuda:1");
  EXPECT_EQ(std::get<StringMap>(rc.section("modelpool").at("models")).size(), 3u);
  EXPECT_EQ(rc.component_name("taskpool"), "image_classification");
}

TEST_F(RunConfigTest, MalformedOverrides) {
  RunConfig rc = RunConfig::from_string(kDoc, "t.toml");
  EXPECT_NE(error_of([&] { rc.apply_override("method.scaling_factor"); }).find("expected key=value"),
            std::string::npos);
  EXPECT_NE(error_of([&] { rc.apply_override("=3"); }).find("missing key"), std::string::npos);
  EXPECT_NE(error_of([&] { rc.apply_override("method..x=3"); }).find("is not a key"),
            std::string::npos);
  EXPECT_NE(error_of([&] { rc.apply_override("method.x="); }).find("missing value"),
            std::string::npos);
  // modelpool.pretrained is a string: it cannot hold a key.
  auto msg = error_of([&] { rc.apply_override("modelpool.pretrained.x=1"); });
  EXPECT_EQ(msg, "override 'modelpool.pretrained.x=1': modelpool.pretrained is a string, not a table");
}

// Found by fuzz/fuzz_config: an override or a quoted key holding a newline put the newline into the
// error message, which must be one line (fusion::Error escapes control characters).
TEST_F(RunConfigTest, ErrorsStayOnOneLine) {
  RunConfig rc = RunConfig::from_string("[method]\n\"a\\nb\" = 1\n", "t.toml");
  std::string msg = error_of([&] { rc.apply_override("method.x y\nz\t=1"); });
  EXPECT_EQ(msg, "override 'method.x y\\nz\\t=1': 'method.x y\\nz' is not a key like section.option (letters, "
                 "digits, '_' and '-' separated by dots)");
  msg = error_of([&] { Config::validate("method", rc.section("method"), method_schema()); });
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_EQ(msg.rfind("method.a\\nb: unknown option", 0), 0u) << msg;
}

// Found by fuzz/fuzz_config: a bare-word override that is not UTF-8 became a string that to_toml
// wrote as it was, so run_dir/config.toml did not read again.
TEST_F(RunConfigTest, OverrideValueMustBeUtf8) {
  RunConfig rc = RunConfig::from_string(kDoc, "t.toml");
  // Latin-1, a surrogate, an overlong '/', a code point past U+10FFFF.
  for (const char* bad :
       {"method.x=caf\xe9", "method.x=\xed\xa0\x80", "method.x=\xc0\xaf", "x=ab\xf4\x90\x80\x80"}) {
    SCOPED_TRACE(bad);
    const std::string msg = error_of([&] { rc.apply_override(bad); });
    EXPECT_NE(msg.find(": the value is not valid UTF-8"), std::string::npos) << msg;
  }
  rc.apply_override("method.label=caf\xc3\xa9 \xf0\x9f\x98\x80");  // UTF-8: a string as before
  EXPECT_EQ(std::get<std::string>(rc.section("method").at("label")), "caf\xc3\xa9 \xf0\x9f\x98\x80");
  const RunConfig back = RunConfig::from_string(rc.to_toml(), "config.toml");
  EXPECT_EQ(std::get<std::string>(back.section("method").at("label")), "caf\xc3\xa9 \xf0\x9f\x98\x80");
}

// Found by fuzz/fuzz_config: an integer past 2^53 in a list of numbers was read through an empty
// std::optional (toml++ gives no double for it). It is rounded, as a scalar integer read as a float.
TEST_F(RunConfigTest, HugeIntegersInListsAreRounded) {
  RunConfig rc = RunConfig::from_string(
      "[method]\nweights = [9007199254740993, 1, -9223372036854775808]\ngrid = [[555000500005557555]]\n",
      "t.toml");
  const auto method = rc.section("method");
  EXPECT_EQ(std::get<std::vector<double>>(method.at("weights")),
            (std::vector<double>{9007199254740992.0, 1.0, -9223372036854775808.0}));
  EXPECT_EQ(std::get<std::vector<std::vector<double>>>(method.at("grid")),
            (std::vector<std::vector<double>>{{555000500005557555.0}}));
}

TEST_F(RunConfigTest, UnsupportedValueTypes) {
  RunConfig rc = RunConfig::from_string("[method]\nwhen = 1979-05-27\nmixed = [1, \"a\"]\n"
                                        "[modelpool.models]\nx = 3\n",
                                        "t.toml");
  auto msg = error_of([&] { rc.section("method"); });
  EXPECT_TRUE(msg.find("method.when") != std::string::npos ||
              msg.find("method.mixed") != std::string::npos)
      << msg;
  msg = error_of([&] { rc.section("modelpool"); });
  EXPECT_EQ(msg, "modelpool.models.x: expected string, got integer");
}

TEST_F(RunConfigTest, ToTomlRoundTrips) {
  RunConfig rc = RunConfig::from_string(kDoc, "t.toml");
  rc.apply_override("method.scaling_factor=0.1");
  rc.apply_override("method.lambdas=[[0.5, 1], [2.0, 3.5]]");
  std::string text = rc.to_toml();
  EXPECT_EQ(text.rfind("[run]\n", 0), 0u) << text;  // [run] first
  RunConfig back = RunConfig::from_string(text, "resolved.toml");
  EXPECT_EQ(back.section("method").size(), rc.section("method").size());
  EXPECT_DOUBLE_EQ(std::get<double>(back.section("method").at("scaling_factor")), 0.1);
  EXPECT_EQ(std::get<std::vector<std::vector<double>>>(back.section("method").at("lambdas")),
            (std::vector<std::vector<double>>{{0.5, 1.0}, {2.0, 3.5}}));
  EXPECT_EQ(std::get<StringMap>(back.section("modelpool").at("models")),
            std::get<StringMap>(rc.section("modelpool").at("models")));
  EXPECT_EQ(std::get<int64_t>(back.section("run").at("seed")), 7);
  EXPECT_EQ(back.to_toml(), text);
}

TEST_F(RunConfigTest, CopiesAreIndependent) {
  RunConfig a = RunConfig::from_string(kDoc, "t.toml");
  RunConfig b = a;
  b.apply_override("method.scaling_factor=0.9");
  EXPECT_DOUBLE_EQ(std::get<double>(a.section("method").at("scaling_factor")), 0.3);
  EXPECT_DOUBLE_EQ(std::get<double>(b.section("method").at("scaling_factor")), 0.9);
}

}  // namespace
}  // namespace fusion
