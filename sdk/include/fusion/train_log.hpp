#pragma once
// A training log: a CSV file with a header and one row per logged step, written as training goes.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <variant>
#include <vector>

#include "fusion/export.hpp"

namespace fusion {

/// A training log at `path` (run_dir/train_log.csv by convention). The first column is the step.
/// Each row is appended and flushed at once, so a run that stops leaves every row it logged.
/// With `keep_through_step` >= 0 (a resumed run), the rows of an existing log whose step is at most
/// that are kept and the rest dropped; otherwise the file starts anew. Numbers are written with 8
/// significant digits. An empty `path` gives a log that writes nothing. Not thread-safe.
class FUSION_SDK_API TrainLog {
 public:
  using Cell = std::variant<double, int64_t, std::string>;

  TrainLog(std::filesystem::path path, std::vector<std::string> columns, int64_t keep_through_step = -1);
  ~TrainLog();
  TrainLog(const TrainLog&) = delete;
  TrainLog& operator=(const TrainLog&) = delete;

  /// Appends one row, one cell per column (fusion::Error otherwise).
  void add(const std::vector<Cell>& row);
  size_t rows() const { return rows_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  size_t columns_;
  size_t rows_ = 0;
  std::ofstream out_;
};

}  // namespace fusion
