#pragma once
#include <ATen/ATen.h>

#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "dataset.hpp"
#include "fusion/clip/zero_shot.hpp"
#include "fusion/component.hpp"
#include "fusion/config.hpp"
#include "fusion/context.hpp"
#include "fusion/eval_cache.hpp"
#include "fusion/model_aware.hpp"
#include "fusion/options.hpp"
#include "fusion/task_pool.hpp"
#include "loader.hpp"
#include "preprocess.hpp"
#include "task_info.hpp"

namespace fusion::image_classification {

/// The [taskpool] table of the `image_classification` pool, one member per option (the binding in
/// image_classification.cpp gives each its meaning and range). ImageClassificationPool::parse turns it
/// into the tasks and the options they share.
struct ImageClassificationPoolOptions {
  /// CLIPModel folder whose text tower makes the zero-shot heads. Default "" (the model pool's
  /// pretrained folder when it is a CLIPModel with a text tower).
  std::string clip_model;
  /// Folder with one subfolder per task of `tasks`. Default "".
  std::string data_dir;
  /// Task names in report order. Default none.
  std::vector<std::string> tasks;
  /// task = test split (tasks not in `tasks` are appended). Default none.
  StringMap test_datasets;
  /// task = train split. Default none.
  StringMap train_datasets;
  /// task = auto | folder | csv | idx. Default none (auto).
  StringMap formats;
  /// task = head file used instead of computing the zero-shot head. Default none.
  StringMap heads;
  /// task = file overriding the built-in class names and templates. Default none.
  StringMap task_info;
  /// Templates for every task, each with one {} for the class name. Default none (the built-in ones).
  std::vector<std::string> templates;
  /// Evaluation batch size. Default 128.
  int64_t batch_size = 128;
  /// Decoding threads per loader. Default 2.
  int64_t num_workers = 2;
  /// Batches a loader prepares ahead at most. Default 4.
  int64_t prefetch_batches = 4;
  /// Shortest edge after the resize, and the centre crop. Default unset: the model's input size
  /// when the model pool tells it (a clip_vision pool's config.json), else 224.
  std::optional<int64_t> image_size;
  /// "error" or "skip". Default "error".
  std::string on_bad_image = "error";
  /// Head cache folder; "": the user's cache folder; "none": no cache. Default "".
  std::string head_cache_dir;
  /// MiB of preprocessed train images kept in memory (test images: [run] eval_cache_mb). Default 1024.
  int64_t cache_mb = 1024;
  /// Evaluate on at most this many test samples per task (0: all). Default 0.
  int64_t max_test_samples = 0;
  /// Write run_dir/predictions/model_<k>/<task>.csv at each evaluation. Default false.
  bool save_predictions = false;

  static void bind(Options<ImageClassificationPoolOptions>& o);
};

/// Options shared by every task of the pool, resolved from the [taskpool] table.
struct ImageClassificationOptions {
  /// CLIPModel folder whose text tower makes the zero-shot heads. Default "" (then every task
  /// needs a head file).
  std::filesystem::path clip_model;
  /// Where clip_model came from when not from taskpool.clip_model: "modelpool.pretrained". Default "".
  std::string clip_model_from;
  /// Evaluation batch size. Default 128.
  int64_t batch_size = 128;
  /// Decoding threads per loader; 0 decodes on the caller's thread. Default 2.
  int64_t num_workers = 2;
  /// Batches a loader prepares ahead at most. Default 4.
  int64_t prefetch_batches = 4;
  /// Resize, crop and normalisation. Default: CLIP's at 224.
  PreprocessOptions preprocess;
  /// taskpool.image_size as given (then preprocess.image_size equals it). Default unset: the size is
  /// the model's, learned by ImageClassificationPool::adapt_to, or preprocess.image_size.
  std::optional<int64_t> image_size;
  /// Where preprocess.image_size came from when image_size is unset: the model's file
  /// ("vision_config.image_size in m/config.json"); "" for the default. Default "".
  std::string image_size_from;
  /// on_bad_image = "skip": leave undecodable images out (counted in the report). Default false.
  bool skip_bad_images = false;
  /// Where computed heads are cached. Default "" (no cache).
  std::filesystem::path head_cache_dir;
  /// Templates for every task, replacing the built-in ones. Default empty (keep them).
  std::vector<std::string> templates;
  /// Memory for preprocessed train images kept between epochs, in MiB (whole splits); 0 keeps none.
  /// Default 1024.
  int64_t cache_mb = 1024;
  /// Memory for preprocessed test images kept from one evaluated model to the next, in bytes: the
  /// host's [run] eval_cache_mb (set_eval_cache_bytes); 0 keeps none. Default 1 GiB.
  int64_t eval_cache_bytes = int64_t{1024} << 20;
  /// Evaluate on at most this many test samples (a fixed random subset); 0: all. Default 0.
  int64_t max_test_samples = 0;
  /// Write each evaluated test image's prediction and loss (see set_predictions_file). Default false.
  bool save_predictions = false;
};

/// One task as configured: where its splits are and what overrides its built-in info.
struct TaskSpec {
  std::string name;
  std::filesystem::path test;                  ///< required
  std::optional<std::filesystem::path> train;  ///< absent: no train split
  DataFormat format = DataFormat::Auto;        ///< for both splits
  std::optional<std::filesystem::path> head;   ///< head file to load instead of computing one
  std::optional<std::filesystem::path> info;   ///< task info file (class names, templates)
};

/// One CLIP zero-shot classification task. Opening it reads the split listings (not the images)
/// and checks labels; the head is made on first use. logits() and evaluate() are for one thread
/// at a time; train streams run their own loaders.
class ImageClassificationTask : public Task {
 public:
  ImageClassificationTask(TaskSpec spec, const ImageClassificationOptions& options, Context ctx);

