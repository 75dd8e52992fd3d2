// finetune and multitask_pretrain on tiny synthetic tasks.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "finetune.hpp"
#include "fusion/clip/vision.hpp"
#include "fusion/clip/vision_pool.hpp"
#include "fusion/clip/zero_shot.hpp"
#include "fusion/component.hpp"
#include "fusion/safetensors.hpp"
#include "multitask_pretrain.hpp"
#include "support.hpp"
#include "training.hpp"

namespace fs = std::filesystem;
using namespace finetune_test;
using fusion::finetune::Finetune;
using fusion::finetune::MultitaskPretrain;
using namespace fusion::testing;

TEST(Training, TrainableSubsets) {
  at::Tensor f = at::zeros({2});
  EXPECT_TRUE(fusion::finetune::is_trainable("vision_model.embeddings.patch_embedding.weight", f, "all"));
  EXPECT_FALSE(fusion::finetune::is_trainable("vision_model.embeddings.position_ids", at::zeros({2}, at::kLong), "all"));
  EXPECT_FALSE(fusion::finetune::is_trainable("vision_model.embeddings.patch_embedding.weight", f, "encoder"));
  EXPECT_TRUE(fusion::finetune::is_trainable("vision_model.encoder.layers.1.mlp.fc1.weight", f, "mlp"));
  EXPECT_FALSE(fusion::finetune::is_trainable("vision_model.encoder.layers.1.self_attn.q_proj.weight", f, "mlp"));
  EXPECT_TRUE(fusion::finetune::is_trainable("vision_model.encoder.layers.1.self_attn.q_proj.weight", f, "attention"));
}

namespace {

// Mean cross-entropy over the task's whole train split under `params`.
double train_loss(const SyntheticTask& task, const Model& model, const StateDict& params) {
  at::NoGradGuard g;
  return task.loss(model, params, task.train_split()).item<double>();
}

}  // namespace

TEST(Finetune, LowersTheTrainLossAndKeepsFrozenTensors) {
  TinySetup world = blob_setup();
  const auto& task = static_cast<const SyntheticTask&>(world.tasks->task("blobs"));
  MemoryModelPool& models = *world.models;
  ScratchDir dir("fusion_finetune_test");
  auto ctx = method_context<Finetune>({{"task", std::string("blobs")}, {"num_steps", int64_t{150}},
                                      {"batch_size", int64_t{16}}, {"lr", 3e-2}},
                                     dir.path());
  auto algo = make_method<Finetune>(ctx);
  const double before = train_loss(task, *models.pretrained(), models.pretrained()->parameters());
  fusion::Result r = algo->run(models, world.tasks.get(), ctx);
  ASSERT_EQ(r.models.size(), 1u);
  EXPECT_EQ(r.models[0].label, "blobs");
  fusion::ConstModelPtr tuned = r.models[0].make();
  const double after = train_loss(task, *tuned, tuned->parameters());
  EXPECT_LT(after, 0.5 * before) << "before " << before << ", after " << after;
  // The pretrained model is untouched; the integer tensor is copied, not trained.
  EXPECT_EQ(models.modification(), "");
  EXPECT_TRUE(models.pretrained()->parameters().at("model.embeddings.position_ids").equal(
      tuned->parameters().at("model.embeddings.position_ids")));
  EXPECT_FALSE(models.pretrained()->parameters().at("model.post_layernorm.weight").equal(
      tuned->parameters().at("model.post_layernorm.weight")));
  EXPECT_FALSE(tuned->parameters().at("model.post_layernorm.weight").requires_grad());
  // Every floating tensor: the embedding, 2 layers of self_attn, mlp.fc1 and mlp.fc2, the layer norm.
  EXPECT_EQ(r.info["trainable_params"].get<int64_t>(),
            (8 * 6 + 8) + 2 * ((8 * 8 + 8) + (6 * 8 + 6) + (8 * 6 + 8)) + (8 + 8));
  EXPECT_LT(r.info["train_loss_last"].get<double>(), r.info["train_loss_first"].get<double>());
  // The training log: a header, then a row every log_interval (10) steps.
  std::ifstream log(dir.path() / "train_log.csv");
  std::string line;
  ASSERT_TRUE(std::getline(log, line));
  EXPECT_EQ(line, "step,loss,accuracy,lr,seconds");
  int rows = 0;
  while (std::getline(log, line)) {
    ++rows;
    EXPECT_EQ(line.substr(0, line.find(',')), std::to_string(10 * rows));
  }
  EXPECT_EQ(rows, 15);
}

