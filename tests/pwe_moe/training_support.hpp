#pragma once
// What the PWEMoE training tests share: a fresh run directory per test, a Context on it, small
// options for the blob tasks, and router checkpoints read back.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>

#include "fusion/context.hpp"
#include "fusion/safetensors.hpp"
#include "pwe_moe.hpp"

namespace pwe_test {

/// An empty folder `name` under this process's temporary folder.
inline std::filesystem::path fresh_dir(const std::string& name) {
  namespace fs = std::filesystem;
  const fs::path d = fs::temp_directory_path() / ("pwe_moe_test_" + std::to_string(::getpid())) / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

/// A context on run directory `dir`, without progress bars; `logger` null: a new one.
inline fusion::Context context(const std::filesystem::path& dir, uint64_t seed = 42,
                               std::shared_ptr<fusion::Logger> logger = nullptr) {
  fusion::Context::Settings s;
  s.run_dir = dir;
  s.seed = seed;
  s.progress = false;
  s.logger = std::move(logger);
  return fusion::Context(s);
}

/// Options for a short training on the blob tasks.
inline fusion::methods::PweMoeOptions small_options(int64_t steps = 40, int64_t save = 20) {
  fusion::methods::PweMoeOptions o;
  o.num_steps = steps;
  o.save_interval = save;
  o.batch_size = 8;
  o.lr = 5e-2;
  return o;
}

/// The router weights of a checkpoint (without the optimizer state).
inline fusion::StateDict routers_of(const std::filesystem::path& ckpt) {
  fusion::StateDict out;
  for (const auto& [k, v] : fusion::load_safetensors(ckpt))
    if (k.rfind("optimizer.", 0) != 0) out.set(k, v);
  return out;
}

/// The largest absolute difference between two state dicts with the same keys (a failure when
/// their sizes differ).
inline double max_diff(const fusion::StateDict& a, const fusion::StateDict& b) {
  double m = 0;
  EXPECT_EQ(a.size(), b.size());
  for (const auto& [k, v] : a) m = std::max(m, (v - b.at(k)).abs().max().item<double>());
  return m;
}

}  // namespace pwe_test
