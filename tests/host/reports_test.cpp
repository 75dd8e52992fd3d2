// `fusion run`'s report stage: a task pool's report typed once, and what is made from it (the log
// line, results.csv, the Pareto view).
#include <gtest/gtest.h>

#include "error_of.hpp"
#include "reports.hpp"

namespace fusion::host {
namespace {

using fusion::testing::error_of;
using json = nlohmann::json;

const std::vector<std::string> kTasks = {"a", "b,c"};

json pool_report(double a, double b) {
  return {{"a", {{"accuracy", a}, {"loss", 1 - a}}},
          {"b,c", {{"accuracy", b}, {"loss", 1 - b}}},
          {"average", {{"accuracy", (a + b) / 2}, {"loss", 1 - (a + b) / 2}}},
          {"model_info", {{"all_params", 2}}}};
}

TEST(Evaluation, FromTaskPool) {
  const json raw = pool_report(0.5, 0.25);
  const Evaluation e = Evaluation::from_task_pool(raw, kTasks);
  ASSERT_EQ(e.tasks.size(), 2u);
  EXPECT_EQ(e.tasks[0].accuracy, 0.5);
  EXPECT_EQ(e.tasks[1].loss, 0.75);
  ASSERT_TRUE(e.average.has_value());
  EXPECT_EQ(e.average->accuracy, 0.375);
  EXPECT_EQ(e.accuracies(), (std::vector<double>{0.5, 0.25}));
  EXPECT_EQ(e.fusionbench, raw);  // kept whole for report.json
}

TEST(Evaluation, MissingAndMalformedScores) {
  // A task the report lacks, a loss that is not a number: absent. No average: none.
  Evaluation e = Evaluation::from_task_pool({{"a", {{"accuracy", 1}, {"loss", "?"}}}}, kTasks);
  EXPECT_EQ(e.tasks[0].accuracy, 1.0);
  EXPECT_FALSE(e.tasks[0].loss);
  EXPECT_FALSE(e.tasks[1].accuracy);
  EXPECT_FALSE(e.accuracies());
  EXPECT_FALSE(e.average);
  // An accuracy that is not a number is the task pool's error.
  EXPECT_EQ(error_of([] { Evaluation::from_task_pool({{"a", {{"accuracy", "high"}}}}, kTasks); }),
            "the task pool's report of task 'a' has an accuracy that is not a number: \"high\"");
  EXPECT_NE(error_of([] { Evaluation::from_task_pool({{"average", 3}}, kTasks); }).find("\"average\""),
            std::string::npos);
  // Another run's report.json is read leniently: whatever is not a number is absent.
  e = Evaluation::from_report({{"a", {{"accuracy", "high"}}}, {"b,c", 7}}, kTasks);
  EXPECT_FALSE(e.tasks[0].accuracy);
  EXPECT_FALSE(e.tasks[1].accuracy);
  EXPECT_FALSE(Evaluation::from_report(nullptr, kTasks).accuracies());
}

TEST(Reports, EvaluationLine) {
  EXPECT_EQ(evaluation_line("model 1/2 'x'", Evaluation::from_task_pool(pool_report(0.55, 1.0 / 3), kTasks), kTasks),
            "model 1/2 'x': a=0.55 b,c=0.333333 average=0.441667");
  // An average without an accuracy prints 0, as it always has; a missing task is left out.
  EXPECT_EQ(evaluation_line("m", Evaluation::from_task_pool({{"b,c", {{"accuracy", 1e-7}}}, {"average", json::object()}}, kTasks), kTasks),
            "m: b,c=1e-07 average=0");
}

TEST(Reports, ResultsCsv) {
  std::vector<ModelReport> models(3);
  models[0].label = "lambda=0.5";
  models[0].metadata = {{"scaling_factor", 0.5}, {"index", 0}, {"nested", {{"k", "v,w"}}}};
  models[0].evaluation = Evaluation::from_task_pool(pool_report(0.5, 0.25), kTasks);
  models[1].label = "say \"hi\"";
  models[1].metadata = {{"method", "pretrained"}};
  models[1].evaluation = Evaluation::from_task_pool({{"a", {{"accuracy", 1.0}}}}, kTasks);
  models[2].label = "unevaluated";
  EXPECT_EQ(results_csv(models, kTasks),
            "label,index,nested.k,scaling_factor,method,a.accuracy,a.loss,\"b,c.accuracy\",\"b,c.loss\",average.accuracy\n"
            "lambda=0.5,0,\"v,w\",0.5,,0.5,0.5,0.25,0.75,0.375\n"
            "\"say \"\"hi\"\"\",,,,pretrained,1,,,,\n"
            "unevaluated,,,,,,,,,\n");
  EXPECT_EQ(results_csv({models[2]}, {}), "label\nunevaluated\n");
}

TEST(Reports, ParetoView) {
  Logger log(LogLevel::Error);
  std::vector<ModelReport> models(3);
  const double acc[3][2] = {{0.5, 0.5}, {0.55, 0.4}, {0.4, 0.4}};
  for (int i = 0; i < 3; ++i) {
    models[i].label = "m" + std::to_string(i);
    models[i].evaluation = Evaluation::from_task_pool(pool_report(acc[i][0], acc[i][1]), kTasks);
  }
  EXPECT_FALSE(pareto_view(models, {"a"}, "x", false, {}, log));  // one task: no Pareto view

  std::vector<ResolvedConfig::CompareRun> compare = {
      {"other", {{"sweep", true},
                 {"models", {{{"report", pool_report(0.9, 0.1)}}, {{"report", pool_report(0.1, 0.9)}}}}}},
      {"nothing", {{"models", {{{"report", nullptr}}, {{"label", "no report"}}}}}}};
  ::testing::internal::CaptureStderr();
  Logger warn(LogLevel::Warn);
  auto view = pareto_view(models, kTasks, "x", true, compare, warn);
  const std::string err = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(view);
  EXPECT_NEAR(view->hypervolume, 0.25 + 0.05 * 0.4, 1e-12);
  EXPECT_EQ(view->front, (std::vector<std::string>{"m0", "m1"}));
  ASSERT_EQ(view->series.size(), 2u);  // this run and "other"; "nothing" is left out with a warning
  EXPECT_EQ(view->series[0].name, "x");
  EXPECT_TRUE(view->series[0].joined);
  EXPECT_EQ(view->series[0].points.size(), 3u);
  EXPECT_EQ(view->series[1].name, "other");
  EXPECT_TRUE(view->series[1].joined);
  EXPECT_EQ(view->series[1].points, (std::vector<std::vector<double>>{{0.9, 0.1}, {0.1, 0.9}}));
  EXPECT_NE(err.find("run.compare[1]: no model with accuracies for the tasks of this run; not plotted"),
            std::string::npos)
      << err;
  // Models without every accuracy are no points; with none, no view.
  models[0].evaluation = Evaluation::from_task_pool({{"a", {{"accuracy", 1}}}}, kTasks);
  models[1].evaluation.reset();
  models[2].evaluation.reset();
  EXPECT_FALSE(pareto_view(models, kTasks, "x", false, {}, log));
}

}  // namespace
}  // namespace fusion::host
