#include "fusion/pareto.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iomanip>
#include <limits>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>

#include "fusion/error.hpp"

namespace fusion {

namespace {
using Point = std::vector<double>;
using Points = std::vector<Point>;

bool weakly_dominates(const Point& a, const Point& b) {  // a ≥ b everywhere
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] < b[i]) return false;
  return true;
}

bool dominates(const Point& a, const Point& b) {  // a ≥ b everywhere, > somewhere
  bool strict = false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] < b[i]) return false;
    if (a[i] > b[i]) strict = true;
  }
  return strict;
}

// The non-dominated subset with duplicates removed (a duplicate adds no volume).
Points nondominated_unique(const Points& pts) {
  Points out;
  for (size_t i = 0; i < pts.size(); ++i) {
    bool keep = true;
    for (size_t j = 0; j < pts.size() && keep; ++j) {
      if (i == j) continue;
      if (dominates(pts[j], pts[i])) keep = false;
      else if (j < i && pts[j] == pts[i]) keep = false;
    }
    if (keep) out.push_back(pts[i]);
  }
  return out;
}

double box_volume(const Point& p, const Point& ref) {
  double v = 1.0;
  for (size_t i = 0; i < p.size(); ++i) v *= (p[i] - ref[i]);
  return v;
}

// 2D: sweep over points sorted by the first coordinate, descending.
double hv2(Points pts, const Point& ref) {
  std::sort(pts.begin(), pts.end(), [](const Point& a, const Point& b) { return a[0] > b[0]; });
  double vol = 0.0, best_y = ref[1];
  for (const Point& p : pts) {
    if (p[1] > best_y) {
      vol += (p[0] - ref[0]) * (p[1] - best_y);
      best_y = p[1];
    }
  }
  return vol;
}

// WFG (While, Bradstreet & Barone 2012): HV(S) = Σₖ [box(pₖ) − HV(limit set of pₖ over p_{k+1..})],
// with points sorted by the last coordinate so limit sets stay small. Exact; all points are
// strictly above the reference.
double wfg(Points pts, const Point& ref) {
  if (pts.empty()) return 0.0;
  const size_t d = ref.size();
  if (d == 1) {
    double m = ref[0];
    for (const Point& p : pts) m = std::max(m, p[0]);
    return m - ref[0];
  }
  if (d == 2) return hv2(std::move(pts), ref);
  if (pts.size() == 1) return box_volume(pts[0], ref);
  std::sort(pts.begin(), pts.end(), [](const Point& a, const Point& b) { return a.back() > b.back(); });
  double vol = 0.0;
  for (size_t k = 0; k < pts.size(); ++k) {
    Points limit;
    limit.reserve(pts.size() - k - 1);
    for (size_t j = k + 1; j < pts.size(); ++j) {
      Point q(d);
      for (size_t i = 0; i < d; ++i) q[i] = std::min(pts[k][i], pts[j][i]);
      limit.push_back(std::move(q));
    }
    vol += box_volume(pts[k], ref) - wfg(nondominated_unique(limit), ref);
  }
  return vol;
}

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

std::vector<std::vector<double>> generate_simplex_grid(int n, int m) {
  FUSION_ENSURE(n >= 2, "generate_simplex_grid: n = ", n, " (the number of tasks) must be at least 2");
  FUSION_ENSURE(m >= 2, "generate_simplex_grid: m = ", m, " (points per edge) must be at least 2");
  std::vector<std::vector<double>> grid;
  // Combinations with replacement of {0..m−1} of length n−1 in lexicographic order are the
  // non-decreasing sequences, enumerated like an odometer.
  std::vector<int> idx(static_cast<size_t>(n - 1), 0);
  while (true) {
    std::vector<int> e;
    e.reserve(static_cast<size_t>(n) + 1);
    e.push_back(0);
    e.insert(e.end(), idx.begin(), idx.end());
    e.push_back(m - 1);
    std::vector<double> point(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) point[static_cast<size_t>(i)] = static_cast<double>(e[i + 1] - e[i]) / (m - 1);
    grid.push_back(std::move(point));
    // Next non-decreasing sequence: bump the rightmost entry below m−1, reset those after it.
    int k = n - 2;
    while (k >= 0 && idx[static_cast<size_t>(k)] == m - 1) --k;
    if (k < 0) break;
    const int v = idx[static_cast<size_t>(k)] + 1;
    for (int j = k; j < n - 1; ++j) idx[static_cast<size_t>(j)] = v;
  }
  return grid;
}

std::vector<size_t> pareto_front(const std::vector<std::vector<double>>& points) {
  std::vector<size_t> out;
  for (size_t i = 0; i < points.size(); ++i) {
    bool dominated = false;
    for (size_t j = 0; j < points.size() && !dominated; ++j) {
      if (j == i) continue;
      FUSION_ENSURE(points[j].size() == points[i].size(), "pareto_front: point ", j, " has ",
                    points[j].size(), " coordinates, point ", i, " has ", points[i].size());
      dominated = dominates(points[j], points[i]);
    }
    if (!dominated) out.push_back(i);
  }
  return out;
}

double hypervolume(const std::vector<std::vector<double>>& points, const std::vector<double>& reference) {
  FUSION_ENSURE(!reference.empty(), "hypervolume: the reference point is empty");
  for (double r : reference) FUSION_ENSURE(std::isfinite(r), "hypervolume: the reference point is not finite");
  Points above;
  for (size_t i = 0; i < points.size(); ++i) {
    const Point& p = points[i];
    FUSION_ENSURE(p.size() == reference.size(), "hypervolume: point ", i, " has ", p.size(),
                  " coordinates, the reference has ", reference.size());
    bool inside = true;
    for (size_t k = 0; k < p.size(); ++k) {
      FUSION_ENSURE(!std::isnan(p[k]), "hypervolume: point ", i, " has a NaN coordinate");
      if (!(p[k] > reference[k])) inside = false;
    }
    if (!inside) continue;
    for (double v : p) FUSION_ENSURE(std::isfinite(v), "hypervolume: point ", i, " is not finite");
    above.push_back(p);
  }
  return wfg(nondominated_unique(above), reference);
}

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

}  // namespace fusion
