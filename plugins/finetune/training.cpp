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

double cosine_lr(double lr, int64_t step, int64_t total, double min_factor) {
  if (total <= 0) return lr;
  const double eta_min = min_factor * lr;
  const double progress = static_cast<double>(step - 1) / static_cast<double>(total);
  return eta_min + (lr - eta_min) * (1.0 + std::cos(M_PI * progress)) / 2.0;
}

Adam::Adam(std::vector<at::Tensor> params, double weight_decay)
    : params_(std::move(params)), weight_decay_(weight_decay) {
  for (const auto& p : params_) {
    FUSION_ENSURE(p.requires_grad(), "Adam: a parameter does not require grad");
    m_.push_back(at::zeros_like(p));
    v_.push_back(at::zeros_like(p));
  }
}

void Adam::zero_grad() {
  for (auto& p : params_) {
    if (p.grad().defined()) p.mutable_grad() = at::Tensor();
  }
}

void Adam::step(double lr) {
  constexpr double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  ++step_;
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step_));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step_));
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i];
    at::Tensor g = p.grad();
    if (!g.defined()) continue;
    if (weight_decay_ != 0.0) g = g.add(p, weight_decay_);
    m_[i].mul_(beta1).add_(g, 1.0 - beta1);
    v_[i].mul_(beta2).addcmul_(g, g, 1.0 - beta2);
    at::Tensor denom = (v_[i].sqrt() / std::sqrt(bc2)).add_(eps);
    p.addcdiv_(m_[i], denom, -lr / bc1);
  }
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
