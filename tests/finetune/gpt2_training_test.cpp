// lm_pretrain and finetune's GPT-2 path on tiny GPT-2s: the losses against their definitions, and
// short trainings that must learn.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cmath>
#include <fstream>

#include "finetune.hpp"
#include "fusion/gpt2/model.hpp"
#include "fusion/gpt2/tokenizer.hpp"
#include "fusion/safetensors.hpp"
#include "lm_pretrain.hpp"
#include "error_of.hpp"
#include "support.hpp"

namespace fs = std::filesystem;
using namespace finetune_test;
using fusion::finetune::Finetune;
using fusion::finetune::LmPretrain;
using fusion::gpt2::Gpt2Head;
using fusion::gpt2::Gpt2Model;
using namespace fusion::testing;

namespace {

nlohmann::json tiny_config(int64_t vocab, int64_t positions = 16) {
  return {{"model_type", "gpt2"}, {"vocab_size", vocab}, {"n_positions", positions}, {"n_embd", 8},
          {"n_layer", 2},         {"n_head", 2},         {"eos_token_id", vocab - 1}};
}

std::shared_ptr<Gpt2Model> tiny_gpt2(Gpt2Head head, int64_t vocab, uint64_t seed, int64_t positions = 16) {
  const nlohmann::json cfg = tiny_config(vocab, positions);
  const auto c = fusion::gpt2::Gpt2Config::from_json(cfg, "test");
  return std::make_shared<Gpt2Model>(Gpt2Model::random_parameters(c, head, seed), cfg, head, "test");
}

// Trainable copies of a model's floating parameters.
StateDict leaves(const Model& m) {
  StateDict p;
  for (const auto& [k, t] : m.parameters()) p.set(k, t.detach().clone().set_requires_grad(t.is_floating_point()));
  return p;
}

std::string gunzip(const fs::path& gz) {
  gzFile f = gzopen(gz.c_str(), "rb");
  EXPECT_NE(f, nullptr) << gz;
  std::string out;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  gzclose(f);
  return out;
}

// GPT-2's real tokenizer files (committed gzipped under tests/gpt2/data) unpacked into `dir`.
void write_gpt2_tokenizer(const fs::path& dir) {
  const fs::path data = fs::path(FUSION_TEST_GPT2_DATA);
  fs::create_directories(dir);
  std::ofstream(dir / "vocab.json", std::ios::binary) << gunzip(data / "vocab.json.gz");
  std::ofstream(dir / "merges.txt", std::ios::binary) << gunzip(data / "merges.txt.gz");
}

// A byte-level tokenizer without merges: ids 0..255 are the bytes (GPT-2's bytes→unicode table
// spells them), 256 is <|endoftext|>. Small enough for fast training tests.
fusion::gpt2::Gpt2Tokenizer byte_tokenizer() {
  std::unordered_map<std::string, int64_t> vocab;
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + n++);
    std::string u;  // UTF-8 of cp (< 0x800)
    if (cp < 0x80) {
      u += static_cast<char>(cp);
    } else {
      u += static_cast<char>(0xc0 | (cp >> 6));
      u += static_cast<char>(0x80 | (cp & 0x3f));
    }
    vocab[u] = b;
  }
  vocab["<|endoftext|>"] = 256;
  return fusion::gpt2::Gpt2Tokenizer(vocab, {}, "byte tokenizer");
}

void write_byte_tokenizer(const fs::path& dir) {
  const auto tok = byte_tokenizer();
  nlohmann::json vocab = nlohmann::json::object();
  for (int64_t id = 0; id < 257; ++id) vocab[tok.id_to_token(id)] = id;
  fs::create_directories(dir);
  std::ofstream(dir / "vocab.json") << vocab.dump();
  std::ofstream(dir / "merges.txt") << "#version: 0.2\n";
}

