// The text_classification task pool on tiny random GPT-2 checkpoints: tokenizing and right padding,
// logits with the task's own head (the same with and without an attention mask), evaluation against
// a direct per-example computation, train streams, what the pool learns from the model pool, and its
// errors.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <set>

#include "fusion/checkpoint_pool.hpp"
#include "fusion/gpt2/model.hpp"
#include "fusion/safetensors.hpp"
#include "support.hpp"
#include "text_classification.hpp"

namespace fusion::text_classification {
namespace {

using namespace testing;

// A model pool folder: pretrained GPT2Model body with the tokenizer beside it, and one
// GPT2ForSequenceClassification expert per task (rte: 2 classes, mnli: 3), each with its own head.
class TinyGlue : public ::testing::Test {
 protected:
  void SetUp() override {
    gpt2::save_gpt2(*tiny_body(1), tmp_ / "pretrained");
    write_tiny_tokenizer(tmp_ / "pretrained");
    rte_ = tiny_classifier({"entailment", "not_entailment"}, 2);
    mnli_ = tiny_classifier({"entailment", "neutral", "contradiction"}, 3);
    gpt2::save_gpt2(*rte_, tmp_ / "rte");
    gpt2::save_gpt2(*mnli_, tmp_ / "mnli");
  }

  CheckpointModelPool model_pool(StringMap experts = {}) {
    CheckpointPoolOptions o;
    o.pretrained = (tmp_ / "pretrained").string();
    o.models = experts.empty() ? StringMap{{"rte", (tmp_ / "rte").string()}, {"mnli", (tmp_ / "mnli").string()}}
                               : experts;
    return CheckpointModelPool(o, quiet_context());
  }

  TextClassificationPoolOptions options() const {
    TextClassificationPoolOptions o;
    o.data_dir = glue_dir().string();
    o.tasks = {"rte", "mnli"};
    o.batch_size = 2;
    return o;
  }

  std::unique_ptr<TextClassificationPool> adapted_pool(TextClassificationPoolOptions o) {
    auto pool = std::make_unique<TextClassificationPool>(o, quiet_context());
    auto models = model_pool();
    pool->adapt_to(models);
    return pool;
  }

