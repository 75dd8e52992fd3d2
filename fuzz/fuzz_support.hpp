#pragma once
// Helpers shared by the libFuzzer targets: inputs as files (for parsers that take a path), a
// scratch folder, splitting one input into parts, and the check every target makes of an error.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "fusion/error.hpp"

namespace fusion::fuzz {

/// Stops the run as a finding (libFuzzer saves the input as crash-*), after a line saying why.
[[noreturn]] inline void fail(const std::string& why) {
  std::fprintf(stderr, "fuzz invariant broken: %s\n", why.c_str());
  std::fflush(stderr);
  std::abort();
}

/// fusion::Error is how every parser refuses bad input; its message must be one line.
inline void check_error(const fusion::Error& e) {
  const std::string msg = e.what();
  if (msg.empty()) fail("empty error message");
  if (msg.find('\n') != std::string::npos) fail("multi-line error message: " + msg);
}

/// An anonymous in-memory file (memfd), one per `slot`, reused from run to run; `write` replaces
/// its contents and returns a path that opens it (/proc/self/fd/N). For parsers that read a path.
class MemFile {
 public:
  explicit MemFile(const char* name) : fd_(::memfd_create(name, MFD_CLOEXEC)) {
    if (fd_ < 0) {
      std::perror("memfd_create");
      std::abort();
    }
  }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;

  std::string write(const uint8_t* data, size_t size) const {
    if (::ftruncate(fd_, 0) != 0) std::abort();
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      if (n <= 0) std::abort();
      done += static_cast<size_t>(n);
    }
    return "/proc/self/fd/" + std::to_string(fd_);
  }
  std::string write(std::string_view s) const {
    return write(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  }

 private:
  int fd_;
};

/// A private scratch folder (in /dev/shm when there is one, else $TMPDIR or /tmp), made on first
/// use and removed at exit. For parsers that need files with given names side by side.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    std::string base = "/tmp";
    if (const char* t = std::getenv("TMPDIR"); t && *t) base = t;
    if (::access("/dev/shm", W_OK) == 0) base = "/dev/shm";
    std::string tmpl = base + "/fusion-fuzz-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch_dir(), ec);
    });
    return std::filesystem::path(tmpl);
  }();
  return dir;
}

/// Writes `bytes` to `path` (replacing it).
inline void write_file(const std::filesystem::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) fail("cannot write scratch file " + path.string());
}

/// The whole content of a file of the source tree (seed data the targets are built with).
inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read " + path.string());
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// `data` cut at each occurrence of `separator`, into at most `max_parts` parts (the last part
/// keeps any further separators).
inline std::vector<std::string_view> split(std::string_view data, std::string_view separator,
                                           size_t max_parts) {
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    const size_t at = data.find(separator);
    if (at == std::string_view::npos) break;
    parts.push_back(data.substr(0, at));
    data.remove_prefix(at + separator.size());
  }
  parts.push_back(data);
  return parts;
}

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return std::string_view(reinterpret_cast<const char*>(data), size);
}

}  // namespace fusion::fuzz
