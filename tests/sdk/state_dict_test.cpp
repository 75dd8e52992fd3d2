// StateDict (state_dict.hpp): ordering, set/erase, layout checks and the merge arithmetic.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "fusion/state_dict.hpp"
#include "support.hpp"

namespace {

using fusion::StateDict;
using fusion::testing::expect_error;

StateDict make(double base) {
  StateDict sd;
  sd.set("w", at::tensor({1.0, 2.0, 3.0}, at::kFloat) * base);
  sd.set("b", at::tensor({base}, at::kFloat));
  sd.set("position_ids", at::arange(4, at::kLong));
  return sd;
}

TEST(StateDict, KeepsInsertionOrderAndReplacesInPlace) {
  StateDict sd;
  sd.set("z", at::zeros({1}));
  sd.set("a", at::zeros({2}));
  sd.set("m", at::zeros({3}));
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"z", "a", "m"}));
  sd.set("a", at::ones({5}));  // replaced: keeps its place
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"z", "a", "m"}));
  EXPECT_EQ(sd.at("a").numel(), 5);
  EXPECT_EQ(sd.size(), 3u);
  EXPECT_EQ(sd.numel(), 1 + 5 + 3);
  EXPECT_EQ(sd.nbytes(), (1 + 5 + 3) * 4);
}

TEST(StateDict, EraseKeepsIndexConsistent) {
  StateDict sd;
  for (const char* k : {"a", "b", "c", "d"}) sd.set(k, at::full({1}, static_cast<double>(k[0])));
  EXPECT_TRUE(sd.erase("b"));
  EXPECT_FALSE(sd.erase("b"));
  EXPECT_FALSE(sd.contains("b"));
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"a", "c", "d"}));
  // Lookups after the erase must still find the right tensors.
  EXPECT_EQ(sd.at("c").item<float>(), static_cast<float>('c'));
  EXPECT_EQ(sd.at("d").item<float>(), static_cast<float>('d'));
  sd.set("b", at::zeros({1}));
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"a", "c", "d", "b"}));
  EXPECT_EQ(sd.find("zz"), nullptr);
  expect_error([&] { sd.at("zz"); }, {"'zz'"});
}

TEST(StateDict, SharesTensorsCloneCopies) {
  StateDict sd;
  at::Tensor t = at::zeros({2});
  sd.set("t", t);
  t.fill_(5);
  EXPECT_EQ(sd.at("t")[0].item<float>(), 5.0f);  // shared
  StateDict c = sd.clone();
  t.fill_(7);
  EXPECT_EQ(c.at("t")[0].item<float>(), 5.0f);  // deep copy
}

TEST(StateDict, ToConvertsOnlyFloatingTensors) {
  StateDict sd = make(1.0);
  StateDict h = sd.to(at::kCPU, at::kHalf);
  EXPECT_EQ(h.at("w").scalar_type(), at::kHalf);
  EXPECT_EQ(h.at("position_ids").scalar_type(), at::kLong);
  EXPECT_EQ(h.keys(), sd.keys());
}

TEST(StateDict, CheckSameLayoutNamesKeyAndBothShapes) {
  StateDict a = make(1.0);
  StateDict b = make(2.0);
  EXPECT_NO_THROW(fusion::check_same_layout(a, b, "pretrained", "expert 'x'"));
  b.set("w", at::zeros({3, 1}));
  expect_error([&] { fusion::check_same_layout(a, b, "pretrained", "expert 'x'"); },
               {"'w'", "pretrained", "[3]", "expert 'x'", "[3, 1]"});
  StateDict c = make(1.0);
  c.erase("b");
  expect_error([&] { fusion::check_same_layout(a, c, "pretrained", "expert 'y'"); },
               {"expert 'y'", "lacks", "'b'"});
  StateDict d = make(1.0);
  d.set("extra", at::zeros({1}));
  expect_error([&] { fusion::check_same_layout(a, d, "pretrained", "expert 'z'"); },
               {"expert 'z'", "'extra'", "pretrained lacks"});
}

TEST(StateDict, ArithmeticValuesAndIntegersUntouched) {
  StateDict a = make(3.0);
  StateDict b = make(1.0);
  b.set("position_ids", at::arange(4, at::kLong) + 100);  // must never be combined

  StateDict d = fusion::subtract(a, b);
  EXPECT_TRUE(at::allclose(d.at("w"), at::tensor({2.0f, 4.0f, 6.0f})));
  EXPECT_FLOAT_EQ(d.at("b").item<float>(), 2.0f);
  EXPECT_TRUE(at::equal(d.at("position_ids"), at::arange(4, at::kLong)));  // from a

  StateDict s = fusion::add(a, b);
  EXPECT_TRUE(at::allclose(s.at("w"), at::tensor({4.0f, 8.0f, 12.0f})));
  EXPECT_TRUE(at::equal(s.at("position_ids"), at::arange(4, at::kLong)));

  StateDict k = fusion::scale(a, 0.5);
  EXPECT_TRUE(at::allclose(k.at("w"), at::tensor({1.5f, 3.0f, 4.5f})));
  EXPECT_TRUE(at::equal(k.at("position_ids"), at::arange(4, at::kLong)));

  // Inputs are never modified.
  EXPECT_TRUE(at::allclose(a.at("w"), at::tensor({3.0f, 6.0f, 9.0f})));
}

TEST(StateDict, AddScaledInPlaceAndWeightedSum) {
  StateDict acc = make(1.0).clone();
  StateDict x = make(2.0);
  fusion::add_scaled_(acc, x, 0.25);
  EXPECT_TRUE(at::allclose(acc.at("w"), at::tensor({1.5f, 3.0f, 4.5f})));
  EXPECT_TRUE(at::equal(acc.at("position_ids"), at::arange(4, at::kLong)));

  StateDict p = make(1.0), q = make(2.0), r = make(4.0);
  r.set("position_ids", at::full({4}, 9, at::kLong));
  StateDict ws = fusion::weighted_sum({&p, &q, &r}, {0.5, 0.25, 0.125});
  // 0.5·1 + 0.25·2 + 0.125·4 = 1.5 times the base vector.
  EXPECT_TRUE(at::allclose(ws.at("w"), at::tensor({1.5f, 3.0f, 4.5f})));
  EXPECT_TRUE(at::equal(ws.at("position_ids"), at::arange(4, at::kLong)));  // from the first
  EXPECT_TRUE(at::allclose(p.at("w"), at::tensor({1.0f, 2.0f, 3.0f})));   // inputs untouched

  expect_error([&] { fusion::weighted_sum({}, {}); }, {"no state dicts"});
  expect_error([&] { fusion::weighted_sum({&p, &q}, {1.0}); }, {"2 state dicts", "1 weights"});
  StateDict bad = make(1.0);
  bad.set("w", at::zeros({2}));
  expect_error([&] { fusion::subtract(p, bad); }, {"'w'", "[3]", "[2]"});
}

TEST(StateDict, IsMergeable) {
  EXPECT_TRUE(fusion::is_mergeable(at::zeros({1}, at::kBFloat16)));
  EXPECT_TRUE(fusion::is_mergeable(at::zeros({1}, at::kDouble)));
  EXPECT_FALSE(fusion::is_mergeable(at::zeros({1}, at::kLong)));
  EXPECT_FALSE(fusion::is_mergeable(at::zeros({1}, at::kBool)));
}

}  // namespace
