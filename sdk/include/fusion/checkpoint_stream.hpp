#pragma once
#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
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
  /// Reads elements [begin, end) of F32 tensor `i` of model `m` into `dst`, checked for NaN and
  /// ±Inf as floats() checks them. A copy with pread(), as `cat` reads, into the caller's buffer
  /// (which a small chunk keeps in cache): ~1.6x faster than reading through the mapping, which
  /// costs a page-table entry per 4 KiB set up and dropped again. Where `dst` lies 1-31 bytes past
  /// the file offset modulo 4 KiB, a distance at which the kernel copies several times slower on
  /// some CPUs, the bytes come through a staging buffer instead. Maps nothing. Thread-safe.
  void read(size_t m, size_t i, int64_t begin, int64_t end, float* dst) const;
  /// read() without its check for NaN and ±Inf, for a merge that finds them by its own arithmetic:
  /// θₜ − θ₀, a sum or a weighted sum of the inputs is NaN or ±Inf wherever an input is. Such a
  /// merge checks its result instead (one buffer, not one per model read): check_result(), or its
  /// own test and then check_models(). Thread-safe.
  void read_unchecked(size_t m, size_t i, int64_t begin, int64_t end, float* dst) const;
  /// Reads elements [begin, end) of F32 tensor `i` of every model again with read(), which throws
  /// at the first NaN or ±Inf, in model order, with its message; returns when there is none (a
  /// merge's NaN or ±Inf then came from finite weights, e.g. a sum that overflowed). Thread-safe.
  void check_models(size_t i, int64_t begin, int64_t end) const;
  /// check_models(i, begin, end) when `result`, the end − begin elements a merge computed from
  /// those elements of every model, holds a NaN or ±Inf. Thread-safe.
  void check_result(size_t i, int64_t begin, int64_t end, const float* result) const;
  /// Drops the pages wholly inside elements [begin, end) of tensor `i` of model `m` from the
  /// resident set (they come back from the page cache if read again). Thread-safe.
  void release(size_t m, size_t i, int64_t begin, int64_t end) const;
  /// Calls f(i, begin, end) over every F32 tensor i in pieces of at most `chunk` elements (small
  /// enough that the pieces of every model stay in cache between reading and using them), on the
  /// intra-op threads (each a contiguous run of pieces, in file order), and, once floats() has
  /// been used, releases what every model held of each piece once f has used it.
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
  friend class OutputFile;
  explicit CheckpointStream(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Where streamed merges write the models they produce (OutputFile): the host sets its run folder
/// while it runs a method whose models it will save, and an empty path otherwise (the default:
/// nothing is written as produced). Not thread-safe against a concurrent OutputFile::create.
FUSION_SDK_API void set_output_folder(const std::filesystem::path& folder);
FUSION_SDK_API std::filesystem::path output_folder();

/// A merged model written as it is produced: an unnamed file (O_TMPFILE) in output_folder(), laid
/// out byte for byte as save_safetensors(path, model, {{"format", "pt"}}) lays out the model that
/// `CheckpointStream::unflatten(flat, base)` would give, header first. A merge writes each F32
/// tensor's elements into it as it computes them (write(); the kernel is asked to start writing
/// them to disk as they come, so the disk works while the merge computes), then finish() maps the
/// file and hands out the model's tensors as views of it. When the host then saves that model
/// unchanged (save_safetensors finds every tensor at its place in such a file, and no page of the
/// mapping written to since), the save fsyncs the file and links it under its name instead of
/// writing it again; otherwise it writes as always. The file disappears with the last tensor if it
/// was never saved, and never appears half-written.
class FUSION_SDK_API OutputFile {
 public:
  /// The file for `base` (the pretrained model's parameters: every key, in its order; the F32
  /// tensors of `stream` are the merge's to write, the others are written here from `base`).
  /// nullptr when output_folder() is empty or cannot hold an unnamed file (the merge then uses
  /// CheckpointStream::flat_buffer). Throws fusion::Error when the file cannot be written.
  static std::unique_ptr<OutputFile> create(const CheckpointStream& stream, const StateDict& base);
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  /// Writes elements [begin, end) of F32 tensor `i` of the stream (a key of `base`) from `src`.
  /// Thread-safe for disjoint ranges; a range written again replaces what was written.
  void write(size_t i, int64_t begin, int64_t end, const float* src) const;
  /// The merged parameters, in `base`'s order, as copy-on-write views of the file (a tensor written
  /// to is the caller's own copy; the file does not change). Call once, after every write; throws
  /// fusion::Error when fewer bytes were written than the F32 tensors hold.
  StateDict finish();

  struct Impl;

 private:
  explicit OutputFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fusion::detail
