#include "startup.hpp"

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace fusion::host {

bool keep_freed_memory() {
#if defined(__GLIBC__)
  for (const char* name : {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"})
    if (std::getenv(name) != nullptr) return false;
  if (const char* t = std::getenv("GLIBC_TUNABLES"); t != nullptr && std::strstr(t, "glibc.malloc.") != nullptr)
    return false;
  constexpr int kGiB = 1 << 30;
  // Setting either also turns off glibc's dynamic threshold, which would move them again.
  return mallopt(M_TRIM_THRESHOLD, kGiB) == 1 && mallopt(M_MMAP_THRESHOLD, kGiB) == 1;
#else
  return false;
#endif
}

std::string BlasKernels::describe() const {
  if (!openblas) return "not OpenBLAS";
  std::string s = "OpenBLAS, " + core + " kernels";
  if (!forced.empty()) s += " (OPENBLAS_CORETYPE=" + forced + ")";
  return s;
}

BlasKernels blas_kernels() {
  BlasKernels k;
  // Found in the process rather than linked, so that any libblas.so.3 will do.
  using CoreName = char* (*)();
  const auto corename = reinterpret_cast<CoreName>(::dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (corename == nullptr) return k;
  k.openblas = true;
  k.core = corename();
  if (const char* f = std::getenv("OPENBLAS_CORETYPE")) k.forced = f;
  return k;
}

void set_up_process() { keep_freed_memory(); }

}  // namespace fusion::host
