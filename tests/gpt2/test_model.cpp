// The GPT-2 model (fusion/gpt2/model.hpp) against make_model_golden.py's plain-torch reference of
// transformers' modeling_gpt2.py (data/model_tiny, data/model_tiny_bare, data/model_golden.safetensors):
// hidden states, tied LM logits and sequence-classification logits with right and left padding and
// without a mask, the pooling rule, gradients, loading (prefixed and bare keys, shards, buffers),
// saving, and every error message in full. Runs on the CPU and, when present, on CUDA.
#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "error_of.hpp"
#include "fusion/error.hpp"
#include "fusion/gpt2/model.hpp"
#include "fusion/safetensors.hpp"

namespace fusion::gpt2 {
namespace {

namespace fs = std::filesystem;
using fusion::testing::error_of;

const fs::path kModelData = FUSION_GPT2_TEST_DATA;

/// A fresh, empty temporary folder, removed when the object goes.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& tag) {
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("fusion_gpt2_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

/// Max |a − b| ≤ atol + rtol·|b| element-wise (1e-5 both), reporting the largest difference (printed
/// for passing comparisons too when FUSION_GPT2_PRINT_DIFF is set: the parity figures).
::testing::AssertionResult all_close(const at::Tensor& a, const at::Tensor& b, double atol = 1e-5,
                                     double rtol = 1e-5) {
  if (a.sizes() != b.sizes()) {
    return ::testing::AssertionFailure() << "shapes differ: " << a.sizes() << " vs " << b.sizes();
  }
  at::Tensor x = a.detach().to(at::kCPU, at::kDouble), y = b.detach().to(at::kCPU, at::kDouble);
  const double diff = (x - y).abs().max().item<double>();
  if (std::getenv("FUSION_GPT2_PRINT_DIFF") != nullptr) {
    std::fprintf(stderr, "  max |a - b| = %.3g (|b| up to %.3g)\n", diff, y.abs().max().item<double>());
  }
  at::Tensor excess = (x - y).abs() - (atol + rtol * y.abs());
  if (excess.max().item<double>() <= 0) return ::testing::AssertionSuccess() << "max |a - b| = " << diff;
  return ::testing::AssertionFailure() << "max |a - b| = " << diff << " (atol " << atol << ", rtol " << rtol << ")";
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

void write_json(const fs::path& p, const nlohmann::json& j) { std::ofstream(p) << j.dump(2) << "\n"; }

/// A model folder at `dir`: `weights` as its model.safetensors and `config` as its config.json.
void write_variant(const fs::path& dir, const StateDict& weights, const nlohmann::json& config) {
  fs::create_directories(dir);
  save_safetensors(dir / "model.safetensors", weights);
  write_json(dir / "config.json", config);
}

class Gpt2ModelTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    device_ = at::Device(GetParam());
    if (device_.is_cuda()) {  // TF32 would cost ~1e-3 of precision
      at::globalContext().setAllowTF32CuBLAS(false);
      at::globalContext().setAllowTF32CuDNN(false);
    }
    golden_ = load_safetensors(kModelData / "model_golden.safetensors", device_);
  }
  const at::Tensor& g(const std::string& key) const { return golden_.at(key); }
  std::shared_ptr<Gpt2Model> tiny(std::optional<Gpt2Head> head = std::nullopt) const {
    auto m = std::dynamic_pointer_cast<Gpt2Model>(load_gpt2(kModelData / "model_tiny", head, device_));
    EXPECT_NE(m, nullptr);
    return m;
  }

  at::Device device_{at::kCPU};
  StateDict golden_;
};

TEST_P(Gpt2ModelTest, LoadsSequenceClassificationCheckpointWithCanonicalKeys) {
  auto m = tiny();
  EXPECT_EQ(m->architecture(), "gpt2_sequence_classification");
  EXPECT_EQ(m->head(), Gpt2Head::kSequenceClassification);
  const Gpt2Config& c = m->gpt2_config();
  EXPECT_EQ(c.n_embd, 32);
  EXPECT_EQ(c.n_layer, 2);
  EXPECT_EQ(c.num_labels, 3);
  EXPECT_EQ(c.labels, (std::vector<std::string>{"negative", "neutral", "positive"}));
  ASSERT_TRUE(c.pad_token_id.has_value());
  EXPECT_EQ(*c.pad_token_id, 319);
  // Hugging Face's module order; the attn.bias / attn.masked_bias buffers are gone.
  const std::vector<std::string> keys = m->parameters().keys();
  ASSERT_EQ(keys.size(), 2u + 2 * 12 + 2 + 1);
  EXPECT_EQ(keys.front(), "transformer.wte.weight");
  EXPECT_EQ(keys[2], "transformer.h.0.ln_1.weight");
  EXPECT_EQ(keys[4], "transformer.h.0.attn.c_attn.weight");
  EXPECT_EQ(keys.back(), "score.weight");
  for (const auto& [key, t] : m->parameters()) {
    EXPECT_EQ(key.find("masked_bias"), std::string::npos) << key;
    EXPECT_FALSE(key.size() >= 10 && key.compare(key.size() - 10, 10, ".attn.bias") == 0) << key;
    EXPECT_EQ(t.device(), device_);
    EXPECT_EQ(t.scalar_type(), at::kFloat);
  }
  EXPECT_EQ(m->parameters().at("transformer.h.0.attn.c_attn.weight").sizes(), at::IntArrayRef({32, 96}));
}

TEST_P(Gpt2ModelTest, HiddenStatesMatchReferenceWithRightLeftAndNoPadding) {
  auto body = tiny(Gpt2Head::kNone);
  EXPECT_EQ(body->architecture(), "gpt2");
  EXPECT_FALSE(body->parameters().contains("score.weight"));  // the body of a head model
  at::Tensor right = body->forward(body->parameters(), g("ids_right"), g("mask_right"));
  EXPECT_TRUE(all_close(right, g("hidden_right")));
  EXPECT_TRUE(all_close(body->forward(body->parameters(), g("ids_left"), g("mask_left")), g("hidden_left")));
  EXPECT_TRUE(all_close(body->forward(g("ids_right")), g("hidden_nomask")));
  EXPECT_TRUE(all_close(body->forward(g("ids_full")), g("hidden_full")));  // all n_positions used
  // The mask changes the states of tokens after padding only: right padding leaves real tokens as they
  // are without a mask (causal), left padding does not.
  EXPECT_FALSE(all_close(g("hidden_right"), g("hidden_nomask")));
  at::NoGradGuard no_grad;  // the in-place path
  EXPECT_TRUE(all_close(body->forward(body->parameters(), g("ids_left"), g("mask_left")), g("hidden_left")));
  EXPECT_TRUE(all_close(body->hidden_states(body->parameters(), g("ids_right"), g("mask_right")),
                        g("hidden_right")));
}

TEST_P(Gpt2ModelTest, LmHeadIsTiedToWteWhenTheFileHasNone) {
  auto lm = tiny(Gpt2Head::kLanguageModel);
  EXPECT_EQ(lm->architecture(), "gpt2_lm");
  EXPECT_TRUE(lm->tied_lm_head());
  EXPECT_FALSE(lm->parameters().contains("lm_head.weight"));
  EXPECT_FALSE(lm->parameters().contains("score.weight"));
  EXPECT_TRUE(all_close(lm->forward(lm->parameters(), g("ids_right"), g("mask_right")), g("lm_logits_right")));
  EXPECT_TRUE(all_close(lm->forward(g("ids_full")), g("lm_logits_full")));
}

TEST_P(Gpt2ModelTest, UntiedLmHeadIsUsedWhenPresent) {
  StateDict p = tiny(Gpt2Head::kNone)->parameters();
  at::Tensor w = at::randn({320, 32}, at::TensorOptions().device(device_));
  p.set("lm_head.weight", w);
  Gpt2Model lm(p, read_json(kModelData / "model_tiny" / "config.json"), Gpt2Head::kLanguageModel);
  EXPECT_FALSE(lm.tied_lm_head());
  EXPECT_EQ(lm.parameters().keys().back(), "lm_head.weight");
  at::Tensor logits = lm.forward(lm.parameters(), g("ids_right"), g("mask_right"));
  EXPECT_TRUE(all_close(logits, at::matmul(g("hidden_right"), w.to(at::kDouble).t())));
  EXPECT_FALSE(all_close(logits, g("lm_logits_right")));
}

TEST_P(Gpt2ModelTest, SequenceClassificationPoolsAsTransformersWithRightPadding) {
  auto m = tiny();
  // Row 0 has no pad token (its last token), rows 1–3 are right-padded, row 4 holds a pad (= eos)
  // token inside its text: the first pad ends the row.
  EXPECT_TRUE(at::equal(sequence_pool_index(g("ids_right"), 319), g("pool_index_right")));
  EXPECT_TRUE(all_close(m->forward(m->parameters(), g("ids_right"), g("mask_right")), g("cls_logits_right")));
  EXPECT_TRUE(all_close(m->forward(g("ids_right")), g("cls_logits_nomask")));
}

TEST_P(Gpt2ModelTest, SequenceClassificationPoolsAsTransformersWithLeftPadding) {
  auto m = tiny();
  EXPECT_TRUE(at::equal(sequence_pool_index(g("ids_left"), 319), g("pool_index_left")));  // the last token
  at::Tensor left = m->forward(m->parameters(), g("ids_left"), g("mask_left"));
  EXPECT_TRUE(all_close(left, g("cls_logits_left")));
  // Left padding moves the positions (0..T−1 whatever the mask), so rows 1–4 differ from right padding.
  EXPECT_TRUE(all_close(left.narrow(0, 0, 1), g("cls_logits_right").narrow(0, 0, 1)));
  EXPECT_FALSE(all_close(left.narrow(0, 1, 1), g("cls_logits_right").narrow(0, 1, 1)));
}

TEST(Gpt2PoolIndex, HandMadeRows) {
  const int64_t pad = 9;
  at::Tensor ids = at::tensor(std::vector<int64_t>{5, 6, 7, 8,     // no pad: the last token
                               5, 6, pad, pad,  // right padding: the token before the first pad
                               pad, pad, 5, 6,  // left padding: the last token
                               5, pad, 6, pad,  // a pad inside: the token before the first one
                               pad, pad, pad, pad})  // all pads: the last token
                       .view({5, 4});
  EXPECT_TRUE(at::equal(sequence_pool_index(ids, pad), at::tensor({3, 1, 3, 0, 3}, at::kLong)));
  // Without a pad token every row is taken whole.
  EXPECT_TRUE(at::equal(sequence_pool_index(ids, std::nullopt), at::tensor({3, 3, 3, 3, 3}, at::kLong)));
  at::Tensor hidden = at::arange(5 * 4 * 2, at::kFloat).view({5, 4, 2});
  at::Tensor pooled = pool_last_token(hidden, ids, pad);
  EXPECT_TRUE(at::equal(pooled.select(1, 0), at::tensor({6.f, 10.f, 22.f, 24.f, 38.f})));
}

TEST_P(Gpt2ModelTest, GradientsFlowIntoTheParametersAsInTheReference) {
  auto m = tiny();
  StateDict p;
  for (const auto& [key, t] : m->parameters()) p.set(key, t.detach().clone().requires_grad_(true));
  at::Tensor out = m->forward(p, g("ids_right"), g("mask_right"));
  out.pow(2).sum().backward();
  EXPECT_TRUE(all_close(p.at("transformer.h.0.mlp.c_fc.weight").grad(), g("grad_h0_mlp_c_fc_weight"), 1e-4, 1e-4));
  EXPECT_TRUE(all_close(p.at("transformer.wte.weight").grad(), g("grad_wte"), 1e-4, 1e-4));
}

TEST_P(Gpt2ModelTest, ForwardReadsTheParametersItIsGiven) {
  auto m = tiny();
  StateDict p = m->parameters().clone();
  // Not a constant shift: ln_f would remove that.
  p.at("transformer.h.1.mlp.c_proj.bias").add_(at::randn_like(p.at("transformer.h.1.mlp.c_proj.bias")));
  at::Tensor base = m->forward(m->parameters(), g("ids_right"), g("mask_right"));
  at::Tensor moved = m->forward(p, g("ids_right"), g("mask_right"));
  EXPECT_FALSE(all_close(base, moved));
  auto m2 = m->with_parameters(p);
  EXPECT_EQ(m2->architecture(), "gpt2_sequence_classification");
  EXPECT_TRUE(all_close(m2->forward(g("ids_right")), m->forward(p, g("ids_right"))));
  StateDict wrong = p.clone();
  wrong.erase("score.weight");
  EXPECT_FALSE(error_of([&] { m->with_parameters(wrong); }).empty());
}

TEST_P(Gpt2ModelTest, TanhGeluVariantsEqualGeluNewAndOthersDiffer) {
  // gelu_pytorch_tanh and gelu_fast are gelu_new's formula written otherwise: the reference's outputs.
  const StateDict p = tiny(Gpt2Head::kNone)->parameters();
  nlohmann::json c = read_json(kModelData / "model_tiny" / "config.json");
  for (const char* act : {"gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "silu", "swish", "tanh", "gelu"}) {
    c["activation_function"] = act;
    Gpt2Model m(p, c, Gpt2Head::kNone);
    const bool same = std::string(act) == "gelu_pytorch_tanh" || std::string(act) == "gelu_fast";
    EXPECT_EQ(all_close(m.forward(p, g("ids_right"), g("mask_right")), g("hidden_right")), same) << act;
  }
}

TEST_P(Gpt2ModelTest, BareShardedGpt2ModelMatchesReference) {
  auto m = std::dynamic_pointer_cast<Gpt2Model>(load_gpt2(kModelData / "model_tiny_bare", std::nullopt, device_));
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->head(), Gpt2Head::kNone);
  EXPECT_EQ(m->gpt2_config().inner_dim(), 40);
  EXPECT_EQ(m->gpt2_config().activation_function, "gelu");
  EXPECT_FALSE(m->gpt2_config().pad_token_id.has_value());
  for (const auto& [key, t] : m->parameters()) EXPECT_EQ(key.rfind("transformer.", 0), 0u) << key;
  EXPECT_TRUE(all_close(m->forward(m->parameters(), g("bare_ids"), g("bare_mask")), g("bare_hidden")));
  auto lm = load_gpt2(kModelData / "model_tiny_bare", Gpt2Head::kLanguageModel, device_);
  EXPECT_TRUE(all_close(
      static_cast<const Gpt2Model&>(*lm).forward(lm->parameters(), g("bare_ids"), g("bare_mask")),
      g("bare_lm_logits")));
}

TEST_P(Gpt2ModelTest, SavedFolderLoadsBackWithTheSameOutputs) {
  ScratchDir tmp("save");
  auto m = tiny();
  save_gpt2(*m, tmp.path() / "cls");
  const nlohmann::json cfg = read_json(tmp.path() / "cls" / "config.json");
  EXPECT_EQ(cfg["architectures"], nlohmann::json::array({"GPT2ForSequenceClassification"}));
  EXPECT_EQ(cfg["id2label"]["2"], "positive");
  EXPECT_EQ(cfg["torch_dtype"], "float32");
  auto back = load_gpt2(tmp.path() / "cls", std::nullopt, device_);
  EXPECT_EQ(back->architecture(), "gpt2_sequence_classification");
  EXPECT_EQ(back->parameters().keys(), m->parameters().keys());
  EXPECT_TRUE(all_close(static_cast<const Gpt2Model&>(*back).forward(back->parameters(), g("ids_left"), g("mask_left")),
                        g("cls_logits_left")));
  // A tied LM head is not written, as transformers does.
  save_gpt2(*tiny(Gpt2Head::kLanguageModel), tmp.path() / "lm");
  SafetensorsFile lm_file(tmp.path() / "lm" / "model.safetensors");
  EXPECT_EQ(lm_file.find("lm_head.weight"), nullptr);
  EXPECT_EQ(read_json(tmp.path() / "lm" / "config.json")["architectures"],
            nlohmann::json::array({"GPT2LMHeadModel"}));
}

INSTANTIATE_TEST_SUITE_P(Devices, Gpt2ModelTest,
                         ::testing::ValuesIn(at::hasCUDA() ? std::vector<std::string>{"cpu", "cuda"}
                                                           : std::vector<std::string>{"cpu"}),
                         [](const auto& info) { return info.param; });

// --- errors: one line each, naming the file or key

class Gpt2ModelErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    weights_ = SafetensorsFile(kModelData / "model_tiny" / "model.safetensors").read_all();
    config_ = read_json(kModelData / "model_tiny" / "config.json");
  }
  /// The error of loading a folder with `weights` and `config`, the folder's path written as DIR.
  std::string load_error(const StateDict& weights, const nlohmann::json& config) {
    const fs::path dir = tmp_.path() / ("m" + std::to_string(n_++));
    write_variant(dir, weights, config);
    std::string msg = error_of([&] { load_gpt2(dir); });
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (size_t at = msg.find(dir.string()); at != std::string::npos; at = msg.find(dir.string())) {
      msg.replace(at, dir.string().size(), "DIR");
    }
    return msg;
  }

