// Logger, Progress and Context: what the host lends every component (context.hpp).
#include "fusion/context.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <sstream>

namespace fusion {

// ---------------------------------------------------------------------------------------------
// Logger

namespace {
const char* level_name(LogLevel level) {
  switch (level) {
    case LogLevel::Debug: return "debug";
    case LogLevel::Info: return "info";
    case LogLevel::Warn: return "warning";
    case LogLevel::Error: return "error";
  }
  return "?";
}

std::string timestamp() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

// Serialises everything written to stderr by loggers and progress bars, so that a log line does
// not land in the middle of a redrawn bar.
std::mutex& stderr_mutex() {
  static std::mutex m;
  return m;
}
// Whether a TTY progress bar currently occupies the last stderr line (guarded by stderr_mutex).
bool g_bar_on_line = false;
}  // namespace

struct Logger::Impl {
  std::mutex mutex;
  LogLevel level;
  std::ofstream file;
};

Logger::Logger(LogLevel level) : impl_(std::make_unique<Impl>()) { impl_->level = level; }
Logger::~Logger() = default;

void Logger::set_level(LogLevel level) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->level = level;
}

void Logger::set_file(const std::filesystem::path& file) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  if (impl_->file.is_open()) impl_->file.close();
  impl_->file.open(file, std::ios::out | std::ios::app);
  FUSION_ENSURE(impl_->file.is_open(), "cannot open log file ", file.string(), " for writing");
}

void Logger::log(LogLevel level, const std::string& message) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  if (level < impl_->level) return;
  {
    std::lock_guard<std::mutex> out(stderr_mutex());
    if (g_bar_on_line) {
      std::fputs("\r\x1b[K", stderr);  // clear the bar; it is redrawn on its next update
      g_bar_on_line = false;
    }
    std::fprintf(stderr, "[fusion] %s: %s\n", level_name(level), message.c_str());
    std::fflush(stderr);
  }
  if (impl_->file.is_open()) {
    impl_->file << timestamp() << ' ' << level_name(level) << ": " << message << '\n';
    impl_->file.flush();
  }
}

// ---------------------------------------------------------------------------------------------
// Progress

namespace {
std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof(buf), "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>((s / 60) % 60), static_cast<long long>(s % 60));
  else
    std::snprintf(buf, sizeof(buf), "%02lld:%02lld", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  return buf;
}

std::string format_rate(double rate) {
  char buf[32];
  if (rate >= 1.0 || rate == 0.0)
    std::snprintf(buf, sizeof(buf), "%.2f it/s", rate);
  else
    std::snprintf(buf, sizeof(buf), "%.2f s/it", 1.0 / rate);
  return buf;
}
}  // namespace

Progress::Progress(std::string label, int64_t total, bool enabled)
    : label_(std::move(label)),
      total_(total),
      enabled_(enabled),
      tty_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {
  if (enabled_ && tty_) draw(false);
}

Progress::~Progress() {
  try {
    finish();
  } catch (...) {
  }
}

void Progress::advance(int64_t n) { set(done_ + n); }

void Progress::set(int64_t done) {
  if (finished_) return;
  done_ = done;
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_draw_).count();
  if (tty_) {
    if (since >= 0.1 || (total_ > 0 && done_ >= total_)) draw(false);
    return;
  }
  int64_t decile = total_ > 0 ? (done_ * 10) / total_ : -1;
  if ((total_ > 0 && decile > last_decile_ && done_ < total_) || since >= 30.0) draw(false);
}

void Progress::set_postfix(std::string text) { postfix_ = std::move(text); }

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (enabled_) draw(true);
}

void Progress::draw(bool final) {
  auto now = std::chrono::steady_clock::now();
  last_draw_ = now;
  if (total_ > 0) last_decile_ = (done_ * 10) / total_;
  double elapsed = std::chrono::duration<double>(now - start_).count();
  double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;

  std::ostringstream line;
  line << label_ << ' ';
  if (total_ > 0) {
    double frac = std::min(1.0, std::max(0.0, static_cast<double>(done_) / total_));
    if (tty_) {
      constexpr int kWidth = 24;
      int filled = static_cast<int>(frac * kWidth);
      line << '|';
      for (int i = 0; i < kWidth; ++i) line << (i < filled ? "█" : " ");
      line << "| ";
    } else {
      line << static_cast<int>(frac * 100.0) << "% ";
    }
    line << done_ << '/' << total_;
  } else {
    line << done_;
  }
  line << " [" << format_duration(elapsed);
  if (total_ > 0 && !final) {
    double eta = rate > 0 ? static_cast<double>(total_ - done_) / rate : NAN;
    line << '<' << format_duration(eta);
  }
  line << ", " << format_rate(rate) << ']';
  if (!postfix_.empty()) line << ' ' << postfix_;

  std::lock_guard<std::mutex> out(stderr_mutex());
  if (tty_) {
    std::fprintf(stderr, "\r\x1b[K%s", line.str().c_str());
    if (final) {
      std::fputc('\n', stderr);
      g_bar_on_line = false;
    } else {
      g_bar_on_line = true;
    }
  } else {
    std::fprintf(stderr, "%s\n", line.str().c_str());
  }
  std::fflush(stderr);
}

// ---------------------------------------------------------------------------------------------
// Context

Context::Context() : Context(Settings{}) {}

Context::Context(Settings s)
    : device_(s.device),
      dtype_(s.dtype),
      seed_(s.seed),
      threads_(s.threads),
      progress_enabled_(s.progress),
      generator_(std::make_shared<at::Generator>(at::make_generator<at::CPUGeneratorImpl>(s.seed))),
      logger_(s.logger ? std::move(s.logger) : std::make_shared<Logger>()),
      run_dir_(std::move(s.run_dir)) {}

std::unique_ptr<Progress> Context::progress(const std::string& label, int64_t total) const {
  return std::make_unique<Progress>(label, total, progress_enabled_);
}

Context Context::with_config(Config config) const {
  Context copy = *this;
  copy.config_ = std::move(config);
  return copy;
}

}  // namespace fusion
