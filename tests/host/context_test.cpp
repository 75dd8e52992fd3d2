// Logger, Progress (not a terminal: plain lines) and Context.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <type_traits>

#include "fusion/context.hpp"

namespace fusion {
namespace {

// A Context is made from Settings and never changed: plugins see no setters.
template <class T, class = void>
struct HasSetSeed : std::false_type {};
template <class T>
struct HasSetSeed<T, std::void_t<decltype(std::declval<T&>().set_seed(1))>> : std::true_type {};
template <class T, class = void>
struct HasSetDevice : std::false_type {};
template <class T>
struct HasSetDevice<T, std::void_t<decltype(std::declval<T&>().set_device(at::Device(at::kCPU)))>>
    : std::true_type {};
static_assert(!HasSetSeed<Context>::value && !HasSetDevice<Context>::value,
              "Context has no setters");

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

TEST(Logger, StderrAndFileWithLevels) {
  auto file = std::filesystem::temp_directory_path() / "fusion_logger_test.txt";
  std::filesystem::remove(file);
  Logger log(LogLevel::Info);
  log.set_file(file);
  testing::internal::CaptureStderr();
  log.debug("hidden");
  log.info("hello");
  log.warn("careful");
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(err, "[fusion] info: hello\n[fusion] warning: careful\n");
  std::ifstream in(file);
  std::stringstream ss;
  ss << in.rdbuf();
  auto lines = lines_of(ss.str());
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_NE(lines[0].find("info: hello"), std::string::npos);
  EXPECT_NE(lines[1].find("warning: careful"), std::string::npos);
  std::filesystem::remove(file);
  EXPECT_THROW(log.set_file("/nonexistent-dir/x/log.txt"), Error);
}

TEST(Progress, PlainLinesAtMostEveryTenPercent) {
  testing::internal::CaptureStderr();
  {
    Progress bar("merging", 200);
    for (int i = 0; i < 200; ++i) bar.advance();
    bar.set_postfix("loss=0.5");
  }  // the destructor finishes the bar
  auto lines = lines_of(testing::internal::GetCapturedStderr());
  ASSERT_GE(lines.size(), 2u);
  EXPECT_LE(lines.size(), 11u);  // 0 %, 10 %, ..., 90 % and the final line at most
  EXPECT_NE(lines.back().find("merging"), std::string::npos);
  EXPECT_NE(lines.back().find("200/200"), std::string::npos);
  EXPECT_NE(lines.back().find("loss=0.5"), std::string::npos);
  EXPECT_NE(lines.back().find("it/s"), std::string::npos);
  for (const auto& l : lines) EXPECT_EQ(l.find('\r'), std::string::npos);
}

TEST(Progress, DisabledIsSilentAndFinishIsIdempotent) {
  testing::internal::CaptureStderr();
  {
    Progress bar("quiet", 10, false);
    bar.advance(10);
    bar.finish();
  }
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
  testing::internal::CaptureStderr();
  {
    Progress bar("once", 0);
    bar.advance(3);
    bar.finish();
    bar.finish();
  }
  auto lines = lines_of(testing::internal::GetCapturedStderr());
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("once 3"), std::string::npos) << lines[0];
}

TEST(Context, DefaultSettings) {
  Context c;
  EXPECT_EQ(c.device(), at::Device(at::kCPU));
  EXPECT_EQ(c.dtype(), at::kFloat);
  EXPECT_EQ(c.seed(), 42u);
  EXPECT_EQ(c.threads(), 1);
  EXPECT_TRUE(c.run_dir().empty());
}

TEST(Context, SeedGeneratorAndConfig) {
  Context::Settings settings;
  settings.seed = 123;
  settings.threads = 3;
  settings.run_dir = "runs/x";
  Context a(settings);
  EXPECT_EQ(a.seed(), 123u);
  EXPECT_EQ(a.threads(), 3);
  EXPECT_EQ(a.run_dir(), std::filesystem::path("runs/x"));
  at::Tensor x = at::rand({4}, a.generator());
  Context b(settings);
  at::Tensor y = at::rand({4}, b.generator());
  EXPECT_TRUE(at::equal(x, y));  // same seed, same stream

  Schema s;
  s.add("k", int64_t{3}, "");
  Context c = a.with_config(Config::validate("method", {}, s));
  EXPECT_EQ(c.config().get<int64_t>("k"), 3);
  EXPECT_FALSE(a.config().has("k"));
  EXPECT_EQ(&c.log(), &a.log());  // copies share the logger
  at::Tensor z1 = at::rand({1}, a.generator());
  at::Tensor z2 = at::rand({1}, c.generator());  // ... and the generator: the stream continues
  EXPECT_FALSE(at::equal(z1, z2));
}

TEST(Context, ProgressOffAndSharedLogger) {
  auto logger = std::make_shared<Logger>(LogLevel::Warn);
  Context::Settings settings;
  settings.progress = false;
  settings.logger = logger;
  const Context quiet(settings);
  EXPECT_EQ(&quiet.log(), logger.get());
  testing::internal::CaptureStderr();
  quiet.progress("silent", 5)->advance(5);
  quiet.with_config(Config()).progress("still silent", 5)->advance(5);  // copies keep the setting
  quiet.log().info("below the level");
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
}

}  // namespace
}  // namespace fusion