// Sequences of ids over a vocabulary of 20 (pad 19), right-padded; the label is which of the
// marker tokens 1, 2, 3 the row holds (somewhere among random filler tokens 4..18).
class MarkerTask : public fusion::Task {
 public:
  explicit MarkerTask(uint64_t seed) {
    at::Generator g = at::detail::createCPUGenerator(seed);
    const int64_t n = 96, len = 10;
    x_ = at::randint(4, 19, {n, len}, g, at::kLong);
    y_ = at::arange(3, at::kLong).repeat({n / 3});
    at::Tensor lengths = at::randint(4, len + 1, {n}, g, at::kLong);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t L = lengths[i].item<int64_t>();
      const int64_t at_pos = at::randint(0, L, {1}, g, at::kLong).item<int64_t>();
      x_[i][at_pos] = y_[i].item<int64_t>() + 1;
      x_[i].slice(0, L).fill_(19);
    }
  }
  std::string name() const override { return "markers"; }
  int64_t num_classes() const override { return 3; }
  bool has_train_split() const override { return true; }
  std::unique_ptr<fusion::BatchStream> train_stream(int64_t batch, uint64_t seed) override {
    return std::make_unique<VectorStream>(x_, y_, batch, seed);
  }
  at::Tensor logits(const Model&, const StateDict&, const at::Tensor&) const override {
    FUSION_FAIL("markers: the head is the method's");
  }
  nlohmann::json evaluate(const Model&) override { FUSION_FAIL("markers: not evaluated here"); }
  const at::Tensor& x() const { return x_; }
  const at::Tensor& y() const { return y_; }

 private:
  at::Tensor x_, y_;
};

// Mean cross-entropy of a GPT2ForSequenceClassification model over the marker task.
double classifier_loss(const Model& m, const MarkerTask& t) {
  at::NoGradGuard g;
  const auto& gm = dynamic_cast<const Gpt2Model&>(m);
  return at::cross_entropy_loss(gm.forward(m.parameters(), t.x(), {}), t.y()).item<double>();
}

}  // namespace

TEST(LmPretrain, ChunkedStepIsTheFullLossAndItsGradients) {
  auto model = tiny_gpt2(Gpt2Head::kLanguageModel, 50, 3);
  at::Generator g = at::detail::createCPUGenerator(5);
  at::Tensor ids = at::randint(0, 50, {3, 9}, g, at::kLong);
  StateDict a = leaves(*model), b = leaves(*model);
  at::Tensor full = fusion::finetune::causal_lm_loss(model->forward(a, ids, {}), ids);
  full.backward();
  // Chunks of 5 positions: 24 positions in 5 chunks, the last one short.
  const double chunked = fusion::finetune::causal_lm_step(*model, b, ids, true, 5);
  EXPECT_NEAR(chunked, full.item<double>(), 1e-5);
  for (const auto& [k, t] : a) {
    if (!t.requires_grad()) continue;
    ASSERT_TRUE(b.at(k).grad().defined()) << k;
    EXPECT_TRUE(at::allclose(b.at(k).grad(), t.grad(), 1e-5, 1e-6)) << k;
  }
  // The loss itself: the mean of −log softmax(logits[t])[ids[t + 1]] over t < T − 1.
  at::NoGradGuard ng;
  at::Tensor logp = at::log_softmax(model->forward(model->parameters(), ids, {}), -1);
  double sum = 0.0;
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t t = 0; t < 8; ++t) sum -= logp[r][t][ids[r][t + 1].item<int64_t>()].item<double>();
  EXPECT_NEAR(full.item<double>(), sum / 24.0, 1e-5);
  EXPECT_NEAR(fusion::finetune::causal_lm_step(*model, model->parameters(), ids, false), sum / 24.0, 1e-5);
}