  ScratchDir tmp_{"errors"};
  int n_ = 0;
  StateDict weights_;
  nlohmann::json config_;
};

TEST_F(Gpt2ModelErrors, MissingKey) {
  StateDict w = weights_;
  w.erase("transformer.h.1.mlp.c_fc.weight");
  const std::string msg = load_error(w, config_);
  EXPECT_EQ(msg, "DIR: the weights lack 'transformer.h.1.mlp.c_fc.weight' (shape [32, 128] by config.json)");
}

TEST_F(Gpt2ModelErrors, MissingScoreOfASequenceClassifier) {
  StateDict w = weights_;
  w.erase("score.weight");
  const std::string msg = load_error(w, config_);
  EXPECT_EQ(msg, "DIR: the weights lack 'score.weight' (shape [3, 32] by config.json)");
}

TEST_F(Gpt2ModelErrors, ShapeDisagreesWithConfig) {
  nlohmann::json c = config_;
  c["n_inner"] = 64;
  const std::string msg = load_error(weights_, c);
  EXPECT_EQ(msg, "DIR: 'transformer.h.0.mlp.c_fc.weight' has shape [32, 128] but config.json implies [32, 64]");
  c = config_;
  c["id2label"] = {{"0", "no"}, {"1", "yes"}};
  c.erase("label2id");
  EXPECT_EQ(load_error(weights_, c), "DIR: 'score.weight' has shape [3, 32] but config.json implies [2, 32]");
}

