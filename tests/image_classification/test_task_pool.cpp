// The task pool: config parsing, built-in task info, head files and the head cache, evaluate() on a
// model whose output is known, train and test streams, and the background loader.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include "fusion/clip/vision_pool.hpp"
#include "fusion/context.hpp"
#include "fusion/distributed.hpp"
#include "fusion/eval_cache.hpp"
#include "fusion/safetensors.hpp"
#include "head.hpp"
#include "image_classification.hpp"
#include "support.hpp"

namespace fusion::image_classification {
namespace {
using namespace testing;
namespace fs = std::filesystem;

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// features = per-channel mean of the (normalised) pixels, times the parameter `scale`.
class MeanColourModel : public Model {
 public:
  explicit MeanColourModel(const at::Device& device)
      : Model("mean_colour", [&] {
          StateDict p;
          p.set("scale", at::ones({1}, at::TensorOptions().device(device)));
          return p;
        }()) {}
  at::Tensor forward(const StateDict& params, const at::Tensor& x) const override {
    return x.mean({2, 3}) * params.at("scale");
  }
};

// Head: identity projection, one axis per colour class, logit scale 1: logits = f / |f|.
clip::ZeroShotHead colour_head() {
  clip::ZeroShotHead h;
  h.projection = at::eye(3);
  h.text_embeds = at::eye(3);
  h.logit_scale = 1.0;
  return h;
}

Context quiet_context(const std::string& device, const Config& config = Config()) {
  Context::Settings s;
  s.device = at::Device(device);
  s.progress = false;
  s.logger = std::make_shared<Logger>(LogLevel::Warn);
  return Context(s).with_config(config);
}

Config taskpool_config(std::map<std::string, Value> values) {
  return Config::validate("taskpool", values, schema_of<ImageClassificationPoolOptions>());
}

// The pool as the host makes it from a context holding its checked [taskpool] table.
std::unique_ptr<TaskPool> make_pool(const Context& ctx) {
  return std::make_unique<ImageClassificationPool>(read_options<ImageClassificationPoolOptions>(ctx.config()), ctx);
}

// A folder split of solid colours; labels 0 red, 1 green, 2 blue. r2 (labelled 1) and b1
// (labelled 0) are misclassified by MeanColourModel + colour_head: 3 of 5 right.
struct ColourData {
  TempDir tmp{"colours"};
  fs::path test = tmp / "test";
  fs::path info = tmp / "colours.json";
  fs::path head = tmp / "head.safetensors";
  ColourData() {
    write_solid(test / "0/r1.png", 6, 4, 255, 0, 0);
    write_solid(test / "0/b1.png", 4, 4, 0, 0, 255);
    write_solid(test / "1/g1.png", 5, 7, 0, 255, 0);
    write_solid(test / "1/r2.png", 3, 3, 255, 0, 0);
    write_solid(test / "2/b2.png", 8, 8, 0, 0, 255);
    write_text(info, R"({"classnames": ["red", "green", "blue"], "templates": ["a {} thing."]})");
    save_head(head, colour_head());
  }
};

// The expected loss by hand: f = ((c/255) − mean)/std per channel, z = f/|f|, CE = lse(z) − z_y.
double colour_ce(int colour, int label) {
  const PreprocessOptions o;
  double f[3], norm = 0;
  for (int c = 0; c < 3; ++c) {
    f[c] = ((c == colour ? 1.0 : 0.0) - o.mean[c]) / o.std[c];
    norm += f[c] * f[c];
  }
  double lse = 0;
  for (double& v : f) {
    v /= std::sqrt(norm);
    lse += std::exp(v);
  }
  return std::log(lse) - f[label];
}

class OnDevice : public ::testing::TestWithParam<std::string> {};

TEST_P(OnDevice, EvaluateAccuracyAndLossByHand) {
  ColourData data;
  MeanColourModel model{at::Device(GetParam())};
  const double expected_loss =
      (colour_ce(0, 0) + colour_ce(2, 0) + colour_ce(1, 1) + colour_ce(0, 1) + colour_ce(2, 2)) / 5.0;
  for (int64_t workers : {0, 2}) {
    for (int64_t batch : {1, 2, 128}) {
      SCOPED_TRACE("workers " + std::to_string(workers) + " batch " + std::to_string(batch));
      Config cfg = taskpool_config({{"test_datasets", StringMap{{"colours", data.test.string()}}},
                                    {"task_info", StringMap{{"colours", data.info.string()}}},
                                    {"heads", StringMap{{"colours", data.head.string()}}},
                                    {"image_size", int64_t{8}},
                                    {"batch_size", batch},
                                    {"num_workers", workers}});
      auto pool = make_pool(quiet_context(GetParam(), cfg));
      ASSERT_EQ(pool->task_names(), std::vector<std::string>{"colours"});
      nlohmann::json report = pool->evaluate(model);
      const auto& r = report["colours"];
      EXPECT_DOUBLE_EQ(r["accuracy"].get<double>(), 0.6);
      EXPECT_NEAR(r["loss"].get<double>(), expected_loss, 1e-5);
      EXPECT_EQ(r["num_samples"], 5);
      EXPECT_EQ(r["skipped_images"], 0);
      // TaskPool::evaluate's FusionBench keys.
      EXPECT_DOUBLE_EQ(report["average"]["accuracy"].get<double>(), 0.6);
      EXPECT_EQ(report["model_info"]["all_params"], 1);
    }
  }
}

TEST_P(OnDevice, BadImagesSkippedOrNamed) {
  ColourData data;
  write_bytes(data.test / "2/corrupt.png", {0x89, 'P', 'N', 'G', 1, 2, 3});
  MeanColourModel model{at::Device(GetParam())};
  std::map<std::string, Value> values{{"test_datasets", StringMap{{"colours", data.test.string()}}},
                                      {"task_info", StringMap{{"colours", data.info.string()}}},
                                      {"heads", StringMap{{"colours", data.head.string()}}},
                                      {"image_size", int64_t{8}},
                                      {"batch_size", int64_t{2}}};
  auto pool = make_pool(quiet_context(GetParam(), taskpool_config(values)));
  const std::string msg = error_of([&] { pool->evaluate(model); });
  EXPECT_TRUE(contains(msg, (data.test / "2" / "corrupt.png").string())) << msg;
  EXPECT_TRUE(contains(msg, "task 'colours' test split: ")) << msg;
  EXPECT_TRUE(contains(msg, "on_bad_image = \"skip\"")) << msg;

  values["on_bad_image"] = std::string("skip");
  pool = make_pool(quiet_context(GetParam(), taskpool_config(values)));
  for (int pass = 0; pass < 2; ++pass) {  // the second pass reads the in-memory cache
    nlohmann::json r = pool->task("colours").evaluate(model);
    EXPECT_DOUBLE_EQ(r["accuracy"].get<double>(), 0.6);
    EXPECT_EQ(r["num_samples"], 5);
    EXPECT_EQ(r["skipped_images"], 1);
  }
}

// save_predictions: one CSV per evaluated model and task, a row per evaluated image in evaluation
// order with its prediction and loss (bad images skipped leave no row), and the report names it.
TEST_P(OnDevice, SavePredictionsWritesOneCsvPerModelAndTask) {
  ColourData data;
  write_bytes(data.test / "2/corrupt.png", {0x89, 'P', 'N', 'G', 1, 2, 3});
  write_text(data.info, R"({"classnames": ["red", "green, light", "blue"], "templates": ["a {} thing."]})");
  MeanColourModel model{at::Device(GetParam())};
  Config cfg = taskpool_config({{"test_datasets", StringMap{{"colours", data.test.string()}}},
                                {"task_info", StringMap{{"colours", data.info.string()}}},
                                {"heads", StringMap{{"colours", data.head.string()}}},
                                {"image_size", int64_t{8}},
                                {"batch_size", int64_t{2}},
                                {"on_bad_image", std::string("skip")},
                                {"save_predictions", true}});
  Context::Settings s;
  s.device = at::Device(GetParam());
  s.progress = false;
  s.logger = std::make_shared<Logger>(LogLevel::Error);
  s.run_dir = data.tmp / "run";
  auto pool = make_pool(Context(s).with_config(cfg));
  nlohmann::json first = pool->evaluate(model);
  nlohmann::json second = pool->evaluate(model);
  EXPECT_EQ(first["colours"]["predictions"], "predictions/model_0/colours.csv");
  EXPECT_EQ(second["colours"]["predictions"], "predictions/model_1/colours.csv");
  EXPECT_DOUBLE_EQ(first["colours"]["accuracy"].get<double>(), 0.6);
  const std::string expected_header = "index,sample,label,label_name,predicted,predicted_name,loss";
  // (colour of the image, label) per file, in the split's order; the prediction is the colour.
  const std::map<std::string, std::pair<int, int>> truth{{"r1.png", {0, 0}}, {"b1.png", {2, 0}}, {"g1.png", {1, 1}},
                                                         {"r2.png", {0, 1}}, {"b2.png", {2, 2}}};
  const std::vector<std::string> names{"red", "\"green, light\"", "blue"};
  for (const char* model_dir : {"model_0", "model_1"}) {
    std::ifstream in(data.tmp / "run" / "predictions" / model_dir / "colours.csv");
    ASSERT_TRUE(in) << model_dir;
    std::string line;
    std::getline(in, line);
    EXPECT_EQ(line, expected_header);
    std::set<std::string> files;
    double loss_sum = 0;
    while (std::getline(in, line)) {
      const auto& split = dynamic_cast<ImageClassificationPool&>(*pool).classification_task("colours").test_split();
      const auto comma = line.find(',');
      const int64_t index = std::stoll(line.substr(0, comma));
      const std::string sample = split.sample_name(index);
      const std::string file = fs::path(sample).filename().string();
      ASSERT_TRUE(truth.count(file)) << line;
      files.insert(file);
      const auto [colour, label] = truth.at(file);
      EXPECT_EQ(split.label(index), label);
      const std::string prefix = std::to_string(index) + "," + sample + "," + std::to_string(label) + "," +
                                 names[label] + "," + std::to_string(colour) + "," + names[colour] + ",";
      ASSERT_EQ(line.substr(0, prefix.size()), prefix);
      const double loss = std::stod(line.substr(prefix.size()));
      EXPECT_NEAR(loss, colour_ce(colour, label), 1e-5);
      loss_sum += loss;
    }
    EXPECT_EQ(files.size(), 5u);  // the corrupt image has no row
    EXPECT_NEAR(first["colours"]["loss"].get<double>(), loss_sum / 5, 1e-5);
  }
  // Off by default: no predictions folder.
  TempDir other("no-predictions");
  s.run_dir = other.path();
  Config off = taskpool_config({{"test_datasets", StringMap{{"colours", data.test.string()}}},
                                {"task_info", StringMap{{"colours", data.info.string()}}},
                                {"heads", StringMap{{"colours", data.head.string()}}},
                                {"image_size", int64_t{8}},
                                {"on_bad_image", std::string("skip")}});
  nlohmann::json plain = make_pool(Context(s).with_config(off))->evaluate(model);
  EXPECT_FALSE(plain["colours"].contains("predictions"));
  EXPECT_FALSE(fs::exists(other.path() / "predictions"));
}

// Over several processes each one evaluates a share of the (model, task) pairs, so the
// predictions' model_<k> would be wrong: save_predictions is refused there, in one line.
TEST(SavePredictions, RefusedOverSeveralProcesses) {
  struct TwoRanks : SingleProcessCommunicator {
    int world_size() const override { return 2; }
  };
  ColourData data;
  Config cfg = taskpool_config({{"test_datasets", StringMap{{"colours", data.test.string()}}},
                                {"task_info", StringMap{{"colours", data.info.string()}}},
                                {"heads", StringMap{{"colours", data.head.string()}}},
                                {"save_predictions", true}});
  set_communicator(std::make_shared<TwoRanks>());
  const std::string msg = error_of([&] { make_pool(quiet_context("cpu", cfg)); });
  set_communicator(nullptr);
  EXPECT_EQ(msg, "taskpool.save_predictions = true is not supported over several processes (2 here): run it in one "
                 "process");
  EXPECT_NO_THROW(make_pool(quiet_context("cpu", cfg)));  // one process
}

TEST_P(OnDevice, LogitsAreDifferentiableInParams) {
  ColourData data;
  MeanColourModel model{at::Device(GetParam())};
  TaskSpec spec;
  spec.name = "colours";
  spec.test = data.test;
  spec.info = data.info;
  spec.head = data.head;
  ImageClassificationOptions opt;
  opt.preprocess.image_size = 8;
  ImageClassificationTask task(spec, opt, quiet_context(GetParam()));
  task.set_head(colour_head());
  StateDict params;
  params.set("scale", at::full({1}, 2.0, at::TensorOptions().device(at::Device(GetParam()))).requires_grad_());
  Batch b;
  b.inputs = at::randn({4, 3, 8, 8}, at::TensorOptions().device(at::Device(GetParam())));
  b.labels = at::tensor(std::vector<int64_t>{0, 1, 2, 1}, at::TensorOptions().dtype(at::kLong)).to(b.inputs.device());
  at::Tensor loss = task.loss(model, params, b);
  loss.backward();
  ASSERT_TRUE(params.at("scale").grad().defined());
  // logits scale-invariant in the features (they are normalised): d loss / d scale = 0 for scale > 0.
  EXPECT_NEAR(params.at("scale").grad().item<double>(), 0.0, 1e-6);
  EXPECT_EQ(task.logits(model, params, b.inputs).sizes(), (at::IntArrayRef{4, 3}));
}

TEST_P(OnDevice, TrainStreamDeterministicAndReshuffled) {
  TempDir tmp("stream");
  // mnist: built in, 10 classes; one image per class with grey level 20 · label.
  for (int c = 0; c < 10; ++c) {
    const auto v = static_cast<uint8_t>(20 * c);
    write_solid(tmp / ("train/" + std::to_string(c) + "/x.png"), 3, 3, v, v, v);
  }
  Config cfg = taskpool_config({{"test_datasets", StringMap{{"mnist", (tmp / "train").string()}}},
                                {"train_datasets", StringMap{{"mnist", (tmp / "train").string()}}},
                                {"clip_model", tmp.path().string()},
                                {"image_size", int64_t{4}}});
  auto pool = make_pool(quiet_context(GetParam(), cfg));
  Task& task = pool->task("mnist");
  ASSERT_TRUE(task.has_train_split());
  EXPECT_EQ(task.num_classes(), 10);
  auto labels_of = [&](uint64_t seed, int batches) {
    auto stream = task.train_stream(4, seed);
    std::vector<int64_t> out;
    for (int i = 0; i < batches; ++i) {
      Batch b = stream->next();
      EXPECT_EQ(b.inputs.device().type(), at::Device(GetParam()).type());
      EXPECT_EQ(b.inputs.size(0), 4);
      at::Tensor lab = b.labels.cpu();
      at::Tensor px = b.inputs.cpu();
      for (int64_t k = 0; k < 4; ++k) {
        const int64_t label = lab[k].item<int64_t>();
        // The pixels are those of the labelled sample.
        const double expected = (20.0 * label / 255.0 - 0.48145466) / 0.26862954;
        EXPECT_NEAR(px[k][0][1][1].item<double>(), expected, 1e-5);
        out.push_back(label);
      }
    }
    return out;
  };
  const auto a = labels_of(7, 10), b = labels_of(7, 10), c = labels_of(8, 10);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  // 40 draws = 4 epochs, each a permutation of the 10 samples, and not all in the same order.
  std::set<std::vector<int64_t>> orders;
  for (int e = 0; e < 4; ++e) {
    std::vector<int64_t> epoch(a.begin() + 10 * e, a.begin() + 10 * (e + 1));
    orders.insert(epoch);
    std::sort(epoch.begin(), epoch.end());
    for (int64_t i = 0; i < 10; ++i) EXPECT_EQ(epoch[i], i);
  }
  EXPECT_GE(orders.size(), 3u);
}

TEST_P(OnDevice, TestStreamServesTheEvaluatedTestImages) {
  TempDir tmp("test_stream");
  // mnist, 10 classes: test images of grey level 20 · label, train images of 20 · label + 5, so
  // that a batch's pixels tell which split it came from. No train split is needed.
  for (int c = 0; c < 10; ++c) {
    const auto v = static_cast<uint8_t>(20 * c);
    write_solid(tmp / ("test/" + std::to_string(c) + "/x.png"), 3, 3, v, v, v);
    const auto w = static_cast<uint8_t>(20 * c + 5);
    write_solid(tmp / ("train/" + std::to_string(c) + "/x.png"), 3, 3, w, w, w);
  }
  auto task_with = [&](std::map<std::string, Value> extra) {
    std::map<std::string, Value> v = {{"test_datasets", StringMap{{"mnist", (tmp / "test").string()}}},
                                      {"train_datasets", StringMap{{"mnist", (tmp / "train").string()}}},
                                      {"clip_model", tmp.path().string()},
                                      {"image_size", int64_t{4}}};
    for (auto& [k, x] : extra) v[k] = x;
    return make_pool(quiet_context(GetParam(), taskpool_config(v)));
  };
  auto labels_of = [&](TaskPool& pool, uint64_t seed, int batches) {
    auto stream = pool.task("mnist").test_stream(3, seed);
    std::vector<int64_t> out;
    for (int i = 0; i < batches; ++i) {
      Batch b = stream->next();
      EXPECT_EQ(b.inputs.device().type(), at::Device(GetParam()).type());
      EXPECT_EQ(b.inputs.size(0), 3);
      at::Tensor lab = b.labels.cpu();
      at::Tensor px = b.inputs.cpu();
      for (int64_t k = 0; k < 3; ++k) {
        const int64_t label = lab[k].item<int64_t>();
        // The pixels are those of the test image of that label, not the train image.
        const double expected = (20.0 * label / 255.0 - 0.48145466) / 0.26862954;
        EXPECT_NEAR(px[k][0][1][1].item<double>(), expected, 1e-5);
        out.push_back(label);
      }
    }
    return out;
  };
  {
    auto pool = task_with({});
    const auto a = labels_of(*pool, 7, 10), b = labels_of(*pool, 7, 10), c = labels_of(*pool, 8, 10);
    EXPECT_EQ(a, b);  // the same seed, the same batches
    EXPECT_NE(a, c);
    // 30 draws: 3 epochs, each a permutation of the 10 test images.
    for (int e = 0; e < 3; ++e) {
      std::vector<int64_t> epoch(a.begin() + 10 * e, a.begin() + 10 * (e + 1));
      std::sort(epoch.begin(), epoch.end());
      for (int64_t i = 0; i < 10; ++i) EXPECT_EQ(epoch[i], i);
    }
  }
  {
    // max_test_samples = 6: the stream serves the 6 images evaluate() uses, every epoch.
    auto pool = task_with({{"max_test_samples", int64_t{6}}});
    const auto a = labels_of(*pool, 7, 8);
    std::set<int64_t> first(a.begin(), a.begin() + 6);
    EXPECT_EQ(first.size(), 6u);
    for (int e = 1; e < 4; ++e) EXPECT_EQ(std::set<int64_t>(a.begin() + 6 * e, a.begin() + 6 * (e + 1)), first);
    // evaluate()'s subset: the first 6 of the fixed permutation EpochOrder(10, 0).epoch(0) (sample i
    // is the image of label i here).
    const std::vector<int64_t> perm = EpochOrder(10, 0).epoch(0);
    EXPECT_EQ(first, std::set<int64_t>(perm.begin(), perm.begin() + 6));
  }
  EXPECT_TRUE(contains(error_of([&] { task_with({})->task("mnist").test_stream(0, 1); }),
                       "task 'mnist': test batch size must be positive, got 0"));
}

INSTANTIATE_TEST_SUITE_P(Devices, OnDevice, ::testing::ValuesIn(test_devices()));

TEST(HeadFile, RoundTripAndErrors) {
  TempDir tmp("heads");
  clip::ZeroShotHead h;
  h.projection = at::randn({4, 6});
  h.text_embeds = at::randn({3, 4});
  h.logit_scale = 100.0;
  save_head(tmp / "h.safetensors", h, {{"task", "x"}});
  EXPECT_EQ(head_file_classes(tmp / "h.safetensors"), 3);
  clip::ZeroShotHead g = load_head(tmp / "h.safetensors", at::kCPU, at::kDouble);
  EXPECT_EQ(g.text_embeds.scalar_type(), at::kDouble);
  EXPECT_TRUE(at::allclose(g.projection.to(at::kFloat), h.projection));
  EXPECT_TRUE(at::allclose(g.text_embeds.to(at::kFloat), h.text_embeds));
  EXPECT_DOUBLE_EQ(g.logit_scale, 100.0);

  StateDict bad;
  bad.set("projection", at::zeros({4, 6}));
  bad.set("text_embeds", at::zeros({3, 5}));
  bad.set("logit_scale", at::scalar_tensor(1.0));
  save_safetensors(tmp / "mismatch.safetensors", bad);
  std::string msg = error_of([&] { load_head(tmp / "mismatch.safetensors", at::kCPU, at::kFloat); });
  EXPECT_TRUE(contains(msg, "text_embeds [3, 5] and projection [4, 6] disagree on proj_dim")) << msg;
  bad.erase("logit_scale");
  save_safetensors(tmp / "missing.safetensors", bad);
  msg = error_of([&] { load_head(tmp / "missing.safetensors", at::kCPU, at::kFloat); });
  EXPECT_TRUE(contains(msg, "no tensor 'logit_scale'")) << msg;
  EXPECT_TRUE(contains(msg, (tmp / "missing.safetensors").string())) << msg;

  // A head whose class count disagrees with the task's class names.
  write_solid(tmp / "test/0/a.png", 2, 2, 0, 0, 0);
  TaskSpec spec;
  spec.name = "eurosat";  // 10 built-in classes
  spec.test = tmp / "test";
  spec.head = tmp / "h.safetensors";
  msg = error_of([&] { ImageClassificationTask(spec, {}, quiet_context("cpu")); });
  EXPECT_TRUE(contains(msg, "task 'eurosat': head file '" + (tmp / "h.safetensors").string() + "' has 3 classes but "
                            "the task has 10 class names")) << msg;
}

TEST(HeadCache, KeyChangesWithInputs) {
  TempDir tmp("key");
  write_text(tmp / "config.json", "{}");
  const std::string k = head_cache_key(tmp.path(), {"a", "b"}, {"{}"});
  EXPECT_EQ(k.size(), 16u);
  EXPECT_EQ(k, head_cache_key(tmp.path(), {"a", "b"}, {"{}"}));
  EXPECT_NE(k, head_cache_key(tmp.path(), {"ab"}, {"{}"}));
  EXPECT_NE(k, head_cache_key(tmp.path(), {"a", "b"}, {"a {}"}));
  write_text(tmp / "model.safetensors", "changed weights");
  EXPECT_NE(k, head_cache_key(tmp.path(), {"a", "b"}, {"{}"}));
}

// The head computed from a (tiny) CLIPModel's text tower, cached, and read back from the cache;
// evaluation of the tiny vision tower end to end.
TEST(HeadCache, ComputedFromClipModelThenCached) {
  const fs::path clip = fs::path(FUSION_IC_TEST_DATA) / ".." / ".." / "clip" / "data" / "clip_model";
  if (!fs::exists(clip / "model.safetensors")) GTEST_SKIP() << "no tiny CLIP model at " << clip;
  TempDir tmp("cache");
  ColourData data;
  Config cfg = taskpool_config({{"test_datasets", StringMap{{"colours", data.test.string()}}},
                                {"task_info", StringMap{{"colours", data.info.string()}}},
                                {"clip_model", clip.string()},
                                {"head_cache_dir", (tmp / "heads").string()},
                                {"image_size", int64_t{16}}});
  auto pool = make_pool(quiet_context("cpu", cfg));
  ModelPtr model = clip::load_clip_vision(clip);
  nlohmann::json r1 = pool->evaluate(*model);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(tmp / "heads")) files.push_back(e.path());
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].filename().string().rfind("colours-", 0), 0u);
  clip::ZeroShotHead direct = clip::build_zero_shot_head(clip, {"red", "green", "blue"}, {"a {} thing."},
                                                         at::kCPU, at::kFloat);
  clip::ZeroShotHead cached = load_head(files[0], at::kCPU, at::kFloat);
  EXPECT_TRUE(at::allclose(cached.text_embeds, direct.text_embeds, 1e-6, 1e-6));
  EXPECT_NEAR(cached.logit_scale, direct.logit_scale, 1e-4);
  // A second pool reads the cache (same report), even with the CLIP model's weights unreadable... the
  // key still needs the folder, so just compare the reports.
  auto pool2 = make_pool(quiet_context("cpu", cfg));
  nlohmann::json r2 = pool2->evaluate(*model);
  EXPECT_DOUBLE_EQ(r1["colours"]["loss"].get<double>(), r2["colours"]["loss"].get<double>());
  EXPECT_TRUE(std::isfinite(r1["colours"]["loss"].get<double>()));
}

