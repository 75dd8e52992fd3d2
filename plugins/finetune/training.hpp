#pragma once
// What finetune, multitask_pretrain and lm_pretrain share beyond the SDK's Adam and schedules
// (fusion/optim.hpp) and training log (fusion/train_log.hpp): choosing the trainable parameters,
// data parallelism over the run's ranks (each rank's rows of a global batch, gradients summed over
// the ranks in buckets), and short numbers for progress bars.
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "fusion/distributed.hpp"
#include "fusion/optim.hpp"
#include "fusion/options.hpp"
#include "fusion/train_log.hpp"

namespace fusion::finetune {

/// Which of a CLIP vision tower's or a GPT-2 body's parameters a fine-tuning run trains (Hugging
/// Face's key names):
///   "all"       every floating-point parameter (FusionBench's full fine-tuning);
///   "encoder"   the transformer blocks only (CLIP `.encoder.layers.`, GPT-2 `transformer.h.`):
///               embeddings and the final layer norm frozen;
///   "mlp"       the blocks' MLPs only (`.mlp.`);
///   "attention" the blocks' self-attention only (CLIP `.self_attn.`, GPT-2 `.attn.`).
/// Integer tensors (position ids) are never trained.
bool is_trainable(const std::string& key, const at::Tensor& t, const std::string& subset);
/// The subsets is_trainable knows, for the option's choices.
const std::vector<std::string>& trainable_subsets();

/// {name: value} of the given options of `o`, each named by its binding (report.json metadata).
template <class O, class... M>
nlohmann::json option_values(const O& o, M O::*... members) {
  nlohmann::json j = nlohmann::json::object();
  ((j[option_name(members)] = o.*members), ...);
  return j;
}

/// The rows [begin, end) of a global batch of `n` rows that rank `rank` of `world` takes in a
/// data-parallel step: contiguous, in rank order, the first n mod world ranks one row more than the
/// others (so the shares differ by at most one row and cover the batch once); a rank past n takes
/// none (n < world).
struct RowRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
RowRange rows_of_rank(int64_t n, int rank, int world);

/// PyTorch DDP's default bucket size (bucket_cap_mb = 25): 25 MiB of gradients per all-reduce.
inline constexpr int64_t kGradientBucketBytes = int64_t{25} << 20;

/// How all_reduce_gradients groups `params`' gradients: consecutive parameters (in the given order)
/// of one dtype and device, a bucket closed when the next parameter would take it past
/// `bucket_bytes` (numel · element size); a parameter larger than `bucket_bytes` has a bucket of its
/// own. Each bucket lists parameter indices, in order; every parameter is in exactly one. Throws
/// fusion::Error when bucket_bytes is not positive.
std::vector<std::vector<size_t>> gradient_buckets(const std::vector<at::Tensor>& params, int64_t bucket_bytes);

/// Sums the .grad of `params` over the ranks of `comm`, one all_reduce_sum per bucket: the bucket's
/// gradients (each multiplied by `scale` first; zeros for an undefined one) flattened into one buffer
/// of the parameters' dtype and device, followed by one flag per parameter (1 where its grad is
/// defined on this rank), all-reduced, and the sums set back as the parameters' grads (views of the
/// buffer). A parameter whose grad is undefined on every rank keeps an undefined grad (Adam skips
/// it, as in one process). Every rank must call it with the same parameters and buckets; afterwards
/// every rank holds the same gradients (the communicator's sums are bitwise the same everywhere).
void all_reduce_gradients(const Communicator& comm, const std::vector<at::Tensor>& params,
                          const std::vector<std::vector<size_t>>& buckets, double scale = 1.0);

/// "1.23e-04"-style short numbers for progress postfixes.
std::string short_number(double v);

}  // namespace fusion::finetune
