#include "allocator.hpp"

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
  // The trim threshold first: with the mmap threshold fixed, glibc no longer moves either itself.
  return mallopt(M_TRIM_THRESHOLD, kGiB) == 1 && mallopt(M_MMAP_THRESHOLD, kGiB) == 1;
#else
  return false;
#endif
}

}  // namespace fusion::host
