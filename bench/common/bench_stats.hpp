#pragma once
// What the bench programs share to summarise repeated timings.
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace fusion::bench {

/// The median of `v` (NaN when empty).
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? NAN : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// `v` as "1.234 0.987 ...", three decimals each.
inline std::string series(const std::vector<double>& v) {
  std::string out;
  char buf[32];
  for (double x : v) {
    std::snprintf(buf, sizeof(buf), "%s%.3f", out.empty() ? "" : " ", x);
    out += buf;
  }
  return out;
}

/// CPU seconds of the whole process (user + system, all threads): a rate per CPU second does not
/// depend on what else runs on the machine, unlike one per wall-clock second.
inline double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

}  // namespace fusion::bench
