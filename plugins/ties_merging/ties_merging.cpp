#include "ties_merging.hpp"

#include <ATen/Parallel.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <optional>
#include <regex>
#include <utility>

#include "fusion/checkpoint_stream.hpp"
#include "fusion/error.hpp"
#include "fusion/merging.hpp"

namespace fusion::methods {

// ---------------------------------------------------------------------------------------------
// Options

void TiesMergingOptions::bind(Options<TiesMergingOptions>& o) {
  o("threshold", &TiesMergingOptions::threshold,
    "K: percentage of each task vector's entries kept by magnitude, over the whole model")
      .range(0.0, 100.0);
  o("merge_func", &TiesMergingOptions::merge_func, "how the sign-agreeing values are combined")
      .one_of({"sum", "mean", "max"});
  o("remove_keys", &TiesMergingOptions::remove_keys,
    "keys kept as the pretrained model's: exact names or regular expressions matching a whole key");
  o("scaling_factor", &TiesMergingOptions::scaling_factor, "λ in θ = θ₀ + λ τₘ");
  o("scaling_factors", &TiesMergingOptions::scaling_factors,
    "a λ sweep: one merged model per value, replacing scaling_factor");
}

struct TiesMerging::Matchers {
  struct Entry {
    std::string name;
    std::optional<std::regex> pattern;  // absent when the entry is not a valid regular expression
    bool matches(const std::string& key) const {
      return key == name || (pattern && std::regex_match(key, *pattern));
    }
  };
  std::vector<Entry> entries;
};

TiesMerging::TiesMerging(Options options) : options_(std::move(options)) {
  auto m = std::make_shared<Matchers>();
  for (const std::string& entry : options_.remove_keys) {
    Matchers::Entry e{entry, std::nullopt};
    try {
      e.pattern.emplace(entry, std::regex::ECMAScript);
    } catch (const std::regex_error&) {
      // Not a regular expression (e.g. "layers[0"): the entry is matched as an exact name only.
    }
    m->entries.push_back(std::move(e));
  }
  matchers_ = std::move(m);
}

bool TiesMerging::removed(const std::string& key) const {
  for (const auto& e : matchers_->entries) {
    if (e.matches(key)) return true;
  }
  return false;
}

ComponentInfo TiesMerging::info() {
  return {"ties_merging",
          "TIES-merging: trim, elect sign and disjoint merge of task vectors (FusionBench's form: each task "
          "vector flattened over the whole model, the top-K% by magnitude kept). Integer tensors (CLIP's "
          "position_ids) are left out of the flattened vector and kept as the pretrained model's: transformers "
          "keeps them out of state_dict(), so FusionBench's CLIP pipeline never counts them; over a raw state "
          "dict FusionBench would, and its cut-off would shift",
          "https://arxiv.org/abs/2306.01708", {}, Requirements().pretrained().experts(1)};
}

// ---------------------------------------------------------------------------------------------
// k-th smallest magnitude

namespace {

constexpr size_t kBins = size_t{1} << 16;

// Histogram of 16 bits of |x|'s bit pattern: the high half, or (with `prefix`) the low half of
// the values whose high half equals `prefix`. For non-negative IEEE floats the bit pattern
// orders as the value does (NaN above +inf, as torch sorts it).
std::vector<int64_t> magnitude_histogram(const std::vector<at::Tensor>& parts, bool low, uint32_t prefix) {
  std::vector<int64_t> total(kBins, 0);
  std::mutex mu;
  for (const at::Tensor& part : parts) {
    const auto* bits = reinterpret_cast<const uint32_t*>(part.data_ptr<float>());
    at::parallel_for(0, part.numel(), int64_t{1} << 20, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> local(kBins, 0);
      if (!low) {
        for (int64_t i = begin; i < end; ++i) ++local[(bits[i] & 0x7fffffffu) >> 16];
      } else {
        for (int64_t i = begin; i < end; ++i) {
          const uint32_t v = bits[i] & 0x7fffffffu;
          if ((v >> 16) == prefix) ++local[v & 0xffffu];
        }
      }
      std::lock_guard<std::mutex> lock(mu);
      for (size_t j = 0; j < kBins; ++j) total[j] += local[j];
    });
  }
  return total;
}

// The bin holding the rank-th smallest (1-based); `rank` becomes the rank within that bin.
uint32_t select_bin(const std::vector<int64_t>& hist, int64_t& rank) {
  for (uint32_t b = 0; b < kBins; ++b) {
    if (rank <= hist[b]) return b;
    rank -= hist[b];
  }
  FUSION_FAIL("kth_smallest_magnitude: rank past the end of the histogram");
}

// Order statistics of magnitudes' bit patterns held in memory (one or more arrays, taken together):
// the same radix select on the high then the low 16 bits, the high halves' histogram made once for
// every rank asked. Linear: on the streamed TIES's sample (1.4 M values a task) and its candidates,
// std::nth_element took ~10× as long. Single-threaded (its callers spread tasks over the threads).
class BitsSelect {
 public:
  using Span = std::pair<const uint32_t*, size_t>;
  explicit BitsSelect(std::vector<Span> spans) : spans_(std::move(spans)), high_(kBins, 0) {
    for (const auto& [p, n] : spans_) {
      for (size_t j = 0; j < n; ++j) ++high_[p[j] >> 16];
    }
  }
  /// The rank-th smallest value (1-based, rank in [1, size]).
  uint32_t kth(int64_t rank) const {
    const uint32_t high = select_bin(high_, rank);
    std::vector<int64_t> low(kBins, 0);
    for (const auto& [p, n] : spans_) {
      for (size_t j = 0; j < n; ++j) {
        if ((p[j] >> 16) == high) ++low[p[j] & 0xffffu];
      }
    }
    return (high << 16) | select_bin(low, rank);
  }

 private:
  std::vector<Span> spans_;
  std::vector<int64_t> high_;
};

}  // namespace

double kth_smallest_magnitude(const std::vector<at::Tensor>& parts, int64_t k) {
  int64_t n = 0;
  bool radix = true;
  for (const at::Tensor& p : parts) {
    FUSION_ENSURE(p.dim() == 1, "kth_smallest_magnitude: expected 1-D tensors, got ", p.dim(), " dimensions");
    n += p.numel();
    radix = radix && p.device().is_cpu() && p.scalar_type() == at::kFloat && p.is_contiguous();
  }
  FUSION_ENSURE(k >= 1 && k <= n, "kth_smallest_magnitude: k = ", k, " is outside [1, ", n, "]");
  if (!radix) {
    std::vector<at::Tensor> mags;
    for (const at::Tensor& p : parts) mags.push_back(p.abs());
    return std::get<0>(at::kthvalue(at::cat(mags), k)).item<double>();
  }
  int64_t rank = k;
  const uint32_t high = select_bin(magnitude_histogram(parts, false, 0), rank);
  const uint32_t low = select_bin(magnitude_histogram(parts, true, high), rank);
  const uint32_t v = (high << 16) | low;
  float out;
  std::memcpy(&out, &v, sizeof(out));
  return out;
}

double kth_smallest_magnitude(const at::Tensor& x, int64_t k) {
  return kth_smallest_magnitude(std::vector<at::Tensor>{x}, k);
}

// ---------------------------------------------------------------------------------------------
// The merge

