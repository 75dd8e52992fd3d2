// The host's Pareto plot (gnuplot): 2 and 3 axes, a bad series refused, no temporary files left.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "fusion/error.hpp"
#include "pareto_plot.hpp"

namespace fusion::host {
namespace {

TEST(ParetoPlot, WritesSvgFor2And3Axes) {
  const auto dir = std::filesystem::temp_directory_path() / ("fusion_plot_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  PlotSeries grid{"pwe_moe_ls", {{0.9, 0.2}, {0.8, 0.5}, {0.3, 0.95}}, true};
  PlotSeries base{"task_arithmetic", {{0.6, 0.6}}, false};
  write_pareto_plot(dir / "p2.svg", {"sun_397", "dtd"}, {grid, base}, "T = 2");
  std::ifstream in(dir / "p2.svg");
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_NE(ss.str().find("<svg"), std::string::npos);
  EXPECT_NE(ss.str().find("sun_397"), std::string::npos);
  EXPECT_NE(ss.str().find("task_arithmetic"), std::string::npos);
  PlotSeries g3{"pwe", {{0.9, 0.2, 0.4}, {0.5, 0.5, 0.5}}, false};
  write_pareto_plot(dir / "p3.svg", {"a", "b", "c"}, {g3});
  EXPECT_GT(std::filesystem::file_size(dir / "p3.svg"), 1000u);
  EXPECT_THROW(write_pareto_plot(dir / "bad.svg", {"a", "b"}, {g3}), Error);
  EXPECT_FALSE(std::filesystem::exists(dir / "bad.svg"));
  // no temporary files left behind
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir)) files += e.is_regular_file();
  EXPECT_EQ(files, 2);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace fusion::host
