#pragma once
// The Pareto plot of a run (pareto.svg), drawn by gnuplot. The Pareto math (front, hypervolume,
// simplex grids) is the SDK's (fusion/pareto.hpp); drawing is the host's.
#include <filesystem>
#include <string>
#include <vector>

namespace fusion::host {

/// One named set of points in a Pareto plot.
struct PlotSeries {
  std::string name;                          ///< legend entry ("pwe_moe_ls", "task_arithmetic")
  std::vector<std::vector<double>> points;   ///< each of the plot's dimension
  bool joined = false;                       ///< draw a line through the points in order
};

/// Writes an SVG Pareto plot with gnuplot (`gnuplot` on PATH): for 2 axes the accuracy plane, for
/// more axes pairwise panels. `axes` names each coordinate (task names). Written atomically;
/// throws fusion::Error when gnuplot is missing or fails (callers may log and continue).
void write_pareto_plot(const std::filesystem::path& svg, const std::vector<std::string>& axes,
                       const std::vector<PlotSeries>& series, const std::string& title = "");

}  // namespace fusion::host