  TempDir tmp_{"glue"};
  std::shared_ptr<gpt2::Gpt2Model> rte_, mnli_;
};

TEST_F(TinyGlue, AdaptToTakesTokenizerMaxLengthAndEachExpertsHead) {
  auto pool = adapted_pool(options());
  EXPECT_EQ(pool->options().tokenizer, tmp_ / "pretrained");
  EXPECT_EQ(pool->options().tokenizer_from, "modelpool.pretrained");
  EXPECT_EQ(pool->options().max_length, 128);  // n_positions of the pretrained config.json
  EXPECT_EQ(pool->task_names(), (std::vector<std::string>{"rte", "mnli"}));
  auto& rte = pool->text_task("rte");
  auto& mnli = pool->text_task("mnli");
  EXPECT_EQ(rte.spec().head_from, "modelpool.models.rte");
  EXPECT_TRUE(rte.head().equal(rte_->parameters().at("score.weight")));
  EXPECT_TRUE(mnli.head().equal(mnli_->parameters().at("score.weight")));
  EXPECT_EQ(mnli.head().size(0), 3);
  EXPECT_EQ(rte.pad_id(), kTinyEos);
}

TEST_F(TinyGlue, EncodingTruncatesAndPadsOnTheRight) {
  auto o = options();
  o.max_length = 6;
  auto pool = adapted_pool(o);
  auto& t = pool->text_task("rte");
  EXPECT_EQ(pool->options().max_length, 6);
  // "the" = "t" "he" (the merge h e), no prefix space; a pair is joined without a separator.
  TextExample short_ex{"the", std::nullopt, 0, 1};
  EXPECT_EQ(t.encode(short_ex), (std::vector<int64_t>{'t', 257}));
  TextExample pair{"the", std::string(" tat"), 0, 1};
  EXPECT_EQ(t.encode(pair), (std::vector<int64_t>{'t', 257, 256, 'a', 't'}));
  TextExample long_ex{"abcdefghij", std::nullopt, 0, 1};
  EXPECT_EQ(t.encode(long_ex), (std::vector<int64_t>{'a', 'b', 'c', 'd', 'e', 'f'}));
  TextExample long_pair{"abcdefgh", std::string("xyz"), 0, 1};  // longest_first: 3 + 3
  EXPECT_EQ(t.encode(long_pair), (std::vector<int64_t>{'a', 'b', 'c', 'x', 'y', 'z'}));

  at::Tensor padded = t.pad_rows({{1, 2, 3}, {4}});
  EXPECT_TRUE(padded.equal(at::tensor(std::vector<int64_t>{1, 2, 3, 4, kTinyEos, kTinyEos}, at::kLong).view({2, 3})));
  o.padding = "max_length";
  auto pool_max = adapted_pool(o);
  EXPECT_EQ(pool_max->text_task("rte").pad_rows({{1, 2, 3}, {4}}).sizes(), at::IntArrayRef({2, 6}));
  o.pad_token_id = 7;
  auto pool7 = adapted_pool(o);
  EXPECT_EQ(pool7->text_task("rte").pad_rows({{1}, {4, 5}})[0][1].item<int64_t>(), 7);
}

TEST_F(TinyGlue, LogitsPoolTheLastRealTokenWithTheTasksHeadMaskOrNot) {
  auto pool = adapted_pool(options());
  auto& t = pool->text_task("mnli");
  auto body = tiny_body(5);
  const auto& ex = t.test_split().examples;
  std::vector<std::vector<int64_t>> rows;
  for (const auto& e : ex) rows.push_back(t.encode(e));
  ASSERT_NE(rows[0].size(), rows[1].size());
  at::Tensor ids = t.pad_rows(rows);
  at::Tensor z = t.logits(*body, body->parameters(), ids);
  ASSERT_EQ(z.sizes(), at::IntArrayRef({3, 3}));

  // Right padding and causal attention: no real token attends to a pad, so an attention mask that
  // hides the pads changes nothing at the pooled token (the last real one).
  at::Tensor mask = at::zeros_like(ids);
  for (size_t i = 0; i < rows.size(); ++i) mask[static_cast<int64_t>(i)].narrow(0, 0, static_cast<int64_t>(rows[i].size())).fill_(1);
  at::Tensor hidden = body->hidden_states(body->parameters(), ids, mask);
  at::Tensor w = mnli_->parameters().at("score.weight");
  for (size_t i = 0; i < rows.size(); ++i) {
    const int64_t last = static_cast<int64_t>(rows[i].size()) - 1;
    at::Tensor direct = at::matmul(hidden[static_cast<int64_t>(i)][last], w.t());
    EXPECT_TRUE(at::allclose(z[static_cast<int64_t>(i)], direct, 1e-6, 1e-6)) << i;
  }
  // Each row alone, unpadded, through a GPT2ForSequenceClassification made of the body and the head.
  StateDict p = body->parameters();
  p.set("score.weight", w);
  gpt2::Gpt2Model classifier(p, mnli_->config(), gpt2::Gpt2Head::kSequenceClassification);
  for (size_t i = 0; i < rows.size(); ++i) {
    at::Tensor one = classifier.forward(at::tensor(rows[i], at::kLong).unsqueeze(0));
    EXPECT_TRUE(at::allclose(z[static_cast<int64_t>(i)], one[0], 1e-5, 1e-6)) << i;
  }
  // Differentiable in the parameters.
  StateDict q = body->parameters().clone();
  for (const auto& item : q) item.second.requires_grad_(true);
  t.logits(*body, q, ids).sum().backward();
  EXPECT_TRUE(q.at("transformer.h.0.mlp.c_fc.weight").grad().defined());
}

// The report against a direct computation: each example alone through body + head, CE and argmax.
void expect_report_matches(TextClassificationTask& t, const gpt2::Gpt2Model& body, const at::Tensor& w,
                           const nlohmann::json& config, const nlohmann::json& r) {
  StateDict p = body.parameters();
  p.set("score.weight", w);
  gpt2::Gpt2Model classifier(p, config, gpt2::Gpt2Head::kSequenceClassification);
  double loss = 0;
  int64_t correct = 0;
  const auto& ex = t.test_split().examples;
  for (const auto& e : ex) {
    at::Tensor z = classifier.forward(at::tensor(t.encode(e), at::kLong).unsqueeze(0));
    at::Tensor y = at::tensor(std::vector<int64_t>{e.label}, at::kLong);
    loss += at::cross_entropy_loss(z, y).item<double>();
    correct += z.argmax(1).item<int64_t>() == e.label;
  }
  const auto n = static_cast<double>(ex.size());
  EXPECT_NEAR(r.at("loss").get<double>(), loss / n, 1e-5);
  EXPECT_DOUBLE_EQ(r.at("accuracy").get<double>(), static_cast<double>(correct) / n);
  EXPECT_EQ(r.at("num_samples").get<int64_t>(), static_cast<int64_t>(ex.size()));
  EXPECT_EQ(r.at("labels").get<std::vector<std::string>>(), t.label_names());
}

TEST_F(TinyGlue, EvaluateMatchesADirectComputationWithFusionBenchsReportKeys) {
  auto pool = adapted_pool(options());
  auto body = tiny_body(9);
  nlohmann::json report = pool->evaluate(*body);
  expect_report_matches(pool->text_task("rte"), *body, rte_->parameters().at("score.weight"), rte_->config(),
                        report.at("rte"));
  expect_report_matches(pool->text_task("mnli"), *body, mnli_->parameters().at("score.weight"), mnli_->config(),
                        report.at("mnli"));
  const double avg = (report["rte"]["accuracy"].get<double>() + report["mnli"]["accuracy"].get<double>()) / 2;
  EXPECT_DOUBLE_EQ(report.at("average").at("accuracy").get<double>(), avg);
  EXPECT_TRUE(report.contains("model_info"));
  EXPECT_EQ(report["rte"]["labels"], nlohmann::json({"entailment", "not_entailment"}));
  EXPECT_EQ(report["mnli"]["tokenized_examples"].get<int64_t>(), 3);
  nlohmann::json again = pool->evaluate(*body);  // ids kept between evaluations
  EXPECT_EQ(again["mnli"]["tokenized_examples"].get<int64_t>(), 0);
  EXPECT_DOUBLE_EQ(again["mnli"]["loss"].get<double>(), report["mnli"]["loss"].get<double>());
  pool->set_eval_cache_bytes(0);
  nlohmann::json uncached = pool->evaluate(*body);
  EXPECT_EQ(uncached["mnli"]["tokenized_examples"].get<int64_t>(), 3);
  EXPECT_DOUBLE_EQ(uncached["mnli"]["loss"].get<double>(), report["mnli"]["loss"].get<double>());
}

TEST_F(TinyGlue, SavePredictionsWritesOneCsvPerModelAndTask) {
  auto o = options();
  o.save_predictions = true;
  o.tasks = {"mnli"};
  TextClassificationPool pool(o, quiet_context(tmp_ / "run"));
  auto models = model_pool();
  pool.adapt_to(models);
  auto body = tiny_body(9);
  nlohmann::json first = pool.evaluate(*body);
  nlohmann::json second = pool.evaluate(*tiny_body(10));
  EXPECT_EQ(first["mnli"]["predictions"], "predictions/model_0/mnli.csv");
  EXPECT_EQ(second["mnli"]["predictions"], "predictions/model_1/mnli.csv");
  std::ifstream in(tmp_ / "run" / "predictions" / "model_0" / "mnli.csv");
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "line,label,label_name,predicted,predicted_name,loss");
  auto& t = pool.text_task("mnli");
  StateDict p = body->parameters();
  p.set("score.weight", mnli_->parameters().at("score.weight"));
  gpt2::Gpt2Model classifier(p, mnli_->config(), gpt2::Gpt2Head::kSequenceClassification);
  const std::vector<std::string> names{"entailment", "neutral", "contradiction"};
  double loss_sum = 0;
  for (const auto& e : t.test_split().examples) {
    ASSERT_TRUE(std::getline(in, line));
    at::Tensor z = classifier.forward(at::tensor(t.encode(e), at::kLong).unsqueeze(0));
    const int64_t pred = z.argmax(1).item<int64_t>();
    const double loss = at::cross_entropy_loss(z, at::tensor(std::vector<int64_t>{e.label}, at::kLong)).item<double>();
    loss_sum += loss;
    const std::string prefix = std::to_string(e.line) + "," + std::to_string(e.label) + "," + names[e.label] + "," +
                               std::to_string(pred) + "," + names[pred] + ",";
    EXPECT_EQ(line.substr(0, prefix.size()), prefix);
    EXPECT_NEAR(std::stod(line.substr(prefix.size())), loss, 1e-5);
  }
  EXPECT_FALSE(std::getline(in, line));
  EXPECT_NEAR(first["mnli"]["loss"].get<double>(), loss_sum / 3, 1e-5);
  EXPECT_TRUE(fs::is_regular_file(tmp_ / "run" / "predictions" / "model_1" / "mnli.csv"));
}

TEST_F(TinyGlue, PredictionsQuoteLabelNamesAsCsv) {
  TextClassificationPoolOptions o;
  write_text(tmp_ / "c.jsonl", "{\"text\": \"a b\", \"label\": 1}\n{\"text\": \"c\", \"label\": 0}\n");
  o.test_datasets = {{"custom", (tmp_ / "c.jsonl").string()}};
  o.label_names = {{"custom", "[\"bad, really\", \"good \\\"yes\\\"\"]"}};
  o.experts = {{"custom", "rte"}};
  o.save_predictions = true;
  TextClassificationPool pool(o, quiet_context(tmp_ / "run"));
  auto models = model_pool();
  pool.adapt_to(models);
  pool.evaluate(*tiny_body(3));
  std::ifstream in(tmp_ / "run" / "predictions" / "model_0" / "custom.csv");
  std::string header, row;
  std::getline(in, header);
  std::getline(in, row);
  EXPECT_EQ(row.substr(0, 19), "1,1,\"good \"\"yes\"\"\",");
  std::getline(in, row);
  EXPECT_EQ(row.substr(0, 18), "2,0,\"bad, really\",");
}

TEST_F(TinyGlue, PaddingToMaxLengthGivesTheSameReport) {
  auto o = options();
  auto longest = adapted_pool(o)->evaluate(*tiny_body(4));
  o.padding = "max_length";
  o.batch_size = 3;
  auto padded = adapted_pool(o)->evaluate(*tiny_body(4));
  for (const char* t : {"rte", "mnli"}) {
    EXPECT_NEAR(longest[t]["loss"].get<double>(), padded[t]["loss"].get<double>(), 1e-6) << t;
    EXPECT_EQ(longest[t]["accuracy"], padded[t]["accuracy"]) << t;
  }
}

TEST_F(TinyGlue, TrainStreamsShuffleEveryExampleOncePerEpoch) {
  auto o = options();
  o.tasks = {"sst2"};
  TextClassificationPool pool(o, quiet_context());
  auto models = model_pool({{"sst2", (tmp_ / "rte").string()}});
  pool.adapt_to(models);
  auto& t = pool.text_task("sst2");
  ASSERT_TRUE(t.has_train_split());
  const auto& train = t.train_split()->examples;
  ASSERT_EQ(train.size(), 5u);
  auto stream = t.train_stream(5, 11);
  Batch b = stream->next();
  EXPECT_EQ(b.inputs.scalar_type(), at::kLong);
  EXPECT_EQ(b.inputs.size(0), 5);
  std::multiset<std::vector<int64_t>> want, got;
  for (const auto& e : train) {
    auto ids = t.encode(e);
    ids.push_back(e.label);
    want.insert(ids);
  }
  for (int64_t i = 0; i < 5; ++i) {
    std::vector<int64_t> row;
    for (int64_t j = 0; j < b.inputs.size(1) && b.inputs[i][j].item<int64_t>() != kTinyEos; ++j)
      row.push_back(b.inputs[i][j].item<int64_t>());
    row.push_back(b.labels[i].item<int64_t>());
    got.insert(row);
  }
  EXPECT_EQ(got, want);
  // Same seed, same batches; another seed, another order (5! orders: a collision is unlikely and fixed).
  auto again = t.train_stream(5, 11);
  EXPECT_TRUE(again->next().inputs.equal(b.inputs));
  auto other = t.train_stream(5, 12);
  EXPECT_FALSE(other->next().inputs.equal(b.inputs));
  // Batches straddle epochs.
  auto threes = t.train_stream(3, 1);
  threes->next();
  EXPECT_EQ(threes->next().labels.size(0), 3);
  EXPECT_EQ(error_of([&] { pool.text_task("sst2").test_stream(0, 1); }),
            "task 'sst2': test batch size must be positive, got 0");
}

TEST_F(TinyGlue, ErrorsNameTheOption) {
  // No expert and no head for a task.
  {
    TextClassificationPool pool(options(), quiet_context());
    auto models = model_pool({{"rte", (tmp_ / "rte").string()}});
    EXPECT_EQ(error_of([&] { pool.adapt_to(models); }),
              "task 'mnli': no classification head: add an expert 'mnli' under [modelpool.models] (its score.weight "
              "is the task's head), or set taskpool.experts.mnli or taskpool.heads.mnli");
  }
  // A head whose class count differs from the task's.
  {
    TextClassificationPool pool(options(), quiet_context());
    auto models = model_pool({{"rte", (tmp_ / "mnli").string()}, {"mnli", (tmp_ / "mnli").string()}});
    EXPECT_EQ(error_of([&] { pool.adapt_to(models); }),
              "task 'rte': the head score.weight [3, 16] of '" + (tmp_ / "mnli").string() +
                  "' (modelpool.models.rte) has 3 classes but the task has 2 (entailment, not_entailment)");
  }
  // A head of another width than the model's.
  {
    gpt2::save_gpt2(*tiny_classifier({"entailment", "not_entailment"}, 2, 8), tmp_ / "narrow");
    TextClassificationPool pool(options(), quiet_context());
    auto models = model_pool({{"rte", (tmp_ / "narrow").string()}, {"mnli", (tmp_ / "mnli").string()}});
    EXPECT_EQ(error_of([&] { pool.adapt_to(models); }),
              "task 'rte': the head score.weight [2, 8] of '" + (tmp_ / "narrow").string() +
                  "' (modelpool.models.rte) does not fit the pretrained model's n_embd 16");
  }
  // A body checkpoint has no score.weight.
  {
    auto o = options();
    o.heads = {{"rte", (tmp_ / "pretrained").string()}};
    TextClassificationPool pool(o, quiet_context());
    auto models = model_pool();
    EXPECT_EQ(error_of([&] { pool.adapt_to(models); }),
              "taskpool.heads.rte: '" + (tmp_ / "pretrained").string() +
                  "' has no score.weight (not a GPT2ForSequenceClassification checkpoint?)");
  }
  // max_length beyond the model's positions.
  {
    auto o = options();
    o.max_length = 256;
    TextClassificationPool pool(o, quiet_context());
    auto models = model_pool();
    EXPECT_EQ(error_of([&] { pool.adapt_to(models); }),
              "taskpool.max_length = 256 but the model takes at most 128 tokens (n_positions in " +
                  (tmp_ / "pretrained" / "config.json").string() + ")");
  }
  // No tokenizer beside the pretrained model.
  {
    fs::remove(tmp_ / "pretrained" / "merges.txt");
    TextClassificationPool pool(options(), quiet_context());
    auto models = model_pool();
    EXPECT_EQ(error_of([&] { pool.adapt_to(models); }),
              "taskpool.tokenizer is unset and modelpool.pretrained ('" + (tmp_ / "pretrained").string() +
                  "') has no vocab.json and merges.txt: set taskpool.tokenizer (a folder with GPT-2's vocab.json and "
                  "merges.txt)");
  }
}

TEST(TextPoolParse, TablesAndBuiltInFiles) {
  TextClassificationPoolOptions o;
  o.data_dir = glue_dir().string();
  o.tasks = {"mnli_mismatched", "sst2"};
  o.test_datasets = {{"custom", (data_dir() / "custom" / "test.jsonl").string()}};
  o.label_names = {{"custom", "negative, positive"}};
  auto [specs, opts] = TextClassificationPool::parse(o);
  ASSERT_EQ(specs.size(), 3u);
  EXPECT_EQ(specs[0].test, glue_dir() / "MNLI" / "dev_mismatched.tsv");
  EXPECT_EQ(*specs[0].train, glue_dir() / "MNLI" / "train.tsv");
  EXPECT_EQ(specs[1].test, glue_dir() / "SST-2" / "dev.tsv");
  EXPECT_EQ(specs[2].name, "custom");
  EXPECT_EQ(specs[2].labels, (std::vector<std::string>{"negative", "positive"}));
  EXPECT_FALSE(specs[2].train);
  EXPECT_EQ(opts.max_length, 1024);
  EXPECT_FALSE(opts.max_length_given);

  TextClassificationPoolOptions bad;
  bad.test_datasets = {{"custom", "x.jsonl"}};
  EXPECT_EQ(error_of([&] { TextClassificationPool::parse(bad); }),
            "taskpool: task 'custom' has no label names: it is not built in (built in: cola, sst2, mrpc, qqp, mnli, "
            "mnli_mismatched, qnli, rte), so set taskpool.label_names.custom = \"name0, name1, ...\"");
  bad.label_names = {{"other", "a, b"}, {"custom", "a, b"}};
  EXPECT_EQ(error_of([&] { TextClassificationPool::parse(bad); }),
            "taskpool.label_names.other: no such task (tasks: custom)");
  TextClassificationPoolOptions missing;
  missing.data_dir = "/nonexistent";
  missing.tasks = {"cola"};
  EXPECT_EQ(error_of([&] { TextClassificationPool::parse(missing); }),
            "taskpool: task 'cola' has no test split: no /nonexistent/CoLA/dev.tsv; set taskpool.test_datasets.cola");
}

TEST(TextPoolModel, ANonGpt2ModelIsRefused) {
  TextTaskSpec s;
  s.name = "rte";
  s.test = glue_dir() / "RTE" / "dev.tsv";
  s.labels = {"entailment", "not_entailment"};
  TextClassificationTask t(s, TextClassificationOptions{}, quiet_context());
  Model m("checkpoint", StateDict{});
  EXPECT_EQ(error_of([&] { t.logits(m, m.parameters(), at::zeros({1, 2}, at::kLong)); }),
            "task 'rte': the model is a 'checkpoint', not a GPT-2 body (text_classification evaluates GPT-2: use "
            "modelpool.name = \"gpt2\")");
  EXPECT_EQ(error_of([&] { t.head(); }),
            "task 'rte': no classification head: add an expert 'rte' under [modelpool.models] or set "
            "taskpool.heads.rte");
  EXPECT_EQ(error_of([&] { t.tokenizer(); }),
            "task 'rte': no tokenizer: set taskpool.tokenizer (a folder with GPT-2's vocab.json and merges.txt)");
}

}  // namespace
}  // namespace fusion::text_classification
