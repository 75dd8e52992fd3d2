// ClassificationEvaluation: accuracy, mean cross-entropy and the predictions CSV, checked against
// the definitions computed here in double precision, by hand.
#include "fusion/classification.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <fstream>
#include <sstream>

#include "fusion/context.hpp"
#include "fusion/error.hpp"
#include "fusion/files.hpp"

namespace fs = std::filesystem;
using fusion::ClassificationEvaluation;

namespace {

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// −log softmax(z)[y] in double precision.
double cross_entropy(const std::vector<double>& z, int64_t y) {
  double m = z[0];
  for (double v : z) m = std::max(m, v);
  double s = 0.0;
  for (double v : z) s += std::exp(v - m);
  return -(z[static_cast<size_t>(y)] - m - std::log(s));
}

}  // namespace

TEST(ClassificationEvaluation, AccuracyAndLossAreTheDefinitions) {
  const std::vector<std::vector<double>> z = {{2.0, 0.5, -1.0}, {0.1, 0.2, 3.0}, {1.0, 1.5, 0.0}, {-2.0, 4.0, 1.0}};
  const std::vector<int64_t> y = {0, 1, 1, 2};  // top-1: 0, 2, 1, 1 → 2 of 4 right
  ClassificationEvaluation eval({"a", "b", "c"}, {}, false);
  // Two batches: 3 examples, then 1.
  for (const auto& [b, e] : std::vector<std::pair<int64_t, int64_t>>{{0, 3}, {3, 4}}) {
    at::Tensor logits = at::empty({e - b, 3}, at::kDouble);
    for (int64_t i = b; i < e; ++i) {
      for (int64_t c = 0; c < 3; ++c) logits[i - b][c] = z[static_cast<size_t>(i)][static_cast<size_t>(c)];
    }
    eval.add(logits.to(at::kFloat), at::tensor(std::vector<int64_t>(y.begin() + b, y.begin() + e)));
  }
  double loss = 0.0;
  for (size_t i = 0; i < z.size(); ++i) loss += cross_entropy(z[i], y[i]);
  EXPECT_EQ(eval.count(), 4);
  EXPECT_EQ(eval.correct(), 2);
  EXPECT_DOUBLE_EQ(eval.accuracy(), 0.5);
  EXPECT_NEAR(eval.loss_sum(), loss, 1e-5);
  EXPECT_NEAR(eval.loss(), loss / 4.0, 1e-6);
  EXPECT_EQ(ClassificationEvaluation({"a"}, {}, false).accuracy(), 0.0);  // nothing added
}

TEST(ClassificationEvaluation, ThePredictionsCsvHasARowPerExampleAndQuotesWhatCsvNeeds) {
  const fs::path dir = fs::temp_directory_path() / ("fusion_classification_" + fusion::random_suffix());
  fusion::Context::Settings settings;
  settings.run_dir = dir;
  fusion::Context ctx(settings);
  ClassificationEvaluation saved({"plain", "with, comma", "say \"hi\""}, {"index", "sample"}, true);
  ClassificationEvaluation unsaved({"plain", "with, comma", "say \"hi\""}, {"index", "sample"}, false);
  const at::Tensor logits = at::tensor({0.0f, 3.0f, 1.0f, 2.0f, 0.0f, 1.0f}).reshape({2, 3});
  const at::Tensor labels = at::tensor(std::vector<int64_t>{1, 2});
  saved.add(logits, labels, {{"7", "img,7.png"}, {"9", "nine.png"}});
  unsaved.add(logits, labels);
  EXPECT_EQ(saved.loss_sum(), unsaved.loss_sum());  // the same sum, saved or not
  EXPECT_EQ(saved.correct(), 1);

  const fs::path file = ClassificationEvaluation::predictions_file(ctx, 3, "mnist");
  EXPECT_EQ(file, dir / "predictions" / "model_3" / "mnist.csv");
  EXPECT_EQ(saved.write_predictions(file, ctx, "mnist"), "predictions/model_3/mnist.csv");
  // Each row as written but its loss, which is compared as a number (the sum in float32 against
  // the definition in double precision).
  std::istringstream rows(read_text(file));
  std::string header, row0, row1, extra;
  ASSERT_TRUE(std::getline(rows, header) && std::getline(rows, row0) && std::getline(rows, row1));
  EXPECT_FALSE(std::getline(rows, extra)) << "one row per example";
  EXPECT_EQ(header, "index,sample,label,label_name,predicted,predicted_name,loss");
  const auto split_loss = [](const std::string& row) {
    const size_t c = row.rfind(',');
    return std::make_pair(row.substr(0, c + 1), std::stod(row.substr(c + 1)));
  };
  EXPECT_EQ(split_loss(row0).first, "7,\"img,7.png\",1,\"with, comma\",1,\"with, comma\",");
  EXPECT_NEAR(split_loss(row0).second, cross_entropy({0.0, 3.0, 1.0}, 1), 1e-6);
  EXPECT_EQ(split_loss(row1).first, "9,nine.png,2,\"say \"\"hi\"\"\",0,plain,");
  EXPECT_NEAR(split_loss(row1).second, cross_entropy({2.0, 0.0, 1.0}, 2), 1e-6);
  fs::remove_all(dir);
}

TEST(ClassificationEvaluation, BadInputIsNamed) {
  ClassificationEvaluation eval({"a", "b"}, {"line"}, true);
  const at::Tensor logits = at::zeros({2, 2});
  try {
    eval.add(logits, at::tensor(std::vector<int64_t>{0, 5}), {{"1"}, {"2"}});
    FAIL() << "a label without a class name was taken";
  } catch (const fusion::Error& e) {
    EXPECT_STREQ(e.what(), "ClassificationEvaluation: label 5 is not a class (2 classes)");
  }
  const auto message_of = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const fusion::Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_EQ(message_of([&] { eval.add(logits, at::tensor(std::vector<int64_t>{0, 1}), {{"1"}}); }),
            "ClassificationEvaluation: 1 id rows for a batch of 2");
  EXPECT_EQ(message_of([&] { eval.add(logits, at::tensor(std::vector<int64_t>{0, 1}), {{"1", "x"}, {"2"}}); }),
            "ClassificationEvaluation: an id row of 2 fields for 1 id columns");
  EXPECT_EQ(message_of([&] { eval.add(at::zeros({3, 2}), at::tensor(std::vector<int64_t>{0, 1})); }),
            "ClassificationEvaluation: logits [3, 2] and labels [2] must be [n, classes] and [n]");
  EXPECT_EQ(message_of([&] { eval.add(at::zeros({2, 3}), at::tensor(std::vector<int64_t>{0, 1}), {{"1"}, {"2"}}); }),
            "ClassificationEvaluation: logits of 3 classes for 2 class names");
  EXPECT_EQ(eval.count(), 0);  // a refused batch adds nothing
  EXPECT_EQ(eval.loss_sum(), 0.0);
}

TEST(CsvField, QuotesOnlyWhatNeedsIt) {
  EXPECT_EQ(fusion::csv_field("plain"), "plain");
  EXPECT_EQ(fusion::csv_field("a,b"), "\"a,b\"");
  EXPECT_EQ(fusion::csv_field("say \"x\""), "\"say \"\"x\"\"\"");
  EXPECT_EQ(fusion::csv_field("two\nlines"), "\"two\nlines\"");
}
