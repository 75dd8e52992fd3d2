#pragma once
// GPT-2 in Hugging Face folders as a model pool (`gpt2`), and the per-task classification heads.
#include <ATen/ATen.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "fusion/checkpoint_pool.hpp"
#include "fusion/component.hpp"
#include "fusion/gpt2/export.hpp"
#include "fusion/gpt2/model.hpp"
#include "fusion/model.hpp"
#include "fusion/options.hpp"

namespace fusion::gpt2 {

/// The options of the `gpt2` pool: those of the `safetensors` pool (`pretrained`, `models`).
struct FUSION_GPT2_API Gpt2PoolOptions {
  CheckpointPoolOptions base;
  static void bind(Options<Gpt2PoolOptions>& o);
};

/// The `gpt2` model pool: the pretrained model and the experts are Hugging Face GPT-2 folders
/// (config.json plus model.safetensors or shards; GPT2Model, GPT2LMHeadModel or
/// GPT2ForSequenceClassification, keys with or without the `transformer.` prefix). Every model is the
/// transformer body, a Gpt2Model with Gpt2Head::kNone (forward: last hidden state [B, T, d]), so
/// merging methods and PWEMoE (`*.mlp.*`: each block's c_fc and c_proj) combine bodies only. Heads
/// are never merged: `score.weight` and `lm_head.weight` are dropped here, and a task evaluates the
/// merged body with its own expert's head (load_score_head), as FusionBench does. f16/bf16 weights
/// are converted to the run's dtype. save() writes a GPT2Model folder (save_gpt2).
///
/// Options: Gpt2PoolOptions. Errors start with the option naming the folder (modelpool.pretrained,
/// modelpool.models.<name>) and name the file, key and shapes. Not thread-safe.
class FUSION_GPT2_API Gpt2Pool : public CheckpointModelPool {
 public:
  using Options = Gpt2PoolOptions;
  Gpt2Pool(const Gpt2PoolOptions& options, const Context& ctx);
  ~Gpt2Pool() override;

  static ComponentInfo info();

  ConstModelPtr pretrained() override;
  ModelPtr load(const std::string& name) override;
  void save(const Model& model, const std::filesystem::path& dir) const override;

 protected:
  ModelPtr make_model(StateDict params, nlohmann::json config) const override;

};

/// A GPT2ForSequenceClassification folder's head: what a task needs beside the (merged) body.
struct FUSION_GPT2_API ScoreHead {
  at::Tensor weight;                    ///< `score.weight` [num_labels, n_embd], no bias
  std::vector<std::string> labels;      ///< class names by index (config.json's id2label)
  std::optional<int64_t> pad_token_id;  ///< the pooling's pad token (config.json's)
};

/// Where a GPT-2 checkpoint keeps `score.weight`, from the safetensors headers alone.
struct FUSION_GPT2_API ScoreWeightInfo {
  std::filesystem::path file;  ///< the .safetensors file holding it (for shards: the one the index names)
  std::vector<int64_t> shape;  ///< as the header states it
};

/// Finds `score.weight` in the checkpoint `path` (a .safetensors file, a folder with model.safetensors,
/// or a sharded folder: model.safetensors.index.json's weight_map names the shard) without reading a
/// weight or config.json. std::nullopt when the checkpoint has none. Throws fusion::Error naming the
/// path when it holds no checkpoint or a header or index is invalid.
FUSION_GPT2_API std::optional<ScoreWeightInfo> find_score_weight(const std::filesystem::path& path);

/// `score.weight` alone of the checkpoint `path` (as find_score_weight; config.json not needed), on
/// `device` in `dtype`; no other tensor is read. Throws fusion::Error "<path>: the weights have no
/// 'score.weight' (...)" when there is none.
FUSION_GPT2_API at::Tensor read_score_weight(const std::filesystem::path& path, const at::Device& device = at::kCPU,
                                             at::ScalarType dtype = at::kFloat);

/// Reads the head of the GPT-2 folder `dir` onto `device` in `dtype` (only `score.weight` is read). Throws fusion::Error naming the
/// folder when it has no `score.weight` or its shape disagrees with config.json (num_labels, n_embd).
FUSION_GPT2_API ScoreHead load_score_head(const std::filesystem::path& dir, const at::Device& device = at::kCPU,
                                          at::ScalarType dtype = at::kFloat);

/// GPT2ForSequenceClassification's logits from a body's last hidden state [B, T, d] and the input ids
/// [B, T]: pool_last_token with the head's pad token, then · weightᵀ: [B, num_labels]. The weight follows
/// the hidden state's device and dtype (differentiable in `hidden`).
FUSION_GPT2_API at::Tensor classify(const at::Tensor& hidden, const at::Tensor& input_ids, const ScoreHead& head);

}  // namespace fusion::gpt2
