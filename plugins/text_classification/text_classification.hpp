#pragma once
#include <ATen/ATen.h>

#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "fusion/component.hpp"
#include "fusion/config.hpp"
#include "fusion/context.hpp"
#include "fusion/eval_cache.hpp"
#include "fusion/gpt2/tokenizer.hpp"
#include "fusion/model_aware.hpp"
#include "fusion/options.hpp"
#include "fusion/task_pool.hpp"
#include "text_data.hpp"

namespace fusion::text_classification {

/// The [taskpool] table of the `text_classification` pool, one member per option (the binding in
/// text_classification.cpp gives each its meaning and range).
struct TextClassificationPoolOptions {
  /// Folder with GPT-2's vocab.json and merges.txt. Default "" (modelpool.pretrained's folder).
  std::string tokenizer;
  /// Folder holding GLUE's task folders (CoLA/, SST-2/, MRPC/, QNLI/, QQP/, RTE/, MNLI/) or, for
  /// other tasks, one folder per task named as the task. Default "".
  std::string data_dir;
  /// Task names in report order. Default none.
  std::vector<std::string> tasks;
  /// task = test split (tasks not in `tasks` are appended). Default none.
  StringMap test_datasets;
  /// task = train split. Default none.
  StringMap train_datasets;
  /// task = auto | csv | tsv | jsonl | cola | sst2 | mrpc | qnli | qqp | rte | mnli. Default none (auto).
  StringMap formats;
  /// task = label names ("a, b" or a JSON list). Default none (the built-in names).
  StringMap label_names;
  /// task = GPT-2 sequence classification folder or safetensors file holding score.weight. Default
  /// none (the expert of the task's name in the model pool).
  StringMap heads;
  /// task = expert of the model pool whose score.weight is the task's head. Default none (the task's name).
  StringMap experts;
  /// Evaluation batch size. Default 32.
  int64_t batch_size = 32;
  /// Longest row in tokens (text and pair together), longer ones truncated. Default 0 (the model's
  /// n_positions, 1024 when the model pool does not tell it).
  int64_t max_length = 0;
  /// "longest" (pad each batch to its longest row) or "max_length". Default "longest".
  std::string padding = "longest";
  /// Padding id, also the pooling's pad token. Default unset (the tokenizer's <|endoftext|>, 50256).
  std::optional<int64_t> pad_token_id;
  /// "error" or "skip". Default "error".
  std::string on_bad_row = "error";
  /// Evaluate on at most this many test examples per task (0: all). Default 0.
  int64_t max_test_samples = 0;
  /// Write each example's prediction and loss, one CSV per evaluated model and task. Default false.
  bool save_predictions = false;

  static void bind(Options<TextClassificationPoolOptions>& o);
};

/// Options shared by every task of the pool, resolved from the [taskpool] table.
struct TextClassificationOptions {
  /// Folder with vocab.json and merges.txt. Default "" (set by the pool's adapt_to, or by set_tokenizer).
  std::filesystem::path tokenizer;
  /// Where tokenizer came from when not from taskpool.tokenizer ("modelpool.pretrained"). Default "".
  std::string tokenizer_from;
  /// Evaluation batch size. Default 32.
  int64_t batch_size = 32;
  /// Longest row in tokens; longer rows are truncated as Hugging Face's tokenizer does
  /// (truncation=True: the first max_length ids; a pair by longest_first). Default 1024.
  int64_t max_length = 1024;
  /// taskpool.max_length was given (else max_length is the model's or the default). Default false.
  bool max_length_given = false;
  /// Pad every batch to max_length (FusionBench's padding="max_length") instead of its longest row.
  /// With right padding and causal attention the logits are the same. Default false.
  bool pad_to_max_length = false;
  /// The padding id and the pooling's pad token. Default unset: the tokenizer's <|endoftext|>.
  std::optional<int64_t> pad_token_id;
  /// Malformed rows: stop (Error) or leave them out (Skip). Default Error.
  BadRow bad_rows = BadRow::Error;
  /// Evaluate on at most this many test examples (a fixed random subset, in file order); 0: all.
  /// Default 0.
  int64_t max_test_samples = 0;
  /// Write run_dir/predictions/model_<k>/<task>.csv at each evaluation. Default false.
  bool save_predictions = false;
};

/// One task as configured: where its splits and head are, and its label names.
struct TextTaskSpec {
  std::string name;
  std::filesystem::path test;                  ///< required
  std::optional<std::filesystem::path> train;  ///< absent: no train split
  TextFormat format = TextFormat::Auto;        ///< for both splits
  std::vector<std::string> labels;             ///< class names by index (required)
  std::string labels_from;                     ///< "the built-in GLUE labels", "taskpool.label_names.x"
  std::optional<std::filesystem::path> head;   ///< folder or file with score.weight
  std::string head_from;                       ///< "taskpool.heads.x", "modelpool.models.x"
  std::string expert;                          ///< the expert whose head the task takes by default
};

/// Test ids kept between evaluations, shared by the tasks of a pool: the bytes left of
/// [run] eval_cache_mb. Not thread-safe (the pool evaluates one task at a time).
struct EvalCacheBudget {
  int64_t bytes_left = int64_t{1024} << 20;
};

/// One GPT-2 sequence classification task. Opening it reads and checks both splits; the tokenizer
/// and the head are read on first use. logits() is thread-safe once head() and the tokenizer are
/// loaded; evaluate() is for one thread at a time.
class TextClassificationTask : public Task {
 public:
  TextClassificationTask(TextTaskSpec spec, const TextClassificationOptions& options, Context ctx,
                         std::shared_ptr<EvalCacheBudget> budget = nullptr);

