#include "text_classification.hpp"

#include <ATen/core/Reduction.h>
#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <set>

#include "fusion/checkpoint_pool.hpp"
#include "fusion/classification.hpp"
#include "fusion/error.hpp"
#include "fusion/distributed.hpp"
#include "fusion/files.hpp"
#include "fusion/gpt2/config.hpp"
#include "fusion/gpt2/model.hpp"
#include "fusion/gpt2/pool.hpp"
#include "fusion/safetensors.hpp"

namespace fusion::text_classification {
namespace fs = std::filesystem;

namespace {

using PoolOptions = TextClassificationPoolOptions;

// "taskpool.<option>", for messages that name an option of the [taskpool] table.
template <class M>
std::string key(M PoolOptions::*member) {
  return "taskpool." + option_name(member);
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

const std::string kScore = "score.weight";

// Where the checkpoint `path` keeps score.weight (gpt2::find_score_weight), or nullopt; errors begin with `where`.
std::optional<gpt2::ScoreWeightInfo> find_score(const fs::path& path, const std::string& where) {
  std::error_code ec;
  FUSION_ENSURE(fs::exists(path, ec), where, ": '", path.string(), "' does not exist");
  try {
    return gpt2::find_score_weight(path);
  } catch (const Error& e) {
    FUSION_FAIL(where, ": ", e.what());
  }
}

std::string no_score(const fs::path& path) {
  return "'" + path.string() + "' has no " + kScore + " (not a GPT2ForSequenceClassification checkpoint?)";
}

// The device a model computes on: that of its first floating parameter.
at::Device model_device(const Model& model, const Context& ctx) {
  for (const auto& item : model.parameters())
    if (item.second.defined() && item.second.is_floating_point()) return item.second.device();
  return ctx.device();
}

// Epoch e of a stream over n examples: a permutation drawn from (seed, e).
std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  std::mt19937_64 rng(seed ^ (0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(epoch + 1)));
  std::shuffle(order.begin(), order.end(), rng);
  return order;
}

// Endless shuffled batches of the examples `subset` lists (every example when null).
class TextStream : public BatchStream {
 public:
  TextStream(const TextClassificationTask& task, std::shared_ptr<const TextSplit> split,
             std::vector<int64_t> subset, int64_t batch_size, uint64_t seed, at::Device device)
      : task_(task), split_(std::move(split)), subset_(std::move(subset)), batch_size_(batch_size), seed_(seed),
        device_(device) {}

  Batch next() override {
    std::vector<std::vector<int64_t>> rows;
    std::vector<int64_t> labels;
    for (int64_t i = 0; i < batch_size_; ++i) {
      if (pos_ == static_cast<int64_t>(order_.size())) {
        order_ = epoch_order(static_cast<int64_t>(subset_.size()), seed_, epoch_++);
        pos_ = 0;
      }
      const TextExample& ex = split_->examples[static_cast<size_t>(subset_[static_cast<size_t>(order_[pos_++])])];
      rows.push_back(task_.encode(ex));
      labels.push_back(ex.label);
    }
    return {task_.pad_rows(rows).to(device_), at::tensor(labels, at::kLong).to(device_)};
  }

