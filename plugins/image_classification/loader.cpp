#include "loader.hpp"

#include <algorithm>

#include "fusion/error.hpp"

namespace fusion::image_classification {

SampleSource::SampleSource(std::shared_ptr<const Dataset> dataset, PreprocessOptions options,
                           bool keep_in_memory)
    : dataset_(std::move(dataset)), options_(options) {
  if (keep_in_memory) {
    keep_.assign(static_cast<size_t>(dataset_->size()), true);
    kept_ = dataset_->size();
    cache_.resize(static_cast<size_t>(dataset_->size()));
  }
}

SampleSource::SampleSource(std::shared_ptr<const Dataset> dataset, PreprocessOptions options,
                           const std::vector<int64_t>& keep)
    : dataset_(std::move(dataset)), options_(options) {
  if (keep.empty()) return;
  keep_.assign(static_cast<size_t>(dataset_->size()), false);
  for (int64_t i : keep) {
    FUSION_ENSURE(i >= 0 && i < dataset_->size(), "sample ", i, " to keep is out of range (", dataset_->size(),
                  " samples)");
    if (!keep_[static_cast<size_t>(i)]) ++kept_;
    keep_[static_cast<size_t>(i)] = true;
  }
  cache_.resize(static_cast<size_t>(dataset_->size()));
}

int64_t SampleSource::image_bytes() const { return options_.image_size * options_.image_size * 3; }

int64_t SampleSource::cached_bytes() const { return dataset_->size() * image_bytes(); }

std::shared_ptr<const Image> SampleSource::crop(int64_t i) const {
  const bool keep = !keep_.empty() && keep_[static_cast<size_t>(i)];
  if (keep) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (cache_[i]) return cache_[i];
    auto bad = bad_.find(i);
    if (bad != bad_.end()) throw BadImage(bad->second);
  }
  std::shared_ptr<const Image> out;
  ++decodes_;
  try {
    out = std::make_shared<const Image>(resize_center_crop(dataset_->load(i), options_.image_size));
  } catch (const BadImage& e) {
    if (keep) {
      std::lock_guard<std::mutex> lock(mutex_);
      bad_.emplace(i, e.what());
    }
    throw;
  }
  if (keep) {
    std::lock_guard<std::mutex> lock(mutex_);
    cache_[i] = out;
  }
  return out;
}

BatchLoader::BatchLoader(std::shared_ptr<const SampleSource> source, BatchIndices indices,
                         int64_t num_batches, LoaderOptions options)
    : source_(std::move(source)), indices_(std::move(indices)), num_batches_(num_batches), options_(options) {
  FUSION_ENSURE(options_.batch_size > 0, "batch size must be positive, got ", options_.batch_size);
  options_.prefetch_batches = std::max<int64_t>(options_.prefetch_batches, 1);
  for (int64_t i = 0; i < options_.num_workers; ++i) workers_.emplace_back([this] { work(); });
}

BatchLoader::~BatchLoader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  space_.notify_all();
  for (auto& t : workers_) t.join();
}

at::Tensor BatchLoader::buffer(int64_t n, int64_t s) {
  std::lock_guard<std::mutex> lock(buffers_mutex_);
  for (const at::Tensor& t : buffers_) {
    // Held only by this pool (no batch, view or autograd graph refers to it): free to overwrite.
    // Copying it out under the lock makes it busy for the other workers.
    if (t.size(0) == n && t.use_count() == 1 && t.storage().use_count() == 1) return t;
  }
  at::Tensor t = at::empty({n, 3, s, s}, at::kFloat);
  if (static_cast<int64_t>(buffers_.size()) < options_.prefetch_batches + options_.num_workers + 2) {
    buffers_.push_back(t);
  }
  return t;
}

LoadedBatch BatchLoader::build(int64_t b) {
  const std::vector<int64_t> idx = indices_(b);
  const int64_t s = source_->options().image_size;
  at::Tensor inputs = buffer(static_cast<int64_t>(idx.size()), s);
  at::Tensor labels = at::empty({static_cast<int64_t>(idx.size())}, at::kLong);
  float* in = inputs.data_ptr<float>();
  int64_t* lab = labels.data_ptr<int64_t>();
  int64_t n = 0, skipped = 0;
  std::vector<int64_t> samples;
  samples.reserve(idx.size());
  for (int64_t i : idx) {
    std::shared_ptr<const Image> crop;
    try {
      crop = source_->crop(i);
    } catch (const BadImage&) {
      if (!options_.skip_bad_images) throw;
      ++skipped;
      continue;
    }
    normalize_into(*crop, source_->options(), in + n * 3 * s * s);
    lab[n] = source_->dataset().label(i);
    samples.push_back(i);
    ++n;
  }
  LoadedBatch out;
  out.inputs = n == inputs.size(0) ? inputs : inputs.narrow(0, 0, n);
  out.labels = n == labels.size(0) ? labels : labels.narrow(0, 0, n);
  out.skipped = skipped;
  out.samples = std::move(samples);
  return out;
}

void BatchLoader::work() {
  for (;;) {
    int64_t b = 0;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      space_.wait(lock, [&] { return stop_ || next_to_build_ < next_to_deliver_ + options_.prefetch_batches; });
      if (stop_ || (num_batches_ >= 0 && next_to_build_ >= num_batches_)) return;
      b = next_to_build_++;
    }
    Slot slot;
    try {
      slot.batch = build(b);
    } catch (...) {
      slot.error = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_[b] = std::move(slot);
    }
    ready_.notify_all();
  }
}

std::optional<LoadedBatch> BatchLoader::next() {
  if (num_batches_ >= 0 && next_to_deliver_ >= num_batches_) return std::nullopt;
  if (workers_.empty()) return build(next_to_deliver_++);
  Slot slot;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    ready_.wait(lock, [&] { return done_.count(next_to_deliver_) > 0; });
    auto it = done_.find(next_to_deliver_);
    slot = std::move(it->second);
    done_.erase(it);
    ++next_to_deliver_;
  }
  space_.notify_all();
  if (slot.error) std::rethrow_exception(slot.error);
  return std::move(slot.batch);
}

namespace {
// SplitMix64 (Steele, Lea & Flood 2014): a portable, well-mixed 64-bit generator.
uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
}  // namespace

EpochOrder::EpochOrder(int64_t n, uint64_t seed) : n_(n), seed_(seed) {
  FUSION_ENSURE(n > 0, "cannot shuffle an empty split");
}

std::vector<int64_t> EpochOrder::epoch(int64_t e) const {
  std::vector<int64_t> perm(n_);
  for (int64_t i = 0; i < n_; ++i) perm[i] = i;
  uint64_t state = seed_;
  state = splitmix64(state) ^ static_cast<uint64_t>(e);
  // Fisher–Yates; the modulo bias of a 64-bit draw is below 2^-40 for any split size.
  for (int64_t i = n_ - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(splitmix64(state) % static_cast<uint64_t>(i + 1));
    std::swap(perm[i], perm[j]);
  }
  return perm;
}

int64_t EpochOrder::at(int64_t position) const {
  const int64_t e = position / n_;
  std::shared_ptr<const std::vector<int64_t>> perm;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = recent_.find(e);
    if (it != recent_.end()) perm = it->second;
  }
  if (!perm) {
    perm = std::make_shared<const std::vector<int64_t>>(epoch(e));
    std::lock_guard<std::mutex> lock(mutex_);
    recent_.emplace(e, perm);
    while (recent_.size() > 3) recent_.erase(recent_.begin());
  }
  return (*perm)[position % n_];
}

}  // namespace fusion::image_classification