TEST(Finetune, SubsetTrainsOnlyThoseParameters) {
  TinySetup world = blob_setup();
  ScratchDir dir("fusion_finetune_test");
  auto ctx = method_context<Finetune>({{"task", std::string("blobs")}, {"num_steps", int64_t{5}},
                                      {"trainable", std::string("mlp")}, {"lr", 1e-2}},
                                     dir.path());
  fusion::Result r = make_method<Finetune>(ctx)->run(*world.models, world.tasks.get(), ctx);
  fusion::ConstModelPtr tuned = r.models[0].make();
  const auto& p0 = world.models->pretrained()->parameters();
  EXPECT_TRUE(p0.at("model.post_layernorm.weight").equal(tuned->parameters().at("model.post_layernorm.weight")));
  EXPECT_FALSE(p0.at("model.encoder.layers.0.mlp.fc1.weight")
                   .equal(tuned->parameters().at("model.encoder.layers.0.mlp.fc1.weight")));
}

TEST(Finetune, SameSeedSameModel) {
  TinySetup world = blob_setup();
  ScratchDir dir("fusion_finetune_test");
  std::map<std::string, fusion::Value> opts = {
      {"task", std::string("blobs")}, {"num_steps", int64_t{10}}, {"lr", 1e-2}};
  auto a = make_method<Finetune>(method_context<Finetune>(opts, dir.path()))
               ->run(*world.models, world.tasks.get(), method_context<Finetune>(opts, dir.path())).models[0].make();
  auto b = make_method<Finetune>(method_context<Finetune>(opts, dir.path()))
               ->run(*world.models, world.tasks.get(), method_context<Finetune>(opts, dir.path())).models[0].make();
  for (const auto& [k, t] : a->parameters()) EXPECT_TRUE(t.equal(b->parameters().at(k))) << k;
}

TEST(Finetune, BadOptionsNameTheOption) {
  TinySetup world = blob_setup();
  ScratchDir dir("fusion_finetune_test");
  auto ctx = method_context<Finetune>({{"task", std::string("nope")}}, dir.path());
  try {
    make_method<Finetune>(ctx)->run(*world.models, world.tasks.get(), ctx);
    FAIL() << "expected an error";
  } catch (const fusion::Error& e) {
    EXPECT_NE(std::string(e.what()).find("method.task"), std::string::npos) << e.what();
  }
  EXPECT_THROW(method_context<Finetune>({}, dir.path()), fusion::Error);  // task is required
}

TEST(Finetune, RequirementsAreDeclared) {
  TinySetup world = blob_setup();
  MemoryModelPool& models = *world.models;
  EXPECT_TRUE(Finetune::info().requirements.needs_task_pool);
  EXPECT_TRUE(MultitaskPretrain::info().requirements.needs_task_pool);
  try {
    fusion::check_requirements(Finetune::info(), models, nullptr);
    FAIL() << "expected an error";
  } catch (const fusion::Error& e) {
    EXPECT_EQ(std::string(e.what()), "finetune needs a task pool: add a [taskpool] section");
  }
  try {
    fusion::check_requirements(MultitaskPretrain::info(), models, nullptr);
    FAIL() << "expected an error";
  } catch (const fusion::Error& e) {
    EXPECT_EQ(std::string(e.what()), "multitask_pretrain needs a task pool: add a [taskpool] section");
  }
  EXPECT_NO_THROW(fusion::check_requirements(Finetune::info(), models, world.tasks.get()));
}

