#include "fusion/classification.hpp"

#include <ATen/core/Reduction.h>

#include <cstdio>
#include <system_error>

#include "fusion/context.hpp"
#include "fusion/error.hpp"
#include "fusion/files.hpp"

namespace fusion {

namespace fs = std::filesystem;

struct ClassificationEvaluation::Impl {
  std::vector<std::string> class_names;
  std::vector<std::string> id_columns;
  bool save = false;
  std::string csv;  ///< the predictions, header first (with save)
  int64_t count = 0, correct = 0;
  double loss_sum = 0.0;
};

ClassificationEvaluation::ClassificationEvaluation(std::vector<std::string> class_names,
                                                   std::vector<std::string> id_columns, bool save_predictions)
    : impl_(std::make_unique<Impl>()) {
  impl_->class_names = std::move(class_names);
  impl_->id_columns = std::move(id_columns);
  impl_->save = save_predictions;
  if (impl_->save) {
    for (const std::string& c : impl_->id_columns) impl_->csv += csv_field(c) + ",";
    impl_->csv += "label,label_name,predicted,predicted_name,loss\n";
  }
}

ClassificationEvaluation::~ClassificationEvaluation() = default;
ClassificationEvaluation::ClassificationEvaluation(ClassificationEvaluation&&) noexcept = default;
ClassificationEvaluation& ClassificationEvaluation::operator=(ClassificationEvaluation&&) noexcept = default;

void ClassificationEvaluation::add(const at::Tensor& logits, const at::Tensor& labels,
                                   const std::vector<std::vector<std::string>>& ids) {
  Impl& m = *impl_;
  FUSION_ENSURE(logits.dim() == 2 && labels.dim() == 1 && logits.size(0) == labels.size(0),
                "ClassificationEvaluation: logits ", logits.sizes(), " and labels ", labels.sizes(),
                " must be [n, classes] and [n]");
  const int64_t n = labels.size(0);
  const at::Tensor z = logits.to(at::kFloat);
  const at::Tensor y = labels.to(z.device(), at::kLong);
  if (n > 0) {
    const int64_t lo = y.min().item<int64_t>(), hi = y.max().item<int64_t>();
    const int64_t bad = lo < 0 ? lo : hi;
    FUSION_ENSURE(lo >= 0 && hi < z.size(1), "ClassificationEvaluation: label ", bad, " is not a class (",
                  z.size(1), " classes)");
  }
  if (m.save) {  // every check before anything is added, so that a refused batch adds nothing
    FUSION_ENSURE(z.size(1) <= static_cast<int64_t>(m.class_names.size()), "ClassificationEvaluation: logits of ",
                  z.size(1), " classes for ", m.class_names.size(), " class names");
    FUSION_ENSURE(static_cast<int64_t>(ids.size()) == n, "ClassificationEvaluation: ", ids.size(),
                  " id rows for a batch of ", n);
    for (const std::vector<std::string>& row : ids) {
      FUSION_ENSURE(row.size() == m.id_columns.size(), "ClassificationEvaluation: an id row of ", row.size(),
                    " fields for ", m.id_columns.size(), " id columns");
    }
  }
  const at::Tensor losses = at::cross_entropy_loss(z, y, {}, at::Reduction::None);
  const at::Tensor predicted = z.argmax(1);
  m.loss_sum += losses.sum().item<double>();
  m.correct += predicted.eq(y).sum().item<int64_t>();
  m.count += n;
  if (!m.save) return;
  const at::Tensor l = losses.to(at::kCPU, at::kDouble), p = predicted.to(at::kCPU), t = y.to(at::kCPU);
  const double* lp = l.data_ptr<double>();
  const int64_t* pp = p.data_ptr<int64_t>();
  const int64_t* tp = t.data_ptr<int64_t>();
  for (int64_t k = 0; k < n; ++k) {
    for (const std::string& field : ids[static_cast<size_t>(k)]) m.csv += csv_field(field) + ",";
    char loss_text[32];
    std::snprintf(loss_text, sizeof loss_text, "%.9g", lp[k]);
    // Labels and predictions lie in [0, classes), and every class has a name (checked above).
    m.csv += std::to_string(tp[k]) + "," + csv_field(m.class_names[static_cast<size_t>(tp[k])]) + "," +
             std::to_string(pp[k]) + "," + csv_field(m.class_names[static_cast<size_t>(pp[k])]) + "," + loss_text +
             "\n";
  }
}

int64_t ClassificationEvaluation::count() const { return impl_->count; }
int64_t ClassificationEvaluation::correct() const { return impl_->correct; }
double ClassificationEvaluation::loss_sum() const { return impl_->loss_sum; }
double ClassificationEvaluation::accuracy() const {
  return impl_->count > 0 ? static_cast<double>(impl_->correct) / static_cast<double>(impl_->count) : 0.0;
}
double ClassificationEvaluation::loss() const {
  return impl_->count > 0 ? impl_->loss_sum / static_cast<double>(impl_->count) : 0.0;
}

std::string ClassificationEvaluation::write_predictions(const fs::path& file, const Context& ctx,
                                                        const std::string& task) const {
  try {
    if (!file.parent_path().empty()) fs::create_directories(file.parent_path());
    write_file_atomic(file, impl_->csv);
  } catch (const std::exception& e) {
    FUSION_FAIL("task '", task, "': cannot write the predictions ", file.string(), ": ", e.what());
  }
  std::error_code ec;
  const fs::path rel = ctx.run_dir().empty() ? file : fs::relative(file, ctx.run_dir(), ec);
  return (ec || rel.empty() ? file : rel).string();
}

fs::path ClassificationEvaluation::predictions_file(const Context& ctx, int64_t evaluation, const std::string& task) {
  return ctx.run_dir() / "predictions" / ("model_" + std::to_string(evaluation)) / (task + ".csv");
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

}  // namespace fusion