TEST(LmPretrain, SampledSoftmaxOverEveryTokenIsTheFullSoftmax) {
  auto model = tiny_gpt2(Gpt2Head::kLanguageModel, 30, 4);
  at::Generator g = at::detail::createCPUGenerator(6);
  at::Tensor ids = at::randint(0, 30, {2, 7}, g, at::kLong);
  StateDict a = leaves(*model), b = leaves(*model);
  // Every token once as a candidate, no correction: the target's candidate is masked, so each
  // position's softmax runs over the whole vocabulary exactly once.
  at::Tensor sampled = fusion::finetune::sampled_lm_loss(*model, a, ids, at::arange(30, at::kLong), at::zeros({30}));
  at::Tensor full = fusion::finetune::causal_lm_loss(model->forward(b, ids, {}), ids);
  EXPECT_NEAR(sampled.item<double>(), full.item<double>(), 1e-5);
  sampled.backward();
  full.backward();
  for (const auto& [k, t] : a)
    if (t.requires_grad()) EXPECT_TRUE(at::allclose(t.grad(), b.at(k).grad(), 1e-5, 1e-6)) << k;
  // The correction: subtracting the same constant from every logit changes nothing; subtracting
  // log 2 from the target's alone, when all candidates are there, adds log(...) as computed by hand.
  at::NoGradGuard ng;
  at::Tensor shifted = fusion::finetune::sampled_lm_loss(*model, model->parameters(), ids, at::arange(30, at::kLong),
                                                         at::full({30}, 3.0));
  EXPECT_NEAR(shifted.item<double>(), full.item<double>(), 1e-5);
}

TEST(LmPretrain, UnigramProposalByHand) {
  at::Tensor blocks = at::tensor({0, 1, 1, 1, 3, 3, 3, 3}, at::kLong).view({2, 4});
  at::Tensor q = fusion::finetune::unigram_proposal(blocks, 5, 0.5);
  const double z = 1.0 + std::sqrt(3.0) + 2.0;
  EXPECT_NEAR(q[0].item<double>(), 1.0 / z, 1e-12);
  EXPECT_NEAR(q[1].item<double>(), std::sqrt(3.0) / z, 1e-12);
  EXPECT_EQ(q[2].item<double>(), 0.0);
  EXPECT_NEAR(q[3].item<double>(), 2.0 / z, 1e-12);
  EXPECT_EQ(q[4].item<double>(), 0.0);
}

TEST(LmPretrain, CorpusBlocksAreDocumentsJoinedByEndOfText) {
  ScratchDir dir("fusion_lm_pretrain");
  write_gpt2_tokenizer(dir.path() / "tok");
  const auto tok = fusion::gpt2::Gpt2Tokenizer::from_folder(dir.path() / "tok");
  {
    std::ofstream f(dir.path() / "a.jsonl");
    f << "{\"text\": \"Hello world\"}\n\n{\"text\": \"A second, longer document.\"}\r\n";
  }
  std::vector<int64_t> want = tok.encode("Hello world");
  want.push_back(50256);
  for (int64_t id : tok.encode("A second, longer document.")) want.push_back(id);
  want.push_back(50256);
  int64_t docs = 0;
  at::Tensor b = fusion::finetune::corpus_blocks({(dir.path() / "a.jsonl").string()}, tok, 3, &docs);
  EXPECT_EQ(docs, 2);
  const auto n = static_cast<int64_t>(want.size()) / 3;
  ASSERT_EQ(b.sizes().vec(), (std::vector<int64_t>{n, 3}));
  for (int64_t i = 0; i < n * 3; ++i) EXPECT_EQ(b.view({-1})[i].item<int64_t>(), want[static_cast<size_t>(i)]) << i;
  {
    std::ofstream f(dir.path() / "bad.jsonl");
    f << "{\"text\": \"fine\"}\n{\"txt\": \"wrong key\"}\n";
  }
  const std::string bad = (dir.path() / "bad.jsonl").string();
  EXPECT_EQ(error_of([&] { fusion::finetune::corpus_blocks({bad}, tok, 2); }),
            "method.train_files: " + bad + ":2: expected an object with a string \"text\"");
  EXPECT_EQ(error_of([&] { fusion::finetune::corpus_blocks({(dir.path() / "a.jsonl").string()}, tok, 64); }),
            "method.train_files: the corpus has " + std::to_string(want.size()) +
                " tokens, fewer than one block of 64");
}

