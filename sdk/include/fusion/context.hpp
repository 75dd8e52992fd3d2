#pragma once
#include <ATen/ATen.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>

#include "fusion/config.hpp"
#include "fusion/export.hpp"

namespace fusion {

enum class LogLevel { Debug = 0, Info = 1, Warn = 2, Error = 3 };

/// Line-oriented logger: each message is one line on stderr ("[fusion] info: ...") and, when a run
/// directory is set, appended to run_dir/log.txt. Thread-safe.
class FUSION_SDK_API Logger {
 public:
  explicit Logger(LogLevel level = LogLevel::Info);
  ~Logger();
  void set_level(LogLevel level);
  /// Also append every message to `file` (created if needed).
  void set_file(const std::filesystem::path& file);
  void log(LogLevel level, const std::string& message);
  void debug(const std::string& m) { log(LogLevel::Debug, m); }
  void info(const std::string& m) { log(LogLevel::Info, m); }
  void warn(const std::string& m) { log(LogLevel::Warn, m); }
  void error(const std::string& m) { log(LogLevel::Error, m); }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// A progress bar for long work. On a terminal it redraws one line on stderr (carriage return);
/// in a log file (stderr not a terminal) it prints a plain line at most every 10 % or 30 s, and
/// a final line. `set_postfix` adds text such as "loss=0.31 lr=1e-2". Not thread-safe: one
/// thread advances a bar.
class FUSION_SDK_API Progress {
 public:
  Progress(std::string label, int64_t total, bool enabled = true);
  ~Progress();  ///< finishes the bar (final line) if not done
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  void advance(int64_t n = 1);
  void set(int64_t done);
  void set_postfix(std::string text);
  void finish();

 private:
  void draw(bool final);
  std::string label_;
  int64_t total_;
  int64_t done_ = 0;
  bool enabled_;
  bool tty_;
  bool finished_ = false;
  std::string postfix_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
  int64_t last_decile_ = -1;
};

/// What the host lends a component: the device and dtype tensors live on, the run's seed and a
/// generator seeded from it, a logger, progress bars, the run directory and this component's
/// checked config. Immutable once made (the host makes it from Settings; tests and tools may make
/// their own); copies share the logger and generator. Valid for the whole run; a component may keep
/// a copy. Not thread-safe for concurrent use of the generator.
class FUSION_SDK_API Context {
 public:
  /// What a context is made of. Defaults: CPU, float32, seed 42, 1 thread, progress on, a logger
  /// at Info on stderr, no run directory.
  struct Settings {
    at::Device device{at::kCPU};
    at::ScalarType dtype = at::kFloat;
    uint64_t seed = 42;
    int threads = 1;
    bool progress = true;
    std::filesystem::path run_dir;
    std::shared_ptr<Logger> logger;  ///< null: a new one
  };

  Context();
  explicit Context(Settings settings);

  at::Device device() const { return device_; }
  at::ScalarType dtype() const { return dtype_; }
  uint64_t seed() const { return seed_; }
  int threads() const { return threads_; }
  /// A CPU generator seeded with seed(); shared by copies of this context.
  at::Generator& generator() const { return *generator_; }
  Logger& log() const { return *logger_; }
  /// A new progress bar (silent when progress is disabled for the run).
  std::unique_ptr<Progress> progress(const std::string& label, int64_t total) const;
  /// The run directory (created by the host before any component runs).
  const std::filesystem::path& run_dir() const { return run_dir_; }
  /// This component's checked options.
  const Config& config() const { return config_; }

  /// A copy of this context with another component's config.
  Context with_config(Config config) const;

 private:
  at::Device device_{at::kCPU};
  at::ScalarType dtype_ = at::kFloat;
  uint64_t seed_ = 42;
  int threads_ = 1;
  bool progress_enabled_ = true;
  std::shared_ptr<at::Generator> generator_;
  std::shared_ptr<Logger> logger_;
  std::filesystem::path run_dir_;
  Config config_;
};

}  // namespace fusion