 private:
  const TextClassificationTask& task_;
  std::shared_ptr<const TextSplit> split_;
  std::vector<int64_t> subset_;
  int64_t batch_size_;
  uint64_t seed_;
  at::Device device_;
  std::vector<int64_t> order_;
  int64_t pos_ = 0, epoch_ = 0;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// TextClassificationTask

TextClassificationTask::TextClassificationTask(TextTaskSpec spec, const TextClassificationOptions& options,
                                               Context ctx, std::shared_ptr<EvalCacheBudget> budget)
    : spec_(std::move(spec)), options_(options), ctx_(std::move(ctx)), budget_(std::move(budget)) {
  if (!budget_) budget_ = std::make_shared<EvalCacheBudget>();
  const std::string where = "task '" + spec_.name + "'";
  FUSION_ENSURE(!spec_.labels.empty(), where, ": no label names");
  test_ = std::make_shared<const TextSplit>(
      read_split(spec_.test, spec_.format, spec_.name, spec_.labels, options_.bad_rows, where + " test split"));
  if (spec_.train) {
    train_ = std::make_shared<const TextSplit>(
        read_split(*spec_.train, spec_.format, spec_.name, spec_.labels, options_.bad_rows, where + " train split"));
  }
  const auto total = static_cast<int64_t>(test_->examples.size());
  if (options_.max_test_samples > 0 && options_.max_test_samples < total) {
    std::vector<int64_t> perm = epoch_order(total, 0, 0);
    test_indices_.assign(perm.begin(), perm.begin() + options_.max_test_samples);
    std::sort(test_indices_.begin(), test_indices_.end());
  } else {
    test_indices_.resize(static_cast<size_t>(total));
    for (int64_t i = 0; i < total; ++i) test_indices_[static_cast<size_t>(i)] = i;
  }
  cached_ids_.resize(static_cast<size_t>(total));
}

const gpt2::Gpt2Tokenizer& TextClassificationTask::tokenizer() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!tokenizer_) {
    FUSION_ENSURE(!options_.tokenizer.empty(), "task '", spec_.name, "': no tokenizer: set ",
                  key(&PoolOptions::tokenizer), " (a folder with GPT-2's vocab.json and merges.txt)");
    try {
      tokenizer_ = gpt2::Gpt2Tokenizer::from_folder(options_.tokenizer);
    } catch (const Error& e) {
      FUSION_FAIL(options_.tokenizer_from.empty() ? key(&PoolOptions::tokenizer) : options_.tokenizer_from, ": ",
                  e.what());
    }
  }
  return *tokenizer_;
}

void TextClassificationTask::set_tokenizer(gpt2::Gpt2Tokenizer tokenizer) {
  std::lock_guard<std::mutex> lock(mutex_);
  tokenizer_ = std::move(tokenizer);
  for (auto& ids : cached_ids_) ids.clear();
}

int64_t TextClassificationTask::pad_id() const {
  return options_.pad_token_id ? *options_.pad_token_id : tokenizer().eos_id();
}

std::vector<int64_t> TextClassificationTask::encode(const TextExample& example) const {
  gpt2::EncodeOptions o;
  o.max_length = options_.max_length;
  o.truncation = true;
  o.padding = gpt2::Padding::none;
  const gpt2::Gpt2Tokenizer& tok = tokenizer();
  gpt2::Encoding e = example.text_pair ? tok.encode_plus(example.text, *example.text_pair, o)
                                       : tok.encode_plus(example.text, o);
  return std::move(e.ids);
}

at::Tensor TextClassificationTask::pad_rows(const std::vector<std::vector<int64_t>>& rows) const {
  int64_t len = 0;
  for (const auto& r : rows) len = std::max<int64_t>(len, static_cast<int64_t>(r.size()));
  if (options_.pad_to_max_length) len = std::max(len, options_.max_length);
  at::Tensor out = at::full({static_cast<int64_t>(rows.size()), len}, pad_id(), at::kLong);
  auto a = out.accessor<int64_t, 2>();
  for (size_t i = 0; i < rows.size(); ++i)
    for (size_t j = 0; j < rows[i].size(); ++j) a[static_cast<int64_t>(i)][static_cast<int64_t>(j)] = rows[i][j];
  return out;
}

const at::Tensor& TextClassificationTask::head() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (head_.defined()) return head_;
  const std::string where = "task '" + spec_.name + "'";
  FUSION_ENSURE(spec_.head, where, ": no classification head: add an expert '",
                spec_.expert.empty() ? spec_.name : spec_.expert, "' under [modelpool.models] or set ",
                key(&PoolOptions::heads), ".", spec_.name);
  const std::string from = where + " (" + spec_.head_from + ")";
  const auto info = find_score(*spec_.head, from);
  FUSION_ENSURE(info, from, ": ", no_score(*spec_.head));
  FUSION_ENSURE(info->shape.size() == 2, from, ": ", kScore, " of '", spec_.head->string(), "' has shape ",
                shape_text(info->shape), ", expected [num_labels, n_embd]");
  at::Tensor w = gpt2::read_score_weight(*spec_.head);
  FUSION_ENSURE(w.size(0) == num_classes(), where, ": the head ", kScore, " ", shape_text(w.sizes().vec()), " of '",
                spec_.head->string(), "' (", spec_.head_from, ") has ", w.size(0), " classes but the task has ",
                num_classes(), " (", join(spec_.labels), ")");
  head_ = w;
  return head_;
}

