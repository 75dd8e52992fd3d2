// Loading, saving and bad input: the clip_vision pool and the folders it reads.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <typeinfo>

#include "fusion/clip/text.hpp"
#include "fusion/clip/vision.hpp"
#include "fusion/clip/vision_pool.hpp"
#include "fusion/clip/zero_shot.hpp"
#include "fusion/context.hpp"
#include "fusion/error.hpp"
#include "fusion/safetensors.hpp"
#include "support.hpp"

namespace fusion::clip {
namespace {

using testing::all_close;
using testing::data_dir;
using testing::error_of;
using testing::TempDir;

nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

void write_json(const std::filesystem::path& p, const nlohmann::json& j) { std::ofstream(p) << j.dump(2); }

// A copy of the CLIPModel folder's weights with `config` as its config.json.
void make_folder(const std::filesystem::path& dir, const nlohmann::json* config) {
  std::filesystem::copy_file(data_dir() / "clip_model" / "model.safetensors", dir / "model.safetensors");
  if (config) write_json(dir / "config.json", *config);
}

at::Tensor pixels() { return load_safetensors(data_dir() / "golden.safetensors").at("pixel_values"); }

TEST(ClipVisionFolder, SaveWritesACLIPVisionModelFolderThatLoadsBack) {
  TempDir dir("save");
  ModelPtr model = load_clip_vision(data_dir() / "clip_model");
  save_clip_vision(*model, dir.path() / "out");
  const nlohmann::json config = read_json(dir.path() / "out" / "config.json");
  EXPECT_EQ(config["architectures"], nlohmann::json::array({"CLIPVisionModel"}));
  EXPECT_EQ(config["model_type"], "clip_vision_model");
  EXPECT_EQ(config["hidden_size"], 32);
  EXPECT_EQ(config["intermediate_size"], 48);
  EXPECT_EQ(config["image_size"], 16);
  EXPECT_EQ(config["patch_size"], 4);
  EXPECT_EQ(config["hidden_act"], "quick_gelu");
  EXPECT_EQ(config["torch_dtype"], "float32");
  SafetensorsFile file(dir.path() / "out" / "model.safetensors");
  EXPECT_EQ(file.metadata().at("format"), "pt");
  for (const TensorInfo& t : file.tensors()) EXPECT_EQ(t.name.rfind("vision_model.", 0), 0u) << t.name;

  // Saving again replaces the folder whole, and leaves no temporary behind.
  save_clip_vision(*model, dir.path() / "out");
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path())) ++entries;
  EXPECT_EQ(entries, 1u);
  ModelPtr again = load_clip_vision(dir.path() / "out");
  EXPECT_EQ(again->parameters().keys().size(), model->parameters().keys().size());
  at::NoGradGuard no_grad;
  EXPECT_TRUE(all_close(again->forward(pixels()), model->forward(pixels()), 0, 0));
}