namespace {

// The merged tensors laid end to end, as FusionBench's state_dict_to_vector (its key order does
// not matter: every step is elementwise or over the whole vector).
struct FlatLayout {
  struct Entry {
    std::string key;
    int64_t offset;
    int64_t numel;
  };
  std::vector<Entry> entries;
  int64_t numel = 0;
  at::ScalarType dtype = at::kFloat;
};

constexpr int64_t kChunk = int64_t{1} << 22;  // bounds the temporaries of the elementwise steps

template <typename F>
void for_chunks(int64_t n, F f) {
  for (int64_t b = 0; b < n; b += kChunk) f(b, std::min(kChunk, n - b));
}

// τ = θₜ − θ₀ for every tensor of the layout, as 1-D tensors in the layout's order, computed in
// place in the expert's own tensors (ModelPool::load hands over a copy we own), so a task vector
// costs no memory beyond the loaded expert.
std::vector<at::Tensor> task_vector_parts(const FlatLayout& layout, Model& expert, const StateDict& pretrained,
                                          const at::Device& device) {
  std::vector<at::Tensor> parts;
  parts.reserve(layout.entries.size());
  StateDict& params = expert.parameters();
  for (const auto& e : layout.entries) {
    at::Tensor t = params.at(e.key).to(device, layout.dtype).contiguous();
    t.sub_(pretrained.at(e.key).to(device));
    parts.push_back(t.view({-1}));
  }
  return parts;
}

// The elementwise steps. Each has a fused loop for float32 on the CPU (one pass over memory, no
// temporaries) and the same computation in ATen ops, chunked, for other devices and dtypes.

enum class MergeFunc { Sum, Mean, Max };

MergeFunc merge_func_of(const std::string& name) {
  if (name == "sum") return MergeFunc::Sum;
  if (name == "mean") return MergeFunc::Mean;
  FUSION_ENSURE(name == "max", "ties_merging: unknown merge function '", name, "'");
  return MergeFunc::Max;
}

bool fused(const at::Tensor& a) { return a.device().is_cpu() && a.scalar_type() == at::kFloat && a.is_contiguous(); }

template <typename F>
void parallel_elements(int64_t n, F f) {
  at::parallel_for(0, n, int64_t{1} << 16, f);
}

// Trim: τ̂ = τ where |τ| ≥ threshold (τ unchanged when keep_all); acc += τ̂.
void trim_accumulate(const at::Tensor& tau, double threshold, bool keep_all, at::Tensor& acc) {
  if (fused(tau) && fused(acc)) {
    const float* t = tau.data_ptr<float>();
    float* a = acc.data_ptr<float>();
    const float thr = keep_all ? 0.0f : static_cast<float>(threshold);
    parallel_elements(tau.numel(), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) a[i] += std::abs(t[i]) < thr ? 0.0f : t[i];
    });
    return;
  }
  for_chunks(tau.numel(), [&](int64_t b, int64_t n) {
    at::Tensor chunk = tau.narrow(0, b, n);
    if (!keep_all) chunk = chunk.masked_fill(chunk.abs() < threshold, 0);
    acc.narrow(0, b, n).add_(chunk);
  });
}

// Elect: sign ← sign(acc) with zeros set to sign(Σ sign(acc)).
void elect_signs(const at::Tensor& acc, at::Tensor& sign) {
  const int64_t d = acc.numel();
  double total = 0;
  if (fused(acc) && sign.device().is_cpu()) {
    const float* a = acc.data_ptr<float>();
    int8_t* s = sign.data_ptr<int8_t>();
    std::mutex mu;
    parallel_elements(d, [&](int64_t b, int64_t e) {
      int64_t local = 0;
      for (int64_t i = b; i < e; ++i) {
        s[i] = static_cast<int8_t>((a[i] > 0.0f) - (a[i] < 0.0f));
        local += s[i];
      }
      std::lock_guard<std::mutex> lock(mu);
      total += static_cast<double>(local);
    });
  } else {
    for_chunks(d, [&](int64_t b, int64_t n) {
      at::Tensor s = acc.narrow(0, b, n).sign();
      total += s.sum(at::kDouble).item<double>();
      sign.narrow(0, b, n).copy_(s);
    });
  }
  const int majority = total > 0 ? 1 : (total < 0 ? -1 : 0);
  if (majority == 0) return;
  for_chunks(d, [&](int64_t b, int64_t n) {
    at::Tensor s = sign.narrow(0, b, n);
    s.masked_fill_(s == 0, majority);
  });
}

// Disjoint merge of one task: its trimmed values that agree with the elected sign — FusionBench's
// where(s > 0, τ̂ > 0, τ̂ < 0), so where s is 0 the negative ones — combined into acc (and count).
void disjoint_merge_step(const at::Tensor& tau, double threshold, bool keep_all, const at::Tensor& sign,
                         MergeFunc merge, at::Tensor& acc, at::Tensor& count) {
  if (fused(tau) && fused(acc) && sign.device().is_cpu() &&
      (merge != MergeFunc::Mean || count.scalar_type() == at::kShort)) {
    const float* t = tau.data_ptr<float>();
    const int8_t* s = sign.data_ptr<int8_t>();
    float* a = acc.data_ptr<float>();
    int16_t* c = merge == MergeFunc::Mean ? count.data_ptr<int16_t>() : nullptr;
    const float thr = keep_all ? 0.0f : static_cast<float>(threshold);
    parallel_elements(tau.numel(), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        float v = std::abs(t[i]) < thr ? 0.0f : t[i];
        const bool agree = s[i] > 0 ? v > 0.0f : v < 0.0f;
        v = agree ? v : 0.0f;
        if (merge == MergeFunc::Max) {
          a[i] = std::max(a[i], std::abs(v));
        } else {
          a[i] += v;
          if (c != nullptr) c[i] = static_cast<int16_t>(c[i] + (v != 0.0f));
        }
      }
    });
    return;
  }
  for_chunks(tau.numel(), [&](int64_t b, int64_t n) {
    at::Tensor chunk = tau.narrow(0, b, n);
    if (!keep_all) chunk = chunk.masked_fill(chunk.abs() < threshold, 0);
    const at::Tensor s = sign.narrow(0, b, n);
    const at::Tensor agree = at::where(s > 0, chunk > 0, chunk < 0);
    chunk = chunk.masked_fill(agree.logical_not(), 0);
    at::Tensor out = acc.narrow(0, b, n);
    if (merge == MergeFunc::Max) {
      at::maximum_out(out, out, chunk.abs());
    } else {
      out.add_(chunk);
      if (merge == MergeFunc::Mean) count.narrow(0, b, n).add_(chunk != 0);
    }
  });
}

// mean: divide by the count of kept values (at least 1); max: times the elected sign.
void finish_merge(const at::Tensor& sign, const at::Tensor& count, MergeFunc merge, at::Tensor& acc) {
  if (merge == MergeFunc::Sum) return;
  for_chunks(acc.numel(), [&](int64_t b, int64_t n) {
    at::Tensor out = acc.narrow(0, b, n);
    if (merge == MergeFunc::Mean) out.div_(count.narrow(0, b, n).clamp_min(1));
    if (merge == MergeFunc::Max) out.mul_(sign.narrow(0, b, n));
  });
}

// ---------------------------------------------------------------------------------------------
// The streamed merge: two passes over the files (detail::CheckpointStream), no model held.
//
// Pass A finds each task's threshold exactly, by selection: a sample of |τₜ| (every 64th block of
// 1024 elements) brackets the k-th smallest magnitude; the pass counts, per task, the magnitudes
// below the bracket and collects those inside it, and the k-th is then the (k − below)-th smallest
// of the collected ones (BitsSelect). Should the bracket miss it (a sample far off), that
// task's threshold is found by the exact radix select over its whole task vector instead. Both
// give the bit pattern torch.kthvalue would. Pass B is trim, elect and disjoint merge fused, chunk
// by chunk: the chunk's trimmed τ̂ₜ of every task, their sum's sign, the agreeing values combined,
// θ₀ + λτₘ written out. An element whose sum is exactly 0 while some τ̂ₜ is not takes the majority
// sign sign(Σ s), known only at the end: those (rare) elements are recomputed after the pass.
//
// Both passes read with CheckpointStream::read_unchecked (pread into per-thread buffers) on every
// intra-op thread, and check what they compute instead: a NaN or ±Inf weight makes |θₜ − θ₀| (pass
// A) and the trimmed sum (pass B) NaN or ±Inf, and only then is the chunk read again with read()
// (check_models), which names it: no pass of its own over each chunk of each model. The sample reads
// with read(). The sample, and the selections (BitsSelect), are spread over the threads by task.
// Measured on bench/merge (8 experts of 87 M parameters, 2 cores): sample 0.08 s, pass A 0.44 s,
// selection 0.02 s, pass B 0.60 s, against 0.26 s for reading the nine files once in pass A's way.

