#include "pareto_plot.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iomanip>
#include <sstream>

#include "fusion/error.hpp"

namespace fusion::host {

namespace {

std::string quote_gnuplot(const std::string& s) {  // a gnuplot single-quoted string
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "''";
    else if (c == '\n' || c == '\r') out += ' ';
    else out += c;
  }
  return out + "'";
}

}  // namespace

void write_pareto_plot(const std::filesystem::path& svg, const std::vector<std::string>& axes,
                       const std::vector<PlotSeries>& series, const std::string& title) {
  namespace fs = std::filesystem;
  const size_t d = axes.size();
  FUSION_ENSURE(d >= 2, "write_pareto_plot: ", svg.string(), ": needs at least 2 axes, got ", d);
  for (const PlotSeries& s : series)
    for (size_t i = 0; i < s.points.size(); ++i)
      FUSION_ENSURE(s.points[i].size() == d, "write_pareto_plot: series '", s.name, "' point ", i,
                    " has ", s.points[i].size(), " coordinates, expected ", d);

  std::vector<std::pair<size_t, size_t>> panels;
  for (size_t i = 0; i < d; ++i)
    for (size_t j = i + 1; j < d; ++j) panels.emplace_back(i, j);
  // With three or more axes the legend gets a cell of its own after the panels (a legend inside the
  // first panel squeezes it); with two it sits to the right of the one plot.
  const size_t cells = d == 2 ? 1 : panels.size() + 1;
  const size_t cols = static_cast<size_t>(std::ceil(std::sqrt(static_cast<double>(cells))));
  const size_t rows = (cells + cols - 1) / cols;

  const fs::path dir = svg.has_parent_path() ? svg.parent_path() : fs::path(".");
  std::error_code ec;
  fs::create_directories(dir, ec);
  const std::string stem = "." + svg.filename().string() + ".tmp" + std::to_string(::getpid());
  const fs::path tmp_svg = dir / (stem + ".svg");
  const fs::path script = dir / (stem + ".gp");

  std::ostringstream gp;
  gp << std::setprecision(10);
  const int width = d == 2 ? 800 : static_cast<int>(std::max<size_t>(cols * 360, 640));
  const int height = d == 2 ? 480 : static_cast<int>(std::max<size_t>(rows * 300, 480));
  gp << "set terminal svg size " << width << "," << height << " noenhanced font 'sans,11' background 'white'\n";
  gp << "set output " << quote_gnuplot(tmp_svg.string()) << "\n";
  gp << "set grid\nset key outside right top vertical\n";
  // Inline data blocks, one per series: a blank-line-free block of d columns.
  for (size_t s = 0; s < series.size(); ++s) {
    gp << "$S" << s << " << EOD\n";
    for (const auto& p : series[s].points) {
      for (size_t k = 0; k < d; ++k) gp << (k ? " " : "") << p[k];
      gp << "\n";
    }
    gp << "EOD\n";
  }
  bool any_points = false;
  for (const PlotSeries& s : series) any_points = any_points || !s.points.empty();
  // A plot command over every series with points, each in its own style, its data from
  // `data(s)` ("$S<s> using x:y", or "NaN" for a legend alone); "plot NaN notitle" when none.
  auto plot_series = [&](const std::function<std::string(size_t)>& data) {
    std::ostringstream c;
    bool any = false;
    for (size_t s = 0; s < series.size(); ++s) {
      if (series[s].points.empty()) continue;
      c << (any ? ", " : "plot ") << data(s) << (series[s].joined ? " with linespoints" : " with points")
        << " pt " << (s % 12) + 1 << " ps 1.2 title " << quote_gnuplot(series[s].name);
      any = true;
    }
    c << (any ? "" : "plot NaN notitle") << "\n";
    return c.str();
  };
  auto plot_cmd = [&](size_t xi, size_t yi, bool with_key) {
    std::ostringstream c;
    c << "set xlabel " << quote_gnuplot((axes[xi])) << "\n";
    c << "set ylabel " << quote_gnuplot((axes[yi])) << "\n";
    c << (with_key ? "set key\n" : "unset key\n");
    if (!any_points) c << "set xrange [0:1]\nset yrange [0:1]\n";
    c << plot_series([&](size_t s) {
      return "$S" + std::to_string(s) + " using " + std::to_string(xi + 1) + ":" + std::to_string(yi + 1);
    });
    return c.str();
  };
  if (d == 2) {
    if (!title.empty()) gp << "set title " << quote_gnuplot((title)) << "\n";
    gp << plot_cmd(0, 1, true);
  } else {
    gp << "set multiplot layout " << rows << "," << cols;
    if (!title.empty()) gp << " title " << quote_gnuplot((title));
    gp << "\n";
    for (const auto& [xi, yi] : panels) gp << plot_cmd(xi, yi, false);
    // The legend cell: every series' entry, nothing drawn (NaN), in the panels' order and styles.
    gp << "unset border\nunset tics\nunset xlabel\nunset ylabel\nunset grid\n"
          "set xrange [0:1]\nset yrange [0:1]\nset key inside center center vertical\n";
    gp << plot_series([](size_t) { return std::string("NaN"); });
    gp << "unset multiplot\n";
  }
  gp << "set output\n";

  {
    std::ofstream out(script);
    FUSION_ENSURE(out.good(), "write_pareto_plot: cannot write ", script.string());
    out << gp.str();
  }
  const std::string cmd = "gnuplot " + quote_gnuplot(script.string()) + " >/dev/null 2>&1";
  // quote_gnuplot's single quotes are also valid shell quoting as long as the path has no quote.
  FUSION_ENSURE(script.string().find('\'') == std::string::npos,
                "write_pareto_plot: the path ", svg.string(), " contains a quote");
  const int rc = std::system(cmd.c_str());
  fs::remove(script, ec);
  const bool ok = rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0 && fs::exists(tmp_svg) &&
                  fs::file_size(tmp_svg, ec) > 0;
  if (!ok) {
    fs::remove(tmp_svg, ec);
    if (rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 127)
      FUSION_FAIL("write_pareto_plot: gnuplot not found on PATH (install gnuplot-nox) for ", svg.string());
    FUSION_FAIL("write_pareto_plot: gnuplot failed writing ", svg.string(), " (exit status ",
                (rc != -1 && WIFEXITED(rc)) ? WEXITSTATUS(rc) : rc, ")");
  }
  fs::rename(tmp_svg, svg, ec);
  if (ec) {
    fs::remove(tmp_svg, ec);
    FUSION_FAIL("write_pareto_plot: cannot rename the plot to ", svg.string());
  }
}

}  // namespace fusion::host
