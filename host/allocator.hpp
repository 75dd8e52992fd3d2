#pragma once
// How the process allocates: glibc malloc's settings, made once at start-up.
// Host code (not SDK): the benchmarks compile this file in too, so they time what `fusion` runs.

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

}  // namespace fusion::host
