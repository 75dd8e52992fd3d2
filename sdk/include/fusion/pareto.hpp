#pragma once
// Pareto math: the PWEMoE preference grid, the Pareto front and the exact hypervolume. (The host
// draws the Pareto plot: host/pareto_plot.hpp.)
#include <cstddef>
#include <vector>

#include "fusion/export.hpp"

namespace fusion {

/// The simplex grid of the PWEMoE reference (`generate_simplex_grid(n, m)`): for each
/// combination-with-replacement idx of {0..m−1} of length n−1, in lexicographic order,
/// e = [0] + idx + [m−1] and the point is ((e[i+1] − e[i]) / (m−1))ᵢ. (2, 11) gives 11 points from
/// (0, 1) to (1, 0); (3, 11) gives 66. Requires n ≥ 2 and m ≥ 2 (fusion::Error otherwise).
FUSION_SDK_API std::vector<std::vector<double>> generate_simplex_grid(int n, int m);

/// Indices of the points not dominated by any other (maximisation in every coordinate), in input
/// order. Duplicates are all kept.
FUSION_SDK_API std::vector<size_t> pareto_front(const std::vector<std::vector<double>>& points);

/// The exact hypervolume dominated by `points` (maximisation) and bounded below by `reference`:
/// the measure of the union of the boxes [reference, p]. Points not above the reference in every
/// coordinate contribute nothing. Any dimension (exact, exponential in the worst case; fine for the
/// tens to hundreds of points of a Pareto set).
FUSION_SDK_API double hypervolume(const std::vector<std::vector<double>>& points,
                                  const std::vector<double>& reference);

}  // namespace fusion