// Pass A's arithmetic on one task's chunk of n elements: the magnitudes |θₜ − θ₀| as bit patterns
// (they order as the values do), how many lie below `lo`, and those within [lo, hi] copied to
// `found` (in order; capacity n). With AVX2, one pass of 8 elements at a time, the few inside taken
// by their compare mask; otherwise the same in two vectorised loops, blocks of 16 with none inside
// skipped.
struct Scan {
  uint32_t below = 0;
  uint32_t inside = 0;
  bool non_finite = false;  ///< some |τ| is NaN or ±Inf: an input is, or θₜ − θ₀ overflowed
};

constexpr uint32_t kMaxFinite = 0x7f7fffffu;  // the largest finite float's bit pattern

#if defined(__x86_64__) && defined(__GNUC__)
#define FUSION_TIES_X86 1
__attribute__((target("avx2"))) Scan scan_magnitudes_avx2(const float* y, const float* base, int64_t n,
                                                         uint32_t lo, uint32_t hi, uint32_t* found) {
  Scan r;
  const __m256i magnitude = _mm256_set1_epi32(0x7fffffff);
  const __m256i vlo = _mm256_set1_epi32(static_cast<int>(lo));
  const __m256i vhi = _mm256_set1_epi32(static_cast<int>(hi));
  const __m256i max_finite = _mm256_set1_epi32(static_cast<int>(kMaxFinite));
  // Per lane: minus the count of magnitudes ≥ lo (a compare's mask is −1), and any magnitude above
  // the largest finite one (signed compares: a magnitude's sign bit is clear).
  __m256i not_below = _mm256_setzero_si256();
  __m256i bad = _mm256_setzero_si256();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 tau = _mm256_sub_ps(_mm256_loadu_ps(y + j), _mm256_loadu_ps(base + j));
    const __m256i v = _mm256_and_si256(_mm256_castps_si256(tau), magnitude);
    // Unsigned compares: v ≥ lo ⇔ max(v, lo) = v; v ≤ hi ⇔ min(v, hi) = v.
    const __m256i ge_lo = _mm256_cmpeq_epi32(_mm256_max_epu32(v, vlo), v);
    const __m256i le_hi = _mm256_cmpeq_epi32(_mm256_min_epu32(v, vhi), v);
    not_below = _mm256_add_epi32(not_below, ge_lo);
    bad = _mm256_or_si256(bad, _mm256_cmpgt_epi32(v, max_finite));
    const __m256i inside = _mm256_and_si256(ge_lo, le_hi);
    if (!_mm256_testz_si256(inside, inside)) {  // rare: the bracket holds ~1 % of the magnitudes
      auto in = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(inside)));
      alignas(32) uint32_t lanes[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), v);
      while (in != 0) {
        found[r.inside++] = lanes[__builtin_ctz(in)];
        in &= in - 1;
      }
    }
  }
  alignas(32) int32_t counts[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(counts), not_below);
  r.below = static_cast<uint32_t>(j);
  for (int32_t c : counts) r.below += static_cast<uint32_t>(c);  // j − (magnitudes ≥ lo)
  r.non_finite = !_mm256_testz_si256(bad, bad);
  for (; j < n; ++j) {
    const float tau = y[j] - base[j];
    uint32_t v;
    std::memcpy(&v, &tau, sizeof v);
    v &= 0x7fffffffu;
    r.below += v < lo ? 1u : 0u;
    r.non_finite = r.non_finite || v > kMaxFinite;
    if (v >= lo && v <= hi) found[r.inside++] = v;
  }
  return r;
}

// scan_magnitudes_avx2 with AVX-512, 16 elements at a time and no branch: the compares give masks,
// and the magnitudes inside are compressed to the front of a register stored at found's end (16
// lanes written, at most j of `found` used before them, so never past its capacity n).
__attribute__((target("avx512f,popcnt"))) Scan scan_magnitudes_avx512(const float* y, const float* base, int64_t n,
                                                                      uint32_t lo, uint32_t hi, uint32_t* found) {
  Scan r;
  const __m512i magnitude = _mm512_set1_epi32(0x7fffffff);
  const __m512i vlo = _mm512_set1_epi32(static_cast<int>(lo));
  const __m512i vhi = _mm512_set1_epi32(static_cast<int>(hi));
  const __m512i max_finite = _mm512_set1_epi32(static_cast<int>(kMaxFinite));
  uint32_t not_below = 0;
  __mmask16 bad = 0;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 tau = _mm512_sub_ps(_mm512_loadu_ps(y + j), _mm512_loadu_ps(base + j));
    const __m512i v = _mm512_and_si512(_mm512_castps_si512(tau), magnitude);
    const __mmask16 ge_lo = _mm512_cmpge_epu32_mask(v, vlo);
    const __mmask16 inside = _mm512_mask_cmple_epu32_mask(ge_lo, v, vhi);
    bad = static_cast<__mmask16>(bad | _mm512_cmpgt_epi32_mask(v, max_finite));
    not_below += static_cast<uint32_t>(__builtin_popcount(ge_lo));
    _mm512_storeu_si512(found + r.inside, _mm512_maskz_compress_epi32(inside, v));
    r.inside += static_cast<uint32_t>(__builtin_popcount(inside));
  }
  r.below = static_cast<uint32_t>(j) - not_below;
  r.non_finite = bad != 0;
  for (; j < n; ++j) {
    const float tau = y[j] - base[j];
    uint32_t v;
    std::memcpy(&v, &tau, sizeof v);
    v &= 0x7fffffffu;
    r.below += v < lo ? 1u : 0u;
    r.non_finite = r.non_finite || v > kMaxFinite;
    if (v >= lo && v <= hi) found[r.inside++] = v;
  }
  return r;
}
#endif

Scan scan_magnitudes_generic(const float* y, const float* base, int64_t n, uint32_t lo, uint32_t hi,
                             uint32_t* found) {
  // The magnitudes go to `found` first, then those inside are moved to its front (the write
  // position never passes the read position).
  Scan r;
  uint32_t* mags = found;
  uint32_t n_inside = 0;
  uint32_t bad = 0;
  for (int64_t j = 0; j < n; ++j) {  // vectorised: the counts
    const float tau = y[j] - base[j];
    uint32_t v;
    std::memcpy(&v, &tau, sizeof v);
    v &= 0x7fffffffu;
    mags[j] = v;
    r.below += v < lo ? 1u : 0u;
    n_inside += (v >= lo && v <= hi) ? 1u : 0u;
    bad |= v > kMaxFinite ? 1u : 0u;
  }
  r.non_finite = bad != 0u;
  constexpr int64_t kBlock = 16;
  for (int64_t j0 = 0; j0 < n && r.inside < n_inside; j0 += kBlock) {
    const int64_t j1 = std::min(j0 + kBlock, n);
    uint32_t any = 0;
    for (int64_t j = j0; j < j1; ++j) any |= static_cast<uint32_t>(mags[j] >= lo && mags[j] <= hi);
    if (any == 0u) continue;
    for (int64_t j = j0; j < j1; ++j) {
      const uint32_t v = mags[j];
      if (v >= lo && v <= hi) found[r.inside++] = v;
    }
  }
  return r;
}

std::atomic<TiesKernels> kernels_chosen{TiesKernels::Best};  // ties_use_kernels

enum class Isa { Portable, Avx2, Avx512 };
// What the kernels run: the CPU's best within what ties_use_kernels allows.
Isa kernel_isa() {
#ifdef FUSION_TIES_X86
  static const bool avx2 = __builtin_cpu_supports("avx2");
  static const bool avx512 = avx2 && __builtin_cpu_supports("avx512f");
  switch (kernels_chosen.load(std::memory_order_relaxed)) {
    case TiesKernels::Best:
      return avx512 ? Isa::Avx512 : (avx2 ? Isa::Avx2 : Isa::Portable);
    case TiesKernels::Avx2:
      return avx2 ? Isa::Avx2 : Isa::Portable;
    case TiesKernels::Portable:
      break;
  }
#endif
  return Isa::Portable;
}

