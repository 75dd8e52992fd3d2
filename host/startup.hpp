#pragma once
// How the process runs: settings made once at the top of main, before any tensor is allocated and
// before any GEMM. Host code (not SDK): the benches that time what `fusion` does compile this file
// in too and call set_up_process() the same way.
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

/// What `fusion` sets up at the top of main: keep_freed_memory().
void set_up_process();

}  // namespace fusion::host
