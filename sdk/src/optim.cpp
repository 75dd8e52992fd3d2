#include "fusion/optim.hpp"

#include <algorithm>
#include <cmath>

#include "fusion/error.hpp"

namespace fusion {

Adam::Adam(std::vector<at::Tensor> params, double weight_decay)
    : params_(std::move(params)), weight_decay_(weight_decay) {
  FUSION_ENSURE(weight_decay >= 0.0 && std::isfinite(weight_decay), "Adam: weight_decay = ",
                weight_decay, ": must be finite and non-negative");
  m_.reserve(params_.size());
  v_.reserve(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    FUSION_ENSURE(params_[i].defined() && params_[i].requires_grad(), "Adam: parameter ", i,
                  " is undefined or does not require grad");
    m_.push_back(at::zeros_like(params_[i]).detach());
    v_.push_back(at::zeros_like(params_[i]).detach());
  }
}

void Adam::zero_grad() {
  for (auto& p : params_) {
    if (p.grad().defined()) p.mutable_grad() = at::Tensor();
  }
}

void Adam::step(double lr) {
  constexpr double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  at::NoGradGuard no_grad;
  ++step_;
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step_));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(beta2, static_cast<double>(step_)));
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i];
    at::Tensor g = p.grad();
    if (!g.defined()) continue;
    if (weight_decay_ != 0.0) g = g.add(p, weight_decay_);
    m_[i].mul_(beta1).add_(g, 1.0 - beta1);
    v_[i].mul_(beta2).addcmul_(g, g, 1.0 - beta2);
    at::Tensor denom = (v_[i].sqrt() / bc2_sqrt).add_(eps);
    p.addcdiv_(m_[i], denom, -lr / bc1);
  }
}

double cosine_lr(double lr, int64_t step, int64_t total, double min_factor) {
  if (total <= 0) return lr;
  const double eta_min = min_factor * lr;
  const double k = static_cast<double>(std::clamp<int64_t>(step - 1, 0, total));
  return eta_min + (lr - eta_min) * (1.0 + std::cos(M_PI * k / static_cast<double>(total))) / 2.0;
}

double warmup_cosine_lr(double lr, int64_t step, int64_t warmup, int64_t total, double min_factor) {
  if (warmup <= 0) return cosine_lr(lr, step, total, min_factor);
  if (step <= warmup) return lr * static_cast<double>(step) / static_cast<double>(warmup);
  return cosine_lr(lr, step - warmup, total - warmup, min_factor);
}

}  // namespace fusion