TEST(LmPretrain, LowersTheHeldOutLossAndReturnsATiedLmHeadModel) {
  ScratchDir dir("fusion_lm_pretrain");
  write_byte_tokenizer(dir.path() / "tok");
  {
    std::ofstream f(dir.path() / "corpus.jsonl");
    for (int i = 0; i < 60; ++i)
      f << "{\"text\": \"the cat sat on the mat and the dog sat on the log " << (i % 3) << "\"}\n";
  }
  {
    nlohmann::json cfg = tiny_config(257, 32);
    std::ofstream(dir.path() / "config.json") << cfg.dump();
  }
  auto run = [&](int64_t sampled) {
    fs::create_directories(dir.path() / ("run" + std::to_string(sampled)));
    auto ctx = method_context<LmPretrain>({{"model_config", (dir.path() / "config.json").string()},
                                           {"tokenizer", (dir.path() / "tok").string()},
                                           {"train_files", std::vector<std::string>{(dir.path() / "corpus.jsonl").string()}},
                                           {"block_size", int64_t{32}},
                                           {"eval_blocks", int64_t{8}},
                                           {"num_steps", int64_t{60}},
                                           {"batch_size", int64_t{8}},
                                           {"lr", 1e-2},
                                           {"sampled_softmax", sampled}},
                                          dir.path() / ("run" + std::to_string(sampled)));
    MemoryModelPool pool(nullptr, {});
    return make_method<LmPretrain>(ctx)->run(pool, nullptr, ctx);
  };
  for (int64_t sampled : {int64_t{0}, int64_t{64}}) {
    fusion::Result r = run(sampled);
    ASSERT_EQ(r.models.size(), 1u);
    EXPECT_EQ(r.models[0].label, "pretrained");
    const double before = r.info["heldout_loss_before"].get<double>();
    const double after = r.info["heldout_loss_after"].get<double>();
    EXPECT_NEAR(before, std::log(257.0), 0.1) << "a fresh model is about uniform";
    // The sampled softmax never draws the tokens the corpus lacks, so it does not push them down
    // as the full softmax does; the held-out loss (always the full softmax's) falls less.
    if (sampled == 0) {
      EXPECT_LT(after, 0.5 * before);
    } else {
      EXPECT_LT(after, before - 1.0) << "sampled_softmax " << sampled;
    }
    fusion::ConstModelPtr m = r.models[0].make();
    const auto* g = dynamic_cast<const Gpt2Model*>(m.get());
    ASSERT_NE(g, nullptr);
    EXPECT_EQ(g->head(), Gpt2Head::kLanguageModel);
    EXPECT_TRUE(g->tied_lm_head());
    EXPECT_FALSE(m->parameters().at("transformer.wte.weight").requires_grad());
    std::ifstream log(dir.path() / ("run" + std::to_string(sampled)) / "train_log.csv");
    std::string header;
    std::getline(log, header);
    EXPECT_EQ(header, "step,loss,lr,seconds");
  }
  // The same seed gives the same model.
  fusion::ConstModelPtr m1 = run(0).models[0].make(), m2 = run(0).models[0].make();
  EXPECT_TRUE(m1->parameters().at("transformer.h.1.mlp.c_fc.weight").equal(m2->parameters().at("transformer.h.1.mlp.c_fc.weight")));
}

TEST(LmPretrain, RandomInitNeedsAConfig) {
  EXPECT_EQ(error_of([] {
              fusion::finetune::LmPretrainOptions o;
              o.tokenizer = "t";
              o.train_files = {"c.jsonl"};
              LmPretrain m(o);
            }),
            "method.model_config: required with method.init = \"random\" (a GPT-2 config.json)");
}