TEST_F(Gpt2ModelErrors, MoreLayersThanConfig) {
  nlohmann::json c = config_;
  c["n_layer"] = 1;
  EXPECT_EQ(load_error(weights_, c),
            "DIR: the weights have 'transformer.h.1.attn.c_attn.bias' (shape [96]) that config.json does not "
            "describe (n_layer 1)");
}

TEST_F(Gpt2ModelErrors, UnexpectedHeadTensor) {
  StateDict w = weights_;
  w.set("score.bias", at::zeros({3}));
  EXPECT_EQ(load_error(w, config_),
            "DIR: the weights have 'score.bias' (shape [3]) that a GPT2ForSequenceClassification does not have");
}

TEST_F(Gpt2ModelErrors, UnknownActivation) {
  nlohmann::json c = config_;
  c["activation_function"] = "gelu_newer";
  EXPECT_EQ(load_error(weights_, c),
            "DIR/config.json: 'activation_function' is 'gelu_newer'; supported: gelu_new, gelu_pytorch_tanh, "
            "gelu_fast, gelu, quick_gelu, relu, silu, swish, tanh");
}

TEST_F(Gpt2ModelErrors, BadConfigValues) {
  nlohmann::json c = config_;
  c["n_head"] = 5;
  EXPECT_EQ(load_error(weights_, c), "DIR/config.json: n_embd 32 is not divisible by n_head 5");
  c = config_;
  c["n_embd"] = "32";
  EXPECT_EQ(load_error(weights_, c), "DIR/config.json: 'n_embd' must be a positive integer, got \"32\"");
  c = config_;
  c["id2label"] = {{"0", "a"}, {"2", "b"}};
  EXPECT_EQ(load_error(weights_, c), "DIR/config.json: 'id2label' key '2' is not a class index 0..1");
}