Scan scan_magnitudes(const float* y, const float* base, int64_t n, uint32_t lo, uint32_t hi, uint32_t* found) {
#ifdef FUSION_TIES_X86
  switch (kernel_isa()) {
    case Isa::Avx512:
      return scan_magnitudes_avx512(y, base, n, lo, hi, found);
    case Isa::Avx2:
      return scan_magnitudes_avx2(y, base, n, lo, hi, found);
    case Isa::Portable:
      break;
  }
#endif
  return scan_magnitudes_generic(y, base, n, lo, hi, found);
}

struct StreamedTies {
  const detail::CheckpointStream& stream;
  std::vector<size_t> parts;  ///< the stream's tensors merged (F32, not removed), in file order
  std::vector<bool> included;
  int64_t d = 0;
  size_t tasks = 0;

  int64_t numel(size_t i) const {
    const TensorInfo& t = stream.tensors()[i];
    return static_cast<int64_t>((t.end - t.begin) / sizeof(float));
  }
  static uint32_t magnitude_bits(float tau) {
    uint32_t v;
    std::memcpy(&v, &tau, sizeof v);
    return v & 0x7fffffffu;
  }

  // The k-th smallest |τₜ| by the exact radix select over the whole task vector (the fallback).
  float radix_threshold(size_t t, int64_t k) const {
    std::vector<at::Tensor> tau;
    for (size_t i : parts) {
      const int64_t n = numel(i);
      at::Tensor x = at::empty({n}, at::kFloat);
      const float* base = stream.floats(0, i, 0, n);
      const float* y = stream.floats(t + 1, i, 0, n);
      float* o = x.data_ptr<float>();
      for (int64_t j = 0; j < n; ++j) o[j] = y[j] - base[j];
      tau.push_back(x);
    }
    return static_cast<float>(kth_smallest_magnitude(tau, k));
  }

  mutable int fallbacks = 0;  ///< tasks whose threshold the sample's bracket missed

  std::vector<float> thresholds(int64_t k) const {
    // The sample: blocks of 1024 elements every 64 Ki elements of each part (small parts whole).
    constexpr int64_t kBlock = 1024, kStride = int64_t{64} * 1024;
    struct Bracket {
      uint32_t lo = 0, hi = 0xffffffffu;
      double share = 1.0;  ///< the sample's share inside the bracket
    };
    std::vector<Bracket> brackets(tasks);
    const double q = static_cast<double>(k) / static_cast<double>(d);
    // Each task's sample and bracket on its own (the tasks spread over the intra-op threads).
    at::parallel_for(0, static_cast<int64_t>(tasks), 1, [&](int64_t t0, int64_t t1) {
    // This thread's tasks sampled together, θ₀'s block read once for them all.
    std::vector<float> base_block(kBlock), y_block(kBlock);
    std::vector<std::vector<uint32_t>> samples(static_cast<size_t>(t1 - t0));
    for (auto& sample : samples) sample.reserve(static_cast<size_t>(d / kStride * kBlock + kBlock * parts.size()));
    int64_t start = 0;  // the part's offset in the flat vector
    for (size_t i : parts) {
      // A grid over the flat vector (every element has the same chance, whatever its tensor's
      // size): the blocks [m·kStride, m·kStride + kBlock), cut to each part.
      const int64_t n = numel(i);
      const int64_t first = (start + kStride - 1) / kStride * kStride - kStride;  // ≤ start
      start += n;
      for (int64_t g = std::max<int64_t>(first, 0); g < start; g += kStride) {
        const int64_t b = std::max<int64_t>(g - (start - n), 0);
        const int64_t e = std::min<int64_t>(g + kBlock - (start - n), n);
        if (e <= b) continue;
        stream.read(0, i, b, e, base_block.data());
        for (size_t t = static_cast<size_t>(t0); t < static_cast<size_t>(t1); ++t) {
          stream.read(t + 1, i, b, e, y_block.data());
          std::vector<uint32_t>& sample = samples[t - static_cast<size_t>(t0)];
          const size_t at = sample.size();
          sample.resize(at + static_cast<size_t>(e - b));
          for (int64_t j = 0; j < e - b; ++j) sample[at + static_cast<size_t>(j)] = magnitude_bits(y_block[j] - base_block[j]);
        }
      }
    }
    for (size_t t = static_cast<size_t>(t0); t < static_cast<size_t>(t1); ++t) {
      std::vector<uint32_t>& sample = samples[t - static_cast<size_t>(t0)];
      const double n_s = static_cast<double>(sample.size());
      const double delta = 0.004 * n_s + 8.0 * std::sqrt(n_s * q * (1.0 - q)) + 16.0;
      const double rank = q * n_s;  // 1-based rank of the estimate, as a real number
      // The sample's r-th smallest (1-based).
      const BitsSelect select({{sample.data(), sample.size()}});
      const auto at_rank = [&](double r) {
        return select.kth(static_cast<int64_t>(std::max(1.0, std::min(n_s, std::floor(r)))));
      };
      if (rank - delta >= 1.0) brackets[t].lo = at_rank(rank - delta);
      if (rank + delta <= n_s) brackets[t].hi = at_rank(rank + delta);
      brackets[t].share = std::min(1.0, (std::min(rank + delta, n_s) - std::max(rank - delta, 1.0) + 1.0) / n_s);
    }
    });

    // Pass A: per task, how many magnitudes lie below the bracket, and those inside it.
    const int threads = std::max(1, at::get_num_threads());
    const int64_t cap = std::max<int64_t>(int64_t{1} << 16, d / 16);  // candidates kept per task
    std::vector<std::vector<int64_t>> below(threads, std::vector<int64_t>(tasks, 0));
    std::vector<std::vector<std::vector<uint32_t>>> inside(threads, std::vector<std::vector<uint32_t>>(tasks));
    // Room for each thread's part of what the sample expects inside each bracket, with half as much
    // again (the threads' parts differ): reserved, not touched, so that growing seldom copies (fresh
    // memory is what a copy costs most on these machines), and 1.5× the candidates in all.
    for (auto& per_task : inside) {
      for (size_t t = 0; t < tasks; ++t) {
        const double expected = brackets[t].share * static_cast<double>(d) * 1.5 / threads + 4096.0;
        per_task[t].reserve(static_cast<size_t>(std::min(expected, static_cast<double>(cap))));
      }
    }
    constexpr int64_t kChunk = 65536;
    // Per thread: the magnitudes inside the bracket, θ₀'s chunk and θₜ's chunk.
    std::vector<std::vector<uint32_t>> scratch(threads, std::vector<uint32_t>(3 * kChunk));
    std::vector<std::atomic<int64_t>> collected(tasks);
    for (auto& c : collected) c = 0;
    stream.for_each_chunk([&](size_t i, int64_t b, int64_t e) {
      if (!included[i]) return;
      const int th = at::get_thread_num();
      float* base = reinterpret_cast<float*>(scratch[th].data() + kChunk);
      float* y = base + kChunk;
      // Read unchecked: a NaN or ±Inf in θ₀ or θₜ makes |τ| one, which the scan reports.
      stream.read_unchecked(0, i, b, e, base);
      for (size_t t = 0; t < tasks; ++t) {
        stream.read_unchecked(t + 1, i, b, e, y);
        uint32_t* found = scratch[th].data();
        const Scan r = scan_magnitudes(y, base, e - b, brackets[t].lo, brackets[t].hi, found);
        if (r.non_finite) stream.check_models(i, b, e);  // or θₜ − θ₀ overflowed
        below[th][t] += r.below;
        if (r.inside == 0) continue;
        if ((collected[t] += r.inside) > cap) {
          inside[th][t].clear();  // too many: this task falls back to the radix select
          inside[th][t].shrink_to_fit();
          continue;
        }
        inside[th][t].insert(inside[th][t].end(), found, found + r.inside);
      }
    }, kChunk);

    std::vector<float> out(tasks);
    std::vector<char> fell_back(tasks, 0);
    // Per task (spread over the threads): the k-th smallest among those collected, or the radix select.
    at::parallel_for(0, static_cast<int64_t>(tasks), 1, [&](int64_t t0, int64_t t1) {
    for (size_t t = static_cast<size_t>(t0); t < static_cast<size_t>(t1); ++t) {
      int64_t n_below = 0;
      std::vector<BitsSelect::Span> all;
      int64_t n_inside = 0;
      for (int th = 0; th < threads; ++th) {
        n_below += below[th][t];
        all.emplace_back(inside[th][t].data(), inside[th][t].size());
        n_inside += static_cast<int64_t>(inside[th][t].size());
      }
      const int64_t rank = k - n_below;  // 1-based within the bracket
      if (collected[t] <= cap && rank >= 1 && rank <= n_inside) {
        const uint32_t bits = BitsSelect(std::move(all)).kth(rank);
        std::memcpy(&out[t], &bits, sizeof(float));
      } else {
        out[t] = radix_threshold(t, k);
        fell_back[t] = 1;
      }
    }
    });
    for (char f : fell_back) fallbacks += f;
    return out;
  }
};