  std::string name() const override { return spec_.name; }
  int64_t num_classes() const override { return static_cast<int64_t>(classnames_.size()); }
  bool has_train_split() const override { return train_ != nullptr; }
  /// Endless batches of `batch_size` (less the images skipped with on_bad_image = "skip") from the
  /// train split on the run's device and dtype:
  /// epoch e is a permutation drawn from (seed, e), and epochs follow each other without a break,
  /// so a batch may straddle two epochs. Decoding runs ahead on num_workers threads.
  std::unique_ptr<BatchStream> train_stream(int64_t batch_size, uint64_t seed) override;
  /// Endless batches of the test images evaluate() uses (the max_test_samples subset when set), for
  /// test-time adaptation (AdaMerging): shuffled as train_stream's, epoch e a permutation of those
  /// images drawn from (seed, e); on the run's device and dtype. The batches carry the labels, which
  /// such methods must not read.
  std::unique_ptr<BatchStream> test_stream(int64_t batch_size, uint64_t seed) override;
  /// apply_head(head, model.forward(params, inputs)); the head follows the features' device/dtype.
  at::Tensor logits(const Model& model, const StateDict& params, const at::Tensor& inputs) const override;
  /// {"accuracy", "loss", "num_samples", "skipped_images", "seconds", "images_per_second"} on the
  /// test split (or its max_test_samples subset), in file order, without gradients; and
  /// "decoded_images", the images this evaluation decoded and preprocessed (those not kept in memory
  /// from an earlier pass). A model that
  /// says it takes images of another size (model_image_size) is refused first, in one line naming
  /// taskpool.image_size. With save_predictions, also writes `predictions_file` (see
  /// set_predictions_file) and adds "predictions": that path.
  nlohmann::json evaluate(const Model& model) override;
  /// Where the next evaluate() writes its predictions when save_predictions is on: a CSV with the
  /// columns index,sample,label,label_name,predicted,predicted_name,loss, one row per evaluated image
  /// in evaluation order (index: the image's place in the test split; sample: its file, or
  /// "<images file>[i]" for IDX), written atomically. Empty (the default): run_dir/predictions/model_<k>/<task>.csv for the k-th
  /// evaluate() of this task (k from 0), which in a run is the k-th evaluated model: the pool's
  /// evaluate() is the SDK's, which evaluates every task of each model in turn.
  void set_predictions_file(std::filesystem::path file) { predictions_file_ = std::move(file); }

