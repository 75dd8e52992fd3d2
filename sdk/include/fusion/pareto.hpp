#pragma once
#include <cstddef>
#include <filesystem>
#include <string>
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

/// One named set of points in a Pareto plot.
struct FUSION_SDK_API PlotSeries {
  std::string name;                          ///< legend entry ("pwe_moe_ls", "task_arithmetic")
  std::vector<std::vector<double>> points;   ///< each of the plot's dimension
  bool joined = false;                       ///< draw a line through the points in order
};

/// Writes an SVG Pareto plot with gnuplot (`gnuplot` on PATH): for 2 axes the accuracy plane, for
/// more axes pairwise panels. `axes` names each coordinate (task names). Written atomically;
/// throws fusion::Error when gnuplot is missing or fails (callers may log and continue).
FUSION_SDK_API void write_pareto_plot(const std::filesystem::path& svg,
                                      const std::vector<std::string>& axes,
                                      const std::vector<PlotSeries>& series,
                                      const std::string& title = "");

}  // namespace fusion