  std::string name() const override { return spec_.name; }
  int64_t num_classes() const override { return static_cast<int64_t>(spec_.labels.size()); }
  bool has_train_split() const override { return train_ != nullptr; }
  /// Endless batches {inputs: ids [B, L] int64, right-padded with pad_id(); labels [B]} of the train
  /// split on the run's device: epoch e is a permutation drawn from (seed, e); epochs follow each
  /// other without a break, so a batch may straddle two.
  std::unique_ptr<BatchStream> train_stream(int64_t batch_size, uint64_t seed) override;
  /// As train_stream, over the examples evaluate() reads (for test-time adaptation; labels included,
  /// which such methods must not read).
  std::unique_ptr<BatchStream> test_stream(int64_t batch_size, uint64_t seed) override;
  /// GPT2ForSequenceClassification's logits with this task's head: the last hidden state of the
  /// GPT-2 body `model` under `params` for `inputs` (ids [B, L], right-padded with pad_id()), at the
  /// token before each row's first pad token (gpt2::pool_last_token), · headᵀ: [B, num_classes].
  /// No attention mask is needed: with right padding and causal attention no real token attends to
  /// a pad, so the pooled token is the same with or without one. Differentiable in `params`; the head
  /// follows the hidden state's device and dtype. Throws fusion::Error for a model that is not GPT-2.
  at::Tensor logits(const Model& model, const StateDict& params, const at::Tensor& inputs) const override;
  /// {"accuracy", "loss", "num_samples", "labels" (the class names by index), "skipped_rows",
  /// "tokenized_examples" (rows this evaluation tokenized: those not kept from an earlier one),
  /// "seconds", "examples_per_second"} on the test split (or its max_test_samples subset), in file
  /// order, without gradients. With save_predictions, also writes `predictions_file` (see
  /// set_predictions_file) and adds "predictions": that path.
  nlohmann::json evaluate(const Model& model) override;
  /// Where the next evaluate() writes its predictions when save_predictions is on: a CSV with the
  /// header line,label,label_name,predicted,predicted_name,loss and one row per evaluated example
  /// (line: the example's line in the split's file; names quoted as RFC 4180 when needed), written
  /// atomically. Empty (the default): run_dir/predictions/model_<k>/<task>.csv for the k-th
  /// evaluate() of this task (k from 0), which in a run is the k-th evaluated model: the pool's
  /// evaluate() is the SDK's, which evaluates every task of each model in turn.
  void set_predictions_file(std::filesystem::path file) { predictions_file_ = std::move(file); }

  const std::vector<std::string>& label_names() const { return spec_.labels; }
  const TextTaskSpec& spec() const { return spec_; }
  const TextSplit& test_split() const { return *test_; }
  const TextSplit* train_split() const { return train_.get(); }
  /// The indices of the test examples evaluate() reads, ascending.
  const std::vector<int64_t>& evaluated_examples() const { return test_indices_; }

