#pragma once
#include <ATen/ATen.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "dataset.hpp"
#include "preprocess.hpp"

namespace fusion::image_classification {

/// A split's samples decoded and preprocessed to size × size RGB crops (resize and centre crop; the
/// normalisation to float is the loader's), each kept in memory after its first decoding when it is
/// one of the samples the source keeps (image_bytes() each: 147 KiB at 224). The crops are what is
/// costly to make; kept as 8-bit pixels they take a quarter of the float tensors' memory, and
/// normalising them again is a multiply-add per value. Thread-safe.
class SampleSource {
 public:
  /// Keeps every sample (keep_in_memory) or none.
  SampleSource(std::shared_ptr<const Dataset> dataset, PreprocessOptions options, bool keep_in_memory);
  /// Keeps the samples `keep` lists (indices into the dataset; others are decoded at every crop()).
  SampleSource(std::shared_ptr<const Dataset> dataset, PreprocessOptions options, const std::vector<int64_t>& keep);

  /// The preprocessed crop of sample i. Throws BadImage (again, for a kept sample found bad before).
  std::shared_ptr<const Image> crop(int64_t i) const;
  const Dataset& dataset() const { return *dataset_; }
  std::shared_ptr<const Dataset> dataset_ptr() const { return dataset_; }
  const PreprocessOptions& options() const { return options_; }
  int64_t size() const { return dataset_->size(); }
  /// Bytes of one kept crop: image_size² · 3.
  int64_t image_bytes() const;
  /// Bytes a fully cached split takes: size() · image_bytes().
  int64_t cached_bytes() const;
  /// Whether every sample is kept.
  bool keeps_in_memory() const { return kept_ == size(); }
  /// How many samples are kept once decoded.
  int64_t kept() const { return kept_; }
  /// Decodings made so far (decode, resize and crop of one sample; a bad image counts too): what a
  /// kept sample costs once and any other at every crop().
  int64_t decodes() const { return decodes_.load(); }

 private:
  std::shared_ptr<const Dataset> dataset_;
  PreprocessOptions options_;
  std::vector<bool> keep_;  ///< per sample; empty when none is kept
  int64_t kept_ = 0;
  mutable std::atomic<int64_t> decodes_{0};
  mutable std::mutex mutex_;
  mutable std::vector<std::shared_ptr<const Image>> cache_;
  mutable std::map<int64_t, std::string> bad_;
};

/// How a BatchLoader runs.
struct LoaderOptions {
  /// Samples per batch (the last batch of a finite pass may be smaller). Default 128.
  int64_t batch_size = 128;
  /// Background threads decoding and preprocessing; 0 decodes on the caller's thread. Default 2.
  int64_t num_workers = 2;
  /// Batches prepared ahead of the consumer at most (the bound of the queue). Default 4.
  int64_t prefetch_batches = 4;
  /// Skip undecodable images (counted in LoadedBatch::skipped) instead of throwing. Default false.
  bool skip_bad_images = false;
};

/// One batch on the CPU: inputs [n, 3, S, S] float32, labels [n] int64. `inputs` may be a buffer
/// of an earlier batch: the loader reuses one only after every tensor, view and autograd graph that
/// referred to it is gone, so holding the tensor keeps it intact.
struct LoadedBatch {
  at::Tensor inputs;
  at::Tensor labels;
  int64_t skipped = 0;  ///< bad images left out of this batch
  std::vector<int64_t> samples;  ///< the split's sample index of each row of inputs
};

/// Which samples batch b holds. Called from worker threads: must be thread-safe.
using BatchIndices = std::function<std::vector<int64_t>(int64_t batch)>;

/// Batches delivered in order by background workers that run ahead of the consumer: a bounded
/// queue of at most `prefetch_batches` finished or in-progress batches. An error in a worker
/// (a bad image, without skipping) is rethrown by next() at the batch it belongs to.
/// next() is for one consumer thread. The destructor stops and joins the workers.
class BatchLoader {
 public:
  /// `num_batches` < 0: endless.
  BatchLoader(std::shared_ptr<const SampleSource> source, BatchIndices indices, int64_t num_batches,
              LoaderOptions options);
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  /// The next batch, std::nullopt after the last one.
  std::optional<LoadedBatch> next();

 private:
  struct Slot {
    std::optional<LoadedBatch> batch;
    std::exception_ptr error;
  };
  LoadedBatch build(int64_t b);
  void work();
  // An input buffer [n, 3, s, s] no one else holds any more, reused from the last batches: fresh
  // 38 MB tensors cost a page fault per 4 KiB, as much as the preprocessing of small images.
  at::Tensor buffer(int64_t n, int64_t s);

  std::shared_ptr<const SampleSource> source_;
  BatchIndices indices_;
  int64_t num_batches_;
  LoaderOptions options_;
  std::mutex mutex_;
  std::condition_variable space_, ready_;
  std::map<int64_t, Slot> done_;
  int64_t next_to_build_ = 0;
  int64_t next_to_deliver_ = 0;
  bool stop_ = false;
  std::vector<std::thread> workers_;
  std::mutex buffers_mutex_;
  std::vector<at::Tensor> buffers_;
};

/// An endless sequence of sample indices: epoch e is a permutation of 0..n−1 drawn from (seed, e)
/// with a portable generator, so the same seed gives the same order on every platform.
/// Thread-safe.
class EpochOrder {
 public:
  EpochOrder(int64_t n, uint64_t seed);
  /// The sample at `position` of the endless sequence (epoch position / n).
  int64_t at(int64_t position) const;
  /// The permutation of epoch e.
  std::vector<int64_t> epoch(int64_t e) const;

 private:
  int64_t n_;
  uint64_t seed_;
  mutable std::mutex mutex_;
  mutable std::map<int64_t, std::shared_ptr<const std::vector<int64_t>>> recent_;
};

}  // namespace fusion::image_classification