void TextClassificationTask::set_head(at::Tensor weight) {
  FUSION_ENSURE(weight.defined() && weight.dim() == 2 && weight.size(0) == num_classes(), "task '", spec_.name,
                "': a head with ", weight.defined() && weight.dim() == 2 ? weight.size(0) : 0,
                " classes given to a task with ", num_classes());
  std::lock_guard<std::mutex> lock(mutex_);
  head_ = weight.detach().to(at::kCPU, at::kFloat);
}

void TextClassificationTask::adapt(const TextClassificationOptions& options, std::optional<fs::path> head,
                                   const std::string& head_from) {
  options_.tokenizer = options.tokenizer;
  options_.tokenizer_from = options.tokenizer_from;
  if (options_.max_length != options.max_length) clear_eval_cache();
  options_.max_length = options.max_length;
  if (head && !spec_.head) {
    spec_.head = std::move(head);
    spec_.head_from = head_from;
  }
}

void TextClassificationTask::clear_eval_cache() {
  for (auto& ids : cached_ids_) std::vector<int64_t>().swap(ids);
}

at::Tensor TextClassificationTask::logits(const Model& model, const StateDict& params, const at::Tensor& inputs) const {
  const auto* gpt2 = dynamic_cast<const gpt2::Gpt2Model*>(&model);
  FUSION_ENSURE(gpt2 != nullptr, "task '", spec_.name, "': the model is a '", model.architecture(),
                "', not a GPT-2 body (text_classification evaluates GPT-2: use modelpool.name = \"gpt2\")");
  at::Tensor hidden = gpt2->hidden_states(params, inputs);
  const at::Tensor& w = head();
  FUSION_ENSURE(w.size(1) == hidden.size(-1), "task '", spec_.name, "': the head ", kScore, " ",
                shape_text(w.sizes().vec()), " does not fit the model's hidden size ", hidden.size(-1));
  return gpt2::classify(hidden, inputs, gpt2::ScoreHead{w, {}, pad_id()});
}

std::unique_ptr<BatchStream> TextClassificationTask::train_stream(int64_t batch_size, uint64_t seed) {
  FUSION_ENSURE(train_, "task '", spec_.name, "' has no train split (set ", key(&PoolOptions::train_datasets), ".",
                spec_.name, ")");
  FUSION_ENSURE(batch_size > 0, "task '", spec_.name, "': train batch size must be positive, got ", batch_size);
  std::vector<int64_t> all(train_->examples.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i);
  return std::make_unique<TextStream>(*this, train_, std::move(all), batch_size, seed, ctx_.device());
}

std::unique_ptr<BatchStream> TextClassificationTask::test_stream(int64_t batch_size, uint64_t seed) {
  FUSION_ENSURE(batch_size > 0, "task '", spec_.name, "': test batch size must be positive, got ", batch_size);
  return std::make_unique<TextStream>(*this, test_, test_indices_, batch_size, seed, ctx_.device());
}