TEST(MultitaskPretrain, SavesLoadableModelAndHeads) {
  ScratchDir scratch("fusion_finetune_test");
  const fs::path& dir = scratch.path();
  // A tiny CLIP vision config: 8 × 8 images, patches of 4, hidden 16, 2 layers.
  nlohmann::json config = {{"architectures", {"CLIPVisionModel"}}, {"model_type", "clip_vision_model"},
                           {"hidden_size", 16}, {"intermediate_size", 32}, {"num_attention_heads", 2},
                           {"num_hidden_layers", 2}, {"image_size", 8}, {"patch_size", 4},
                           {"num_channels", 3}, {"hidden_act", "quick_gelu"}, {"layer_norm_eps", 1e-5}};
  fs::create_directories(dir / "config");
  std::ofstream(dir / "config" / "config.json") << config.dump(2);

  MemoryTaskPool tasks;
  ImageTask& squares = add_square_task(tasks, "squares", 4, 16, 8, 4, 1);
  ImageTask& pairs = add_square_task(tasks, "pairs", 2, 16, 8, 4, 2);
  MemoryModelPool models(nullptr, {});
  auto ctx = method_context<MultitaskPretrain>({{"model_config", (dir / "config").string()},
                                               {"num_steps", int64_t{60}},
                                               {"batch_size", int64_t{16}},
                                               {"lr", 3e-3},
                                               {"projection_dim", int64_t{8}},
                                               {"warmup_steps", int64_t{5}}},
                                              dir);
  fusion::Result r = make_method<MultitaskPretrain>(ctx)->run(models, &tasks, ctx);
  ASSERT_EQ(r.models.size(), 1u);
  EXPECT_EQ(r.models[0].label, "pretrained");
  EXPECT_LT(r.info["final_train"]["squares"]["loss"].get<double>(), r.info["train_loss_first"].get<double>());
  fusion::ConstModelPtr model = r.models[0].make();

  // The model saves as a CLIPVisionModel folder and loads back with equal weights and outputs.
  fusion::clip::save_clip_vision(*model, dir / "model");
  fusion::ModelPtr loaded = fusion::clip::load_clip_vision(dir / "model");
  ASSERT_EQ(loaded->parameters().size(), model->parameters().size());
  for (const auto& [k, t] : model->parameters()) EXPECT_TRUE(t.equal(loaded->parameters().at(k))) << k;
  at::Tensor x = squares.x().slice(0, 0, 8);
  at::Tensor pooled = loaded->forward(x);
  EXPECT_TRUE(pooled.allclose(model->forward(x), 1e-5, 1e-6));

  // Each head file has the task pool's keys and shapes, and gives the accuracy it was trained to.
  for (const ImageTask* task : {&squares, &pairs}) {
    const ImageTask& t = *task;
    const fs::path file = dir / "heads" / (t.name() + ".safetensors");
    ASSERT_TRUE(fs::exists(file)) << file;
    fusion::StateDict h = fusion::load_safetensors(file);
    ASSERT_TRUE(h.contains("projection") && h.contains("text_embeds") && h.contains("logit_scale"));
    EXPECT_EQ(h.at("projection").sizes(), (std::vector<int64_t>{8, 16}));
    EXPECT_EQ(h.at("text_embeds").sizes(), (std::vector<int64_t>{t.num_classes(), 8}));
    EXPECT_NEAR(h.at("logit_scale").item<double>(), 1.0 / 0.07, 1e-4);
    EXPECT_TRUE(h.at("text_embeds").norm(2, {1}).allclose(at::ones({t.num_classes()}), 1e-5));
    fusion::clip::ZeroShotHead head{h.at("projection"), h.at("text_embeds"), h.at("logit_scale").item<double>()};
    at::NoGradGuard g;
    at::Tensor logits = fusion::clip::apply_head(head, loaded->forward(t.x()));
    const double acc = logits.argmax(1).eq(t.y()).to(at::kDouble).mean().item<double>();
    EXPECT_GT(acc, 0.9) << t.name();
  }
  EXPECT_TRUE(fs::exists(dir / "train_log.csv"));
}

TEST(MultitaskPretrain, RandomInitNeedsAModelConfig) {
  ScratchDir dir("fusion_finetune_test");
  auto ctx = method_context<MultitaskPretrain>({}, dir.path());
  try {
    make_method<MultitaskPretrain>(ctx);
    FAIL() << "expected an error";
  } catch (const fusion::Error& e) {
    EXPECT_NE(std::string(e.what()).find("method.model_config"), std::string::npos) << e.what();
  }
}
