#pragma once
// Evaluating a classification task: top-1 accuracy, mean cross-entropy and the predictions CSV.
#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "fusion/export.hpp"

namespace fusion {

class Context;

/// `s` as one CSV field: quoted as RFC 4180 when it holds a comma, a quote or a line break.
FUSION_SDK_API std::string csv_field(const std::string& s);

/// One evaluation of a classification task, batch by batch, as the in-tree `image_classification`
/// and `text_classification` task pools evaluate: top-1 accuracy and mean cross-entropy over every
/// example added and, when predictions are saved, the predictions CSV: a header, then one row per
/// example with its id columns, then `label,label_name,predicted,predicted_name,loss` (the loss to
/// 9 significant digits). A third party's classification task that reports through it gives the
/// same numbers, report keys and files as the in-tree pools. Added in SDK 1.4 (API level 4).
class FUSION_SDK_API ClassificationEvaluation {
 public:
  /// `class_names`: the label names, by class index. `id_columns`: the CSV columns that name an
  /// example (e.g. {"index", "sample"}). With `save_predictions` false no row is kept.
  ClassificationEvaluation(std::vector<std::string> class_names, std::vector<std::string> id_columns,
                           bool save_predictions);
  ~ClassificationEvaluation();
  ClassificationEvaluation(ClassificationEvaluation&&) noexcept;
  ClassificationEvaluation& operator=(ClassificationEvaluation&&) noexcept;

  /// Adds a batch: `logits` [n, classes] and `labels` [n] (integer), on any device. The loss is
  /// each example's cross-entropy (computed in float32), summed: the same whether or not
  /// predictions are saved. `ids`: with save_predictions, n rows of one field per id column (quoted
  /// as CSV needs); otherwise not read. Throws fusion::Error, having added nothing, when the shapes
  /// disagree, a label is not a class, or (with save_predictions) a class has no name or `ids` does
  /// not fit.
  void add(const at::Tensor& logits, const at::Tensor& labels, const std::vector<std::vector<std::string>>& ids = {});

  int64_t count() const;     ///< examples added
  int64_t correct() const;   ///< those whose top-1 prediction is their label
  double loss_sum() const;   ///< the sum of their losses
  double accuracy() const;   ///< correct / count (0 with no example)
  double loss() const;       ///< loss_sum / count (0 with no example)

  /// Writes the predictions CSV to `file` (its folder made; never half-written) and returns the
  /// path a report names: relative to ctx.run_dir() when inside it, else `file`. Throws
  /// fusion::Error "task '<task>': cannot write the predictions <file>: <reason>".
  std::string write_predictions(const std::filesystem::path& file, const Context& ctx, const std::string& task) const;

  /// Where the k-th model a run evaluates (k from 0) writes its predictions of `task`:
  /// <run_dir>/predictions/model_<k>/<task>.csv.
  static std::filesystem::path predictions_file(const Context& ctx, int64_t evaluation, const std::string& task);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fusion