TEST(ClipVisionFolder, MissingConfigJsonIsNamed) {
  TempDir dir("noconfig");
  make_folder(dir.path(), nullptr);
  const std::string msg = error_of([&] { load_clip_vision(dir.path()); });
  EXPECT_NE(msg.find((dir.path() / "config.json").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing"), std::string::npos) << msg;
}

TEST(ClipVisionFolder, ConfigDisagreeingWithWeightsNamesKeyAndShapes) {
  TempDir dir("shape");
  nlohmann::json config = read_json(data_dir() / "clip_model" / "config.json");
  config["vision_config"]["patch_size"] = 8;
  make_folder(dir.path(), &config);
  std::string msg = error_of([&] { load_clip_vision(dir.path()); });
  EXPECT_NE(msg.find("vision_model.embeddings.patch_embedding.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[32, 3, 8, 8]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[32, 3, 4, 4]"), std::string::npos) << msg;
  EXPECT_NE(msg.find(dir.path().string()), std::string::npos) << msg;

  config["vision_config"]["patch_size"] = 4;
  config["vision_config"]["num_hidden_layers"] = 1;
  write_json(dir.path() / "config.json", config);
  msg = error_of([&] { load_clip_vision(dir.path()); });
  EXPECT_NE(msg.find("vision_model.encoder.layers.1."), std::string::npos) << msg;

  config["vision_config"]["num_hidden_layers"] = 3;
  write_json(dir.path() / "config.json", config);
  msg = error_of([&] { load_clip_vision(dir.path()); });
  EXPECT_NE(msg.find("lack 'vision_model.encoder.layers.2."), std::string::npos) << msg;

  config["vision_config"]["num_hidden_layers"] = 2;
  config["vision_config"]["hidden_act"] = "relu";
  write_json(dir.path() / "config.json", config);
  msg = error_of([&] { load_clip_vision(dir.path()); });
  EXPECT_NE(msg.find("hidden_act"), std::string::npos) << msg;
}

TEST(ClipVisionFolder, WeightsWithoutAVisionTowerAreRefused) {
  TempDir dir("notclip");
  StateDict other;
  other.set("encoder.weight", at::ones({2, 2}));
  save_safetensors(dir.path() / "model.safetensors", other);
  write_json(dir.path() / "config.json", read_json(data_dir() / "clip_model" / "config.json"));
  const std::string msg = error_of([&] { load_clip_vision(dir.path()); });
  EXPECT_NE(msg.find("vision_model.*"), std::string::npos) << msg;
}

TEST(ClipVisionFolder, HalfPrecisionRunDtype) {
  ModelPtr model = load_clip_vision(data_dir() / "clip_model", at::kCPU, at::kBFloat16);
  for (const auto& [key, t] : model->parameters()) {
    if (t.is_floating_point()) EXPECT_EQ(t.scalar_type(), at::kBFloat16) << key;
  }
  at::NoGradGuard no_grad;
  at::Tensor out = model->forward(pixels());
  // Mixed precision: bf16 GEMMs, the residual stream and the last layer norm in float32.
  EXPECT_EQ(out.scalar_type(), at::kFloat);
  EXPECT_TRUE(all_close(out, load_safetensors(data_dir() / "golden.safetensors").at("vision_pooled"), 0.05, 0.02));
}

TEST(ZeroShotHeadErrors, NeedsACLIPModelWithTokenizerFiles) {
  std::string msg = error_of([&] {
    build_zero_shot_head(data_dir() / "clip_vision_model", {"cat"}, {"a {}"}, at::kCPU, at::kFloat);
  });
  EXPECT_NE(msg.find("not a CLIPModel config"), std::string::npos) << msg;
  TempDir dir("head");
  const nlohmann::json config = read_json(data_dir() / "clip_model" / "config.json");
  make_folder(dir.path(), &config);
  msg = error_of([&] { build_zero_shot_head(dir.path(), {"cat"}, {"a {}"}, at::kCPU, at::kFloat); });
  EXPECT_NE(msg.find("vocab.json"), std::string::npos) << msg;
  msg = error_of([&] {
    build_zero_shot_head(data_dir() / "clip_model", {"cat"}, {"no placeholder"}, at::kCPU, at::kFloat);
  });
  EXPECT_NE(msg.find("no {} placeholder"), std::string::npos) << msg;
}

// The pool as the host builds it, from a checked [modelpool] table.
std::unique_ptr<ModelPool> make_pool(const std::string& pretrained, const StringMap& models) {
  std::map<std::string, Value> values{{"pretrained", pretrained}, {"models", models}};
  const Config config = Config::validate("modelpool", values, schema_of<ClipVisionPoolOptions>());
  return std::make_unique<ClipVisionPool>(read_options<ClipVisionPoolOptions>(config), Context().with_config(config));
}

// The library is where each CLIP type lives: its typeinfo (what dynamic_cast compares) is
// libfusion_clip's, so every plugin that links the library sees one type.
TEST(ClipFamily, TypesLiveInTheSharedLibrary) {
  for (const std::type_info* t : {&typeid(ClipVisionModel), &typeid(ClipTextModel), &typeid(ClipVisionPool)}) {
    Dl_info info{};
    ASSERT_NE(dladdr(t, &info), 0) << t->name();
    ASSERT_NE(info.dli_fname, nullptr) << t->name();
    EXPECT_NE(std::string(info.dli_fname).find("libfusion_clip.so"), std::string::npos)
        << t->name() << " lives in " << info.dli_fname;
  }
}

TEST(ClipVisionPool, OptionsAreTheCheckpointPools) {
  const auto& mine = schema_of<ClipVisionPoolOptions>().options();
  const auto& base = schema_of<CheckpointPoolOptions>().options();
  ASSERT_EQ(mine.size(), base.size());
  for (size_t i = 0; i < mine.size(); ++i) {
    EXPECT_EQ(mine[i].name, base[i].name);
    EXPECT_EQ(mine[i].doc, base[i].doc);
  }
  std::map<std::string, Value> values{{"models", StringMap{{"a", "x"}}}};
  EXPECT_THROW(Config::validate("modelpool", values, schema_of<ClipVisionPoolOptions>()), Error);  // pretrained
}

TEST(ClipVisionPool, LoadsCLIPModelAndCLIPVisionModelFoldersAndSaves) {
  EXPECT_EQ(ClipVisionPool::info().name, "clip_vision");
  TempDir dir("pool");
  save_clip_vision(*load_clip_vision(data_dir() / "clip_model"), dir.path() / "expert");
  auto pool = make_pool((data_dir() / "clip_model").string(), {{"expert", (dir.path() / "expert").string()}});
  ConstModelPtr pre = pool->pretrained();
  ASSERT_NE(dynamic_cast<const ClipVisionModel*>(pre.get()), nullptr);
  EXPECT_FALSE(pre->parameters().contains("visual_projection.weight"));
  EXPECT_FALSE(pre->parameters().contains("text_projection.weight"));
  ModelPtr expert = pool->load("expert");
  ASSERT_NE(dynamic_cast<ClipVisionModel*>(expert.get()), nullptr);
  at::NoGradGuard no_grad;
  EXPECT_TRUE(all_close(expert->forward(pixels()), pre->forward(pixels()), 0, 0));
  pool->save(*expert, dir.path() / "saved");
  EXPECT_EQ(read_json(dir.path() / "saved" / "config.json")["architectures"][0], "CLIPVisionModel");
}

TEST(ClipVisionPool, ExpertBeforePretrainedAndWithoutPositionIds) {
  // A CLIPModel pretrained (with position_ids buffers) and a CLIPVisionModel expert without them,
  // the expert loaded first, as task arithmetic does.
  TempDir dir("poolorder");
  ModelPtr m = load_clip_vision(data_dir() / "clip_model");
  EXPECT_FALSE(m->parameters().contains("vision_model.embeddings.position_ids"));
  save_clip_vision(*m, dir.path() / "expert");
  auto pool = make_pool((data_dir() / "clip_model").string(), {{"expert", (dir.path() / "expert").string()}});
  ModelPtr expert = pool->load("expert");
  ConstModelPtr pre = pool->pretrained();
  EXPECT_EQ(expert->parameters().keys(), pre->parameters().keys());
}

TEST(ClipVisionPool, ExpertOfAnotherShapeNamesKeyAndShapes) {
  auto pool = make_pool((data_dir() / "clip_model").string(),
                        {{"other", (data_dir() / "clip_vision_model").string()}});
  const std::string msg = error_of([&] { pool->load("other"); });
  EXPECT_NE(msg.find("modelpool.models.other"), std::string::npos) << msg;
  EXPECT_NE(msg.find("vision_model.embeddings.class_embedding"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[32]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[16]"), std::string::npos) << msg;
}

TEST(ClipVisionPool, MissingConfigNamesTheFolder) {
  TempDir dir("poolnoconfig");
  make_folder(dir.path(), nullptr);
  auto pool = make_pool(dir.path().string(), {{"a", (data_dir() / "clip_model").string()}});
  std::string msg = error_of([&] { pool->pretrained(); });
  EXPECT_NE(msg.find((dir.path() / "config.json").string()), std::string::npos) << msg;
  EXPECT_EQ(msg.rfind("modelpool.pretrained: ", 0), 0u) << msg;
  auto pool2 = make_pool((data_dir() / "clip_model").string(), {{"a", dir.path().string()}});
  msg = error_of([&] { pool2->load("a"); });
  EXPECT_NE(msg.find((dir.path() / "config.json").string()), std::string::npos) << msg;
  EXPECT_EQ(msg.rfind("modelpool.models.a: ", 0), 0u) << msg;
}

}  // namespace
}  // namespace fusion::clip

namespace fusion::clip {
namespace {

TEST(VisionConfig, DefaultsAreViTB32AndFieldsAreRead) {
  const VisionConfig b32 = VisionConfig::from_json(nlohmann::json::object(), "test");
  EXPECT_EQ(b32.hidden_size, 768);
  EXPECT_EQ(b32.num_positions(), 50);
  EXPECT_EQ(b32.hidden_act, "quick_gelu");
  // CLIPVisionModel form (fields at the top level), ViT-B/16.
  const VisionConfig b16 = VisionConfig::from_json({{"patch_size", 16}, {"hidden_act", "gelu"}}, "test");
  EXPECT_EQ(b16.num_positions(), 197);
  EXPECT_EQ(b16.hidden_act, "gelu");
  // CLIPModel form, ViT-L/14, with the legacy vision_config_dict taking precedence.
  const nlohmann::json l14 = {{"vision_config", {{"hidden_size", 1}, {"patch_size", 14}}},
                              {"vision_config_dict",
                               {{"hidden_size", 1024}, {"intermediate_size", 4096}, {"num_attention_heads", 16},
                                {"num_hidden_layers", 24}}}};
  const VisionConfig l = VisionConfig::from_json(l14, "test");
  EXPECT_EQ(l.hidden_size, 1024);
  EXPECT_EQ(l.num_hidden_layers, 24);
  EXPECT_EQ(l.num_positions(), 257);
  const auto expected = ClipVisionModel::expected_parameters(l);
  EXPECT_EQ(expected[1].first, "vision_model.embeddings.patch_embedding.weight");
  EXPECT_EQ(expected[1].second, (std::vector<int64_t>{1024, 3, 14, 14}));
  EXPECT_EQ(expected.size(), 5u + 24u * 16u + 2u);
}

TEST(VisionConfig, InconsistentValuesAreNamed) {
  std::string msg = error_of([] { VisionConfig::from_json({{"hidden_size", 100}}, "cfg.json"); });
  EXPECT_NE(msg.find("num_attention_heads"), std::string::npos) << msg;
  msg = error_of([] { VisionConfig::from_json({{"image_size", 100}}, "cfg.json"); });
  EXPECT_NE(msg.find("patch_size"), std::string::npos) << msg;
  msg = error_of([] { VisionConfig::from_json({{"num_hidden_layers", "x"}}, "cfg.json"); });
  EXPECT_NE(msg.find("cfg.json: 'num_hidden_layers'"), std::string::npos) << msg;
}

TEST(ClipVisionModel, RandomParametersBuildAWorkingModel) {
  VisionConfig cfg;
  cfg.hidden_size = 16;
  cfg.intermediate_size = 24;
  cfg.num_attention_heads = 2;
  cfg.num_hidden_layers = 2;
  cfg.image_size = 8;
  cfg.patch_size = 4;
  ClipVisionModel model(ClipVisionModel::random_parameters(cfg, 1), cfg);
  at::NoGradGuard no_grad;
  at::Tensor out = model.forward(at::randn({3, 3, 8, 8}));
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{3, 16}));
  EXPECT_TRUE(out.isfinite().all().item<bool>());
  // A batch of one image gives that image's row of a larger batch.
  at::Tensor x = at::randn({4, 3, 8, 8});
  EXPECT_TRUE(all_close(model.forward(x.narrow(0, 1, 1)), model.forward(x).narrow(0, 1, 1)));
}

}  // namespace
}  // namespace fusion::clip