// One element's disjoint merge of the trimmed values v[t*stride] given the elected sign s
// (FusionBench's where(s > 0, τ̂ > 0, τ̂ < 0)).
inline float merge_element(const float* v, int64_t stride, size_t tasks, int s, MergeFunc merge) {
  float acc = 0.0f;
  int count = 0;
  for (size_t t = 0; t < tasks; ++t) {
    const float x = v[static_cast<int64_t>(t) * stride];
    const bool agree = s > 0 ? x > 0.0f : x < 0.0f;
    const float kept = agree ? x : 0.0f;
    if (merge == MergeFunc::Max) {
      acc = std::max(acc, std::abs(kept));
    } else {
      acc += kept;
      count += kept != 0.0f;
    }
  }
  if (merge == MergeFunc::Mean) return acc / static_cast<float>(std::max(count, 1));
  if (merge == MergeFunc::Max) return acc * static_cast<float>(s);
  return acc;
}

// Pass B's arithmetic on n elements (merge_chunk: merge_block in blocks, or merge_chunk_avx2 on a
// CPU with AVX2), each step a loop over the elements that the compiler vectorises. Buffers, each
// `stride` floats, from `v`: θₜ of each task (τ̂ₜ on return), the sum
// (then the sign bit an agreeing value has), the non-zero mask (non-zero where some τ̂ₜ is), the
// elected signs, the merged τₘ and the counts. `base` is θ₀; thr_bits holds the thresholds' bits.
struct ChunkResult {
  int64_t signs;       ///< Σ of the elected signs
  bool any_undecided;  ///< an element whose sum is 0 while some τ̂ₜ is not
  bool non_finite;     ///< some τₜ is NaN or ±Inf (an input is, or θₜ − θ₀ overflowed)
  /// The result of this part and `other` together.
  void add(const ChunkResult& other) {
    signs += other.signs;
    any_undecided = any_undecided || other.any_undecided;
    non_finite = non_finite || other.non_finite;
  }
};

inline ChunkResult merge_block(float* v, const float* base, const uint32_t* thr_bits,
                                                              size_t tasks, int64_t n, int64_t stride, MergeFunc merge) {
  for (size_t t = 0; t < tasks; ++t) {
    // τ̂ₜ = θₜ − θ₀ where |τ| ≥ threshold, else 0, in place: |τ| < threshold compared as bit
    // patterns (they order as the values do for non-negative floats), integer masks.
    float* vt = v + static_cast<int64_t>(t) * stride;
    const uint32_t thr = thr_bits[t];
    for (int64_t j = 0; j < n; ++j) {
      const float tau = vt[j] - base[j];
      uint32_t bits;
      std::memcpy(&bits, &tau, sizeof bits);
      bits &= 0u - static_cast<uint32_t>((bits & 0x7fffffffu) >= thr);
      std::memcpy(&vt[j], &bits, sizeof bits);
    }
  }
  float* sum = v + static_cast<int64_t>(tasks) * stride;
  float* nonzero = sum + stride;
  float* sign = nonzero + stride;
  float* acc = sign + stride;
  float* count = acc + stride;
  auto* nz = reinterpret_cast<uint32_t*>(nonzero);
  std::fill(sum, sum + n, 0.0f);
  std::fill(nz, nz + n, 0u);
  for (size_t t = 0; t < tasks; ++t) {
    const float* vt = v + static_cast<int64_t>(t) * stride;
    for (int64_t j = 0; j < n; ++j) sum[j] += vt[j];  // in task order, as FusionBench's sum
    const auto* vb = reinterpret_cast<const uint32_t*>(vt);
    for (int64_t j = 0; j < n; ++j) nz[j] |= vb[j] & 0x7fffffffu;
  }
  // The signs and their sum in 32-bit integers, and whether any element is undecided (a
  // float-to-int64 sum and a branch per element would not vectorise).
  // A NaN or ±Inf τₜ is kept by any threshold, so the sum is NaN or ±Inf where one is.
  int32_t signs32 = 0;
  uint32_t any_undecided = 0, bad = 0;
  for (int64_t j = 0; j < n; ++j) {
    const int32_t sj = static_cast<int32_t>(sum[j] > 0.0f) - static_cast<int32_t>(sum[j] < 0.0f);
    sign[j] = static_cast<float>(sj);
    signs32 += sj;
    any_undecided |= static_cast<uint32_t>(sj == 0) & static_cast<uint32_t>(nz[j] != 0u);
    uint32_t sum_bits;
    std::memcpy(&sum_bits, &sum[j], sizeof sum_bits);
    bad |= static_cast<uint32_t>((sum_bits & 0x7fffffffu) > kMaxFinite);
  }
  // agree = s > 0 ? τ̂ > 0 : τ̂ < 0: τ̂ non-zero and its sign bit that of "s ≤ 0". `want` (the sum's
  // buffer, no longer needed) holds the sign bit an agreeing value has.
  auto* want = reinterpret_cast<uint32_t*>(sum);
  for (int64_t j = 0; j < n; ++j) want[j] = sign[j] > 0.0f ? 0u : 0x80000000u;
  auto* cnt = reinterpret_cast<uint32_t*>(count);
  auto* ab = reinterpret_cast<uint32_t*>(acc);
  std::fill(acc, acc + n, 0.0f);
  std::fill(cnt, cnt + n, 0u);
  for (size_t t = 0; t < tasks; ++t) {
    const auto* vb = reinterpret_cast<const uint32_t*>(v + static_cast<int64_t>(t) * stride);
    if (merge == MergeFunc::Max) {
      for (int64_t j = 0; j < n; ++j) {  // magnitudes compared as bit patterns
        const uint32_t agree = static_cast<uint32_t>((vb[j] & 0x7fffffffu) != 0u) &
                               static_cast<uint32_t>((vb[j] & 0x80000000u) == want[j]);
        const uint32_t mag = vb[j] & 0x7fffffffu & (0u - agree);
        ab[j] = ab[j] > mag ? ab[j] : mag;
      }
    } else {
      for (int64_t j = 0; j < n; ++j) {
        const uint32_t agree = static_cast<uint32_t>((vb[j] & 0x7fffffffu) != 0u) &
                               static_cast<uint32_t>((vb[j] & 0x80000000u) == want[j]);
        const uint32_t kept = vb[j] & (0u - agree);
        float k;
        std::memcpy(&k, &kept, sizeof k);
        acc[j] += k;
        cnt[j] += agree;
      }
    }
  }
  if (merge == MergeFunc::Mean) {
    for (int64_t j = 0; j < n; ++j) acc[j] /= static_cast<float>(std::max(cnt[j], 1u));
  } else if (merge == MergeFunc::Max) {
    for (int64_t j = 0; j < n; ++j) acc[j] *= sign[j];
  }
  return {signs32, any_undecided != 0u, bad != 0u};
}