TEST_F(Gpt2ModelErrors, MissingConfig) {
  const fs::path dir = tmp_.path() / "noconfig";
  fs::create_directories(dir);
  save_safetensors(dir / "model.safetensors", weights_);
  EXPECT_EQ(error_of([&] { load_gpt2(dir); }),
            (dir / "config.json").string() +
                " is missing: a GPT-2 model folder needs its config.json to build the architecture");
}

TEST_F(Gpt2ModelErrors, InputsTheModelCannotTake) {
  auto m = load_gpt2(kModelData / "model_tiny");
  const auto& gpt2 = static_cast<const Gpt2Model&>(*m);
  EXPECT_EQ(error_of([&] { m->forward(at::zeros({1, 65}, at::kLong)); }),
            "gpt2: input_ids has 65 tokens per row but n_positions is 64 (truncate the input to at most 64 tokens)");
  EXPECT_NO_THROW(m->forward(at::zeros({1, 64}, at::kLong)));
  EXPECT_EQ(error_of([&] { m->forward(at::full({2, 3}, 320, at::kLong)); }),
            "gpt2: input_ids holds token id 320, outside the vocabulary [0, 320)");
  EXPECT_EQ(error_of([&] { m->forward(at::full({2, 3}, -1, at::kLong)); }),
            "gpt2: input_ids holds token id -1, outside the vocabulary [0, 320)");
  EXPECT_EQ(error_of([&] { m->forward(at::zeros({2, 3}, at::kFloat)); }),
            "gpt2: input_ids must hold integer token ids, got Float");
  EXPECT_EQ(error_of([&] { m->forward(at::zeros({3}, at::kLong)); }),
            "gpt2: input_ids must be [batch, tokens], got [3]");
  EXPECT_EQ(error_of([&] { gpt2.forward(m->parameters(), at::zeros({2, 3}, at::kLong), at::ones({2, 4}, at::kLong)); }),
            "gpt2: attention_mask must have input_ids' shape [2, 3], got [2, 4]");
}

}  // namespace
}  // namespace fusion::gpt2