TEST(FinetuneGpt2, TrainsABodyWithAFreshScoreHead) {
  auto body = tiny_gpt2(Gpt2Head::kNone, 20, 7);
  MemoryModelPool models(body, {});
  MemoryTaskPool tasks;
  const auto& task = static_cast<const MarkerTask&>(tasks.add(std::make_unique<MarkerTask>(9)));
  ScratchDir dir("fusion_finetune_gpt2");
  const fs::path head_file = dir.path() / "heads" / "markers.safetensors";
  auto ctx = method_context<Finetune>({{"task", std::string("markers")},
                                       {"num_steps", int64_t{150}},
                                       {"batch_size", int64_t{16}},
                                       {"lr", 1e-2},
                                       {"pad_token_id", int64_t{19}},
                                       {"head_file", head_file.string()},
                                       {"label_names", std::vector<std::string>{"one", "two", "three"}}},
                                      dir.path());
  fusion::Result r = make_method<Finetune>(ctx)->run(models, &tasks, ctx);
  ASSERT_EQ(r.models.size(), 1u);
  fusion::ConstModelPtr tuned = r.models[0].make();
  const auto* g = dynamic_cast<const Gpt2Model*>(tuned.get());
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(g->head(), Gpt2Head::kSequenceClassification);
  const auto& cfg = g->gpt2_config();
  EXPECT_EQ(cfg.labels, (std::vector<std::string>{"one", "two", "three"}));
  EXPECT_EQ(cfg.pad_token_id, std::optional<int64_t>(19));
  // A model whose head guesses (uniform, log 3) against the trained one.
  const double after = classifier_loss(*tuned, task);
  EXPECT_LT(after, 0.5 * std::log(3.0)) << "after " << after;
  // The trained head is also in head_file, as the task pool will read it.
  fusion::SafetensorsFile f(head_file);
  EXPECT_TRUE(f.tensor("score.weight").equal(tuned->parameters().at("score.weight")));
  // The body trained too; the pool's pretrained model is untouched.
  EXPECT_FALSE(tuned->parameters().at("transformer.h.0.attn.c_attn.weight").equal(
      body->parameters().at("transformer.h.0.attn.c_attn.weight")));
  EXPECT_EQ(models.modification(), "");
  EXPECT_EQ(r.info["trainable_params"].get<int64_t>(), body->parameters().numel() + 3 * 8);
}

TEST(FinetuneGpt2, HeadOnlyStepsLeaveTheBodyToTheLastSteps) {
  // With every step but the last head-only, the body takes one Adam step: each weight moves by at
  // most that step's learning rate (Adam's first update is lr·sign(g) up to ε).
  auto body = tiny_gpt2(Gpt2Head::kNone, 20, 7);
  MemoryModelPool models(body, {});
  MemoryTaskPool tasks;
  tasks.add(std::make_unique<MarkerTask>(9));
  ScratchDir dir("fusion_finetune_gpt2");
  auto run = [&](int64_t head_only) {
    auto ctx = method_context<Finetune>({{"task", std::string("markers")}, {"num_steps", int64_t{20}},
                                         {"batch_size", int64_t{16}}, {"lr", 1e-2}, {"pad_token_id", int64_t{19}},
                                         {"head_only_steps", head_only}},
                                        dir.path());
    return make_method<Finetune>(ctx)->run(models, &tasks, ctx).models[0].make();
  };
  auto max_change = [&](const Model& m) {
    double d = 0.0;
    for (const auto& [k, t] : body->parameters())
      d = std::max(d, (m.parameters().at(k) - t).abs().max().item<double>());
    return d;
  };
  fusion::ConstModelPtr probe = run(19), full = run(0);
  EXPECT_LE(max_change(*probe), 1e-2 * 1.0001);  // one step at the restarted schedule's peak
  EXPECT_GT(max_change(*probe), 0.0);
  EXPECT_GT(max_change(*full), 2e-2);
  EXPECT_FALSE(probe->parameters().at("score.weight").equal(full->parameters().at("score.weight")));
  EXPECT_EQ(error_of([&] { run(20); }), "method.head_only_steps = 20 must be below method.num_steps (20)");
}

TEST(FinetuneGpt2, OptionsForGpt2AreRefusedForOtherModels) {
  TinySetup world = blob_setup();
  ScratchDir dir("fusion_finetune_gpt2");
  auto ctx = method_context<Finetune>({{"task", std::string("blobs")}, {"head_file", std::string("h.safetensors")}},
                                      dir.path());
  EXPECT_EQ(error_of([&] { make_method<Finetune>(ctx)->run(*world.models, world.tasks.get(), ctx); }),
            "method.head_file: only for GPT-2 models (this model is a '" +
                world.models->pretrained()->architecture() + "')");
  EXPECT_FALSE(fs::exists("h.safetensors"));
}