#if defined(__x86_64__) && defined(__GNUC__)
// merge_block with AVX2, 8 elements at a time, every task's value of them in registers: the sum,
// the mask, the sign and the merge each stored once (merge_block's loops, vectorised by the
// compiler, store the sum and the mask once per task and were bound by those stores). The same
// float operations in the same order per element, so the same bits; the tail goes to merge_block.
__attribute__((target("avx2"))) ChunkResult merge_chunk_avx2(float* v, const float* base, const uint32_t* thr_bits,
                                                             size_t tasks, int64_t n, int64_t stride,
                                                             MergeFunc merge) {
  float* nonzero = v + static_cast<int64_t>(tasks + 1) * stride;
  float* sign = nonzero + stride;
  float* acc = sign + stride;
  const __m256i magnitude = _mm256_set1_epi32(0x7fffffff);
  const __m256i sign_bit = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i one = _mm256_set1_epi32(1);
  const __m256 zero = _mm256_setzero_ps();
  const __m256i max_finite = _mm256_set1_epi32(static_cast<int>(kMaxFinite));
  __m256i bad = _mm256_setzero_si256();
  __m256i signs = _mm256_setzero_si256();
  __m256i undecided = _mm256_setzero_si256();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 b = _mm256_loadu_ps(base + j);
    __m256 sum = _mm256_setzero_ps();
    __m256i nz = _mm256_setzero_si256();
    for (size_t t = 0; t < tasks; ++t) {
      float* vt = v + static_cast<int64_t>(t) * stride + j;
      const __m256i bits = _mm256_castps_si256(_mm256_sub_ps(_mm256_loadu_ps(vt), b));
      const __m256i mag = _mm256_and_si256(bits, magnitude);
      const __m256i thr = _mm256_set1_epi32(static_cast<int>(thr_bits[t]));
      const __m256i keep = _mm256_cmpeq_epi32(_mm256_max_epu32(mag, thr), mag);  // |τ| ≥ threshold
      const __m256i trimmed = _mm256_and_si256(bits, keep);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(vt), trimmed);
      sum = _mm256_add_ps(sum, _mm256_castsi256_ps(trimmed));
      nz = _mm256_or_si256(nz, _mm256_and_si256(trimmed, magnitude));
    }
    // A NaN or ±Inf τₜ is kept by any threshold, so the sum is NaN or ±Inf where one is.
    bad = _mm256_or_si256(bad, _mm256_cmpgt_epi32(_mm256_and_si256(_mm256_castps_si256(sum), magnitude), max_finite));
    const __m256i gt = _mm256_castps_si256(_mm256_cmp_ps(sum, zero, _CMP_GT_OQ));
    const __m256i lt = _mm256_castps_si256(_mm256_cmp_ps(sum, zero, _CMP_LT_OQ));
    const __m256i s = _mm256_sub_epi32(_mm256_and_si256(gt, one), _mm256_and_si256(lt, one));
    signs = _mm256_add_epi32(signs, s);
    const __m256i nz_set = _mm256_andnot_si256(_mm256_cmpeq_epi32(nz, _mm256_setzero_si256()), _mm256_set1_epi32(-1));
    undecided = _mm256_or_si256(undecided, _mm256_and_si256(_mm256_cmpeq_epi32(s, _mm256_setzero_si256()), nz_set));
    const __m256 s_f = _mm256_cvtepi32_ps(s);
    _mm256_storeu_ps(sign + j, s_f);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(nonzero + j), nz);
    const __m256i want = _mm256_andnot_si256(gt, sign_bit);  // the sign bit an agreeing value has
    __m256 a = _mm256_setzero_ps();
    __m256i a_bits = _mm256_setzero_si256();
    __m256i count = _mm256_setzero_si256();
    for (size_t t = 0; t < tasks; ++t) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + static_cast<int64_t>(t) * stride + j));
      const __m256i x_mag = _mm256_and_si256(x, magnitude);
      const __m256i agree = _mm256_andnot_si256(_mm256_cmpeq_epi32(x_mag, _mm256_setzero_si256()),
                                                _mm256_cmpeq_epi32(_mm256_and_si256(x, sign_bit), want));
      if (merge == MergeFunc::Max) {
        a_bits = _mm256_max_epu32(a_bits, _mm256_and_si256(x_mag, agree));
      } else {
        a = _mm256_add_ps(a, _mm256_castsi256_ps(_mm256_and_si256(x, agree)));
        count = _mm256_add_epi32(count, _mm256_and_si256(agree, one));
      }
    }
    if (merge == MergeFunc::Mean) {
      a = _mm256_div_ps(a, _mm256_cvtepi32_ps(_mm256_max_epu32(count, one)));
    } else if (merge == MergeFunc::Max) {
      a = _mm256_mul_ps(_mm256_castsi256_ps(a_bits), s_f);
    }
    _mm256_storeu_ps(acc + j, a);
  }
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), signs);
  ChunkResult r{0, _mm256_movemask_ps(_mm256_castsi256_ps(undecided)) != 0, !_mm256_testz_si256(bad, bad)};
  for (int32_t x : lanes) r.signs += x;
  if (j < n) r.add(merge_block(v + j, base + j, thr_bits, tasks, n - j, stride, merge));
  return r;
}

// merge_chunk_avx2 with AVX-512, 16 elements at a time, the compares in mask registers: the same
// float operations in the same order per element (a value left out is added as +0, as there), so
// the same bits; the tail goes to merge_block.
__attribute__((target("avx512f"))) ChunkResult merge_chunk_avx512(float* v, const float* base, const uint32_t* thr_bits,
                                                                  size_t tasks, int64_t n, int64_t stride,
                                                                  MergeFunc merge) {
  float* nonzero = v + static_cast<int64_t>(tasks + 1) * stride;
  float* sign = nonzero + stride;
  float* acc = sign + stride;
  const __m512i magnitude = _mm512_set1_epi32(0x7fffffff);
  const __m512i sign_bit = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  const __m512i one = _mm512_set1_epi32(1);
  const __m512 zero = _mm512_setzero_ps();
  const __m512i max_finite = _mm512_set1_epi32(static_cast<int>(kMaxFinite));
  __mmask16 bad = 0, undecided = 0;
  __m512i signs = _mm512_setzero_si512();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 b = _mm512_loadu_ps(base + j);
    __m512 sum = _mm512_setzero_ps();
    __m512i nz = _mm512_setzero_si512();
    for (size_t t = 0; t < tasks; ++t) {
      float* vt = v + static_cast<int64_t>(t) * stride + j;
      const __m512i bits = _mm512_castps_si512(_mm512_sub_ps(_mm512_loadu_ps(vt), b));
      const __m512i mag = _mm512_and_si512(bits, magnitude);
      const __mmask16 keep = _mm512_cmpge_epu32_mask(mag, _mm512_set1_epi32(static_cast<int>(thr_bits[t])));
      const __m512i trimmed = _mm512_maskz_mov_epi32(keep, bits);
      _mm512_storeu_si512(vt, trimmed);
      sum = _mm512_add_ps(sum, _mm512_castsi512_ps(trimmed));
      nz = _mm512_or_si512(nz, _mm512_maskz_mov_epi32(keep, mag));
    }
    // A NaN or ±Inf τₜ is kept by any threshold, so the sum is NaN or ±Inf where one is.
    bad = static_cast<__mmask16>(bad | _mm512_cmpgt_epi32_mask(_mm512_and_si512(_mm512_castps_si512(sum), magnitude), max_finite));
    const __mmask16 gt = _mm512_cmp_ps_mask(sum, zero, _CMP_GT_OQ);
    const __mmask16 lt = _mm512_cmp_ps_mask(sum, zero, _CMP_LT_OQ);
    const __m512i s = _mm512_sub_epi32(_mm512_maskz_mov_epi32(gt, one), _mm512_maskz_mov_epi32(lt, one));
    signs = _mm512_add_epi32(signs, s);
    undecided = static_cast<__mmask16>(undecided | (_mm512_test_epi32_mask(nz, nz) & static_cast<__mmask16>(~(gt | lt))));
    const __m512 s_f = _mm512_cvtepi32_ps(s);
    _mm512_storeu_ps(sign + j, s_f);
    _mm512_storeu_si512(nonzero + j, nz);
    const __m512i want = _mm512_maskz_mov_epi32(static_cast<__mmask16>(~gt), sign_bit);  // an agreeing value's sign bit
    __m512 a = _mm512_setzero_ps();
    __m512i a_bits = _mm512_setzero_si512();
    __m512i count = _mm512_setzero_si512();
    for (size_t t = 0; t < tasks; ++t) {
      const __m512i x = _mm512_loadu_si512(v + static_cast<int64_t>(t) * stride + j);
      const __mmask16 agree = _mm512_mask_cmpeq_epi32_mask(_mm512_test_epi32_mask(x, magnitude),
                                                           _mm512_and_si512(x, sign_bit), want);
      if (merge == MergeFunc::Max) {
        a_bits = _mm512_max_epu32(a_bits, _mm512_maskz_and_epi32(agree, x, magnitude));
      } else {
        a = _mm512_add_ps(a, _mm512_castsi512_ps(_mm512_maskz_mov_epi32(agree, x)));
        count = _mm512_mask_add_epi32(count, agree, count, one);
      }
    }
    if (merge == MergeFunc::Mean) {
      a = _mm512_div_ps(a, _mm512_cvtepi32_ps(_mm512_max_epu32(count, one)));
    } else if (merge == MergeFunc::Max) {
      a = _mm512_mul_ps(_mm512_castsi512_ps(a_bits), s_f);
    }
    _mm512_storeu_ps(acc + j, a);
  }
  ChunkResult r{_mm512_reduce_add_epi32(signs), undecided != 0, bad != 0};
  if (j < n) r.add(merge_block(v + j, base + j, thr_bits, tasks, n - j, stride, merge));
  return r;
}
#endif

