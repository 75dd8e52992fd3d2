#include "image_classification.hpp"

#include <ATen/core/Reduction.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <set>
#include <sstream>

#include "fusion/classification.hpp"
#include "fusion/error.hpp"
#include "fusion/distributed.hpp"
#include "fusion/files.hpp"
#include "head.hpp"
#include "model_facts.hpp"

namespace fusion::image_classification {
namespace fs = std::filesystem;

namespace {

using PoolOptions = ImageClassificationPoolOptions;

// "taskpool.<option>", for messages that name an option of the [taskpool] table.
template <class M>
std::string key(M PoolOptions::*member) {
  return "taskpool." + option_name(member);
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
  return s;
}

// "kept in memory" (every evaluated test image), "K of N kept in memory" (the first K), or "" (none).
std::string test_kept_text(const ImageClassificationTask& t) {
  const int64_t kept = t.test_images_kept(), n = t.evaluated_test_images();
  if (kept == 0) return "";
  if (kept == n) return "kept in memory";
  return std::to_string(kept) + " of " + std::to_string(n) + " kept in memory";
}

// MiB as a short number: "1024", "0.5".
std::string short_mib(int64_t bytes) {
  std::ostringstream o;
  o << static_cast<double>(bytes) / static_cast<double>(int64_t{1} << 20);
  return o.str();
}

// A head on the device and dtype of `like` (the features it is applied to).
clip::ZeroShotHead head_like(const clip::ZeroShotHead& h, const at::Tensor& like) {
  if (h.projection.device() == like.device() && h.projection.scalar_type() == like.scalar_type()) return h;
  clip::ZeroShotHead out = h;
  out.projection = h.projection.to(like.device(), like.scalar_type());
  out.text_embeds = h.text_embeds.to(like.device(), like.scalar_type());
  return out;
}

// The one line refusing images of the options' size for a model that takes `model.size`.
std::string size_mismatch(const ImageClassificationOptions& o, const ImageSizeFact& model) {
  const std::string size = std::to_string(model.size);
  const std::string takes = "the model takes " + size + " x " + size + " images (" + model.source + ")";
  if (o.image_size) {
    return key(&PoolOptions::image_size) + " = " + std::to_string(*o.image_size) + " but " + takes +
           ": set it to " + size + " or leave it unset";
  }
  const std::string have = std::to_string(o.preprocess.image_size);
  return key(&PoolOptions::image_size) + " is unset and the images are " + have + " x " + have + " (" +
         (o.image_size_from.empty() ? std::string("the default: the model pool did not tell the model's size")
                                    : "from the model pool: " + o.image_size_from) +
         "), but " + takes + ": set " + key(&PoolOptions::image_size) + " = " + size;
}

// The error for a task that has neither a head file nor a CLIPModel to compute its head from; `why`
// (when not empty) says why the model pool's pretrained folder is no default.
std::string no_head(const std::string& task, const std::string& why = "") {
  return "task '" + task + "': no zero-shot head: set " + key(&PoolOptions::clip_model) + " (the CLIPModel folder) or " +
         key(&PoolOptions::heads) + "." + task + (why.empty() ? "" : "; " + why);
}

// The device and dtype a model computes in: those of its first floating parameter.
std::pair<at::Device, at::ScalarType> model_placement(const Model& model, const Context& ctx) {
  for (const auto& item : model.parameters()) {
    const at::Tensor& t = item.second;
    if (t.defined() && t.is_floating_point()) return {t.device(), t.scalar_type()};
  }
  return {ctx.device(), ctx.dtype()};
}

// The loader's next batch; an undecodable image (with on_bad_image = "error") becomes a
// fusion::Error naming `where` (the task and split) and the option that would skip it.
std::optional<LoadedBatch> next_batch(BatchLoader& loader, const std::string& where) {
  try {
    return loader.next();
  } catch (const BadImage& e) {
    FUSION_FAIL(where, ": ", e.what(), " (", key(&PoolOptions::on_bad_image), " = \"skip\" leaves such images out)");
  }
}

// The loader settings of the pool's options for batches of `batch_size`.
LoaderOptions loader_options(const ImageClassificationOptions& o, int64_t batch_size) {
  LoaderOptions lo;
  lo.batch_size = batch_size;
  lo.num_workers = o.num_workers;
  lo.prefetch_batches = o.prefetch_batches;
  lo.skip_bad_images = o.skip_bad_images;
  return lo;
}

// Endless batches of `source`'s samples (or of its samples `subset` lists, when given), epoch e a
// permutation drawn from (seed, e). `kind` names the batches in the error for an all-bad batch.
class ClassificationStream : public BatchStream {
 public:
  ClassificationStream(std::shared_ptr<const SampleSource> source, int64_t batch_size, uint64_t seed,
                       LoaderOptions options, at::Device device, at::ScalarType dtype, std::string where,
                       std::string kind = "training batch",
                       std::shared_ptr<const std::vector<int64_t>> subset = nullptr)
      : order_(std::make_shared<EpochOrder>(subset ? static_cast<int64_t>(subset->size()) : source->size(), seed)),
        loader_(source,
                [order = order_, batch_size, subset](int64_t b) {
                  std::vector<int64_t> idx(batch_size);
                  for (int64_t i = 0; i < batch_size; ++i) {
                    const int64_t k = order->at(b * batch_size + i);
                    idx[i] = subset ? (*subset)[static_cast<size_t>(k)] : k;
                  }
                  return idx;
                },
                -1, options),
        device_(device),
        dtype_(dtype),
        where_(std::move(where)),
        kind_(std::move(kind)) {}

