// The `fusion` executable: see cli.hpp.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <cstring>

#include "startup.hpp"
#include "cli.hpp"

int main(int argc, char** argv) {
  // Where the executable's .preinit_array entry did not run (it re-executes before LibTorch's
  // constructors; see startup.hpp), the same here, at a higher price.
  if (!fusion::host::early_set_up().ran) fusion::host::reexec_with_passive_openmp(argc, argv, environ);
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