ChunkResult merge_chunk(float* v, const float* base, const uint32_t* thr_bits, size_t tasks, int64_t n,
                        int64_t stride, MergeFunc merge) {
#ifdef FUSION_TIES_X86
  switch (kernel_isa()) {
    case Isa::Avx512:
      return merge_chunk_avx512(v, base, thr_bits, tasks, n, stride, merge);
    case Isa::Avx2:
      return merge_chunk_avx2(v, base, thr_bits, tasks, n, stride, merge);
    case Isa::Portable:
      break;
  }
#endif
  // In blocks of 1024 elements, so that the block of every buffer (~60 KB for 8 tasks) stays in
  // the core's L1/L2 cache through merge_block's loops; the elements are independent.
  constexpr int64_t kBlock = 1024;
  ChunkResult r{0, false, false};
  for (int64_t b = 0; b < n; b += kBlock) {
    r.add(merge_block(v + b, base + b, thr_bits, tasks, std::min(kBlock, n - b), stride, merge));
  }
  return r;
}

}  // namespace

void ties_use_kernels(TiesKernels kernels) { kernels_chosen = kernels; }
void ties_use_portable_kernels(bool portable) { ties_use_kernels(portable ? TiesKernels::Portable : TiesKernels::Best); }

Result TiesMerging::run(ModelPool& models, TaskPool* /*tasks*/, const Context& ctx) {
  const std::vector<double> lambdas =
      scaling_factors_of(options_.scaling_factor, options_.scaling_factors.value_or(std::vector<double>{}));
  const MergeFunc merge = merge_func_of(options_.merge_func);
  const std::vector<std::string> names = models.expert_names();
  if (ctx.device().is_cpu()) {
    std::vector<std::string> all{"pretrained"};
    all.insert(all.end(), names.begin(), names.end());
    if (std::shared_ptr<const detail::CheckpointStream> stream = detail::CheckpointStream::open(models, all)) {
      return run_streamed(models, ctx, lambdas, std::move(stream));
    }
  }
  const ConstModelPtr pretrained = models.pretrained();
  const StateDict& base = pretrained->parameters();
  const at::Device device = ctx.device();

  FlatLayout layout;
  bool first = true;
  std::vector<std::string> removed_keys;
  for (const auto& [key, tensor] : base) {
    if (!is_mergeable(tensor)) continue;
    if (removed(key)) {
      removed_keys.push_back(key);
      continue;
    }
    layout.entries.push_back({key, layout.numel, tensor.numel()});
    layout.numel += tensor.numel();
    const at::ScalarType t = accumulation_dtype(tensor.scalar_type());
    layout.dtype = first ? t : at::promote_types(layout.dtype, t);
    first = false;
  }
  const std::string remove_keys = "method." + option_name(&Options::remove_keys);
  FUSION_ENSURE(layout.numel > 0, "ties_merging: no floating-point tensor is left to merge (", remove_keys,
                " removes them all)");
  for (const auto& entry : matchers_->entries) {
    const bool used = std::any_of(removed_keys.begin(), removed_keys.end(),
                                  [&](const std::string& key) { return entry.matches(key); });
    if (!used) ctx.log().warn("ties_merging: " + remove_keys + " entry '" + entry.name + "' matches no floating-point key");
  }

  const int64_t d = layout.numel;
  // FusionBench's topk_values_mask: k = d − int(d · K/100); keep |τ| ≥ the k-th smallest |τ|.
  const int64_t k = d - static_cast<int64_t>(static_cast<double>(d) * (options_.threshold / 100.0));
  const bool keep_all = k < 1;  // threshold 100: nothing is trimmed
  const auto load = [&](const std::string& name) {
    ModelPtr expert = models.load(name);
    FUSION_ENSURE(expert != nullptr, "the model pool returned nothing for expert '", name, "'");
    check_same_layout(base, expert->parameters(), "pretrained", "expert '" + name + "'");
    return task_vector_parts(layout, *expert, base, device);
  };
  // Runs f(part, offset) over the parts of a task vector; offset is the part's place in the layout.
  const auto for_parts = [&](const std::vector<at::Tensor>& parts, auto f) {
    for (size_t i = 0; i < parts.size(); ++i) f(parts[i], layout.entries[i].offset);
  };

  // Pass 1: each task's trim threshold, and the trimmed sum Σₜ τ̂ₜ that elects the signs.
  auto progress = ctx.progress("ties_merging", static_cast<int64_t>(2 * names.size()));
  const auto flat = at::TensorOptions().dtype(layout.dtype).device(device);
  at::Tensor acc = at::zeros({d}, flat);
  std::vector<double> thresholds;
  nlohmann::json threshold_info = nlohmann::json::object();
  for (const std::string& name : names) {
    const std::vector<at::Tensor> tau = load(name);
    const double threshold = keep_all ? 0.0 : kth_smallest_magnitude(tau, k);
    thresholds.push_back(threshold);
    threshold_info[name] = threshold;
    for_parts(tau, [&](const at::Tensor& part, int64_t offset) {
      at::Tensor out = acc.narrow(0, offset, part.numel());
      trim_accumulate(part, threshold, keep_all, out);
    });
    progress->advance();
  }

  // Elect: s = sign(Σ τ̂), zeros set to the majority sign(Σ s). Kept as int8; acc is then reused
  // as the merged task vector.
  at::Tensor sign = at::empty({d}, at::TensorOptions().dtype(at::kChar).device(device));
  elect_signs(acc, sign);
  acc.zero_();
  at::Tensor count;
  if (merge == MergeFunc::Mean) {
    count = at::zeros({d}, at::TensorOptions()
                               .dtype(names.size() < 32767 ? at::kShort : at::kInt)
                               .device(device));
  }

  // Pass 2: disjoint merge of the sign-agreeing trimmed values.
  for (size_t t = 0; t < names.size(); ++t) {
    const std::vector<at::Tensor> tau = load(names[t]);
    for_parts(tau, [&](const at::Tensor& part, int64_t offset) {
      const int64_t n = part.numel();
      at::Tensor out = acc.narrow(0, offset, n);
      at::Tensor counts = count.defined() ? count.narrow(0, offset, n) : at::Tensor();
      disjoint_merge_step(part, thresholds[t], keep_all, sign.narrow(0, offset, n), merge, out, counts);
    });
    progress->advance();
  }
  finish_merge(sign, count, merge, acc);
  progress->finish();
  sign = at::Tensor();
  count = at::Tensor();

  // τₘ as views into the flat vector, shaped as the pretrained tensors; θ = θ₀ + λ τₘ.
  StateDict merged_tv;
  for (const auto& e : layout.entries) {
    merged_tv.set(e.key, acc.narrow(0, e.offset, e.numel).view(base.at(e.key).sizes()));
  }
  acc = at::Tensor();
  Result result;
  result.info = {{"num_experts", names.size()},
                 {option_name(&Options::threshold), options_.threshold},
                 {option_name(&Options::merge_func), options_.merge_func},
                 {"merged_numel", d},
                 {"trim_thresholds", threshold_info},
                 {"removed_keys", removed_keys},
                 {option_name(&Options::scaling_factors), lambdas}};
  add_scaled_results(result, pretrained, std::move(merged_tv), lambdas);
  return result;
}