  Batch next() override {
    std::optional<LoadedBatch> b = next_batch(loader_, where_);
    FUSION_ENSURE(b && b->inputs.size(0) > 0, where_, ": every image of a ", kind_, " was undecodable");
    return {b->inputs.to(device_, dtype_), b->labels.to(device_)};
  }

 private:
  std::shared_ptr<EpochOrder> order_;
  BatchLoader loader_;
  at::Device device_;
  at::ScalarType dtype_;
  std::string where_;
  std::string kind_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// ImageClassificationTask

ImageClassificationTask::ImageClassificationTask(TaskSpec spec, const ImageClassificationOptions& options,
                                                 Context ctx)
    : spec_(std::move(spec)), options_(options), ctx_(std::move(ctx)) {
  const std::string where = "task '" + spec_.name + "'";
  if (auto builtin = builtin_task_info(spec_.name)) {
    classnames_ = builtin->classnames;
    templates_ = builtin->templates;
    classes_from_ = builtin->source;
  }
  if (spec_.info) {
    TaskInfo info = read_task_info(*spec_.info);
    if (!info.classnames.empty()) {
      classnames_ = info.classnames;
      classes_from_ = info.source;
    }
    if (!info.templates.empty()) templates_ = info.templates;
  }
  if (!options_.templates.empty()) templates_ = options_.templates;

  std::optional<int64_t> n;
  if (!classnames_.empty()) n = static_cast<int64_t>(classnames_.size());
  if (spec_.head) {
    const int64_t head_classes = head_file_classes(*spec_.head);
    FUSION_ENSURE(!n || *n == head_classes, where, ": head file '", spec_.head->string(), "' has ",
                  head_classes, " classes but the task has ", *n, " class names (from ", classes_from_, ")");
    n = head_classes;
  }

  auto test = std::make_shared<const Dataset>(Dataset::open(spec_.test, spec_.format, where + " test split", n));
  if (!n) {
    // A task fusion does not know: the class folders name the classes.
    FUSION_ENSURE(!test->folder_classes().empty(), where,
                  ": no class names: the task is not built in (built in: ", join(builtin_task_names()),
                  "), so give ", key(&PoolOptions::task_info), ".", spec_.name,
                  " (a class-names file) or ", key(&PoolOptions::heads), ".", spec_.name,
                  ", or use class folders named after the classes");
    classes_from_ = "the class folders of " + spec_.test.string();
    for (std::string c : test->folder_classes()) {
      std::replace(c.begin(), c.end(), '_', ' ');
      classnames_.push_back(c);
    }
    n = static_cast<int64_t>(classnames_.size());
  }
  if (classnames_.empty()) {
    classes_from_ = "head file " + spec_.head->string() + ", unnamed";
    for (int64_t i = 0; i < *n; ++i) classnames_.push_back(std::to_string(i));
  }
  if (test->ignored_files() > 0) {
    ctx_.log().warn(where + " test split: " + std::to_string(test->ignored_files()) +
                    " files in class folders are not images (.jpg .jpeg .png .bmp .gif .ppm .pgm .pnm) and are ignored");
  }
  test_ = std::make_shared<SampleSource>(test, options_.preprocess, false);

  if (spec_.train) {
    auto train =
        std::make_shared<const Dataset>(Dataset::open(*spec_.train, spec_.format, where + " train split", n));
    if (!test->folder_classes().empty() && !train->folder_classes().empty()) {
      FUSION_ENSURE(train->folder_classes() == test->folder_classes(), where, ": the class folders of the train split '",
                    spec_.train->string(), "' differ from those of the test split '", spec_.test.string(), "'");
    }
    train_ = std::make_shared<SampleSource>(train, options_.preprocess, false);
  }
  if (templates_.empty()) templates_ = default_templates();

  const int64_t total = test->size();
  if (options_.max_test_samples > 0 && options_.max_test_samples < total) {
    std::vector<int64_t> perm = EpochOrder(total, 0).epoch(0);
    test_indices_.assign(perm.begin(), perm.begin() + options_.max_test_samples);
    std::sort(test_indices_.begin(), test_indices_.end());
  } else {
    test_indices_.resize(total);
    for (int64_t i = 0; i < total; ++i) test_indices_[i] = i;
  }
}

void ImageClassificationTask::keep_in_memory(bool test, bool train) {
  keep_in_memory(test ? evaluated_test_images() : 0, train);
}

void ImageClassificationTask::keep_in_memory(int64_t test_images, bool train) {
  const auto n = std::clamp<int64_t>(test_images, 0, evaluated_test_images());
  const std::vector<int64_t> keep(test_indices_.begin(), test_indices_.begin() + n);
  test_ = std::make_shared<SampleSource>(test_->dataset_ptr(), options_.preprocess, keep);
  if (train_) train_ = std::make_shared<SampleSource>(train_->dataset_ptr(), options_.preprocess, train);
}

std::pair<bool, bool> ImageClassificationTask::kept_in_memory() const {
  return {test_->kept() == evaluated_test_images(), train_ && train_->keeps_in_memory()};
}

void ImageClassificationTask::adapt(const ImageClassificationOptions& adapted) {
  options_.preprocess = adapted.preprocess;
  options_.image_size = adapted.image_size;
  options_.image_size_from = adapted.image_size_from;
  options_.clip_model = adapted.clip_model;
  options_.clip_model_from = adapted.clip_model_from;
}

void ImageClassificationTask::check_head_source(const std::string& why) const {
  {
    std::lock_guard<std::mutex> lock(head_mutex_);
    if (head_) return;
  }
  FUSION_ENSURE(spec_.head || !options_.clip_model.empty(), no_head(spec_.name, why));
}

const clip::ZeroShotHead& ImageClassificationTask::head() const {
  std::lock_guard<std::mutex> lock(head_mutex_);
  if (head_) return *head_;
  const std::string where = "task '" + spec_.name + "'";
  clip::ZeroShotHead h;
  if (spec_.head) {
    h = load_head(*spec_.head, ctx_.device(), ctx_.dtype());
  } else {
    FUSION_ENSURE(!options_.clip_model.empty(), no_head(spec_.name));
    fs::path cached;
    if (!options_.head_cache_dir.empty()) {
      cached = options_.head_cache_dir /
               (spec_.name + "-" + head_cache_key(options_.clip_model, classnames_, templates_) + ".safetensors");
    }
    std::error_code ec;
    bool have = false;
    if (!cached.empty() && fs::exists(cached, ec)) {
      try {
        h = load_head(cached, ctx_.device(), ctx_.dtype());
        have = h.text_embeds.size(0) == num_classes();
      } catch (const Error& e) {
        ctx_.log().warn(where + ": ignoring the cached head: " + e.what());
      }
      if (have) ctx_.log().debug(where + ": zero-shot head from the cache " + cached.string());
    }
    if (!have) {
      ctx_.log().info(where + ": computing the zero-shot head (" + std::to_string(classnames_.size()) +
                      " classes x " + std::to_string(templates_.size()) + " templates) from " +
                      options_.clip_model.string() +
                      (options_.clip_model_from.empty() ? "" : " (" + options_.clip_model_from + ")"));
      h = clip::build_zero_shot_head(options_.clip_model, classnames_, templates_, ctx_.device(), ctx_.dtype());
      if (!cached.empty()) {
        try {
          fs::create_directories(cached.parent_path());
          nlohmann::json classes = classnames_, tmpl = templates_;
          save_head(cached, h,
                    {{"task", spec_.name},
                     {option_name(&PoolOptions::clip_model), fs::absolute(options_.clip_model, ec).string()},
                     {"classnames", classes.dump()},
                     {option_name(&PoolOptions::templates), tmpl.dump()}});
        } catch (const std::exception& e) {
          ctx_.log().warn(where + ": cannot cache the zero-shot head in " + cached.string() + ": " + e.what());
        }
      }
    }
  }
  FUSION_ENSURE(h.text_embeds.defined() && h.text_embeds.dim() == 2 && h.text_embeds.size(0) == num_classes(),
                where, ": the zero-shot head has ", h.text_embeds.defined() ? h.text_embeds.size(0) : 0,
                " classes, the task ", num_classes());
  head_ = std::move(h);
  return *head_;
}

void ImageClassificationTask::set_head(clip::ZeroShotHead head) {
  FUSION_ENSURE(head.text_embeds.defined() && head.text_embeds.dim() == 2 &&
                    head.text_embeds.size(0) == num_classes(),
                "task '", spec_.name, "': a head with ", head.text_embeds.defined() ? head.text_embeds.size(0) : 0,
                " classes given to a task with ", num_classes());
  std::lock_guard<std::mutex> lock(head_mutex_);
  head_ = std::move(head);
}

at::Tensor ImageClassificationTask::logits(const Model& model, const StateDict& params,
                                           const at::Tensor& inputs) const {
  at::Tensor pooled = model.forward(params, inputs);
  return clip::apply_head(head_like(head(), pooled), pooled);
}

std::unique_ptr<BatchStream> ImageClassificationTask::train_stream(int64_t batch_size, uint64_t seed) {
  FUSION_ENSURE(train_, "task '", spec_.name, "' has no train split (set ", key(&PoolOptions::train_datasets), ".",
                spec_.name, ")");
  FUSION_ENSURE(batch_size > 0, "task '", spec_.name, "': train batch size must be positive, got ", batch_size);
  const LoaderOptions lo = loader_options(options_, batch_size);
  return std::make_unique<ClassificationStream>(train_, batch_size, seed, lo, ctx_.device(), ctx_.dtype(),
                                                "task '" + spec_.name + "' train split");
}

std::unique_ptr<BatchStream> ImageClassificationTask::test_stream(int64_t batch_size, uint64_t seed) {
  FUSION_ENSURE(batch_size > 0, "task '", spec_.name, "': test batch size must be positive, got ", batch_size);
  const LoaderOptions lo = loader_options(options_, batch_size);
  return std::make_unique<ClassificationStream>(test_, batch_size, seed, lo, ctx_.device(), ctx_.dtype(),
                                                "task '" + spec_.name + "' test split", "test batch",
                                                std::make_shared<const std::vector<int64_t>>(test_indices_));
}

nlohmann::json ImageClassificationTask::evaluate(const Model& model) {
  const int64_t evaluation = evaluations_++;  // k of predictions/model_<k>
  const auto start = std::chrono::steady_clock::now();
  // Images of another size than the model takes are refused before any is read, naming the option.
  if (auto takes = model_image_size(model); takes && takes->size != options_.preprocess.image_size) {
    FUSION_FAIL(size_mismatch(options_, *takes));
  }
  head();  // made (or loaded) before the clock of the first batch, and errors before any decoding
  at::NoGradGuard no_grad;
  const int64_t decodes_before = test_->decodes();
  const auto [device, dtype] = model_placement(model, ctx_);
  const int64_t b = options_.batch_size;
  const auto count = static_cast<int64_t>(test_indices_.size());
  const int64_t num_batches = (count + b - 1) / b;
  const LoaderOptions lo = loader_options(options_, b);
  auto indices = std::make_shared<const std::vector<int64_t>>(test_indices_);
  BatchLoader loader(
      test_,
      [indices, b](int64_t k) {
        const auto begin = indices->begin() + k * b;
        const auto end = indices->begin() + std::min<int64_t>((k + 1) * b, static_cast<int64_t>(indices->size()));
        return std::vector<int64_t>(begin, end);
      },
      num_batches, lo);
  auto bar = ctx_.progress("evaluate " + spec_.name, count);
  int64_t skipped = 0;
  const std::string where = "task '" + spec_.name + "' test split";
  ClassificationEvaluation eval(classnames_, {"index", "sample"}, options_.save_predictions);
  std::vector<std::vector<std::string>> ids;
  while (std::optional<LoadedBatch> batch = next_batch(loader, where)) {
    skipped += batch->skipped;
    const int64_t n = batch->inputs.size(0);
    if (n > 0) {
      at::Tensor x = batch->inputs.to(device, dtype);
      at::Tensor z = logits(model, model.parameters(), x).to(at::kFloat);
      ids.clear();
      if (options_.save_predictions) {
        const Dataset& split = test_->dataset();
        for (int64_t k = 0; k < n; ++k) {
          const int64_t sample = batch->samples[static_cast<size_t>(k)];
          ids.push_back({std::to_string(sample), split.sample_name(sample)});
        }
      }
      eval.add(z, batch->labels.to(device), ids);
    }
    bar->advance(n + batch->skipped);
  }
  bar->finish();
  const int64_t seen = eval.count();
  FUSION_ENSURE(seen > 0, "task '", spec_.name, "': no decodable test image (", skipped, " skipped)");
  if (skipped > 0) {
    ctx_.log().warn("task '" + spec_.name + "': skipped " + std::to_string(skipped) +
                    " undecodable test images (" + option_name(&PoolOptions::on_bad_image) + " = \"skip\")");
  }
  nlohmann::json report;
  if (options_.save_predictions) {
    const fs::path file = predictions_file_.empty()
                              ? ClassificationEvaluation::predictions_file(ctx_, evaluation, spec_.name)
                              : predictions_file_;
    report["predictions"] = eval.write_predictions(file, ctx_, spec_.name);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  report.update(nlohmann::json{{"accuracy", eval.accuracy()},
          {"loss", eval.loss()},
          {"num_samples", seen},
          {"skipped_images", skipped},
          {"decoded_images", test_->decodes() - decodes_before},
          {"seconds", seconds},
          {"images_per_second", seconds > 0 ? static_cast<double>(seen) / seconds : 0.0}});
  return report;
}

// ---------------------------------------------------------------------------------------------
// ImageClassificationPool

void ImageClassificationPoolOptions::bind(Options<ImageClassificationPoolOptions>& o) {
  using O = ImageClassificationPoolOptions;
  o("clip_model", &O::clip_model,
    "CLIPModel folder (config.json, model.safetensors, vocab.json, merges.txt) whose text tower makes the "
    "zero-shot heads; empty: modelpool.pretrained when that is a CLIPModel folder with a text tower (a "
    "clip_vision pool's), else every task needs a head file");
  o("data_dir", &O::data_dir,
    "folder with one subfolder per task of `tasks`, holding the splits as train/ and test/ class folders, "
    "train.csv and test.csv, or IDX files (train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz])");
  o("tasks", &O::tasks,
    "task names in report order; their splits are found under data_dir unless test_datasets / "
    "train_datasets name them. Built in: sun397, stanford_cars, resisc45, eurosat, svhn, gtsrb, mnist, dtd, "
    "fashion_mnist");
  o("test_datasets", &O::test_datasets,
    "table task = test split: a class folder, a CSV manifest (path,label) or an IDX images file "
    "(tasks not in `tasks` are appended)");
  o("train_datasets", &O::train_datasets, "table task = train split, in the same forms (for methods that train)");
  o("formats", &O::formats, "table task = auto | folder | csv | idx (default auto)");
  o("heads", &O::heads,
    "table task = head file (safetensors: projection, text_embeds, logit_scale) used instead of computing "
    "the zero-shot head");
  o("task_info", &O::task_info,
    "table task = file overriding the built-in class names and templates: JSON {\"classnames\": [...], "
    "\"templates\": [...]}, a JSON list of class names, or a text file with one class name per line");
  o("templates", &O::templates,
    "zero-shot templates for every task, each with one {} for the class name, replacing the built-in ones")
      .check([](const std::vector<std::string>& templates) {
        for (size_t i = 0; i < templates.size(); ++i) {
          const std::string& t = templates[i];
          const size_t at = t.find("{}");
          if (at == std::string::npos || t.find("{}", at + 2) != std::string::npos)
            return "[" + std::to_string(i) + "]: '" + t + "' must hold exactly one {} for the class name";
        }
        return std::string();
      });
  o("batch_size", &O::batch_size, "evaluation batch size").min(1);
  o("num_workers", &O::num_workers, "threads decoding and preprocessing ahead of the model (0: none)").range(0, 256);
  o("prefetch_batches", &O::prefetch_batches, "batches prepared ahead at most").range(1, 4096);
  o("image_size", &O::image_size,
    "shortest edge after the bicubic resize, and the centre crop; unset: the model's input size (the "
    "image_size in the config.json of a clip_vision pool's pretrained model), or 224 when the model pool does "
    "not tell it (a model that is not CLIP's); a value other than the model's is refused before the run starts")
      .range(1, 8192);
  o("on_bad_image", &O::on_bad_image,
    "an undecodable image: error (stop, naming the file) or skip (leave it out, counted as skipped_images)")
      .one_of({"error", "skip"});
  o("head_cache_dir", &O::head_cache_dir,
    "folder caching computed zero-shot heads (\"\": $XDG_CACHE_HOME/fusion/zero_shot_heads or "
    "~/.cache/fusion/zero_shot_heads; \"none\": no cache)");
  o("cache_mb", &O::cache_mb,
    "MiB of preprocessed train images kept in memory between epochs (147 KiB per image at 224; whole splits, "
    "in task order; 0: none); the test images kept between evaluations are budgeted by [run] eval_cache_mb")
      .min(0);
  o("max_test_samples", &O::max_test_samples,
    "evaluate on at most this many test samples per task, a fixed random subset (0: all)")
      .min(0);
  o("save_predictions", &O::save_predictions,
    "write each evaluated test image's predicted label and loss: run_dir/predictions/model_<k>/<task>.csv for the "
    "k-th evaluated model (k from 0; each task's report names its file), columns index,sample,label,label_name,"
    "predicted,predicted_name,loss; one process only");
}

ComponentInfo ImageClassificationPool::info() {
  ComponentInfo info;
  info.name = "image_classification";
  info.summary = "CLIP zero-shot image classification tasks (TA8, MNIST, Fashion-MNIST built in) from image "
                 "folders, CSV manifests or IDX files";
  info.reference = "https://github.com/tanganke/fusion_bench (CLIPVisionModelTaskPool)";
  return info;
}

std::pair<std::vector<TaskSpec>, ImageClassificationOptions> ImageClassificationPool::parse(const PoolOptions& c) {
  ImageClassificationOptions o;
  o.clip_model = c.clip_model;
  o.batch_size = c.batch_size;
  o.num_workers = c.num_workers;
  o.prefetch_batches = c.prefetch_batches;
  if (c.image_size) o.preprocess.image_size = *c.image_size;
  o.image_size = c.image_size;
  o.skip_bad_images = c.on_bad_image == "skip";
  o.cache_mb = c.cache_mb;
  o.max_test_samples = c.max_test_samples;
  o.save_predictions = c.save_predictions;
  o.templates = c.templates;
  o.head_cache_dir = c.head_cache_dir == "none"  ? fs::path()
                     : c.head_cache_dir.empty() ? default_head_cache_dir()
                                                : fs::path(c.head_cache_dir);

  const fs::path data_dir = c.data_dir;
  std::vector<TaskSpec> specs;
  std::set<std::string> seen;
  auto add = [&](const std::string& name, const std::string& where) {
    FUSION_ENSURE(!name.empty(), where, ": empty task name");
    FUSION_ENSURE(seen.insert(name).second, where, ": task '", name, "' is listed twice");
    TaskSpec s;
    s.name = name;
    specs.push_back(std::move(s));
  };
  for (size_t i = 0; i < c.tasks.size(); ++i) add(c.tasks[i], key(&PoolOptions::tasks) + "[" + std::to_string(i) + "]");
  for (const auto& [name, path] : c.test_datasets) {
    if (!seen.count(name)) add(name, key(&PoolOptions::test_datasets) + "." + name);
  }
  FUSION_ENSURE(!specs.empty(), "taskpool: no tasks: list them in ", key(&PoolOptions::tasks), " (with ",
                key(&PoolOptions::data_dir), ") or give [", key(&PoolOptions::test_datasets),
                "] task = \"path\"");
  auto find = [&](const StringMap& m, const std::string& name) -> std::optional<std::string> {
    for (const auto& [k, v] : m)
      if (k == name) return v;
    return std::nullopt;
  };
  std::vector<std::string> all;
  for (const TaskSpec& s : specs) all.push_back(s.name);
  for (auto table : {&PoolOptions::train_datasets, &PoolOptions::formats, &PoolOptions::heads, &PoolOptions::task_info}) {
    for (const auto& [name, value] : c.*table) {
      FUSION_ENSURE(seen.count(name), key(table), ".", name, ": no such task (tasks: ", join(all), ")");
    }
  }

  // The conventional places of a split under data_dir/<task>/.
  auto conventional = [&](const std::string& task, const std::string& split) -> std::optional<fs::path> {
    const fs::path dir = data_dir / task;
    std::error_code ec;
    if (fs::is_directory(dir / split, ec)) return dir / split;
    if (fs::is_regular_file(dir / (split + ".csv"), ec)) return dir / (split + ".csv");
    std::vector<std::string> prefixes{split};
    if (split == "test") prefixes.push_back("t10k");
    for (const auto& p : prefixes) {
      for (const char* suffix : {"-images-idx3-ubyte", "-images-idx3-ubyte.gz", "-images.idx3-ubyte"}) {
        if (fs::is_regular_file(dir / (p + suffix), ec)) return dir / (p + suffix);
      }
    }
    return std::nullopt;
  };

  for (TaskSpec& s : specs) {
    if (auto p = find(c.test_datasets, s.name)) {
      s.test = *p;
    } else {
      FUSION_ENSURE(!data_dir.empty(), "taskpool: task '", s.name, "' has no test split: set ",
                    key(&PoolOptions::data_dir), " or ", key(&PoolOptions::test_datasets), ".", s.name);
      auto found = conventional(s.name, "test");
      FUSION_ENSURE(found, "taskpool: task '", s.name, "' has no test split under '", (data_dir / s.name).string(),
                    "' (looked for test/, test.csv, test-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz]); "
                    "or set ", key(&PoolOptions::test_datasets), ".", s.name);
      s.test = *found;
    }
    if (auto p = find(c.train_datasets, s.name)) {
      s.train = fs::path(*p);
    } else if (!data_dir.empty()) {
      if (auto found = conventional(s.name, "train")) s.train = *found;
    }
    if (auto f = find(c.formats, s.name)) s.format = parse_format(*f, key(&PoolOptions::formats) + "." + s.name);
    if (auto h = find(c.heads, s.name)) {
      std::error_code ec;
      FUSION_ENSURE(fs::is_regular_file(*h, ec), key(&PoolOptions::heads), ".", s.name, ": '", *h,
                    "' does not exist");
      s.head = fs::path(*h);
    }
    if (auto i = find(c.task_info, s.name)) {
      std::error_code ec;
      FUSION_ENSURE(fs::is_regular_file(*i, ec), key(&PoolOptions::task_info), ".", s.name, ": '", *i,
                    "' does not exist");
      s.info = fs::path(*i);
    }
  }
  if (!o.clip_model.empty()) {
    std::error_code ec;
    FUSION_ENSURE(fs::is_directory(o.clip_model, ec), key(&PoolOptions::clip_model), ": '", o.clip_model.string(),
                  "' is not a folder (expected a CLIPModel folder with config.json, weights, vocab.json, merges.txt)");
  }
  return {std::move(specs), std::move(o)};
}

ImageClassificationPool::ImageClassificationPool(const PoolOptions& options, const Context& ctx)
    : ImageClassificationPool(parse(options), ctx) {}

ImageClassificationPool::ImageClassificationPool(
    std::pair<std::vector<TaskSpec>, ImageClassificationOptions> parsed, const Context& ctx)
    : ImageClassificationPool(std::move(parsed.first), std::move(parsed.second), ctx) {}

ImageClassificationPool::ImageClassificationPool(std::vector<TaskSpec> tasks, ImageClassificationOptions options,
                                                 Context ctx)
    : options_(std::move(options)), ctx_(std::move(ctx)) {
  // Over several processes each one evaluates a share of the run's (model, task) pairs, so a task's
  // evaluation count is not the run's model index that names the predictions' folder.
  const Communicator& comm = communicator(ctx_);
  FUSION_ENSURE(!options_.save_predictions || !comm.distributed(), key(&PoolOptions::save_predictions),
                " = true is not supported over several processes (", comm.world_size(),
                " here): run it in one process");
  for (TaskSpec& spec : tasks) {
    tasks_.push_back(std::make_unique<ImageClassificationTask>(std::move(spec), options_, ctx_));
  }
  plan_memory();
  for (const auto& task : tasks_) {
    const auto& t = *task;
    const bool keep_train = t.kept_in_memory().second;
    const Dataset* train = t.train_split();
    const std::string kept = test_kept_text(t);
    ctx_.log().info("task " + t.name() + ": " + std::to_string(t.num_classes()) + " classes (from " +
                    t.classes_source() + "), " +
                    std::to_string(t.templates().size()) + " templates; test " + std::to_string(t.test_split().size()) +
                    " (" + format_name(t.test_split().format()) + (kept.empty() ? "" : ", " + kept) + ")" +
                    (train ? "; train " + std::to_string(train->size()) + " (" + format_name(train->format()) +
                                 (keep_train ? ", kept in memory" : "") + ")"
                           : std::string("; no train split")));
  }
}

void ImageClassificationPool::plan_memory() {
  // Test images (every evaluated model reads them all) within eval_cache_bytes, task by task: a
  // split that fits only in part keeps its first images in evaluation order. Train splits, read in
  // a new order every epoch, whole within cache_mb.
  const ImageClassificationOptions& options = options_;
  const int64_t per_image = options.preprocess.image_size * options.preprocess.image_size * 3;
  int64_t test_budget = options.eval_cache_bytes;
  int64_t train_budget = options.cache_mb * (int64_t{1} << 20);
  for (const auto& task : tasks_) {
    const int64_t keep_test = std::min(task->evaluated_test_images(), test_budget / per_image);
    test_budget -= keep_test * per_image;
    bool keep_train = false;
    if (const Dataset* train = task->train_split(); train && train->size() * per_image <= train_budget) {
      keep_train = true;
      train_budget -= train->size() * per_image;
    }
    task->keep_in_memory(keep_test, keep_train);
  }
}

void ImageClassificationPool::plan_memory_again(const std::string& why) {
  std::vector<std::pair<int64_t, bool>> before;
  for (const auto& t : tasks_) before.emplace_back(t->test_images_kept(), t->kept_in_memory().second);
  plan_memory();
  for (size_t i = 0; i < tasks_.size(); ++i) {
    const ImageClassificationTask& t = *tasks_[i];
    const bool train = t.kept_in_memory().second;
    if (std::make_pair(t.test_images_kept(), train) == before[i]) continue;
    const std::string kept = test_kept_text(t);
    ctx_.log().info("task " + t.name() + ": " + why + ", test " + (kept.empty() ? "not kept in memory" : kept) +
                    (t.train_split() ? std::string("; train ") + (train ? "kept in memory" : "not kept in memory")
                                     : std::string()));
  }
}

void ImageClassificationPool::set_eval_cache_bytes(int64_t bytes) {
  FUSION_ENSURE(bytes >= 0, "taskpool: negative evaluation cache budget ", bytes);
  if (bytes == options_.eval_cache_bytes) return;
  options_.eval_cache_bytes = bytes;
  plan_memory_again("with " + short_mib(bytes) + " MiB for test images (run.eval_cache_mb)");
}

void ImageClassificationPool::adapt_to(const ModelPool& models) {
  const PretrainedFacts facts = pretrained_facts(models);
  const std::string image_size = key(&PoolOptions::image_size);
  if (facts.image_size) {
    const ImageSizeFact& model = *facts.image_size;
    FUSION_ENSURE(!options_.image_size || *options_.image_size == model.size, size_mismatch(options_, model));
    if (!options_.image_size) {
      const bool changed = model.size != options_.preprocess.image_size;
      options_.preprocess.image_size = model.size;
      options_.image_size_from = model.source;
      const std::string s = std::to_string(model.size);
      ctx_.log().info("taskpool: images resized and cropped to " + s + " x " + s + ", the model's input size (" +
                      model.source + "), as " + image_size + " is unset");
      for (const auto& t : tasks_) t->adapt(options_);
      if (changed) plan_memory_again("at " + s + " x " + s);
    }
  }
  bool needs_clip_model = false;
  for (const auto& t : tasks_) needs_clip_model = needs_clip_model || !t->has_head_file();
  if (options_.clip_model.empty() && facts.text_tower) {
    options_.clip_model = facts.folder;
    options_.clip_model_from = facts.option;
    for (const auto& t : tasks_) t->adapt(options_);
    if (needs_clip_model) {
      ctx_.log().info("taskpool: zero-shot heads from the text tower of " + facts.option + " (" +
                      facts.folder.string() + "), as " + key(&PoolOptions::clip_model) + " is unset");
    }
  }
  if (options_.clip_model.empty()) {
    for (const auto& t : tasks_) t->check_head_source(facts.no_text_tower);
  }
}

std::vector<std::string> ImageClassificationPool::task_names() const {
  std::vector<std::string> out;
  for (const auto& t : tasks_) out.push_back(t->name());
  return out;
}

ImageClassificationTask& ImageClassificationPool::classification_task(const std::string& name) {
  for (auto& t : tasks_)
    if (t->name() == name) return *t;
  FUSION_FAIL("taskpool: no task '", name, "' (tasks: ", join(task_names()), ")");
}

Task& ImageClassificationPool::task(const std::string& name) { return classification_task(name); }

}  // namespace fusion::image_classification
