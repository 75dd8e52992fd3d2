// Internal to the SDK (not installed): a file made durable while it is written.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace fusion::detail {

/// Makes a file durable on a thread of its own while it is being written: each request() asks for
/// one fdatasync() of the whole file (requests made while one runs are served by the next). The
/// thread starts with the first request. Measured on a virtio disk (bench/README, session 10): a
/// 350 MB file's closing fsync took ~0.18 s whether or not sync_file_range() had started its
/// writeback (the host flushes what the guest wrote since the last flush), and ~0.02 s when it
/// had been flushed as it was written, for the same writing time.
///
/// A failed flush's errno is kept and returned by stop(): Linux reports a writeback error to one
/// fsync() of an open file only, so the error the thread sees would otherwise be lost to the
/// closing fsync.
class BackgroundFlush {
 public:
  /// How many bytes a writer writes between requests (a fraction of a model's flush time each).
  static constexpr uint64_t kEvery = uint64_t{32} << 20;

  explicit BackgroundFlush(int fd) : fd_(fd) {}
  BackgroundFlush(const BackgroundFlush&) = delete;
  BackgroundFlush& operator=(const BackgroundFlush&) = delete;
  ~BackgroundFlush() { stop(); }

  void request() {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    pending_ = true;
    if (!thread_.joinable()) {
      thread_ = std::thread([this] { run(); });
    } else {
      wake_.notify_one();
    }
  }

  /// Lets the flush under way finish, drops the pending one and ends the thread. Returns 0, or
  /// the errno of the first flush that failed.
  int stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      pending_ = false;
    }
    wake_.notify_one();
    if (thread_.joinable()) thread_.join();
    return error_;
  }

  /// How many flushes have finished (for tests).
  int flushes_done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      wake_.wait(lock, [this] { return pending_ || stopping_; });
      if (stopping_) return;
      pending_ = false;
      lock.unlock();
      const int rc = ::fdatasync(fd_);
      const int err = rc == 0 ? 0 : errno;
      lock.lock();
      if (err != 0 && error_ == 0) error_ = err;
      ++done_;
    }
  }

  int fd_;
  std::mutex mu_;
  std::condition_variable wake_;
  bool pending_ = false;
  bool stopping_ = false;
  int error_ = 0;  ///< under mu_ while the thread runs; read by stop() after the join
  int done_ = 0;
  std::thread thread_;
};

}  // namespace fusion::detail
