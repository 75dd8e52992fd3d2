#pragma once
// The run's communicator: rank, world size and collectives over the processes of one run
// (`fusion run --nproc N`, or a torchrun-style launcher). In one process every collective is a no-op.
#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "fusion/export.hpp"

namespace fusion {

class Context;

/// The processes ("ranks") of one run and their collectives. The host makes one per process before
/// any component is made (over LibTorch's c10d: Gloo for CPU tensors, NCCL for CUDA tensors where
/// LibTorch has it) and keeps it for the whole run; a method reaches it with communicator(ctx).
///
/// Contract of every collective: every rank calls it, in the same order, with tensors of the same
/// shape and dtype (all_gather: the same shape on every rank). Tensors may live on the context's
/// device. A collective that fails — a peer died, or did not answer within `[run] timeout_s` —
/// throws fusion::Error naming this rank and the cause; the run then ends on every rank.
/// Results are bitwise the same on every rank. Not thread-safe: one thread calls collectives.
///
/// Added in SDK 1.3 (API level 3): an interface of its own and a free accessor, so that Context's
/// layout stays as it was.
class FUSION_SDK_API Communicator {
 public:
  virtual ~Communicator();
  /// This process's rank, in [0, world_size()); rank 0 writes the run directory.
  virtual int rank() const = 0;
  /// The number of processes of the run (≥ 1).
  virtual int world_size() const = 0;
  /// Sums `tensor` over the ranks, in place.
  virtual void all_reduce_sum(at::Tensor& tensor) const = 0;
  /// Every rank's `tensor`, indexed by rank (the element at rank() is a copy of `tensor`).
  virtual std::vector<at::Tensor> all_gather(const at::Tensor& tensor) const = 0;
  /// Overwrites `tensor` on every rank with `root`'s, in place.
  virtual void broadcast(at::Tensor& tensor, int root = 0) const = 0;
  /// Returns once every rank has called it.
  virtual void barrier() const = 0;

  /// Whether this process writes the run directory (rank 0).
  bool is_main() const { return rank() == 0; }
  /// Whether the run has more than one process.
  bool distributed() const { return world_size() > 1; }
};

/// The communicator of one process: rank 0 of 1, every collective a no-op (all_gather returns
/// {tensor}).
class FUSION_SDK_API SingleProcessCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  void all_reduce_sum(at::Tensor& tensor) const override;
  std::vector<at::Tensor> all_gather(const at::Tensor& tensor) const override;
  void broadcast(at::Tensor& tensor, int root = 0) const override;
  void barrier() const override {}
};

/// The communicator of the run `ctx` belongs to: the one the host installed with
/// set_communicator, or a SingleProcessCommunicator when none was (one process, tests). Valid until
/// the next set_communicator.
FUSION_SDK_API const Communicator& communicator(const Context& ctx);

/// Installs the process's communicator (null: back to one process). For the host (and tests that
/// play several ranks); not thread-safe against communicator().
FUSION_SDK_API void set_communicator(std::shared_ptr<const Communicator> comm);

/// Which of `n` items (tasks, (model, task) pairs) rank `rank` of `world` takes: item i goes to
/// rank i mod world. Returns the indices in increasing order.
FUSION_SDK_API std::vector<int64_t> items_of_rank(int64_t n, int rank, int world);

}  // namespace fusion
