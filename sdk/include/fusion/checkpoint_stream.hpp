#pragma once
#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "fusion/export.hpp"
#include "fusion/model_pool.hpp"
#include "fusion/safetensors.hpp"
#include "fusion/state_dict.hpp"

namespace fusion::detail {

/// Streamed, read-only access to the float32 weights of a `safetensors` pool's checkpoints,
/// straight from their memory-mapped files, for merges that make one pass over many models at once
/// (task arithmetic, averaging, TIES): chunk by chunk, each chunk checked for NaN and ±Inf as it is
/// read (the pool's own message), and its pages dropped from the resident set once the merge has
/// used them, so a pass over N models holds none of them. In a `detail` namespace: not part of the
/// stable SDK (README, "SDK history"); in-tree methods use it, with ModelPool::load as their
/// fallback where open() says streaming does not apply.
class FUSION_SDK_API CheckpointStream {
 public:
  /// Opens the checkpoints of `models` ("pretrained" or expert names of `pool`) when streaming
  /// reads exactly what ModelPool::load would give: `pool` is the `safetensors` pool itself
  /// (CheckpointModelPool; a derived pool's make_model may change what it loads), it loads onto
  /// the CPU in float32, and every floating-point tensor of every file is F32 and 4-byte aligned.
  /// Returns nullptr otherwise. Each expert's header is checked against the pretrained model's as
  /// ModelPool::load checks it (the same fusion::Error). Reads headers only.
  static std::unique_ptr<CheckpointStream> open(ModelPool& pool, const std::vector<std::string>& models);
  ~CheckpointStream();
  CheckpointStream(const CheckpointStream&) = delete;
  CheckpointStream& operator=(const CheckpointStream&) = delete;

  /// The first model's tensors (name, dtype, shape), in its file's order; every model holds the
  /// same names and shapes.
  const std::vector<TensorInfo>& tensors() const;
  size_t num_models() const;
  /// Whether tensor `i` is F32 (the tensors floats() reads; the others are integer or bool).
  bool is_float(size_t i) const;
  /// Elements [begin, end) of F32 tensor `i` of model `m`, checked for NaN and ±Inf first
  /// (fusion::Error "<option>: <file>: tensor '<name>': F32 element <i> holds nan (weights must be
  /// finite)", as the pool's loader). Valid while the stream lives. Thread-safe.
  const float* floats(size_t m, size_t i, int64_t begin, int64_t end) const;
  /// Drops the pages wholly inside elements [begin, end) of tensor `i` of model `m` from the
  /// resident set (they come back from the page cache if read again). Thread-safe.
  void release(size_t m, size_t i, int64_t begin, int64_t end) const;
  /// Calls f(i, begin, end) over every F32 tensor i in pieces of at most `chunk` elements (small
  /// enough that the pieces of every model stay in cache between reading and using them), on the
  /// intra-op threads, and releases what every model held of each piece once f has used it.
  void for_each_chunk(const std::function<void(size_t i, int64_t begin, int64_t end)>& f,
                      int64_t chunk = 8192) const;

  /// The F32 tensors laid end to end: tensor i's first element is at flat_offset(i) of a vector of
  /// flat_numel() elements (FusionBench's flattened task vector, in this file order).
  int64_t flat_offset(size_t i) const;
  int64_t flat_numel() const;
  /// An uninitialised float32 CPU vector of flat_numel() elements, for a merge's output (advised
  /// for transparent huge pages: a model-sized buffer otherwise costs one page fault per 4 KiB).
  at::Tensor flat_buffer() const;
  /// `base`'s tensors, in its order, with every F32 tensor of tensors() replaced by its view of
  /// `flat` (shaped as in the file): a merged model's parameters from a flat output. Keys of
  /// `base` that tensors() lacks, and the non-F32 tensors, are base's own.
  StateDict unflatten(const at::Tensor& flat, const StateDict& base) const;

  struct Impl;

 private:
  explicit CheckpointStream(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fusion::detail
