// The benchmark's baseline: read every checkpoint given, one at a time, through the SDK's loader
// (as a model pool does), keeping none. Prints the bytes read and the time taken.
//
//   fusion_bench_read_all CHECKPOINT...
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>

#include "fusion/safetensors.hpp"

int main(int argc, char** argv) {
  try {
    const auto start = std::chrono::steady_clock::now();
    int64_t bytes = 0;
    for (int i = 1; i < argc; ++i) bytes += fusion::load_safetensors(argv[i]).nbytes();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("read %d checkpoints, %.1f MB, in %.3f s\n", argc - 1, bytes / 1e6, s);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
