#pragma once
// Shared fixtures for the baseline tests: an in-memory ModelPool that hands out fresh copies and
// records how many experts it has lent that are still alive, and small helpers.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "error_of.hpp"
#include "fusion/algorithm.hpp"
#include "fusion/context.hpp"
#include "fusion/error.hpp"
#include "fusion/model_pool.hpp"
#include "fusion/state_dict.hpp"

namespace fusion::testing {

class MemoryPool : public ModelPool {
 public:
  MemoryPool(std::optional<StateDict> pretrained, std::vector<std::pair<std::string, StateDict>> experts)
      : pretrained_sd_(std::move(pretrained)), experts_(std::move(experts)) {}

  std::vector<std::string> expert_names() const override {
    std::vector<std::string> out;
    for (const auto& [name, sd] : experts_) out.push_back(name);
    return out;
  }
  bool has_pretrained() const override { return pretrained_sd_.has_value(); }
  ConstModelPtr pretrained() override {
    if (!pretrained_sd_) FUSION_FAIL("no pretrained model");
    if (!pretrained_) pretrained_ = std::make_shared<Model>("checkpoint", pretrained_sd_->clone());
    return pretrained_;
  }
  ModelPtr load(const std::string& name) override {
    int live = 1;
    for (const auto& w : lent_) live += w.expired() ? 0 : 1;
    max_live_ = std::max(max_live_, live);
    int64_t bytes = 0;
    for (const auto& [w, n] : lent_tensors_) bytes += w.expired() ? 0 : n;
    max_lent_bytes_ = std::max(max_lent_bytes_, bytes);
    ++loads_;
    for (const auto& [n, sd] : experts_) {
      if (n == name) {
        auto m = std::make_shared<Model>("checkpoint", sd.clone());
        lent_.push_back(m);
        for (const auto& [k, t] : m->parameters()) {
          lent_tensors_.emplace_back(WeakTensor(t.getIntrusivePtr()), static_cast<int64_t>(t.nbytes()));
        }
        return m;
      }
    }
    FUSION_FAIL("unknown expert '", name, "'");
  }
  void save(const Model&, const std::filesystem::path&) const override { FUSION_FAIL("not supported"); }

  int loads() const { return loads_; }
  /// The most expert Model objects alive at once, counting the one being loaded.
  int max_live_experts() const { return max_live_; }
  /// The most bytes of earlier experts' tensors still alive when an expert was loaded: a method
  /// that streams holds at most one model's worth (its running sum may be the first expert's own
  /// tensors); one that keeps every expert holds more.
  int64_t max_lent_bytes_alive() const { return max_lent_bytes_; }
  /// The bytes of one expert.
  int64_t expert_bytes() const { return experts_.empty() ? 0 : experts_.front().second.nbytes(); }

 private:
  std::optional<StateDict> pretrained_sd_;
  std::vector<std::pair<std::string, StateDict>> experts_;
  ConstModelPtr pretrained_;
  using WeakTensor = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
  std::vector<std::weak_ptr<Model>> lent_;
  std::vector<std::pair<WeakTensor, int64_t>> lent_tensors_;
  int loads_ = 0;
  int max_live_ = 0;
  int64_t max_lent_bytes_ = 0;
};

inline at::Tensor f32(std::vector<float> v) {
  return at::tensor(v, at::TensorOptions().dtype(at::kFloat));
}

inline StateDict sd(std::vector<std::pair<std::string, at::Tensor>> items) {
  StateDict out;
  for (auto& [k, v] : items) out.set(k, v);
  return out;
}

/// The single model of a result (asserts there is exactly one).
inline ConstModelPtr only_model(const Result& r) {
  EXPECT_EQ(r.models.size(), 1u);
  return r.models.at(0).make();
}

inline ::testing::AssertionResult state_dicts_close(const StateDict& actual, const StateDict& expected,
                                                    double rtol = 1e-5, double atol = 1e-6) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure() << actual.size() << " keys, expected " << expected.size();
  }
  for (const auto& [k, e] : expected) {
    const at::Tensor* a = actual.find(k);
    if (a == nullptr) return ::testing::AssertionFailure() << "missing key " << k;
    if (a->scalar_type() != e.scalar_type()) {
      return ::testing::AssertionFailure() << k << ": dtype " << a->scalar_type() << ", expected " << e.scalar_type();
    }
    if (a->sizes() != e.sizes()) return ::testing::AssertionFailure() << k << ": shape " << a->sizes();
    const bool ok = at::isFloatingType(e.scalar_type()) ? at::allclose(a->cpu(), e, rtol, atol) : at::equal(a->cpu(), e);
    if (!ok) {
      return ::testing::AssertionFailure() << k << ": got " << *a << " expected " << e
                                           << " max abs diff " << (a->cpu().to(at::kDouble) - e.to(at::kDouble)).abs().max().item<double>();
    }
  }
  return ::testing::AssertionSuccess();
}

inline ::testing::AssertionResult state_dicts_equal(const StateDict& actual, const StateDict& expected) {
  return state_dicts_close(actual, expected, 0.0, 0.0);
}

}  // namespace fusion::testing