  /// The tokenizer: the one set, or read from the options' folder on first use. Throws fusion::Error
  /// ("task 'x': no tokenizer: set taskpool.tokenizer ...") when there is neither.
  const gpt2::Gpt2Tokenizer& tokenizer() const;
  void set_tokenizer(gpt2::Gpt2Tokenizer tokenizer);
  /// The padding id: taskpool.pad_token_id, else the tokenizer's <|endoftext|>.
  int64_t pad_id() const;
  /// The example's ids: text (and pair) encoded, truncated to max_length, not padded.
  std::vector<int64_t> encode(const TextExample& example) const;
  /// Rows right-padded with pad_id() to the longest (or to max_length): int64 [N, L] on the CPU.
  at::Tensor pad_rows(const std::vector<std::vector<int64_t>>& rows) const;

  /// score.weight [num_classes, d] (f32, CPU): the one set, or read from the head file on first use.
  /// Throws fusion::Error naming the task and file when there is none, it lacks score.weight, or its
  /// class count differs from the task's.
  const at::Tensor& head() const;
  void set_head(at::Tensor weight);
  /// Takes what the pool learned of the models (tokenizer folder, max_length, head file).
  void adapt(const TextClassificationOptions& options, std::optional<std::filesystem::path> head,
             const std::string& head_from);
  /// Drops the test ids kept between evaluations (the budget was changed).
  void clear_eval_cache();

 private:
  TextTaskSpec spec_;
  TextClassificationOptions options_;
  Context ctx_;
  std::shared_ptr<EvalCacheBudget> budget_;
  std::shared_ptr<const TextSplit> test_, train_;
  std::vector<int64_t> test_indices_;
  std::vector<std::vector<int64_t>> cached_ids_;  // by test example; empty: not kept
  std::filesystem::path predictions_file_;
  int64_t evaluations_ = 0;  ///< evaluate() calls so far (k of model_<k>)
  mutable std::mutex mutex_;
  mutable std::optional<gpt2::Gpt2Tokenizer> tokenizer_;
  mutable at::Tensor head_;
};

/// The `text_classification` task pool: GPT-2 sequence classification on GLUE's own TSV files and
/// on CSV / JSON-lines files, evaluated with FusionBench's report keys. Each task keeps its own
/// expert's head (`score.weight`), never merged: it is evaluated with the merged body and that head.
class TextClassificationPool : public TaskPool, public ModelAwareTaskPool, public EvalCachingTaskPool {
 public:
  using Options = TextClassificationPoolOptions;
  TextClassificationPool(const TextClassificationPoolOptions& options, const Context& ctx);
  TextClassificationPool(std::vector<TextTaskSpec> tasks, TextClassificationOptions options, Context ctx);

  static ComponentInfo info();
  /// The tasks and options a checked [taskpool] table describes (paths resolved, not opened).
  /// Throws fusion::Error naming `taskpool.<key>` for an inconsistent table.
  static std::pair<std::vector<TextTaskSpec>, TextClassificationOptions> parse(
      const TextClassificationPoolOptions& options);

  std::vector<std::string> task_names() const override;
  Task& task(const std::string& name) override;
  TextClassificationTask& text_task(const std::string& name);

  /// Learns from the model pool, before anything runs and without reading a weight: the tokenizer
  /// folder (modelpool.pretrained when taskpool.tokenizer is unset), max_length (n_positions of the
  /// pretrained config.json when taskpool.max_length is 0; a larger one is refused), and each task's
  /// head (the expert named as the task, or taskpool.experts.<task>, unless taskpool.heads gives
  /// one): its score.weight must have the task's class count and the model's width; then reads the
  /// tokenizer (vocab.json, merges.txt) once for every task. Each problem is one fusion::Error line
  /// naming the option.
  void adapt_to(const ModelPool& models) override;
  /// Keeps at most `bytes` of tokenized test examples between evaluations ([run] eval_cache_mb),
  /// filled task by task in evaluation order.
  void set_eval_cache_bytes(int64_t bytes) override;
  const TextClassificationOptions& options() const { return options_; }

 private:
  TextClassificationPool(std::pair<std::vector<TextTaskSpec>, TextClassificationOptions> parsed, const Context& ctx);

  TextClassificationOptions options_;
  Context ctx_;
  std::shared_ptr<EvalCacheBudget> budget_;
  std::vector<std::unique_ptr<TextClassificationTask>> tasks_;
};

}  // namespace fusion::text_classification
