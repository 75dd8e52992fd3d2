#include "fusion/pareto.hpp"

#include <algorithm>
#include <cmath>

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

}  // namespace fusion