  const std::vector<std::string>& classnames() const { return classnames_; }
  const std::vector<std::string>& templates() const { return templates_; }
  /// Where the class names came from (a built-in or task_info file, a head file, class folders).
  const std::string& classes_source() const { return classes_from_; }
  const Dataset& test_split() const { return test_->dataset(); }
  const Dataset* train_split() const { return train_ ? &train_->dataset() : nullptr; }
  /// The frozen head: loaded from the head file, read from the cache, or computed from clip_model
  /// (and cached). Throws fusion::Error when none of these is possible.
  const clip::ZeroShotHead& head() const;
  /// Uses `head` from now on (tests; heads made elsewhere). Its class count must match.
  void set_head(clip::ZeroShotHead head);
  /// Keep preprocessed images of the splits in memory: every evaluated test image or none, the whole
  /// train split or none.
  void keep_in_memory(bool test, bool train);
  /// Keep the first `test_images` evaluated test images (in evaluation order; the rest are decoded
  /// at every pass) and the whole train split or none (set by the pool within its budgets).
  void keep_in_memory(int64_t test_images, bool train);
  /// Whether the splits' preprocessed images are kept in memory (every evaluated test image, the
  /// whole train split).
  std::pair<bool, bool> kept_in_memory() const;
  /// How many of the evaluated test images are kept in memory.
  int64_t test_images_kept() const { return test_->kept(); }
  /// How many test images evaluate() reads: the test split, or its max_test_samples subset.
  int64_t evaluated_test_images() const { return static_cast<int64_t>(test_indices_.size()); }
  /// Decodings of test images (decode, resize, crop) since the last keep_in_memory: each kept image
  /// once, every other one at every pass.
  int64_t test_decodes() const { return test_->decodes(); }
  /// Takes what the pool learned of the models (ImageClassificationPool::adapt_to): the image size
  /// and where it came from, and the CLIPModel folder of the zero-shot head and where it came from.
  /// The splits' sources are made again by the next keep_in_memory().
  void adapt(const ImageClassificationOptions& adapted);
  /// Whether the task has a head file (else its head is computed from clip_model).
  bool has_head_file() const { return spec_.head.has_value(); }
  /// Throws fusion::Error ("task 'x': no zero-shot head: set taskpool.clip_model ...") when the task
  /// has neither a head file, nor a head set, nor a clip_model; `why` (when not empty) says why the
  /// model pool's pretrained folder is no default for clip_model.
  void check_head_source(const std::string& why = "") const;

 private:
  TaskSpec spec_;
  ImageClassificationOptions options_;
  Context ctx_;
  std::vector<std::string> classnames_, templates_;
  std::string classes_from_;
  std::shared_ptr<SampleSource> test_, train_;
  std::vector<int64_t> test_indices_;
  std::filesystem::path predictions_file_;
  int64_t evaluations_ = 0;  ///< evaluate() calls so far (k of model_<k>)
  mutable std::mutex head_mutex_;
  mutable std::optional<clip::ZeroShotHead> head_;
};

/// The `image_classification` task pool: CLIP zero-shot classification tasks read from image
/// folders, CSV manifests or IDX files, evaluated with FusionBench's report keys.
class ImageClassificationPool : public TaskPool, public ModelAwareTaskPool, public EvalCachingTaskPool {
 public:
  using Options = ImageClassificationPoolOptions;
  /// The pool a checked [taskpool] table describes (parse, then the constructor below).
  ImageClassificationPool(const ImageClassificationPoolOptions& options, const Context& ctx);
  ImageClassificationPool(std::vector<TaskSpec> tasks, ImageClassificationOptions options, Context ctx);

  static ComponentInfo info();
  /// The tasks and options a checked [taskpool] table describes (paths resolved, not opened).
  /// Throws fusion::Error naming `taskpool.<key>` for an inconsistent table.
  static std::pair<std::vector<TaskSpec>, ImageClassificationOptions> parse(
      const ImageClassificationPoolOptions& options);

  std::vector<std::string> task_names() const override;
  Task& task(const std::string& name) override;
  ImageClassificationTask& classification_task(const std::string& name);

  /// Learns from the model pool's pretrained folder (its config.json; no weight read), before
  /// anything runs: with taskpool.image_size unset, the images take the model's size (the image
  /// size of a clip_vision pool's config.json; 224 when the pool does not tell); with
  /// taskpool.clip_model empty, the zero-shot heads come from the pretrained folder when it is a
  /// CLIPModel with a text tower. Throws fusion::Error, one line naming taskpool.image_size, its
  /// value, the model's size and the file, when a set image_size differs from the model's; and the
  /// no-zero-shot-head error when a task without a head file has no CLIPModel folder.
  void adapt_to(const ModelPool& models) override;
  /// The budget of the test images kept in memory between evaluations ([run] eval_cache_mb, from
  /// the host): filled task by task in order, the first evaluated images of a split when only part
  /// of it fits (the rest is decoded at every evaluation, with the same results). Logs what changes.
  void set_eval_cache_bytes(int64_t bytes) override;
  /// The options every task shares (after adapt_to, with what it learned).
  const ImageClassificationOptions& options() const { return options_; }

 private:
  ImageClassificationPool(std::pair<std::vector<TaskSpec>, ImageClassificationOptions> parsed, const Context& ctx);
  /// Which test images fit in eval_cache_bytes and which train splits in cache_mb, applied to the
  /// tasks.
  void plan_memory();
  /// plan_memory(), then one log line per task whose plan changed, beginning with `why`.
  void plan_memory_again(const std::string& why);

  ImageClassificationOptions options_;
  Context ctx_;
  std::vector<std::unique_ptr<ImageClassificationTask>> tasks_;
};

}  // namespace fusion::image_classification