Result TiesMerging::run_streamed(ModelPool& models, const Context& ctx, const std::vector<double>& lambdas,
                                 std::shared_ptr<const detail::CheckpointStream> stream) const {
  const MergeFunc merge = merge_func_of(options_.merge_func);
  const std::vector<std::string> names = models.expert_names();
  StreamedTies ties{*stream, {}, {}, 0, names.size()};
  const std::vector<TensorInfo>& tensors = stream->tensors();
  std::vector<std::string> removed_keys;
  ties.included.assign(tensors.size(), false);
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!stream->is_float(i)) continue;  // integer and bool tensors: see TiesMerging's doc
    if (removed(tensors[i].name)) {
      removed_keys.push_back(tensors[i].name);
      continue;
    }
    ties.included[i] = true;
    ties.parts.push_back(i);
    ties.d += ties.numel(i);
  }
  const std::string remove_keys = "method." + option_name(&Options::remove_keys);
  FUSION_ENSURE(ties.d > 0, "ties_merging: no floating-point tensor is left to merge (", remove_keys,
                " removes them all)");
  for (const auto& entry : matchers_->entries) {
    const bool used = std::any_of(removed_keys.begin(), removed_keys.end(),
                                  [&](const std::string& key) { return entry.matches(key); });
    if (!used) ctx.log().warn("ties_merging: " + remove_keys + " entry '" + entry.name + "' matches no floating-point key");
  }
  const int64_t d = ties.d;
  const int64_t k = d - static_cast<int64_t>(static_cast<double>(d) * (options_.threshold / 100.0));
  const bool keep_all = k < 1;
  const size_t tasks = names.size();

  auto progress = ctx.progress("ties_merging (streamed)", 2);
  const std::vector<float> thresholds = keep_all ? std::vector<float>(tasks, 0.0f) : ties.thresholds(k);
  progress->advance();
  nlohmann::json threshold_info = nlohmann::json::object();
  for (size_t t = 0; t < tasks; ++t) threshold_info[names[t]] = static_cast<double>(thresholds[t]);

  // Pass B. One λ: θ₀ + λτₘ straight into the output; a sweep: τₘ, for add_scaled_results.
  // One λ and a host that saves the model: θ goes from each chunk straight into its file
  // (detail::OutputFile), which the save then links.
  const bool sweep = lambdas.size() > 1;
  const float lambda = static_cast<float>(lambdas[0]);
  const ConstModelPtr pretrained = models.pretrained();
  const StateDict& base_params = pretrained->parameters();
  std::unique_ptr<detail::OutputFile> file = sweep ? nullptr : detail::OutputFile::create(*stream, base_params);
  at::Tensor flat = file ? at::Tensor() : stream->flat_buffer();
  float* out_base = file ? nullptr : flat.data_ptr<float>();
  const int threads = std::max(1, at::get_num_threads());
  constexpr int64_t kChunk = 32768;
  // The buffers' stride: a chunk and 40 floats, so that the same element of each buffer does not
  // fall in the same L1 cache set (at a stride of exactly 64 KiB they all did).
  constexpr int64_t kStride = kChunk + 40;
  // Per thread: each task's chunk (θₜ read, then τ̂ₜ in place), the sum, the non-zero mask, the
  // signs, the merged values, the counts, θ₀'s chunk and the output chunk.
  std::vector<std::vector<float>> scratch(threads, std::vector<float>((tasks + 7) * kStride));
  std::vector<int64_t> sign_total(threads, 0);
  std::vector<std::vector<std::pair<size_t, int64_t>>> undecided(threads);
  const auto trimmed = [&](float tau, size_t t) { return std::abs(tau) < thresholds[t] ? 0.0f : tau; };
  std::vector<uint32_t> thr_bits(tasks);
  for (size_t t = 0; t < tasks; ++t) std::memcpy(&thr_bits[t], &thresholds[t], sizeof(uint32_t));
  stream->for_each_chunk(
      [&](size_t i, int64_t b, int64_t e) {
        const int th = at::get_thread_num();
        float* v = scratch[th].data();
        float* base = v + static_cast<int64_t>(tasks + 5) * kStride;
        const int64_t n = e - b;
        if (!ties.included[i]) {  // a removed key: θ₀'s
          if (file) {
            stream->read(0, i, b, e, base);
            file->write(i, b, e, base);
          }
          return;
        }
        // Read unchecked, as in pass A; the merge reports a NaN or ±Inf in τₜ.
        stream->read_unchecked(0, i, b, e, base);
        for (size_t t = 0; t < tasks; ++t) stream->read_unchecked(t + 1, i, b, e, v + static_cast<int64_t>(t) * kStride);
        const ChunkResult r = merge_chunk(v, base, thr_bits.data(), tasks, n, kStride, merge);
        if (r.non_finite) stream->check_models(i, b, e);
        const float* sign = v + static_cast<int64_t>(tasks + 2) * kStride;
        const float* acc = sign + kStride;
        if (r.any_undecided) {
          const auto* nzb = reinterpret_cast<const uint32_t*>(v + static_cast<int64_t>(tasks + 1) * kStride);
          for (int64_t j = 0; j < n; ++j) {
            if (sign[j] == 0.0f && nzb[j] != 0u) undecided[th].emplace_back(i, b + j);  // needs sign(Σ s)
          }
        }
        const int64_t signs = r.signs;
        float* out = file ? base + kStride : out_base + stream->flat_offset(i) + b;
        if (sweep) {
          std::copy(acc, acc + n, out);
        } else {
          for (int64_t j = 0; j < n; ++j) out[j] = acc[j] * lambda + base[j];
        }
        if (file) file->write(i, b, e, out);
        sign_total[th] += signs;
      },
      kChunk);
  int64_t total = 0;
  for (int64_t s : sign_total) total += s;
  const int majority = total > 0 ? 1 : (total < 0 ? -1 : 0);
  if (majority != 0) {
    std::vector<float> v(tasks);
    for (const auto& list : undecided) {
      for (const auto& [i, j] : list) {
        const float base = *stream->floats(0, i, j, j + 1);
        for (size_t t = 0; t < tasks; ++t) v[t] = trimmed(*stream->floats(t + 1, i, j, j + 1) - base, t);
        const float merged = merge_element(v.data(), 1, tasks, majority, merge);
        const float value = sweep ? merged : merged * lambda + base;
        if (file) {
          file->write(i, j, j + 1, &value);
        } else {
          out_base[stream->flat_offset(i) + j] = value;
        }
      }
    }
  }
  progress->advance();
  progress->finish();

  int64_t undecided_count = 0;
  for (const auto& list : undecided) undecided_count += static_cast<int64_t>(list.size());
  Result result;
  result.info = {{"num_experts", names.size()},
                 {option_name(&Options::threshold), options_.threshold},
                 {option_name(&Options::merge_func), options_.merge_func},
                 {"merged_numel", d},
                 {"trim_thresholds", threshold_info},
                 {"trim_select_fallbacks", ties.fallbacks},
                 {"removed_keys", removed_keys},
                 {option_name(&Options::scaling_factors), lambdas}};
  const StateDict& base = base_params;
  StateDict merged = file ? file->finish() : stream->unflatten(flat, base);
  if (!file) {
    for (const std::string& key : removed_keys) merged.set(key, base.at(key));
  }
  if (!sweep) {
    result.add("merged", pretrained->with_parameters(std::move(merged)), nlohmann::json{{"scaling_factor", lambdas[0]}});
    return result;
  }
  StateDict merged_tv;  // τₘ of the merged keys only: add_scaled_results keeps the others as θ₀'s
  for (size_t i : ties.parts) merged_tv.set(tensors[i].name, merged.at(tensors[i].name));
  add_scaled_results(result, pretrained, std::move(merged_tv), lambdas);
  return result;
}

}  // namespace fusion::methods
