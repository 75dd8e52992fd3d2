// The process set-up (early_set_up before any constructor, set_up_process): malloc keeps freed
// memory and its heap is advised for huge pages; and what the reports say of the BLAS.
#include "startup.hpp"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>

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
long resident_bytes() {
  long size = 0, resident = 0;
  std::ifstream("/proc/self/statm") >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

// The VmFlags of the mapping that holds `addr`, from /proc/self/smaps ("" if none does).
std::string vm_flags_at(uintptr_t addr) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    uintptr_t lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > line.find(' ')) {
      inside = addr >= lo && addr < hi;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return "";
}

// The first thing this test program did, before any library's constructor: the executable's
// .preinit_array entry (startup.cpp, linked in with fusion_host_core) ran.
TEST(EarlySetUp, RanBeforeAnyLibrarysConstructor) {
  EXPECT_TRUE(fusion::host::early_set_up().ran);
}

// malloc's first 256 MiB of heap are advised for transparent huge pages: the kernel marks the
// mapping "hg", and a block allocated there faults in 2 MiB at a time.
TEST(EarlySetUp, MallocsHeapIsAdvisedForHugePages) {
  if (malloc_tunables_set()) GTEST_SKIP() << "malloc's tunables are set in the environment";
  const auto& early = fusion::host::early_set_up();
  ASSERT_TRUE(early.kept_freed_memory);
  std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  std::getline(thp, modes);
  if (modes.empty()) GTEST_SKIP() << "this kernel has no transparent huge pages";
  ASSERT_GE(early.huge_end - early.huge_begin, uintptr_t{128} << 20);
  EXPECT_NE(vm_flags_at(early.huge_begin).find(" hg"), std::string::npos) << vm_flags_at(early.huge_begin);
  if (modes.find("[never]") != std::string::npos) GTEST_SKIP() << "transparent huge pages are off: " << modes;
  constexpr size_t kBytes = size_t{32} << 20;
  auto* p = static_cast<char*>(std::malloc(kBytes));
  ASSERT_NE(p, nullptr);
  const auto at = reinterpret_cast<uintptr_t>(p);
  EXPECT_TRUE(at >= early.huge_begin && at + kBytes <= early.huge_end) << "the block is outside the advised range";
  const long before = minor_faults();
  std::memset(p, 1, kBytes);
  __asm__ volatile("" : : "r"(p) : "memory");  // the stores happen: the block is not elided
  const long faults = minor_faults() - before;
  std::free(p);
  // 4 KiB pages would take 8192 faults; 2 MiB pages 16, and a few more where the kernel had none.
  EXPECT_LT(faults, 2048) << "the block came in 4 KiB pages";
}

// A freed 64 MiB block stays with the process (in the heap, for the next allocation) instead of
// going back to the kernel: glibc's default would have mmapped it and unmapped it on free.
TEST(KeepFreedMemory, AFreedBlockStaysWithTheProcess) {
  if (malloc_tunables_set()) GTEST_SKIP() << "malloc's tunables are set in the environment";
  ASSERT_TRUE(fusion::host::keep_freed_memory());
  constexpr size_t kBytes = size_t{64} << 20;
  auto* p = static_cast<char*>(std::malloc(kBytes));
  ASSERT_NE(p, nullptr);
  std::memset(p, 1, kBytes);
  __asm__ volatile("" : : "r"(p) : "memory");
  const long touched = resident_bytes();
  std::free(p);
  EXPECT_GT(resident_bytes(), touched - static_cast<long>(kBytes / 4)) << "the block went back to the kernel";
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
