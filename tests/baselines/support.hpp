#pragma once
// Helpers for the baseline tests: hand-written state dicts, the single model of a result, and the
// test kit's in-memory pool (fusion/testing/memory_pools.hpp) and state-dict comparison
// (fusion/testing/fixtures.hpp).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "error_of.hpp"
#include "fusion/algorithm.hpp"
#include "fusion/context.hpp"
#include "fusion/state_dict.hpp"
#include "fusion/testing/fixtures.hpp"
#include "fusion/testing/memory_pools.hpp"

namespace fusion::testing {

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

/// "" when `actual` is `expected` bit for bit: state_dict_difference at rtol = atol = 0.
inline std::string exact_difference(const StateDict& actual, const StateDict& expected) {
  return state_dict_difference(actual, expected, 0.0, 0.0);
}

}  // namespace fusion::testing
