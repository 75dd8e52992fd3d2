// EPO's LP against the golden cvxopt+GLPK solutions (balance and dominance modes) and its fallback.
#include <gtest/gtest.h>

#include <cmath>

#include "epo.hpp"
#include "tiny_model.hpp"

namespace {

using fusion::methods::epo_weights;

TEST(Epo, MatchesCvxoptGlpkOnRecordedCases) {
  int balance = 0, dominance = 0, failed = 0;
  for (const auto& c : pwe_test::golden().at("epo")) {
    const auto l = c.at("losses").get<std::vector<double>>();
    const auto r = c.at("r").get<std::vector<double>>();
    std::vector<double> C;
    for (const auto& row : c.at("C")) for (double v : row) C.push_back(v);
    const auto sol = epo_weights(l, r, C);
    const auto want = c.at("alpha").get<std::vector<double>>();
    EXPECT_EQ(sol.ok, c.at("ok").get<bool>());
    EXPECT_EQ(sol.mode, c.at("mode").get<std::string>());
    EXPECT_NEAR(sol.mu, c.at("mu").get<double>(), 1e-9);
    ASSERT_EQ(sol.alpha.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(sol.alpha[i], want[i], 1e-6) << "case T=" << l.size();
    balance += sol.ok && sol.mode == "balance";
    dominance += sol.ok && sol.mode == "dominance";
    failed += !sol.ok;
  }
  EXPECT_GE(balance, 10);
  EXPECT_GE(dominance, 3);
  EXPECT_EQ(failed, 1);  // the infeasible case
}

TEST(Epo, FallsBackOnBadInput) {
  const std::vector<double> r{0.2, 0.6};
  for (auto C : {std::vector<double>{NAN, 0, 0, 1}, std::vector<double>{1, 0, 0}}) {
    const auto sol = epo_weights({1.0, 2.0}, r, C);
    EXPECT_FALSE(sol.ok);
    EXPECT_FALSE(sol.error.empty());
    EXPECT_NEAR(sol.alpha[0], 0.25, 1e-12);
    EXPECT_NEAR(sol.alpha[1], 0.75, 1e-12);
  }
  EXPECT_FALSE(epo_weights({NAN, 1.0}, r, {1, 0, 0, 1}).ok);
  EXPECT_FALSE(epo_weights({-1.0, 1.0}, r, {1, 0, 0, 1}).ok);  // r ⊙ l negative
  EXPECT_FALSE(epo_weights({0.0, 0.0}, r, {1, 0, 0, 1}).ok);   // zero losses
}

TEST(Epo, SolutionIsOnTheSimplex) {
  const auto sol = epo_weights({0.5, 1.5, 1.0}, {0.2, 0.3, 0.5}, {2, 0.5, 0.1, 0.5, 1, 0.2, 0.1, 0.2, 3});
  ASSERT_TRUE(sol.ok);
  double s = 0;
  for (double a : sol.alpha) {
    EXPECT_GE(a, -1e-9);
    s += a;
  }
  EXPECT_NEAR(s, 1.0, 1e-9);
}

}  // namespace
