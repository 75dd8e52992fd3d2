// What the task pool takes from the model pool before anything runs (adapt_to): the image size and
// the CLIPModel folder of the zero-shot heads, read from the pretrained model's config.json, and a
// set image_size that differs from the model's refused in one line. Tiny CLIP checkpoints of
// tests/clip/data: clip_model (a CLIPModel with a text tower, 16 x 16 images) and
// clip_vision_model (a CLIPVisionModel, 12 x 12 images, no text tower).
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "fusion/checkpoint_pool.hpp"
#include "fusion/clip/vision_pool.hpp"
#include "fusion/context.hpp"
#include "fusion/model_aware.hpp"
#include "head.hpp"
#include "image_classification.hpp"
#include "model_facts.hpp"
#include "support.hpp"

namespace fusion::image_classification {
namespace {
using namespace testing;
namespace fs = std::filesystem;

const fs::path kRepo = (fs::path(FUSION_IC_TEST_DATA) / ".." / ".." / "..").lexically_normal();
const fs::path kClipModel = kRepo / "tests" / "clip" / "data" / "clip_model";                // 16 x 16, text tower
const fs::path kClipVisionModel = kRepo / "tests" / "clip" / "data" / "clip_vision_model";  // 12 x 12
const fs::path kTinyMlp = kRepo / "examples" / "checkpoints" / "tiny" / "pretrained";        // not CLIP

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A context whose logger (Info) also writes to a file the test reads.
struct LoggedContext {
  TempDir dir{"log"};
  std::shared_ptr<Logger> logger = std::make_shared<Logger>(LogLevel::Info);
  LoggedContext() { logger->set_file(dir / "log.txt"); }
  Context with(const Config& config) const {
    Context::Settings s;
    s.progress = false;
    s.logger = logger;
    return Context(s).with_config(config);
  }
  std::string log() const { return read_text(dir / "log.txt"); }
};

Config taskpool_config(const std::map<std::string, Value>& values) {
  return Config::validate("taskpool", values, schema_of<ImageClassificationPoolOptions>());
}

std::unique_ptr<ImageClassificationPool> make_pool(const Context& ctx) {
  return std::make_unique<ImageClassificationPool>(read_options<ImageClassificationPoolOptions>(ctx.config()), ctx);
}

std::unique_ptr<clip::ClipVisionPool> clip_pool(const fs::path& pretrained) {
  clip::ClipVisionPoolOptions o;
  o.base.pretrained = pretrained.string();
  return std::make_unique<clip::ClipVisionPool>(o, Context());
}

std::unique_ptr<CheckpointModelPool> safetensors_pool(const fs::path& pretrained) {
  CheckpointPoolOptions o;
  o.pretrained = pretrained.string();
  return std::make_unique<CheckpointModelPool>(o, Context());
}

// A model pool that is no checkpoint pool: it names no folder.
class OtherPool : public ModelPool {
 public:
  std::vector<std::string> expert_names() const override { return {}; }
  bool has_pretrained() const override { return true; }
  ConstModelPtr pretrained() override { return std::make_shared<Model>("checkpoint", StateDict()); }
  ModelPtr load(const std::string&) override { return nullptr; }
  void save(const Model&, const fs::path&) const override {}
};

// A test split of solid colours (0 red, 1 green, 2 blue), `n` images, and its class names.
struct Colours {
  TempDir tmp{"model_defaults"};
  fs::path test = tmp / "test";
  fs::path info = tmp / "colours.json";
  explicit Colours(int n = 5) {
    for (int i = 0; i < n; ++i) {
      const int c = i % 3;
      write_solid(test / std::to_string(c) / ("x" + std::to_string(i) + ".png"), 6, 5, c == 0 ? 255 : 0,
                  c == 1 ? 255 : 0, c == 2 ? 255 : 0);
    }
    write_text(info, R"({"classnames": ["red", "green", "blue"], "templates": ["a {} thing."]})");
  }
  std::map<std::string, Value> values() const {
    return {{"test_datasets", StringMap{{"colours", test.string()}}},
            {"task_info", StringMap{{"colours", info.string()}}},
            {"head_cache_dir", std::string("none")},
            {"num_workers", int64_t{0}}};
  }
};

TEST(ModelFacts, ImageSizeOfClipConfigs) {
  auto fact = clip_image_size({{"vision_config", {{"image_size", 32}, {"patch_size", 4}}}, {"text_config", {}}}, "f");
  ASSERT_TRUE(fact);
  EXPECT_EQ(fact->size, 32);
  EXPECT_EQ(fact->source, "vision_config.image_size in f");
  fact = clip_image_size({{"model_type", "clip_vision_model"}, {"image_size", 12}, {"patch_size", 6}}, "f");
  ASSERT_TRUE(fact);
  EXPECT_EQ(fact->size, 12);
  EXPECT_EQ(fact->source, "image_size in f");
  fact = clip_image_size({{"architectures", {"CLIPVisionModel"}}}, "f");
  ASSERT_TRUE(fact);
  EXPECT_EQ(fact->size, 224);
  EXPECT_EQ(fact->source, "f, which sets no image_size (transformers' default 224)");
  // Not CLIP's: unknown, unless the pool reads every config as CLIP's (clip_vision).
  const nlohmann::json mlp = {{"model_type", "tiny_mlp"}, {"hidden_size", 8}};
  EXPECT_FALSE(clip_image_size(mlp, "f"));
  EXPECT_FALSE(clip_image_size(nlohmann::json::array(), "f"));
  fact = clip_image_size({{"model_type", "tiny_mlp"}}, "f", true);
  ASSERT_TRUE(fact);
  EXPECT_EQ(fact->size, 224);
  // Read as CLIP's, an inconsistent config is an error (pretrained_facts then knows nothing).
  EXPECT_EQ(error_of([&] { clip_image_size(mlp, "f", true); }),
            "f: hidden_size 8 is not divisible by num_attention_heads 12");
}

TEST(ModelFacts, OfThePretrainedFolder) {
  PretrainedFacts f = pretrained_facts(*clip_pool(kClipModel));
  EXPECT_EQ(f.option, "modelpool.pretrained");
  EXPECT_EQ(f.folder, kClipModel);
  ASSERT_TRUE(f.image_size);
  EXPECT_EQ(f.image_size->size, 16);
  EXPECT_EQ(f.image_size->source, "vision_config.image_size in " + (kClipModel / "config.json").string());
  EXPECT_TRUE(f.text_tower);
  EXPECT_EQ(f.no_text_tower, "");

  f = pretrained_facts(*clip_pool(kClipVisionModel));
  ASSERT_TRUE(f.image_size);
  EXPECT_EQ(f.image_size->size, 12);
  EXPECT_EQ(f.image_size->source, "image_size in " + (kClipVisionModel / "config.json").string());
  EXPECT_FALSE(f.text_tower);
  EXPECT_EQ(f.no_text_tower, "modelpool.pretrained (" + kClipVisionModel.string() +
                                 ") has no text tower (its config.json has no text_config: not a CLIPModel)");

  // The generic pool: a CLIP folder is recognised by its config, another model is unknown.
  f = pretrained_facts(*safetensors_pool(kClipModel));
  ASSERT_TRUE(f.image_size);
  EXPECT_EQ(f.image_size->size, 16);
  EXPECT_TRUE(f.text_tower);
  f = pretrained_facts(*safetensors_pool(kTinyMlp));
  EXPECT_FALSE(f.image_size);
  EXPECT_FALSE(f.text_tower);
  EXPECT_EQ(f.no_text_tower, "");

  // A pool that names no folder tells nothing.
  f = pretrained_facts(OtherPool());
  EXPECT_EQ(f.option, "");
  EXPECT_FALSE(f.image_size);
  EXPECT_FALSE(f.text_tower);

  // A clip_vision folder without config.json: unknown, and why.
  TempDir tmp("no_config");
  write_text(tmp / "model.safetensors", "x");
  f = pretrained_facts(*clip_pool(tmp.path()));
  EXPECT_FALSE(f.image_size);
  EXPECT_FALSE(f.text_tower);
  EXPECT_TRUE(contains(f.no_text_tower, "modelpool.pretrained: " + (tmp / "config.json").string() + " is missing"))
      << f.no_text_tower;
}

TEST(ModelFacts, OfAModel) {
  ModelPtr vision = clip::load_clip_vision(kClipModel);
  auto fact = model_image_size(*vision);
  ASSERT_TRUE(fact);
  EXPECT_EQ(fact->size, 16);
  EXPECT_EQ(fact->source, "the image_size of the model's vision config");
  // A model of another kind that carries a CLIP config.json.
  Model carried("checkpoint", StateDict(), {{"vision_config", {{"image_size", 32}, {"patch_size", 4}}}});
  fact = model_image_size(carried);
  ASSERT_TRUE(fact);
  EXPECT_EQ(fact->size, 32);
  EXPECT_EQ(fact->source, "vision_config.image_size in the model's config");
  EXPECT_FALSE(model_image_size(Model("checkpoint", StateDict())));
}

// No image_size, no clip_model: the pool takes both from a clip_vision pool whose pretrained model is
// a CLIPModel, and evaluates as with both set by hand.
TEST(ModelDefaults, ImageSizeAndClipModelFromTheClipVisionPool) {
  Colours data;
  LoggedContext logged;
  auto pool = make_pool(logged.with(taskpool_config(data.values())));
  EXPECT_EQ(pool->options().preprocess.image_size, 224);  // until the pool knows the model
  EXPECT_FALSE(pool->options().image_size);
  auto models = clip_pool(kClipModel);
  adapt_to_models(*pool, *models);  // as the host does: through the SDK's interface
  const ImageClassificationOptions& o = pool->options();
  EXPECT_EQ(o.preprocess.image_size, 16);
  EXPECT_FALSE(o.image_size);
  EXPECT_EQ(o.image_size_from, "vision_config.image_size in " + (kClipModel / "config.json").string());
  EXPECT_EQ(o.clip_model, kClipModel);
  EXPECT_EQ(o.clip_model_from, "modelpool.pretrained");

  ModelPtr model = clip::load_clip_vision(kClipModel);
  const nlohmann::json adapted = pool->evaluate(*model);
  std::map<std::string, Value> by_hand = data.values();
  by_hand["image_size"] = int64_t{16};
  by_hand["clip_model"] = kClipModel.string();
  const nlohmann::json expected = make_pool(logged.with(taskpool_config(by_hand)))->evaluate(*model);
  EXPECT_EQ(adapted["colours"]["num_samples"], 5);
  EXPECT_DOUBLE_EQ(adapted["colours"]["accuracy"].get<double>(), expected["colours"]["accuracy"].get<double>());
  EXPECT_DOUBLE_EQ(adapted["colours"]["loss"].get<double>(), expected["colours"]["loss"].get<double>());

  const std::string log = logged.log();
  EXPECT_TRUE(contains(log, "taskpool: images resized and cropped to 16 x 16, the model's input size "
                            "(vision_config.image_size in " + (kClipModel / "config.json").string() +
                                "), as taskpool.image_size is unset")) << log;
  EXPECT_TRUE(contains(log, "taskpool: zero-shot heads from the text tower of modelpool.pretrained (" +
                                kClipModel.string() + "), as taskpool.clip_model is unset")) << log;
  EXPECT_TRUE(contains(log, "task 'colours': computing the zero-shot head (3 classes x 1 templates) from " +
                                kClipModel.string() + " (modelpool.pretrained)")) << log;
}

TEST(ModelDefaults, ASetImageSizeOtherThanTheModelsIsRefused) {
  Colours data;
  std::map<std::string, Value> v = data.values();
  v["image_size"] = int64_t{64};
  LoggedContext logged;
  auto pool = make_pool(logged.with(taskpool_config(v)));
  auto models = clip_pool(kClipModel);
  EXPECT_EQ(error_of([&] { pool->adapt_to(*models); }),
            "taskpool.image_size = 64 but the model takes 16 x 16 images (vision_config.image_size in " +
                (kClipModel / "config.json").string() + "): set it to 16 or leave it unset");
  // The CLIPVisionModel's size is read from its own config.json.
  EXPECT_EQ(error_of([&] { pool->adapt_to(*clip_pool(kClipVisionModel)); }),
            "taskpool.image_size = 64 but the model takes 12 x 12 images (image_size in " +
                (kClipVisionModel / "config.json").string() + "): set it to 12 or leave it unset");

  // The model's own size, set by hand, is fine; a clip_model set by hand is kept.
  TempDir other("other_clip");
  v["image_size"] = int64_t{16};
  v["clip_model"] = other.path().string();
  pool = make_pool(logged.with(taskpool_config(v)));
  pool->adapt_to(*models);
  EXPECT_EQ(pool->options().preprocess.image_size, 16);
  EXPECT_EQ(pool->options().image_size.value_or(0), 16);
  EXPECT_EQ(pool->options().image_size_from, "");
  EXPECT_EQ(pool->options().clip_model, other.path());
  EXPECT_EQ(pool->options().clip_model_from, "");
  EXPECT_FALSE(contains(logged.log(), "as taskpool.clip_model is unset")) << logged.log();
  EXPECT_FALSE(contains(logged.log(), "as taskpool.image_size is unset")) << logged.log();
}

// A model pool that does not tell the size (not CLIP's) leaves 224, as before.
TEST(ModelDefaults, UnknownModelKeeps224) {
  Colours data;
  std::map<std::string, Value> v = data.values();
  v["clip_model"] = kClipModel.string();
  LoggedContext logged;
  std::vector<std::unique_ptr<ModelPool>> pools;
  pools.push_back(safetensors_pool(kTinyMlp));
  pools.push_back(std::make_unique<OtherPool>());
  for (const auto& models : pools) {
    auto pool = make_pool(logged.with(taskpool_config(v)));
    pool->adapt_to(*models);
    EXPECT_EQ(pool->options().preprocess.image_size, 224);
    EXPECT_EQ(pool->options().image_size_from, "");
    EXPECT_EQ(pool->options().clip_model, kClipModel);
  }
}

// evaluate() asks the model too: a model that takes another size is refused before any image is read
// (the split holds an undecodable image, which would stop a pass first).
TEST(ModelDefaults, EvaluateRefusesAModelOfAnotherSizeBeforeReadingImages) {
  Colours data;
  write_bytes(data.test / "2" / "corrupt.png", {0x89, 'P', 'N', 'G', 1, 2, 3});
  std::map<std::string, Value> v = data.values();
  LoggedContext logged;
  ModelPtr model = clip::load_clip_vision(kClipModel);
  auto pool = make_pool(logged.with(taskpool_config(v)));  // not adapted: it does not know the model
  EXPECT_EQ(error_of([&] { pool->evaluate(*model); }),
            "taskpool.image_size is unset and the images are 224 x 224 (the default: the model pool did not tell "
            "the model's size), but the model takes 16 x 16 images (the image_size of the model's vision "
            "config): set taskpool.image_size = 16");
  // Adapted to the pool's pretrained model (16 x 16), then given a model that takes 12 x 12.
  pool = make_pool(logged.with(taskpool_config(v)));
  pool->adapt_to(*clip_pool(kClipModel));
  EXPECT_EQ(error_of([&] { pool->evaluate(*clip::load_clip_vision(kClipVisionModel)); }),
            "taskpool.image_size is unset and the images are 16 x 16 (from the model pool: vision_config.image_size "
            "in " + (kClipModel / "config.json").string() + "), but the model takes 12 x 12 images (the "
            "image_size of the model's vision config): set taskpool.image_size = 12");
  v["image_size"] = int64_t{8};
  pool = make_pool(logged.with(taskpool_config(v)));
  EXPECT_EQ(error_of([&] { pool->evaluate(*model); }),
            "taskpool.image_size = 8 but the model takes 16 x 16 images (the image_size of the model's vision "
            "config): set it to 16 or leave it unset");
}

// The memory plan follows the size: of 10 images of 224 x 224 (147 KiB each), 6 fit in 1 MiB, the
// first 6; of 16 x 16 they all do. The budget is the host's ([run] eval_cache_mb), given through
// the SDK's interface.
TEST(ModelDefaults, MemoryPlannedAgainForTheModelsSize) {
  Colours data(10);
  LoggedContext logged;
  auto pool = make_pool(logged.with(taskpool_config(data.values())));
  EXPECT_TRUE(set_eval_cache(*pool, int64_t{1} << 20));
  const ImageClassificationTask& task = pool->classification_task("colours");
  EXPECT_FALSE(task.kept_in_memory().first);
  EXPECT_EQ(task.test_images_kept(), 6);
  EXPECT_TRUE(contains(logged.log(), "task colours: with 1 MiB for test images (run.eval_cache_mb), test 6 of 10 "
                                     "kept in memory")) << logged.log();
  pool->adapt_to(*clip_pool(kClipModel));
  EXPECT_TRUE(task.kept_in_memory().first);
  EXPECT_EQ(task.test_images_kept(), 10);
  EXPECT_TRUE(contains(logged.log(), "task colours: at 16 x 16, test kept in memory")) << logged.log();
}

// Without a CLIPModel to default to, a task without a head file gets the error it always got, with
// the reason the pretrained folder is no default when the pool is CLIP's.
TEST(ModelDefaults, NoTextTowerKeepsTheNoHeadError) {
  Colours data;
  LoggedContext logged;
  const std::string no_head =
      "task 'colours': no zero-shot head: set taskpool.clip_model (the CLIPModel folder) or taskpool.heads.colours";
  auto pool = make_pool(logged.with(taskpool_config(data.values())));
  EXPECT_EQ(error_of([&] { pool->adapt_to(*clip_pool(kClipVisionModel)); }),
            no_head + "; modelpool.pretrained (" + kClipVisionModel.string() +
                ") has no text tower (its config.json has no text_config: not a CLIPModel)");
  pool = make_pool(logged.with(taskpool_config(data.values())));
  EXPECT_EQ(error_of([&] { pool->adapt_to(*safetensors_pool(kTinyMlp)); }), no_head);
  // A pool that was not adapted says it when the head is needed.
  pool = make_pool(logged.with(taskpool_config(data.values())));
  EXPECT_EQ(error_of([&] { pool->evaluate(Model("checkpoint", StateDict())); }), no_head);

  // With a head file the task needs no CLIPModel.
  clip::ZeroShotHead h;
  h.projection = at::eye(3);
  h.text_embeds = at::eye(3);
  h.logit_scale = 1.0;
  save_head(data.tmp / "head.safetensors", h);
  std::map<std::string, Value> v = data.values();
  v["heads"] = StringMap{{"colours", (data.tmp / "head.safetensors").string()}};
  pool = make_pool(logged.with(taskpool_config(v)));
  pool->adapt_to(*clip_pool(kClipVisionModel));
  EXPECT_EQ(pool->options().preprocess.image_size, 12);
  EXPECT_TRUE(pool->options().clip_model.empty());
}

}  // namespace
}  // namespace fusion::image_classification
