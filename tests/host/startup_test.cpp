// set_up_process: malloc keeps freed memory; and what the reports say of the BLAS.
#include "startup.hpp"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace {

using fusion::host::BlasKernels;

long minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

bool malloc_tunables_set() {
  for (const char* n : {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES"})
    if (std::getenv(n)) return true;
  return false;
}

#if defined(__GLIBC__)
// A 64 MiB block freed and allocated again is served from the heap, its pages still there: touching
// it again takes (nearly) no page faults. glibc's default would unmap it and fault 16384 pages in.
TEST(KeepFreedMemory, AFreedBlockIsReusedWithoutFaultingItInAgain) {
  if (malloc_tunables_set()) GTEST_SKIP() << "malloc's tunables are set in the environment";
  ASSERT_TRUE(fusion::host::keep_freed_memory());
  constexpr size_t kBytes = size_t{64} << 20;
  auto touch = [](size_t n) {
    auto* p = static_cast<char*>(std::malloc(n));
    EXPECT_NE(p, nullptr);
    const long before = minor_faults();
    std::memset(p, 1, n);
    __asm__ volatile("" : : "r"(p) : "memory");  // the stores happen: the block is not elided
    const long faults = minor_faults() - before;
    std::free(p);
    return faults;
  };
  const long first = touch(kBytes);
  const long again = touch(kBytes);
  // With transparent huge pages always on, fresh memory may come in 2 MiB pages (32 faults): then the
  // two cases cannot be told apart by counting.
  if (first < 1000) GTEST_SKIP() << "the first touch took only " << first << " faults (huge pages?)";
  EXPECT_LT(again, 100) << "the block came back to the kernel and was faulted in again";
}

TEST(KeepFreedMemory, TheUsersSettingsWin) {
  ASSERT_EQ(setenv("MALLOC_TRIM_THRESHOLD_", "131072", 1), 0);
  EXPECT_FALSE(fusion::host::keep_freed_memory());
  unsetenv("MALLOC_TRIM_THRESHOLD_");
}
#endif

// What reports and `fusion --version` say of the BLAS: OpenBLAS's own name for its kernels, and the
// user's OPENBLAS_CORETYPE where it is set.
TEST(BlasKernels, NamesTheKernelsAndTheUsersChoice) {
  const BlasKernels k = fusion::host::blas_kernels();
  if (!k.openblas) {
    EXPECT_EQ(k.describe(), "not OpenBLAS");
    GTEST_SKIP() << "the BLAS here is not OpenBLAS";
  }
  EXPECT_FALSE(k.core.empty());
  const char* forced = std::getenv("OPENBLAS_CORETYPE");
  EXPECT_EQ(k.forced, forced ? forced : "");
  EXPECT_EQ(k.describe(), "OpenBLAS, " + k.core + " kernels" + (forced ? std::string(" (OPENBLAS_CORETYPE=") + forced + ")" : ""));
  BlasKernels f = k;
  f.forced = "Haswell";
  EXPECT_EQ(f.describe(), "OpenBLAS, " + k.core + " kernels (OPENBLAS_CORETYPE=Haswell)");
}

}  // namespace
