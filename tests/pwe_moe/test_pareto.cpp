// fusion/pareto.hpp: the simplex grid against the reference generator, the Pareto front and the exact
// hypervolume (hand cases and inclusion–exclusion). (The plot is the host's: host/pareto_plot.hpp.)
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "fusion/error.hpp"
#include "fusion/pareto.hpp"
#include "tiny_model.hpp"

namespace {

using Points = std::vector<std::vector<double>>;

TEST(SimplexGrid, MatchesReferenceGenerator) {
  const auto& g = pwe_test::golden().at("grid");
  for (auto [n, m, count] : {std::tuple{2, 11, 11}, {3, 11, 66}, {8, 2, 8}}) {
    const Points expected = g.at(std::to_string(n) + "," + std::to_string(m)).get<Points>();
    const Points got = fusion::generate_simplex_grid(n, m);
    ASSERT_EQ(got.size(), static_cast<size_t>(count)) << n << "," << m;
    ASSERT_EQ(got.size(), expected.size());
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i].size(), static_cast<size_t>(n));
      double sum = 0;
      for (int k = 0; k < n; ++k) {
        EXPECT_NEAR(got[i][k], expected[i][k], 1e-12) << "point " << i << " coord " << k;
        sum += got[i][k];
      }
      EXPECT_NEAR(sum, 1.0, 1e-12);
    }
  }
  // (2, 11) runs from (0, 1) to (1, 0).
  const Points g2 = fusion::generate_simplex_grid(2, 11);
  EXPECT_EQ(g2.front(), (std::vector<double>{0.0, 1.0}));
  EXPECT_EQ(g2.back(), (std::vector<double>{1.0, 0.0}));
}

TEST(SimplexGrid, RejectsBadSizes) {
  EXPECT_THROW(fusion::generate_simplex_grid(1, 11), fusion::Error);
  EXPECT_THROW(fusion::generate_simplex_grid(2, 1), fusion::Error);
}

TEST(ParetoFront, KeepsNonDominatedAndDuplicates) {
  const Points p = {{1, 3}, {2, 2}, {1, 1}, {3, 1}, {2, 2}, {0.5, 3}, {3, 0.5}};
  const auto f = fusion::pareto_front(p);
  EXPECT_EQ(f, (std::vector<size_t>{0, 1, 3, 4}));
  EXPECT_TRUE(fusion::pareto_front({}).empty());
}

TEST(Hypervolume, HandCases2D) {
  EXPECT_DOUBLE_EQ(fusion::hypervolume({{1, 3}, {2, 2}, {3, 1}}, {0, 0}), 6.0);
  EXPECT_DOUBLE_EQ(fusion::hypervolume({{0.8, 0.6}}, {0, 0}), 0.48);
  // dominated and duplicate points add nothing; points not above the reference add nothing
  EXPECT_DOUBLE_EQ(fusion::hypervolume({{1, 3}, {2, 2}, {3, 1}, {1, 1}, {2, 2}, {-1, 5}, {4, 0}}, {0, 0}), 6.0);
  EXPECT_DOUBLE_EQ(fusion::hypervolume({{1, 3}, {2, 2}}, {1, 1}), 1.0);
  EXPECT_DOUBLE_EQ(fusion::hypervolume({}, {0, 0}), 0.0);
}

TEST(Hypervolume, HandCases3D) {
  EXPECT_DOUBLE_EQ(fusion::hypervolume({{1, 2, 3}}, {0, 0, 0}), 6.0);
  EXPECT_DOUBLE_EQ(fusion::hypervolume({{2, 1, 1}, {1, 2, 1}}, {0, 0, 0}), 3.0);
  EXPECT_DOUBLE_EQ(fusion::hypervolume({{2, 1, 1}, {1, 2, 1}, {1, 1, 2}}, {0, 0, 0}), 4.0);
  EXPECT_DOUBLE_EQ(fusion::hypervolume({{2, 2, 2}, {1, 1, 1}}, {1, 1, 1}), 1.0);
}

double inclusion_exclusion(const Points& p, const std::vector<double>& ref) {
  const size_t n = p.size(), d = ref.size();
  double total = 0;
  for (uint32_t mask = 1; mask < (1u << n); ++mask) {
    std::vector<double> lo(d, std::numeric_limits<double>::infinity());
    int bits = 0;
    for (size_t i = 0; i < n; ++i)
      if (mask & (1u << i)) {
        ++bits;
        for (size_t k = 0; k < d; ++k) lo[k] = std::min(lo[k], p[i][k]);
      }
    double v = 1;
    for (size_t k = 0; k < d; ++k) v *= std::max(0.0, lo[k] - ref[k]);
    total += (bits % 2 ? 1 : -1) * v;
  }
  return total;
}

TEST(Hypervolume, MatchesInclusionExclusion) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int d : {2, 3, 4, 5}) {
    for (int trial = 0; trial < 6; ++trial) {
      Points p(10, std::vector<double>(d));
      for (auto& q : p)
        for (auto& v : q) v = u(rng);
      const std::vector<double> ref(d, trial % 2 ? 0.1 : 0.0);
      const double want = inclusion_exclusion(p, ref);
      EXPECT_NEAR(fusion::hypervolume(p, ref), want, 1e-12 * std::max(1.0, want)) << "d=" << d;
    }
  }
}

TEST(Hypervolume, ManyPointsOnAFront8D) {
  // 60 mutually non-dominated points on the positive unit sphere in 8D (the worst case for an
  // exact method; a Pareto set of T = 8 has 9 grid points plus eval_random samples).
  std::mt19937 rng(3);
  std::normal_distribution<double> n(0, 1);
  Points p(60, std::vector<double>(8));
  for (auto& q : p) {
    double s = 0;
    for (auto& v : q) s += (v = std::abs(n(rng))) * v;
    for (auto& v : q) v /= std::sqrt(s);
  }
  const double hv = fusion::hypervolume(p, std::vector<double>(8, 0.0));
  EXPECT_GT(hv, 0.0);
  EXPECT_LT(hv, 1.0);
  // adding a point that dominates the whole set gives its box
  p.push_back(std::vector<double>(8, 1.0));
  EXPECT_DOUBLE_EQ(fusion::hypervolume(p, std::vector<double>(8, 0.0)), 1.0);
}

TEST(Hypervolume, RejectsMismatchedDimensions) {
  EXPECT_THROW(fusion::hypervolume({{1, 2, 3}}, {0, 0}), fusion::Error);
  EXPECT_THROW(fusion::hypervolume({{1, NAN}}, {0, 0}), fusion::Error);
}

}  // namespace