TEST(BuiltinTasks, Ta8AndMnists) {
  const std::map<std::string, size_t> classes{{"sun397", 397}, {"stanford_cars", 196}, {"resisc45", 45},
                                              {"eurosat", 10},  {"svhn", 10},           {"gtsrb", 43},
                                              {"mnist", 10},    {"dtd", 47},            {"fashion_mnist", 10}};
  for (const auto& [task, n] : classes) {
    auto info = builtin_task_info(task);
    ASSERT_TRUE(info) << task;
    EXPECT_EQ(info->classnames.size(), n) << task;
    EXPECT_FALSE(info->templates.empty()) << task;
  }
  EXPECT_EQ(builtin_task_info("stanford-cars")->classnames[0], "AM General Hummer SUV 2000");
  EXPECT_EQ(builtin_task_info("mnist")->templates, std::vector<std::string>{"a photo of the number: \"{}\"."});
  EXPECT_FALSE(builtin_task_info("imagenet_9000"));
}

TEST(Config, DataDirConventionsAndOverrides) {
  TempDir tmp("datadir");
  std::vector<uint8_t> px(2 * 4, 5);
  write_idx(tmp / "mnist", "t10k", px, {1, 2}, 2, 2, true);
  write_idx(tmp / "mnist", "train", px, {3, 4}, 2, 2, false);
  write_solid(tmp / "eurosat/test/0/a.png", 2, 2, 0, 0, 0);
  write_text(tmp / "eurosat/test.csv", "path,label\ntest/0/a.png,9\n");
  write_text(tmp / "names.txt", "zero\none\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\n");
  Config cfg = taskpool_config({{"data_dir", tmp.path().string()},
                                {"tasks", std::vector<std::string>{"mnist", "eurosat"}},
                                {"test_datasets", StringMap{{"eurosat", (tmp / "eurosat/test.csv").string()}}},
                                {"task_info", StringMap{{"mnist", (tmp / "names.txt").string()}}},
                                {"templates", std::vector<std::string>{"x {} y"}},
                                {"clip_model", tmp.path().string()},
                                {"head_cache_dir", std::string("none")}});
  auto [specs, opt] = ImageClassificationPool::parse(read_options<ImageClassificationPoolOptions>(cfg));
  ASSERT_EQ(specs.size(), 2u);
  EXPECT_EQ(specs[0].test, tmp / "mnist" / "t10k-images-idx3-ubyte.gz");
  EXPECT_EQ(*specs[0].train, tmp / "mnist" / "train-images-idx3-ubyte");
  EXPECT_EQ(specs[1].test, tmp / "eurosat" / "test.csv");
  EXPECT_FALSE(specs[1].train);
  EXPECT_TRUE(opt.head_cache_dir.empty());
  ImageClassificationPool pool(specs, opt, quiet_context("cpu"));
  EXPECT_EQ(pool.task_names(), (std::vector<std::string>{"mnist", "eurosat"}));
  auto& mnist = pool.classification_task("mnist");
  EXPECT_EQ(mnist.classnames()[3], "three");
  EXPECT_EQ(mnist.templates(), std::vector<std::string>{"x {} y"});
  EXPECT_EQ(mnist.test_split().labels(), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(pool.classification_task("eurosat").classnames()[0], "annual crop land");
}

TEST(Config, ErrorsNameTheKey) {
  TempDir tmp("cfg_err");
  write_solid(tmp / "t/0/a.png", 2, 2, 0, 0, 0);
  const std::string t = (tmp / "t").string();
  auto err = [&](std::map<std::string, Value> v) {
    return error_of([&] { make_pool(quiet_context("cpu", taskpool_config(v))); });
  };
  EXPECT_TRUE(contains(err({}), "taskpool: no tasks")) << err({});
  std::string msg = err({{"test_datasets", StringMap{{"mnist", t}}}, {"heads", StringMap{{"mnsit", "h"}}}});
  EXPECT_TRUE(contains(msg, "taskpool.heads.mnsit: no such task (tasks: mnist)")) << msg;
  msg = err({{"tasks", std::vector<std::string>{"mnist"}}});
  EXPECT_TRUE(contains(msg, "task 'mnist' has no test split: set taskpool.data_dir")) << msg;
  msg = err({{"tasks", std::vector<std::string>{"mnist"}}, {"data_dir", tmp.path().string()}});
  EXPECT_TRUE(contains(msg, "has no test split under '" + (tmp / "mnist").string())) << msg;
  msg = err({{"test_datasets", StringMap{{"mnist", t}}}, {"clip_model", (tmp / "nope").string()}});
  EXPECT_TRUE(contains(msg, "taskpool.clip_model: '")) << msg;
  // No head file and no clip_model: said when the head is needed (or when the pool learns that the
  // model pool has no CLIPModel either: test_model_defaults.cpp).
  msg = error_of([&] {
    make_pool(quiet_context("cpu", taskpool_config({{"test_datasets", StringMap{{"mnist", t}}}})))
        ->evaluate(Model("checkpoint", StateDict()));
  });
  EXPECT_TRUE(contains(msg, "task 'mnist': no zero-shot head: set taskpool.clip_model")) << msg;
  msg = err({{"test_datasets", StringMap{{"mnist", t}}}, {"templates", std::vector<std::string>{"no placeholder"}}});
  EXPECT_TRUE(contains(msg, "taskpool.templates[0]")) << msg;
  msg = err({{"test_datasets", StringMap{{"mnist", t}}}, {"formats", StringMap{{"mnist", "zip"}}}});
  EXPECT_TRUE(contains(msg, "taskpool.formats.mnist: unknown data format 'zip'")) << msg;
  msg = err({{"test_datasets", StringMap{{"custom", (tmp / "t/0/a.png").string()}}}, {"clip_model", t}});
  EXPECT_TRUE(contains(msg, "cannot tell the format")) << msg;
  msg = err({{"test_datasets", StringMap{{"custom", t}}}, {"clip_model", t}});
  EXPECT_TRUE(contains(msg, "task 'custom': no class names")) << msg;
  msg = err({{"test_datasets", StringMap{{"mnist", t}}}, {"on_bad_image", std::string("ignore")}});
  EXPECT_TRUE(contains(msg, "taskpool.on_bad_image")) << msg;
}

TEST(Loader, BoundedAndInOrderWithSlowConsumer) {
  TempDir tmp("loader");
  std::vector<uint8_t> px(50 * 4);
  std::vector<uint8_t> labels(50);
  for (int i = 0; i < 50; ++i) {
    labels[i] = static_cast<uint8_t>(i);
    for (int k = 0; k < 4; ++k) px[i * 4 + k] = static_cast<uint8_t>(i);
  }
  auto d = std::make_shared<const Dataset>(Dataset::open(write_idx(tmp.path(), "train", px, labels, 2, 2, false),
                                                         DataFormat::Idx, "t"));
  PreprocessOptions po;
  po.image_size = 2;
  auto src = std::make_shared<SampleSource>(d, po, true);
  LoaderOptions lo;
  lo.batch_size = 7;
  lo.num_workers = 3;
  lo.prefetch_batches = 2;
  BatchLoader loader(src, [](int64_t b) {
    std::vector<int64_t> idx;
    for (int64_t i = b * 7; i < std::min<int64_t>(50, (b + 1) * 7); ++i) idx.push_back(i);
    return idx;
  }, 8, lo);
  int64_t next = 0;
  while (auto b = loader.next()) {
    for (int64_t k = 0; k < b->labels.size(0); ++k) EXPECT_EQ(b->labels[k].item<int64_t>(), next++);
  }
  EXPECT_EQ(next, 50);
  // A loader destroyed early, with workers waiting on the bound, joins cleanly.
  { BatchLoader early(src, [](int64_t) { return std::vector<int64_t>{1, 2}; }, -1, lo); early.next(); }
}

// A Pareto set or a λ sweep evaluates many models on the same test images: within the budget
// ([run] eval_cache_mb, through the SDK's set_eval_cache) each is decoded and preprocessed once per
// run; what does not fit is decoded at every evaluation; the results are the same either way.
TEST(EvalCache, TestImagesDecodedOncePerRunWithinTheBudget) {
  ColourData data;
  MeanColourModel model{at::Device("cpu")};
  const int64_t image = 8 * 8 * 3;  // bytes of one kept 8 x 8 crop
  struct Run {
    std::vector<int64_t> decoded;  // decoded_images of each evaluation
    std::vector<std::pair<double, double>> results;
    int64_t kept = 0, decodes = 0;
  };
  auto run = [&](std::optional<int64_t> budget, int64_t workers) {
    Config cfg = taskpool_config({{"test_datasets", StringMap{{"colours", data.test.string()}}},
                                  {"task_info", StringMap{{"colours", data.info.string()}}},
                                  {"heads", StringMap{{"colours", data.head.string()}}},
                                  {"image_size", int64_t{8}},
                                  {"batch_size", int64_t{2}},
                                  {"num_workers", workers}});
    auto pool = make_pool(quiet_context("cpu", cfg));
    if (budget) EXPECT_TRUE(set_eval_cache(*pool, *budget));
    auto& task = dynamic_cast<ImageClassificationPool&>(*pool).classification_task("colours");
    Run r;
    for (int model_index = 0; model_index < 3; ++model_index) {
      const nlohmann::json e = task.evaluate(model);
      r.decoded.push_back(e.at("decoded_images").get<int64_t>());
      r.results.emplace_back(e.at("accuracy").get<double>(), e.at("loss").get<double>());
    }
    r.kept = task.test_images_kept();
    r.decodes = task.test_decodes();
    return r;
  };
  for (int64_t workers : {0, 2}) {
    SCOPED_TRACE("workers " + std::to_string(workers));
    const Run all = run(std::nullopt, workers);  // the default budget, 1 GiB
    EXPECT_EQ(all.decoded, (std::vector<int64_t>{5, 0, 0}));
    EXPECT_EQ(all.kept, 5);
    EXPECT_EQ(all.decodes, 5);
    const Run none = run(0, workers);
    EXPECT_EQ(none.decoded, (std::vector<int64_t>{5, 5, 5}));
    EXPECT_EQ(none.kept, 0);
    EXPECT_EQ(none.decodes, 15);
    const Run part = run(3 * image + image / 2, workers);  // room for 3 images and a half
    EXPECT_EQ(part.decoded, (std::vector<int64_t>{5, 2, 2}));
    EXPECT_EQ(part.kept, 3);
    EXPECT_EQ(part.decodes, 9);
    EXPECT_DOUBLE_EQ(all.results[0].first, 0.6);
    for (const Run* r : {&all, &none, &part})
      for (const auto& result : r->results) EXPECT_EQ(result, all.results[0]);  // bit for bit
  }

  // Filled task by task, in order: the first task's 5 images, then 2 of the second's.
  Config two = taskpool_config({{"test_datasets", StringMap{{"a", data.test.string()}, {"b", data.test.string()}}},
                                {"task_info", StringMap{{"a", data.info.string()}, {"b", data.info.string()}}},
                                {"heads", StringMap{{"a", data.head.string()}, {"b", data.head.string()}}},
                                {"image_size", int64_t{8}}});
  ImageClassificationPool pool(read_options<ImageClassificationPoolOptions>(two), quiet_context("cpu", two));
  pool.set_eval_cache_bytes(7 * image);
  EXPECT_EQ(pool.classification_task("a").test_images_kept(), 5);
  EXPECT_EQ(pool.classification_task("b").test_images_kept(), 2);
  EXPECT_EQ(pool.options().eval_cache_bytes, 7 * image);
  const nlohmann::json first = pool.evaluate(model), second = pool.evaluate(model);
  EXPECT_EQ(first["a"]["decoded_images"], 5);
  EXPECT_EQ(first["b"]["decoded_images"], 5);
  EXPECT_EQ(second["a"]["decoded_images"], 0);
  EXPECT_EQ(second["b"]["decoded_images"], 3);
  EXPECT_EQ(second["b"]["loss"], first["a"]["loss"]);
}

// A source keeps the samples it is told to, each decoded once; the others at every crop().
TEST(EvalCache, SampleSourceKeepsTheListedSamples) {
  TempDir tmp("keep");
  std::vector<uint8_t> px(6 * 4), labels(6);
  for (int i = 0; i < 6; ++i) {
    labels[i] = static_cast<uint8_t>(i);
    for (int k = 0; k < 4; ++k) px[i * 4 + k] = static_cast<uint8_t>(40 * i + k);
  }
  auto d = std::make_shared<const Dataset>(Dataset::open(write_idx(tmp.path(), "t", px, labels, 2, 2, false),
                                                         DataFormat::Idx, "t"));
  PreprocessOptions po;
  po.image_size = 2;
  const SampleSource src(d, po, std::vector<int64_t>{1, 4, 4});
  EXPECT_EQ(src.kept(), 2);
  EXPECT_FALSE(src.keeps_in_memory());
  for (int pass = 0; pass < 3; ++pass)
    for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(src.crop(i)->rgb, resize_center_crop(d->load(i), 2).rgb);
  EXPECT_EQ(src.decodes(), 2 + 3 * 4);
  EXPECT_EQ(src.crop(4), src.crop(4));  // the kept crop itself
  EXPECT_NE(src.crop(0), src.crop(0));  // decoded afresh
  EXPECT_EQ(SampleSource(d, po, true).kept(), 6);
  EXPECT_EQ(SampleSource(d, po, false).kept(), 0);
  EXPECT_THROW(SampleSource(d, po, std::vector<int64_t>{6}), Error);
}

}  // namespace
}  // namespace fusion::image_classification
