#include "training.hpp"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "fusion/error.hpp"
#include "fusion/safetensors.hpp"

namespace fusion::finetune {

const std::vector<std::string>& trainable_subsets() {
  static const std::vector<std::string> subsets = {"all", "encoder", "mlp", "attention"};
  return subsets;
}

bool is_trainable(const std::string& key, const at::Tensor& t, const std::string& subset) {
  if (!t.is_floating_point()) return false;
  if (subset == "all") return true;
  if (subset == "encoder") return key.find(".encoder.layers.") != std::string::npos;
  if (subset == "mlp") return key.find(".mlp.") != std::string::npos;
  if (subset == "attention") return key.find(".self_attn.") != std::string::npos;
  FUSION_FAIL("unknown trainable subset \"", subset, "\" (expected all, encoder, mlp or attention)");
}

TrainLog::TrainLog(std::vector<std::string> columns) : columns_(std::move(columns)) {}

void TrainLog::add(const std::vector<double>& row) {
  FUSION_ENSURE(row.size() == columns_.size(), "TrainLog: ", row.size(), " values for ",
                columns_.size(), " columns");
  rows_.push_back(row);
}

void TrainLog::save(const std::filesystem::path& path) const {
  if (path.empty()) return;
  std::ostringstream out;
  for (size_t i = 0; i < columns_.size(); ++i) out << (i ? "," : "") << columns_[i];
  out << '\n';
  out.precision(8);
  for (const auto& row : rows_) {
    for (size_t i = 0; i < row.size(); ++i) out << (i ? "," : "") << row[i];
    out << '\n';
  }
  write_file_atomic(path, out.str());
}

std::string short_number(double v) {
  char buf[32];
  if (v != 0.0 && (std::fabs(v) < 1e-3 || std::fabs(v) >= 1e4))
    std::snprintf(buf, sizeof(buf), "%.2e", v);
  else
    std::snprintf(buf, sizeof(buf), "%.4g", v);
  return buf;
}

}  // namespace fusion::finetune
