// The benchmark's baseline: read every checkpoint given, one at a time, through the `safetensors`
// model pool (as `fusion run` does: headers checked against the first checkpoint's, every weight
// checked for NaN and ±Inf as it is read), keeping none. Prints the bytes read and the time taken.
//
//   fusion_bench_read_all CHECKPOINT...      (the first is the pool's pretrained model)
#include <ATen/ATen.h>

#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "fusion/checkpoint_pool.hpp"
#include "fusion/context.hpp"

#include "startup.hpp"

int main(int argc, char** argv) {
  fusion::host::set_up_process();  // as `fusion` runs (host/startup.hpp)
  try {
    // As `fusion run` does by default ([run] threads: every core).
    at::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
    const auto start = std::chrono::steady_clock::now();
    int64_t bytes = 0;
    if (argc > 1) {
      fusion::CheckpointPoolOptions options;
      options.pretrained = argv[1];
      for (int i = 2; i < argc; ++i) options.models.emplace_back("m" + std::to_string(i - 1), argv[i]);
      fusion::CheckpointModelPool pool(options, fusion::Context());
      bytes += pool.pretrained()->parameters().nbytes();
      for (const std::string& name : pool.expert_names()) bytes += pool.load(name)->parameters().nbytes();
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("read %d checkpoints, %.1f MB, in %.3f s\n", argc - 1, bytes / 1e6, s);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  // As `fusion` leaves (host/main.cpp): without LibTorch's static destructors.
  std::fflush(nullptr);
  std::_Exit(0);
}