nlohmann::json TextClassificationTask::evaluate(const Model& model) {
  const int64_t evaluation = evaluations_++;  // k of predictions/model_<k>
  const auto start = std::chrono::steady_clock::now();
  const auto* gpt2 = dynamic_cast<const gpt2::Gpt2Model*>(&model);
  if (gpt2 && options_.max_length > gpt2->gpt2_config().n_positions) {
    FUSION_FAIL(key(&PoolOptions::max_length), " = ", options_.max_length, " but the model takes at most ",
                gpt2->gpt2_config().n_positions, " tokens (n_positions)");
  }
  head();
  tokenizer();
  at::NoGradGuard no_grad;
  const at::Device device = model_device(model, ctx_);
  const int64_t b = options_.batch_size;
  const auto count = static_cast<int64_t>(test_indices_.size());
  auto bar = ctx_.progress("evaluate " + spec_.name, count);
  int64_t tokenized = 0;
  ClassificationEvaluation eval(spec_.labels, {"line"}, options_.save_predictions);
  std::vector<std::vector<std::string>> ids;
  for (int64_t first = 0; first < count; first += b) {
    const int64_t n = std::min(b, count - first);
    std::vector<std::vector<int64_t>> rows;
    std::vector<int64_t> labels;
    for (int64_t k = first; k < first + n; ++k) {
      const auto i = static_cast<size_t>(test_indices_[static_cast<size_t>(k)]);
      const TextExample& ex = test_->examples[i];
      if (!cached_ids_[i].empty()) {
        rows.push_back(cached_ids_[i]);
      } else {
        rows.push_back(encode(ex));
        ++tokenized;
        const auto bytes = static_cast<int64_t>(rows.back().size() * sizeof(int64_t) + sizeof(std::vector<int64_t>));
        if (budget_->bytes_left >= bytes) {
          cached_ids_[i] = rows.back();
          budget_->bytes_left -= bytes;
        }
      }
      labels.push_back(ex.label);
    }
    at::Tensor x = pad_rows(rows).to(device);
    at::Tensor y = at::tensor(labels, at::kLong).to(device);
    at::Tensor z = logits(model, model.parameters(), x).to(at::kFloat);
    ids.clear();
    if (options_.save_predictions) {
      for (int64_t k = 0; k < n; ++k) {
        const TextExample& ex = test_->examples[static_cast<size_t>(test_indices_[static_cast<size_t>(first + k)])];
        ids.push_back({std::to_string(ex.line)});
      }
    }
    eval.add(z, y, ids);
    bar->advance(n);
  }
  bar->finish();
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
          {"num_samples", count},
          {"labels", spec_.labels},
          {"skipped_rows", test_->skipped_rows},
          {"tokenized_examples", tokenized},
          {"seconds", seconds},
          {"examples_per_second", seconds > 0 ? static_cast<double>(count) / seconds : 0.0}});
  return report;
}

// ---------------------------------------------------------------------------------------------
// TextClassificationPool

