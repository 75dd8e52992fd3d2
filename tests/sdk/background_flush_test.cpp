// detail::BackgroundFlush (sdk/src/background_flush.hpp), which makes a merged model durable while
// it is written: a request flushes on the flusher's own thread, a failed flush's error reaches
// stop() (the closing fsync would not see it again), and nothing runs without a request.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "background_flush.hpp"

namespace {

using fusion::detail::BackgroundFlush;

int threads_in_process() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/task");
  if (d == nullptr) return -1;
  while (const dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
  ::closedir(d);
  return n;
}

// Waits (up to 10 s) until the process has `n` threads: a joined thread may linger there a moment.
bool wait_for_threads(int n) {
  for (int i = 0; i < 10000 && threads_in_process() != n; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return threads_in_process() == n;
}

// Waits (up to 10 s) until `flush` has finished `n` flushes.
bool wait_for_flushes(BackgroundFlush& flush, int n) {
  for (int i = 0; i < 10000 && flush.flushes_done() < n; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return flush.flushes_done() >= n;
}

TEST(BackgroundFlush, FlushesAFileOnItsOwnThreadWhenAsked) {
  FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  const int fd = ::fileno(f);
  const std::string data(1 << 20, 'x');
  ASSERT_EQ(::write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
  const int before = threads_in_process();
  {
    BackgroundFlush flush(fd);
    flush.request();
    EXPECT_EQ(threads_in_process(), before + 1);
    ASSERT_TRUE(wait_for_flushes(flush, 1));
    flush.request();  // the same thread serves the next one
    ASSERT_TRUE(wait_for_flushes(flush, 2));
    EXPECT_EQ(threads_in_process(), before + 1);
    EXPECT_EQ(flush.stop(), 0);
    EXPECT_TRUE(wait_for_threads(before));
  }
  std::fclose(f);
}

TEST(BackgroundFlush, AFailedFlushsErrorReachesStop) {
  // fdatasync() of a pipe fails with EINVAL: an error the closing fsync of the real file would not
  // report again once the flusher had taken it.
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  {
    BackgroundFlush flush(fds[1]);
    flush.request();
    ASSERT_TRUE(wait_for_flushes(flush, 1));
    flush.request();
    ASSERT_TRUE(wait_for_flushes(flush, 2));
    EXPECT_EQ(flush.stop(), EINVAL);
    EXPECT_EQ(flush.stop(), EINVAL);  // and stays
  }
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST(BackgroundFlush, NothingRunsWithoutARequestOrAfterStop) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const int before = threads_in_process();
  {
    BackgroundFlush flush(fds[1]);
    EXPECT_EQ(threads_in_process(), before);
    EXPECT_EQ(flush.stop(), 0);  // no flush ran, so none failed
    flush.request();             // too late: ignored
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_EQ(threads_in_process(), before);
    EXPECT_EQ(flush.flushes_done(), 0);
    EXPECT_EQ(flush.stop(), 0);
  }
  ::close(fds[0]);
  ::close(fds[1]);
}

}  // namespace
