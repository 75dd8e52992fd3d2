// libFuzzer target for the safetensors reader: each input is written to an in-memory file (memfd)
// and opened with SafetensorsFile, then every tensor is read with read_all. A malformed input must
// end in fusion::Error (one line); anything else — a crash, a sanitizer report, another exception
// type — is a bug.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "fusion/error.hpp"
#include "fusion/safetensors.hpp"

namespace {

int memfd() {
  static const int fd = [] {
    const int f = ::memfd_create("fuzz_safetensors", MFD_CLOEXEC);
    if (f < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    return f;
  }();
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = memfd();
  if (::ftruncate(fd, 0) != 0 || (size > 0 && ::pwrite(fd, data, size, 0) != static_cast<ssize_t>(size))) {
    std::abort();
  }
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  try {
    fusion::SafetensorsFile file(path);
    const fusion::StateDict sd = file.read_all(at::kCPU, at::kFloat);
    // Invariants of an accepted file.
    if (sd.size() != file.tensors().size()) std::abort();
    uint64_t pos = 0;
    for (const auto& info : file.tensors()) {
      if (info.begin != pos || file.find(info.name) == nullptr) std::abort();
      pos = info.end;
    }
  } catch (const fusion::Error& e) {
    const std::string msg = e.what();
    if (msg.find('\n') != std::string::npos) {
      std::fprintf(stderr, "multi-line error message: %s\n", msg.c_str());
      std::abort();
    }
  }
  return 0;
}