void TextClassificationPoolOptions::bind(Options<TextClassificationPoolOptions>& o) {
  using O = TextClassificationPoolOptions;
  o("tokenizer", &O::tokenizer,
    "folder with GPT-2's vocab.json and merges.txt; empty: modelpool.pretrained's folder");
  o("data_dir", &O::data_dir,
    "folder with GLUE as distributed: CoLA/, SST-2/, MRPC/, QNLI/, QQP/, RTE/, MNLI/, each with train.tsv and "
    "dev.tsv (MNLI: dev_matched.tsv, dev_mismatched.tsv), the dev files being the test splits as in FusionBench; "
    "other tasks: data_dir/<task>/ with test.{tsv,csv,jsonl} and train.{tsv,csv,jsonl}");
  o("tasks", &O::tasks,
    "task names in report order. Built in (GLUE, Hugging Face's label order): cola, sst2, mrpc, qqp, mnli, "
    "mnli_mismatched, qnli, rte");
  o("test_datasets", &O::test_datasets, "table task = test split file (tasks not in `tasks` are appended)");
  o("train_datasets", &O::train_datasets, "table task = train split file (for methods that train)");
  o("formats", &O::formats,
    "table task = auto | csv | tsv | jsonl | cola | sst2 | mrpc | qnli | qqp | rte | mnli. auto: a built-in task's "
    ".tsv has its GLUE layout, else by extension. TSV files are read as GLUE's readers do (quotes literal, "
    "fields split at every tab); csv/tsv need a header with text, label and optionally text_pair; jsonl: one "
    "object per line with \"text\", \"label\" (index or name), optional \"text_pair\"");
  o("label_names", &O::label_names,
    "table task = label names by index, \"a, b\" or a JSON list (required for tasks that are not built in); "
    "a label field is a name or an index");
  o("heads", &O::heads,
    "table task = GPT2ForSequenceClassification folder or .safetensors file whose score.weight is the task's "
    "head. Heads are never merged: each task is evaluated with the merged body and its own expert's head, as "
    "FusionBench does; by default the head of the expert named as the task (or taskpool.experts.<task>)");
  o("experts", &O::experts, "table task = the model pool's expert whose score.weight is the task's head");
  o("batch_size", &O::batch_size, "evaluation batch size").min(1);
  o("max_length", &O::max_length,
    "longest row in tokens, text and pair together; longer rows are truncated as Hugging Face's tokenizer does "
    "(truncation=True; a pair by longest_first); 0: the model's n_positions (1024 for GPT-2)")
      .min(0);
  o("padding", &O::padding,
    "longest: pad each batch to its longest row; max_length: to max_length (FusionBench's). Padding is on the "
    "right with pad_token_id, so with causal attention both give the same logits")
      .one_of({"longest", "max_length"});
  o("pad_token_id", &O::pad_token_id,
    "padding id, also the pad token sequence classification pools before (the token before a row's first pad); "
    "default: <|endoftext|> (50256), as FusionBench sets pad = eos")
      .min(0);
  o("on_bad_row", &O::on_bad_row,
    "a malformed row (wrong column count, unknown label, empty text): error (stop, naming file and line) or skip "
    "(leave it out, counted as skipped_rows)")
      .one_of({"error", "skip"});
  o("max_test_samples", &O::max_test_samples,
    "evaluate on at most this many test examples per task, a fixed random subset (0: all)")
      .min(0);
  o("save_predictions", &O::save_predictions,
    "write each test example's predicted label and loss: run_dir/predictions/model_<k>/<task>.csv for the k-th "
    "evaluated model (k from 0; each task's report names its file), columns line,label,label_name,predicted,"
    "predicted_name,loss; one process only");
}

ComponentInfo TextClassificationPool::info() {
  ComponentInfo info;
  info.name = "text_classification";
  info.summary = "GPT-2 sequence classification on GLUE (own TSV files) and CSV / JSON-lines tasks; each task keeps "
                 "its own expert's score head, never merged";
  info.reference = "https://github.com/tanganke/fusion_bench (GPT-2 GLUE task pool)";
  return info;
}

