#include "startup.hpp"

#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

extern char** environ;  // NOLINT(readability-redundant-declaration): POSIX declares it nowhere

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

namespace {

EarlySetUp early;

#if defined(__GLIBC__) && defined(__linux__)
// Grows malloc's main heap by kHeapReserve at once (address space only: a block that size, freed at
// once, stays as the heap's top since the trim threshold is higher) and advises that range for
// transparent huge pages, so that what LibTorch's static initialisers allocate, and the heap's
// first hundreds of MiB after them, come in 2 MiB pages: one page fault each instead of 512.
void reserve_huge_heap() {
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  constexpr size_t kHeapReserve = size_t{256} << 20;
  const auto before = reinterpret_cast<uintptr_t>(::sbrk(0));
  void* block = std::malloc(kHeapReserve);
  __asm__ volatile("" : : "r"(block) : "memory");  // kept: a malloc freed unused may be elided
  std::free(block);
  const auto after = reinterpret_cast<uintptr_t>(::sbrk(0));
  const uintptr_t begin = (before + kHuge - 1) / kHuge * kHuge, end = after / kHuge * kHuge;
  if (end > begin && ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE) == 0) {
    early.huge_begin = begin;
    early.huge_end = end;
  }
}

// Runs from the executable's .preinit_array: after ld.so has loaded and relocated every library
// (~0.3 s of a ~0.47 s start on the development VM: LibTorch brings ~290 libraries), before any
// library's constructor (libgomp's reads OMP_WAIT_POLICY; LibTorch's build its operator registry).
// glibc sets `environ` only later, from the same envp, so it is set here first for getenv.
void early_set_up_entry(int argc, char** argv, char** envp) {
  environ = envp;
  reexec_with_passive_openmp(argc, argv, envp);
  early.ran = true;
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)  // their allocators are their own
  early.kept_freed_memory = keep_freed_memory();
  if (early.kept_freed_memory) reserve_huge_heap();
#endif
}

// Used: a static object only referenced through the section; set_up_process keeps this file linked.
[[gnu::section(".preinit_array"), gnu::used]] void (*const early_set_up_slot)(int, char**, char**) = early_set_up_entry;
#endif

}  // namespace

void reexec_with_passive_openmp(int argc, char** argv, char** envp) {
  const char* command = nullptr;  // the first argument that is not an option, as cli_main reads it
  for (int i = 1; i < argc && command == nullptr; ++i)
    if (argv[i] != nullptr && argv[i][0] != '-') command = argv[i];
  if (command == nullptr || std::strcmp(command, "run") != 0) return;
  size_t n = 0;
  for (; envp != nullptr && envp[n] != nullptr; ++n)
    if (std::strncmp(envp[n], "OMP_WAIT_POLICY=", 16) == 0) return;
  auto** env = static_cast<char**>(std::malloc((n + 2) * sizeof(char*)));
  if (env == nullptr) return;
  std::memcpy(env, envp, n * sizeof(char*));
  static char passive[] = "OMP_WAIT_POLICY=PASSIVE";
  env[n] = passive;
  env[n + 1] = nullptr;
  ::execve("/proc/self/exe", argv, env);
  std::free(env);  // exec failed: carry on in this process, busy-waiting
}

const EarlySetUp& early_set_up() { return early; }

void set_up_process() {
  if (!early.ran) keep_freed_memory();
}

}  // namespace fusion::host
