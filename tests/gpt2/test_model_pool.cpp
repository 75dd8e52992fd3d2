// The `gpt2` model pool (fusion/gpt2/pool.hpp) over the folders of make_model_golden.py: bodies only,
// the per-task score heads read apart (load_score_head, classify) and matching the reference logits,
// experts checked against the pretrained model before any weight is read, errors naming the option.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <typeinfo>

#include "error_of.hpp"
#include "fusion/config.hpp"
#include "fusion/context.hpp"
#include "fusion/error.hpp"
#include "fusion/gpt2/pool.hpp"
#include "fusion/safetensors.hpp"

namespace fusion::gpt2 {
namespace {

namespace fs = std::filesystem;
using fusion::testing::error_of;

const fs::path kData = FUSION_GPT2_TEST_DATA;

class PoolScratch {
 public:
  PoolScratch() {
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("fusion_gpt2_pool_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~PoolScratch() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

double max_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.detach().to(at::kDouble) - b.detach().to(at::kDouble)).abs().max().item<double>();
}

// The pool as the host builds it, from a checked [modelpool] table.
std::unique_ptr<ModelPool> make_pool(const std::string& pretrained, const StringMap& models) {
  std::map<std::string, Value> values{{"pretrained", pretrained}, {"models", models}};
  const Config config = Config::validate("modelpool", values, schema_of<Gpt2PoolOptions>());
  return std::make_unique<Gpt2Pool>(read_options<Gpt2PoolOptions>(config), Context().with_config(config));
}

// An expert of model_tiny: its body moved by noise, its own 3-class head, saved at `dir`.
void make_expert(const fs::path& dir, uint64_t seed) {
  ModelPtr m = load_gpt2(kData / "model_tiny");
  StateDict p = m->parameters().clone();
  at::manual_seed(seed);
  for (const auto& [key, t] : p) const_cast<at::Tensor&>(t).add_(at::randn_like(t), 0.05);
  save_gpt2(*m->with_parameters(p), dir);
}

TEST(Gpt2Family, TypesLiveInTheSharedLibrary) {
  for (const std::type_info* t : {&typeid(Gpt2Model), &typeid(Gpt2Pool)}) {
    Dl_info info{};
    ASSERT_NE(dladdr(t, &info), 0) << t->name();
    ASSERT_NE(info.dli_fname, nullptr) << t->name();
    EXPECT_NE(std::string(info.dli_fname).find("libfusion_gpt2.so"), std::string::npos)
        << t->name() << " lives in " << info.dli_fname;
  }
}

TEST(Gpt2Pool, InfoAndOptionsAreTheCheckpointPools) {
  EXPECT_EQ(Gpt2Pool::info().name, "gpt2");
  EXPECT_NE(Gpt2Pool::info().summary.find("never merged"), std::string::npos);
  const auto& mine = schema_of<Gpt2PoolOptions>().options();
  const auto& base = schema_of<CheckpointPoolOptions>().options();
  ASSERT_EQ(mine.size(), base.size());
  for (size_t i = 0; i < mine.size(); ++i) EXPECT_EQ(mine[i].name, base[i].name);
}

TEST(Gpt2Pool, ModelsAreBodiesAndEachTaskKeepsItsHead) {
  PoolScratch tmp;
  make_expert(tmp.path() / "a", 1);
  auto pool = make_pool((kData / "model_tiny").string(), {{"a", (tmp.path() / "a").string()}});
  ConstModelPtr pre = pool->pretrained();
  ModelPtr a = pool->load("a");
  const auto* body = dynamic_cast<const Gpt2Model*>(pre.get());
  ASSERT_NE(body, nullptr);
  EXPECT_EQ(body->head(), Gpt2Head::kNone);
  EXPECT_EQ(pre->architecture(), "gpt2");
  EXPECT_FALSE(pre->parameters().contains("score.weight"));
  EXPECT_EQ(a->parameters().keys(), pre->parameters().keys());  // mergeable: same keys and shapes
  EXPECT_TRUE(a->parameters().contains("transformer.h.1.mlp.c_fc.weight"));

  // The pretrained body with its own head gives GPT2ForSequenceClassification's logits.
  const StateDict g = load_safetensors(kData / "model_golden.safetensors");
  const ScoreHead head = load_score_head(kData / "model_tiny");
  EXPECT_EQ(head.labels, (std::vector<std::string>{"negative", "neutral", "positive"}));
  ASSERT_TRUE(head.pad_token_id.has_value());
  EXPECT_EQ(*head.pad_token_id, 319);
  at::Tensor hidden = body->forward(pre->parameters(), g.at("ids_left"), g.at("mask_left"));
  EXPECT_LT(max_diff(classify(hidden, g.at("ids_left"), head), g.at("cls_logits_left")), 1e-5);
  // The expert's head is its own, not the pretrained one's.
  const ScoreHead head_a = load_score_head(tmp.path() / "a");
  EXPECT_GT(max_diff(head_a.weight, head.weight), 1e-3);

  pool->save(*a, tmp.path() / "saved");
  std::ifstream in(tmp.path() / "saved" / "config.json");
  EXPECT_EQ(nlohmann::json::parse(in)["architectures"][0], "GPT2Model");
  EXPECT_EQ(SafetensorsFile(tmp.path() / "saved" / "model.safetensors").find("score.weight"), nullptr);
}

TEST(Gpt2Pool, ExpertOfAnotherShapeIsRefusedBeforeItsWeightsAreRead) {
  auto pool = make_pool((kData / "model_tiny").string(), {{"other", (kData / "model_tiny_bare").string()}});
  EXPECT_EQ(error_of([&] { pool->load("other"); }),
            "modelpool.models.other (" + (kData / "model_tiny_bare").string() +
                "): key 'transformer.wte.weight': pretrained has shape [320, 32] but expert 'other' has shape "
                "[200, 24]");
}

TEST(Gpt2Pool, MissingConfigNamesTheOptionAndTheFile) {
  PoolScratch tmp;
  save_safetensors(tmp.path() / "model.safetensors", load_safetensors(kData / "model_tiny"));
  auto pool = make_pool(tmp.path().string(), {{"a", (kData / "model_tiny").string()}});
  EXPECT_EQ(error_of([&] { pool->pretrained(); }),
            "modelpool.pretrained: " + (tmp.path() / "config.json").string() +
                " is missing: a GPT-2 model folder needs its config.json to build the architecture");
}

TEST(Gpt2Pool, ScoreHeadErrors) {
  EXPECT_EQ(error_of([&] { load_score_head(kData / "model_tiny_bare"); }),
            (kData / "model_tiny_bare").string() +
                ": the weights have no 'score.weight' (not a GPT2ForSequenceClassification checkpoint?)");
  ScoreHead head = load_score_head(kData / "model_tiny");
  EXPECT_EQ(error_of([&] { classify(at::zeros({1, 4, 24}), at::zeros({1, 4}, at::kLong), head); }),
            "gpt2: a score head of shape [3, 32] cannot classify hidden states of shape [1, 4, 24]");
}

TEST(Gpt2Pool, ScoreWeightIsFoundFromHeadersInFilesFoldersAndShards) {
  PoolScratch tmp;
  const StateDict all = load_safetensors(kData / "model_tiny");
  const at::Tensor want = all.at("score.weight");
  // A sharded folder: score.weight in the second shard, named by the index's weight_map.
  StateDict first, second;
  for (const auto& [k, v] : all) (k == "score.weight" ? second : first).set(k, v);
  fs::create_directories(tmp.path() / "sharded");
  save_safetensors(tmp.path() / "sharded" / "a.safetensors", first);
  save_safetensors(tmp.path() / "sharded" / "b.safetensors", second);
  nlohmann::json index;
  for (const auto& [k, v] : first) index["weight_map"][k] = "a.safetensors";
  index["weight_map"]["score.weight"] = "b.safetensors";
  std::ofstream(tmp.path() / "sharded" / "model.safetensors.index.json") << index.dump();
  const auto found = find_score_weight(tmp.path() / "sharded");
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->file, tmp.path() / "sharded" / "b.safetensors");
  EXPECT_EQ(found->shape, want.sizes().vec());
  EXPECT_TRUE(read_score_weight(tmp.path() / "sharded").equal(want.to(at::kFloat)));
  // A bare .safetensors file without config.json; f16 comes back in the asked dtype.
  StateDict only;
  only.set("score.weight", want.to(at::kHalf));
  save_safetensors(tmp.path() / "head.safetensors", only);
  EXPECT_EQ(find_score_weight(tmp.path() / "head.safetensors")->shape, want.sizes().vec());
  const at::Tensor half = read_score_weight(tmp.path() / "head.safetensors", at::kCPU, at::kDouble);
  EXPECT_EQ(half.scalar_type(), at::kDouble);
  EXPECT_TRUE(half.equal(want.to(at::kHalf).to(at::kDouble)));
  // None: nullopt from the headers; reading names the path.
  EXPECT_FALSE(find_score_weight(kData / "model_tiny_bare").has_value());
  EXPECT_EQ(error_of([&] { read_score_weight(kData / "model_tiny_bare"); }),
            (kData / "model_tiny_bare").string() +
                ": the weights have no 'score.weight' (not a GPT2ForSequenceClassification checkpoint?)");
  // classify follows the hidden state's dtype.
  const ScoreHead head = load_score_head(kData / "model_tiny");
  const at::Tensor hidden = at::randn({2, 3, want.size(1)}, at::kDouble);
  const at::Tensor ids = at::zeros({2, 3}, at::kLong);
  const at::Tensor got = classify(hidden, ids, head);
  EXPECT_EQ(got.scalar_type(), at::kDouble);
  EXPECT_TRUE(at::allclose(got, at::matmul(hidden.select(1, 2), head.weight.to(at::kDouble).t())));
}

}  // namespace
}  // namespace fusion::gpt2