std::pair<std::vector<TextTaskSpec>, TextClassificationOptions> TextClassificationPool::parse(const PoolOptions& c) {
  TextClassificationOptions o;
  o.tokenizer = c.tokenizer;
  o.batch_size = c.batch_size;
  if (c.max_length > 0) {
    o.max_length = c.max_length;
    o.max_length_given = true;
  }
  o.pad_to_max_length = c.padding == "max_length";
  o.pad_token_id = c.pad_token_id;
  o.bad_rows = c.on_bad_row == "skip" ? BadRow::Skip : BadRow::Error;
  o.max_test_samples = c.max_test_samples;
  o.save_predictions = c.save_predictions;

  const fs::path data_dir = c.data_dir;
  std::vector<TextTaskSpec> specs;
  std::set<std::string> seen;
  auto add = [&](const std::string& name, const std::string& where) {
    FUSION_ENSURE(!name.empty(), where, ": empty task name");
    FUSION_ENSURE(seen.insert(name).second, where, ": task '", name, "' is listed twice");
    TextTaskSpec s;
    s.name = name;
    specs.push_back(std::move(s));
  };
  for (size_t i = 0; i < c.tasks.size(); ++i) add(c.tasks[i], key(&PoolOptions::tasks) + "[" + std::to_string(i) + "]");
  for (const auto& [name, path] : c.test_datasets)
    if (!seen.count(name)) add(name, key(&PoolOptions::test_datasets) + "." + name);
  FUSION_ENSURE(!specs.empty(), "taskpool: no tasks: list them in ", key(&PoolOptions::tasks), " (with ",
                key(&PoolOptions::data_dir), ") or give [", key(&PoolOptions::test_datasets), "] task = \"path\"");
  std::vector<std::string> all;
  for (const TextTaskSpec& s : specs) all.push_back(s.name);
  for (auto table : {&PoolOptions::train_datasets, &PoolOptions::formats, &PoolOptions::label_names,
                     &PoolOptions::heads, &PoolOptions::experts}) {
    for (const auto& [name, value] : c.*table)
      FUSION_ENSURE(seen.count(name), key(table), ".", name, ": no such task (tasks: ", join(all), ")");
  }
  auto find = [](const StringMap& m, const std::string& name) -> std::optional<std::string> {
    for (const auto& [k, v] : m)
      if (k == name) return v;
    return std::nullopt;
  };
  // A split's file under data_dir: GLUE's for a built-in task, else <task>/<split>.{tsv,csv,jsonl}.
  auto conventional = [&](const std::string& task, bool test) -> std::vector<fs::path> {
    if (const GlueTask* g = builtin_task(task)) return {data_dir / g->folder / (test ? g->test_file : g->train_file)};
    std::vector<fs::path> out;
    for (const char* ext : {".tsv", ".csv", ".jsonl"}) out.push_back(data_dir / task / ((test ? "test" : "train") + std::string(ext)));
    return out;
  };
  auto first_existing = [](const std::vector<fs::path>& candidates) -> std::optional<fs::path> {
    std::error_code ec;
    for (const fs::path& p : candidates)
      if (fs::is_regular_file(p, ec)) return p;
    return std::nullopt;
  };
  for (TextTaskSpec& s : specs) {
    const GlueTask* glue = builtin_task(s.name);
    if (auto p = find(c.test_datasets, s.name)) {
      s.test = *p;
    } else {
      FUSION_ENSURE(!data_dir.empty(), "taskpool: task '", s.name, "' has no test split: set ",
                    key(&PoolOptions::data_dir), " or ", key(&PoolOptions::test_datasets), ".", s.name);
      const auto candidates = conventional(s.name, true);
      auto found = first_existing(candidates);
      std::vector<std::string> names;
      for (const auto& p : candidates) names.push_back(p.string());
      FUSION_ENSURE(found, "taskpool: task '", s.name, "' has no test split: no ", join(names), "; set ",
                    key(&PoolOptions::test_datasets), ".", s.name);
      s.test = *found;
    }
    if (auto p = find(c.train_datasets, s.name)) {
      s.train = fs::path(*p);
    } else if (!data_dir.empty()) {
      if (auto found = first_existing(conventional(s.name, false))) s.train = *found;
    }
    if (auto f = find(c.formats, s.name)) s.format = parse_format(*f, key(&PoolOptions::formats) + "." + s.name);
    if (auto l = find(c.label_names, s.name)) {
      s.labels_from = key(&PoolOptions::label_names) + "." + s.name;
      s.labels = parse_label_names(*l, s.labels_from);
    } else {
      FUSION_ENSURE(glue, "taskpool: task '", s.name, "' has no label names: it is not built in (built in: ",
                    join(builtin_task_names()), "), so set ", key(&PoolOptions::label_names), ".", s.name,
                    " = \"name0, name1, ...\"");
      s.labels = glue->labels;
      s.labels_from = "the built-in GLUE labels";
    }
    if (auto h = find(c.heads, s.name)) {
      std::error_code ec;
      FUSION_ENSURE(fs::exists(*h, ec), key(&PoolOptions::heads), ".", s.name, ": '", *h, "' does not exist");
      s.head = fs::path(*h);
      s.head_from = key(&PoolOptions::heads) + "." + s.name;
    }
    if (auto e = find(c.experts, s.name)) s.expert = *e;
  }
  return {std::move(specs), std::move(o)};
}

