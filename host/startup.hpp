#pragma once
// How the process runs: settings made once at the top of main, before any tensor is allocated and
// before any GEMM. Host code (not SDK): the benches that time what `fusion` does compile this file
// in too and call set_up_process() the same way.
#include <cstdint>
#include <string>

namespace fusion::host {

/// Keeps freed memory in glibc's heap for the next allocation of the same size instead of giving it
/// back to the kernel. By default glibc serves an allocation of 32 MiB or more (smaller ones too,
/// once its dynamic threshold has moved) with its own mmap and unmaps it when it is freed, so every
/// forward pass's activations fault their pages in afresh: a ViT-B/32 evaluation at batch 64 took
/// 2.4 M page faults where 0.2 M do. Sets M_MMAP_THRESHOLD and M_TRIM_THRESHOLD to 1 GiB.
/// Does nothing when the user has set glibc's malloc tunables (MALLOC_MMAP_THRESHOLD_,
/// MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_, GLIBC_TUNABLES=glibc.malloc.*), and off glibc.
/// Returns whether it changed anything.
bool keep_freed_memory();

/// The BLAS that LibTorch's float32 GEMMs run on, for reports and `fusion --version`. fusion does
/// not change OpenBLAS's kernels: where OPENBLAS_CORETYPE is set (some machines set it because older
/// OpenBLAS builds compute wrong results or crash on their CPU), it is the user's choice.
struct BlasKernels {
  bool openblas = false;  ///< the process's BLAS is OpenBLAS with run-time kernel selection
  std::string core;       ///< the kernels in use ("Haswell", "SkylakeX", ...); empty if not OpenBLAS
  std::string forced;     ///< OPENBLAS_CORETYPE, where set
  /// "OpenBLAS, Haswell kernels (OPENBLAS_CORETYPE=Haswell)", "OpenBLAS, Cooperlake kernels",
  /// or "not OpenBLAS".
  std::string describe() const;
};
BlasKernels blas_kernels();

/// LibTorch's OpenMP workers busy-wait between parallel regions by default; on few cores they steal
/// time from OpenBLAS's threads and from each other. libgomp reads OMP_WAIT_POLICY once, in its
/// constructor. For `fusion run` (the first argument that is not an option) with OMP_WAIT_POLICY
/// unset in `envp`, executes /proc/self/exe again with argv and envp plus OMP_WAIT_POLICY=PASSIVE;
/// returns only when there is nothing to do or the exec failed. Measured on the 2-core build
/// machine (task arithmetic, 4 experts of 25 M parameters): merge 5.3–5.8 s busy-waiting, 1.5–1.8 s
/// passive. Called before any library's constructor (early_set_up), the new start costs ~0.3 s
/// (loading LibTorch's libraries again); from main, after the constructors too, ~0.55 s.
void reexec_with_passive_openmp(int argc, char** argv, char** envp);

/// What the executable's .preinit_array entry (startup.cpp; glibc on Linux) did, after ld.so had
/// loaded the libraries and before any of their constructors ran: reexec_with_passive_openmp,
/// keep_freed_memory, and malloc's first 256 MiB of heap advised for transparent huge pages (on the
/// development VM a page fault costs ~12 us, and LibTorch's constructors alone took 10 K of them:
/// a start took 0.62 s, 0.47 s with huge pages).
struct EarlySetUp {
  bool ran = false;                ///< the entry ran (not off glibc or Linux: main does what it can)
  bool kept_freed_memory = false;  ///< keep_freed_memory() took effect
  uintptr_t huge_begin = 0;        ///< malloc's heap range advised for transparent huge pages
  uintptr_t huge_end = 0;          ///< (empty when none was)
};
const EarlySetUp& early_set_up();

/// At the top of main: keep_freed_memory() where early_set_up() did not run.
void set_up_process();

}  // namespace fusion::host
