// The `fusion` executable: see cli.hpp.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <cstring>

#include "startup.hpp"
#include "cli.hpp"

namespace {

// LibTorch's OpenMP workers busy-wait between parallel regions by default; on few cores they steal
// time from OpenBLAS's threads and from each other. libgomp reads OMP_WAIT_POLICY once, when it is
// loaded (before main), so setting it here is too late for this process: `fusion run` re-executes
// itself once with OMP_WAIT_POLICY=PASSIVE when the variable is unset. Measured on the 2-core build
// machine (task arithmetic, 4 experts of 25 M parameters): merge 5.3–5.8 s busy-waiting, 1.5–1.8 s
// passive. Set OMP_WAIT_POLICY yourself (to anything) to keep your choice; the re-exec costs one
// more process start (~0.3 s).
void reexec_with_passive_openmp(int argc, char** argv) {
  const char* command = nullptr;  // the first argument that is not an option
  for (int i = 1; i < argc && !command; ++i)
    if (argv[i][0] != '-') command = argv[i];
  if (!command || std::strcmp(command, "run") != 0) return;
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  if (setenv("OMP_WAIT_POLICY", "PASSIVE", 1) != 0) return;
  execv("/proc/self/exe", argv);
  // exec failed: carry on in this process, busy-waiting.
}

}  // namespace

int main(int argc, char** argv) {
  reexec_with_passive_openmp(argc, argv);
  fusion::host::set_up_process();
  const int rc = fusion::host::cli_main(argc, argv);
  // Everything fusion made is gone by now: cli_main's run has written, fsynced and renamed every
  // output, closed its files, joined its threads and torn down its process group. What a return
  // from main would still run is the static destructors of LibTorch (tearing down its operator
  // registry), of the plugins and of their libraries: 0.12-0.14 s of a 1.4 s `fusion run` on the
  // 2-core build machine, with nothing to write. Leave without them, as compilers do
  // (clang's -disable-free). A sanitizer build returns normally, so that leak checks still run.
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
#if defined(__SANITIZE_ADDRESS__)
  return rc;
#else
  std::_Exit(rc);
#endif
}