TextClassificationPool::TextClassificationPool(const PoolOptions& options, const Context& ctx)
    : TextClassificationPool(parse(options), ctx) {}

TextClassificationPool::TextClassificationPool(std::pair<std::vector<TextTaskSpec>, TextClassificationOptions> parsed,
                                               const Context& ctx)
    : TextClassificationPool(std::move(parsed.first), std::move(parsed.second), ctx) {}

TextClassificationPool::TextClassificationPool(std::vector<TextTaskSpec> tasks, TextClassificationOptions options,
                                               Context ctx)
    : options_(std::move(options)), ctx_(std::move(ctx)), budget_(std::make_shared<EvalCacheBudget>()) {
  // Over several processes each one evaluates a share of the run's (model, task) pairs, so a task's
  // evaluation count is not the run's model index that names the predictions' folder.
  const Communicator& comm = communicator(ctx_);
  FUSION_ENSURE(!options_.save_predictions || !comm.distributed(), key(&PoolOptions::save_predictions),
                " = true is not supported over several processes (", comm.world_size(),
                " here): run it in one process");
  for (TextTaskSpec& spec : tasks) {
    tasks_.push_back(std::make_unique<TextClassificationTask>(std::move(spec), options_, ctx_, budget_));
    const TextClassificationTask& t = *tasks_.back();
    const TextSplit* train = t.train_split();
    auto skipped = [](const TextSplit& s) {
      return s.skipped_rows ? ", " + std::to_string(s.skipped_rows) + " malformed rows skipped" : std::string();
    };
    ctx_.log().info("task " + t.name() + ": " + std::to_string(t.num_classes()) + " classes (" +
                    join(t.label_names()) + "; " + t.spec().labels_from + "); test " +
                    std::to_string(t.test_split().examples.size()) + " (" + format_name(t.test_split().format) +
                    skipped(t.test_split()) + ")" +
                    (train ? "; train " + std::to_string(train->examples.size()) + " (" + format_name(train->format) +
                                 skipped(*train) + ")"
                           : std::string("; no train split")));
  }
}

void TextClassificationPool::set_eval_cache_bytes(int64_t bytes) {
  FUSION_ENSURE(bytes >= 0, "taskpool: negative evaluation cache budget ", bytes);
  budget_->bytes_left = bytes;
  for (auto& t : tasks_) t->clear_eval_cache();
}

