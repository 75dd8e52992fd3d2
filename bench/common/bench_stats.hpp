#pragma once
// What the bench programs share to summarise repeated timings: the median, a series, CPU time, peak RSS.
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
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
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

/// The process's peak resident set so far, in MiB.
inline double peak_rss_mib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // KiB on Linux
}

/// Wall and CPU seconds of the float32 passes ([0]) and the 16-bit passes ([1]) of a bench that times
/// both, the warm-up left out.
struct PairedTimes {
  std::vector<double> secs[2];
  double cpu_s[2] = {0, 0};
};

/// Rep `rep` of such a bench: `pass(false)` (float32) and, with `low`, `pass(true)` (16-bit), the
/// 16-bit one first on odd reps, so that a load that drifts on a shared machine falls on both alike.
/// Reps before `warmup` are run but not recorded.
template <class Pass>
void time_pair(int64_t rep, int64_t warmup, bool low, PairedTimes& t, Pass&& pass) {
  auto timed = [&](bool is_low) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = cpu_seconds();
    pass(is_low);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (rep >= warmup) {
      t.secs[is_low].push_back(s);
      t.cpu_s[is_low] += cpu_seconds() - c0;
    }
  };
  if (low && rep % 2 == 1) timed(true);
  timed(false);
  if (low && rep % 2 == 0) timed(true);
}

}  // namespace fusion::bench