void TextClassificationPool::adapt_to(const ModelPool& models) {
  const auto* cp = dynamic_cast<const CheckpointModelPool*>(&models);
  std::optional<fs::path> pretrained;
  if (cp && models.has_pretrained()) pretrained = cp->path_of("pretrained");
  const std::string pre_option = "modelpool.pretrained";

  if (options_.tokenizer.empty()) {
    std::error_code ec;
    const bool has = pretrained && fs::is_regular_file(*pretrained / "vocab.json", ec) &&
                     fs::is_regular_file(*pretrained / "merges.txt", ec);
    FUSION_ENSURE(has, key(&PoolOptions::tokenizer), " is unset and ",
                  pretrained ? pre_option + " ('" + pretrained->string() + "') has no vocab.json and merges.txt"
                             : std::string("the model pool names no pretrained folder"),
                  ": set ", key(&PoolOptions::tokenizer), " (a folder with GPT-2's vocab.json and merges.txt)");
    options_.tokenizer = *pretrained;
    options_.tokenizer_from = pre_option;
    ctx_.log().info("taskpool: tokenizer from " + pre_option + " (" + pretrained->string() + "), as " +
                    key(&PoolOptions::tokenizer) + " is unset");
  }

  std::optional<gpt2::Gpt2Config> cfg;
  if (pretrained) {
    try {
      cfg = gpt2::Gpt2Config::from_json(gpt2::read_config_json(*pretrained), (*pretrained / "config.json").string());
    } catch (const Error&) {
      // left unknown: the model pool reports its config.json when it loads the model
    }
  }
  if (cfg) {
    const std::string file = (*pretrained / "config.json").string();
    FUSION_ENSURE(!options_.max_length_given || options_.max_length <= cfg->n_positions, key(&PoolOptions::max_length), " = ", options_.max_length,
                  " but the model takes at most ", cfg->n_positions, " tokens (n_positions in ", file, ")");
    if (!options_.max_length_given) options_.max_length = cfg->n_positions;
  }

  std::vector<std::string> experts;
  if (cp) experts = cp->expert_names();
  for (auto& t : tasks_) {
    const TextTaskSpec& s = t->spec();
    std::optional<fs::path> head = s.head;
    std::string from = s.head_from;
    if (!head) {
      std::vector<std::string> candidates;
      if (!s.expert.empty()) {
        candidates.push_back(s.expert);
        FUSION_ENSURE(std::count(experts.begin(), experts.end(), s.expert), key(&PoolOptions::experts), ".", s.name,
                      ": the model pool has no expert '", s.expert, "' (experts: ", join(experts), ")");
      } else {
        candidates.push_back(s.name);
        if (s.name == "mnli_mismatched") candidates.push_back("mnli");
      }
      for (const std::string& e : candidates) {
        if (std::count(experts.begin(), experts.end(), e)) {
          head = cp->path_of(e);
          from = "modelpool.models." + e;
          break;
        }
      }
      FUSION_ENSURE(head, "task '", s.name, "': no classification head: add an expert '", candidates.front(),
                    "' under [modelpool.models] (its score.weight is the task's head), or set ",
                    key(&PoolOptions::experts), ".", s.name, " or ", key(&PoolOptions::heads), ".", s.name);
    }
    const std::string where = from;
    const auto info = find_score(*head, where);
    FUSION_ENSURE(info, where, ": ", no_score(*head));
    const std::vector<int64_t>& shape = info->shape;
    FUSION_ENSURE(shape.size() == 2, where, ": score.weight of '", head->string(), "' has shape ", shape_text(shape),
                  ", expected [num_labels, n_embd]");
    FUSION_ENSURE(shape[0] == t->num_classes(), "task '", s.name, "': the head score.weight ", shape_text(shape),
                  " of '", head->string(), "' (", from, ") has ", shape[0], " classes but the task has ",
                  t->num_classes(), " (", join(t->label_names()), ")");
    FUSION_ENSURE(!cfg || shape[1] == cfg->n_embd, "task '", s.name, "': the head score.weight ", shape_text(shape),
                  " of '", head->string(), "' (", from, ") does not fit the pretrained model's n_embd ", cfg->n_embd);
    t->adapt(options_, head, from);
  }
  // The tokenizer is read now (once, shared by the tasks): a missing or corrupt vocab.json or
  // merges.txt stops the run before the method runs, not at the first evaluation.
  std::optional<gpt2::Gpt2Tokenizer> tokenizer;
  try {
    tokenizer = gpt2::Gpt2Tokenizer::from_folder(options_.tokenizer);
  } catch (const Error& e) {
    FUSION_FAIL(options_.tokenizer_from.empty() ? key(&PoolOptions::tokenizer) : options_.tokenizer_from, ": ",
                e.what());
  }
  for (auto& t : tasks_) t->set_tokenizer(*tokenizer);
}

std::vector<std::string> TextClassificationPool::task_names() const {
  std::vector<std::string> out;
  for (const auto& t : tasks_) out.push_back(t->name());
  return out;
}

TextClassificationTask& TextClassificationPool::text_task(const std::string& name) {
  for (auto& t : tasks_)
    if (t->name() == name) return *t;
  FUSION_FAIL("taskpool: no task '", name, "' (tasks: ", join(task_names()), ")");
}

Task& TextClassificationPool::task(const std::string& name) { return text_task(name); }

}  // namespace fusion::text_classification
