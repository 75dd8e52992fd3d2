// The `safetensors` checkpoint pool (checkpoint_pool.hpp): options, lazy loading on the context's
// dtype, layout checks against the pretrained model, and atomic saving as a Hugging Face folder.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include <atomic>
#include <cstring>
#include <limits>

#include "fusion/checkpoint_pool.hpp"
#include "fusion/checkpoint_stream.hpp"
#include "fusion/merging.hpp"
#include "fusion/safetensors.hpp"
#include "error_of.hpp"
#include "support.hpp"

namespace {

using fusion::CheckpointModelPool;
using fusion::StateDict;
using fusion::testing::expect_error;
using fusion::testing::read_bytes;
using fusion::testing::write_bytes;
namespace fs = std::filesystem;

const fs::path kData = FUSION_SDK_TEST_DATA;
const std::string kConfig = "{\n  \"model_type\": \"toy\",\n  \"hidden_size\": 3\n}\n";

StateDict toy(double v, int64_t rows = 2, int64_t cols = 3) {
  StateDict sd;
  sd.set("layer.weight", at::full({rows, cols}, v, at::kFloat));
  sd.set("layer.bias", at::full({cols}, v, at::kFloat));
  sd.set("position_ids", at::arange(4, at::kLong));
  return sd;
}

class CheckpointPool : public fusion::testing::TempDirTest {
 protected:
  /// A Hugging Face-like folder: model.safetensors + config.json.
  fs::path folder(const std::string& name, const StateDict& sd, bool with_config = true) {
    const fs::path d = dir_ / name;
    fs::create_directories(d);
    fusion::save_safetensors(d / "model.safetensors", sd);
    if (with_config) write_bytes(d / "config.json", kConfig);
    return d;
  }
  fusion::Context context(const fs::path& pretrained, const fusion::StringMap& models,
                          at::ScalarType dtype = at::kFloat) {
    std::map<std::string, fusion::Value> values{{"pretrained", pretrained.string()}, {"models", models}};
    fusion::Context::Settings settings;
    settings.dtype = dtype;
    return fusion::Context(settings).with_config(
        fusion::Config::validate("modelpool", values, fusion::schema_of<fusion::CheckpointPoolOptions>()));
  }
  std::unique_ptr<CheckpointModelPool> pool(const fusion::StringMap& models, at::ScalarType dtype = at::kFloat) {
    return std::make_unique<CheckpointModelPool>(context(folder("pre", toy(1.0)), models, dtype));
  }
};

TEST_F(CheckpointPool, InfoAndSchema) {
  const fusion::ComponentInfo info = CheckpointModelPool::info();
  EXPECT_EQ(info.name, "safetensors");
  const fusion::Schema& schema = fusion::schema_of<CheckpointModelPool::Options>();
  const fusion::OptionSpec* pre = schema.find("pretrained");
  const fusion::OptionSpec* models = schema.find("models");
  ASSERT_NE(pre, nullptr);
  ASSERT_NE(models, nullptr);
  EXPECT_EQ(pre->type, fusion::ValueType::String);
  EXPECT_EQ(models->type, fusion::ValueType::StringMap);
  EXPECT_FALSE(pre->default_value.has_value());  // required
  // Optional: a pool may hold the pretrained model alone (methods that need experts say so).
  ASSERT_TRUE(models->default_value.has_value());
  EXPECT_TRUE(std::get<fusion::StringMap>(*models->default_value).empty());
}

TEST_F(CheckpointPool, LoadsLazilyOnTheContextDtype) {
  const fs::path a = folder("a", toy(2.0));
  write_bytes(dir_ / "broken.safetensors", "not a safetensors file at all");
  // Construction reads nothing: the broken expert is only noticed when it is loaded.
  auto p = pool({{"a", a.string()}, {"broken", (dir_ / "broken.safetensors").string()}}, at::kDouble);
  EXPECT_EQ(p->expert_names(), (std::vector<std::string>{"a", "broken"}));
  EXPECT_TRUE(p->has_pretrained());
  EXPECT_EQ(p->path_of("a"), a);

  fusion::ModelPtr m = p->load("a");
  EXPECT_EQ(m->architecture(), "checkpoint");
  EXPECT_EQ(m->parameters().at("layer.weight").scalar_type(), at::kDouble);
  EXPECT_EQ(m->parameters().at("position_ids").scalar_type(), at::kLong);
  EXPECT_DOUBLE_EQ(m->parameters().at("layer.bias")[1].item<double>(), 2.0);
  EXPECT_EQ(m->config()["model_type"], "toy");

  // Fresh copies from load, a cached pretrained.
  fusion::ModelPtr m2 = p->load("a");
  EXPECT_NE(m.get(), m2.get());
  m2->parameters().at("layer.bias").fill_(9.0);
  EXPECT_DOUBLE_EQ(m->parameters().at("layer.bias")[0].item<double>(), 2.0);
  EXPECT_EQ(p->pretrained().get(), p->pretrained().get());
  EXPECT_DOUBLE_EQ(p->pretrained()->parameters().at("layer.weight")[0][0].item<double>(), 1.0);

  expect_error([&] { p->load("broken"); }, {(dir_ / "broken.safetensors").string(), "past the end"});
}

namespace {
long rss_file_kb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("RssFile:", 0) == 0) return std::stol(line.substr(8));
  }
  return -1L;
}
}  // namespace

TEST_F(CheckpointPool, LoadedModelsAreCopyOnWriteViewsOfTheirFiles) {
  // The pool reads float32 weights without a copy (views of a private mapping of the file): a
  // write to a loaded model must change neither the file nor a later load, nor another loaded copy.
  StateDict big;
  big.set("w", at::arange(1 << 20, at::kFloat));
  big.set("position_ids", at::arange(4, at::kLong));
  const fs::path a = folder("a", big);
  const std::string bytes = read_bytes(a / "model.safetensors");
  auto p = std::make_unique<CheckpointModelPool>(context(folder("pre", big), {{"a", a.string()}}));
  fusion::ModelPtr m = p->load("a");
  fusion::ModelPtr m2 = p->load("a");
  m->parameters().at("w").mul_(-1.0);
  m->parameters().at("position_ids").fill_(7);
  EXPECT_EQ(read_bytes(a / "model.safetensors"), bytes);
  EXPECT_FLOAT_EQ(m->parameters().at("w")[5].item<float>(), -5.0f);
  EXPECT_FLOAT_EQ(m2->parameters().at("w")[5].item<float>(), 5.0f);
  EXPECT_FLOAT_EQ(p->load("a")->parameters().at("w")[(1 << 20) - 1].item<float>(), float((1 << 20) - 1));
  EXPECT_EQ(p->load("a")->parameters().at("position_ids")[3].item<int64_t>(), 3);
  // A loaded model outlives the pool that read it (its tensors keep the mapping alive).
  p.reset();
  EXPECT_FLOAT_EQ(m2->parameters().at("w")[7].item<float>(), 7.0f);
}

TEST_F(CheckpointPool, ALoadedModelIsNotResidentUntilUsed) {
  // Loading checks every weight (touching every page of the file); those pages are dropped from
  // the resident set once the checkpoint is checked, so holding a loaded model costs no memory
  // until it is used, and its values come back from the page cache.
  StateDict big;
  for (int i = 0; i < 4; ++i) big.set("t" + std::to_string(i), at::full({4 << 20}, i, at::kFloat));
  const fs::path a = folder("a", big);
  auto p = std::make_unique<CheckpointModelPool>(context(folder("pre", big), {{"a", a.string()}}));
  const long before = rss_file_kb();
  ASSERT_GE(before, 0);
  fusion::ModelPtr m = p->load("a");
  const long after = rss_file_kb();
  EXPECT_LT(after - before, 16 * 1024) << "file-backed RSS grew by " << (after - before) << " kB";
  EXPECT_FLOAT_EQ(m->parameters().at("t3").sum().item<float>(), 3.0f * (4 << 20));
}

TEST_F(CheckpointPool, UnknownExpertListsTheKnownOnes) {
  auto p = pool({{"sun397", folder("s", toy(1.0)).string()}, {"cars", folder("c", toy(1.0)).string()}});
  expect_error([&] { p->load("mnist"); }, {"modelpool", "'mnist'", "sun397, cars"});
}

TEST_F(CheckpointPool, MissingPathNamesTheOption) {
  const fs::path missing = dir_ / "nowhere" / "sun397";
  expect_error([&] { pool({{"sun397", missing.string()}}); }, {"modelpool.models.sun397", missing.string()});
  expect_error([&] { CheckpointModelPool(context(dir_ / "nopre", {{"x", folder("x", toy(1)).string()}})); },
               {"modelpool.pretrained", (dir_ / "nopre").string()});
}

TEST_F(CheckpointPool, EmptyPathIsRefusedNamingTheOption) {
  EXPECT_EQ(fusion::testing::error_of([&] { CheckpointModelPool(context("", {})); }),
            "modelpool.pretrained: the path is empty");
  EXPECT_EQ(fusion::testing::error_of([&] { pool({{"a", ""}}); }), "modelpool.models.a: the path is empty");
  // 'pretrained' is the pretrained model's name, not an expert's.
  EXPECT_EQ(fusion::testing::error_of([&] { pool({{"pretrained", folder("x", toy(1)).string()}}); }),
            "modelpool.models.pretrained: 'pretrained' is reserved for the pretrained model; name the expert otherwise");
}

TEST_F(CheckpointPool, PretrainedAlone) {
  auto p = pool({});
  EXPECT_TRUE(p->expert_names().empty());
  EXPECT_TRUE(p->has_pretrained());
  EXPECT_TRUE(p->pretrained()->parameters().contains("layer.weight"));
  expect_error([&] { p->load("x"); }, {"'x'", "no experts", "modelpool.models"});
}

TEST_F(CheckpointPool, LayoutMismatchNamesKeyAndBothShapes) {
  const fs::path wrong = folder("wrong", toy(1.0, 3, 3));
  StateDict missing = toy(1.0);
  missing.erase("layer.bias");
  StateDict extra = toy(1.0);
  extra.set("head.weight", at::zeros({2}));
  auto p = pool({{"wrong", wrong.string()},
                 {"missing", folder("missing", missing).string()},
                 {"extra", folder("extra", extra).string()}});
  const std::vector<std::string> fragments = {"modelpool.models.wrong", "'layer.weight'", "pretrained has shape [2, 3]",
                                              "expert 'wrong' has shape [3, 3]"};
  expect_error([&] { p->load("wrong"); }, fragments);   // from the headers
  p->pretrained();
  expect_error([&] { p->load("wrong"); }, fragments);   // the same once the pretrained is loaded
  expect_error([&] { p->load("missing"); }, {"modelpool.models.missing", "lacks key 'layer.bias'"});
  expect_error([&] { p->load("extra"); }, {"modelpool.models.extra", "'head.weight'", "pretrained lacks"});
}

TEST_F(CheckpointPool, ShardedAndSingleFileCheckpoints) {
  const fs::path single = dir_ / "expert.safetensors";
  StateDict sd = fusion::load_safetensors(kData / "sharded");
  fusion::save_safetensors(single, sd);
  CheckpointModelPool p(context(kData / "sharded", {{"e", single.string()}}));
  EXPECT_EQ(p.pretrained()->parameters().keys(), sd.keys());
  EXPECT_EQ(p.pretrained()->config()["model_type"], "toy");
  fusion::ModelPtr e = p.load("e");
  for (const auto& [k, v] : sd) EXPECT_TRUE(at::equal(e->parameters().at(k), v)) << k;
}

TEST_F(CheckpointPool, SaveWritesAHuggingFaceFolder) {
  auto p = pool({{"a", folder("a", toy(2.0)).string()}});
  fusion::ModelPtr m = p->load("a");
  const fs::path out = dir_ / "outputs" / "merged";  // parent created as needed
  p->save(*m, out);
  EXPECT_EQ(listing(out), (std::vector<std::string>{"config.json", "model.safetensors"}));
  EXPECT_EQ(read_bytes(out / "config.json"), kConfig);  // the pretrained's, byte for byte
  fusion::SafetensorsFile f(out / "model.safetensors");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const StateDict back = f.read_all();
  for (const auto& [k, v] : m->parameters()) EXPECT_TRUE(at::equal(back.at(k), v)) << k;
  EXPECT_EQ(listing(dir_ / "outputs"), (std::vector<std::string>{"merged"}));  // no temporaries

  // Saving again replaces the folder whole.
  StateDict other = toy(5.0);
  p->save(fusion::Model("checkpoint", other), out);
  EXPECT_FLOAT_EQ(fusion::load_safetensors(out).at("layer.bias")[0].item<float>(), 5.0f);
  EXPECT_EQ(listing(dir_ / "outputs"), (std::vector<std::string>{"merged"}));
  EXPECT_EQ(listing(out), (std::vector<std::string>{"config.json", "model.safetensors"}));
}

TEST_F(CheckpointPool, SaveWithoutPretrainedConfigWritesTheModelsOwn) {
  const fs::path pre = dir_ / "pre.safetensors";
  fusion::save_safetensors(pre, toy(1.0));
  CheckpointModelPool p(context(pre, {{"a", folder("a", toy(2.0), false).string()}}));
  p.save(fusion::Model("checkpoint", toy(3.0)), dir_ / "plain");
  EXPECT_EQ(listing(dir_ / "plain"), (std::vector<std::string>{"model.safetensors"}));
  p.save(fusion::Model("checkpoint", toy(3.0), {{"hidden_size", 7}}), dir_ / "withcfg");
  EXPECT_EQ(nlohmann::json::parse(read_bytes(dir_ / "withcfg" / "config.json"))["hidden_size"], 7);
}

TEST_F(CheckpointPool, FailedSaveLeavesNothingHalfWritten) {
  auto p = pool({{"a", folder("a", toy(2.0)).string()}});
  const fs::path out = dir_ / "out" / "merged";
  p->save(*p->load("a"), out);
  const std::string before = read_bytes(out / "model.safetensors");
  StateDict bad = toy(1.0);
  bad.set("z", at::zeros({1}, at::kComplexFloat));
  expect_error([&] { p->save(fusion::Model("checkpoint", bad), out); }, {"'z'", "ComplexFloat"});
  EXPECT_EQ(read_bytes(out / "model.safetensors"), before);  // the old folder is intact
  EXPECT_EQ(listing(dir_ / "out"), (std::vector<std::string>{"merged"}));
}

TEST_F(CheckpointPool, UnwritableOutputFolderIsNamed) {
  auto p = pool({{"a", folder("a", toy(2.0)).string()}});
  write_bytes(dir_ / "afile", "x");
  const fs::path out = dir_ / "afile" / "merged";
  expect_error([&] { p->save(*p->load("a"), out); }, {"cannot write the output folder", out.string()});
  EXPECT_EQ(read_bytes(dir_ / "afile"), "x");
  write_bytes(dir_ / "taken", "x");
  expect_error([&] { p->save(*p->load("a"), dir_ / "taken"); }, {(dir_ / "taken").string(), "a file"});
  if (::geteuid() != 0) {
    fs::create_directories(dir_ / "ro");
    fs::permissions(dir_ / "ro", fs::perms::owner_read | fs::perms::owner_exec);
    expect_error([&] { p->save(*p->load("a"), dir_ / "ro" / "m"); }, {(dir_ / "ro" / "m").string(), "Permission"});
    fs::permissions(dir_ / "ro", fs::perms::owner_all);
    EXPECT_TRUE(fs::is_empty(dir_ / "ro"));
  }
}

TEST_F(CheckpointPool, SaveModelFolderWritesTheFamilysConfigWithTheDtype) {
  // save_model_folder, what a model family's pool saves with: config.json is the family's, with
  // torch_dtype from the first floating-point tensor; errors name the family.
  StateDict sd = toy(1.5);
  sd.set("layer.weight", sd.at("layer.weight").to(at::kBFloat16));
  sd.set("layer.bias", sd.at("layer.bias").to(at::kBFloat16));
  const fs::path out = dir_ / "family" / "m";
  fusion::save_model_folder(out / "", sd, nlohmann::json{{"model_type", "toy"}}, "toyfamily");
  const nlohmann::json config = nlohmann::json::parse(read_bytes(out / "config.json"));
  EXPECT_EQ(config, (nlohmann::json{{"model_type", "toy"}, {"torch_dtype", "bfloat16"}}));
  const StateDict back = fusion::load_safetensors(out);
  ASSERT_EQ(back.size(), sd.size());
  for (const auto& [key, t] : sd) EXPECT_TRUE(back.at(key).equal(t)) << key;
  expect_error([&] { fusion::save_model_folder(".", sd, nlohmann::json::object(), "toyfamily"); },
               {"toyfamily: cannot save a model to '.': not a folder name"});
  write_bytes(dir_ / "taken", "x");
  expect_error([&] { fusion::save_model_folder(dir_ / "taken" / "m", sd, nlohmann::json::object(), "toyfamily"); },
               {(dir_ / "taken" / "m").string()});
}

TEST_F(CheckpointPool, OptionOfNamesTheKeyOfEachPath) {
  struct Exposed : CheckpointModelPool {
    using CheckpointModelPool::CheckpointModelPool;
    using CheckpointModelPool::option_of;
  };
  Exposed p(context(folder("pre", toy(1.0)), {{"a", folder("a", toy(2.0)).string()}}));
  EXPECT_EQ(p.option_of("pretrained"), "modelpool.pretrained");
  EXPECT_EQ(p.option_of("a"), "modelpool.models.a");
}

// ---------------------------------------------------------------------------------------------
// Non-finite weights: checked as the pool reads the file (pread into a buffer, in pieces, on
// several threads), before the model's tensors (views of the file) are handed out

/// The tensor's bytes (to compare bit for bit: -0.0 and 0.0 differ).
std::string bytes_of(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

/// Finite values at the edges of every float type (±0, the smallest subnormal, the largest finite),
/// then ordinary ones: `n` elements (odd, so the vectorised loop has a tail; as many edges as fit).
at::Tensor edge_values(at::ScalarType dtype, int64_t n = 1003) {
  at::Tensor t = at::randn({n}, at::TensorOptions().dtype(at::kDouble)).to(dtype);
  auto put = [&](int64_t i, const at::Scalar& v) {
    if (i < n) t[i] = v;
  };
  switch (dtype) {
    case at::kFloat:
      put(2, std::numeric_limits<float>::denorm_min());
      put(3, std::numeric_limits<float>::max());
      put(4, std::numeric_limits<float>::lowest());
      break;
    case at::kDouble:
      put(2, std::numeric_limits<double>::denorm_min());
      put(3, std::numeric_limits<double>::max());
      put(4, std::numeric_limits<double>::lowest());
      break;
    case at::kHalf:
      put(2, c10::Half(0x0001, c10::Half::from_bits()));  // smallest subnormal
      put(3, 65504.0);
      put(4, -65504.0);
      break;
    default:  // kBFloat16
      put(2, c10::BFloat16(0x0001, c10::BFloat16::from_bits()));
      put(3, c10::BFloat16(0x7f7f, c10::BFloat16::from_bits()));  // largest finite
      put(4, c10::BFloat16(0xff7f, c10::BFloat16::from_bits()));
      break;
  }
  put(0, 0.0);
  put(1, -0.0);
  if (n > 5) put(n - 1, -0.0);
  return t;
}

class NonFiniteWeights : public CheckpointPool {
 protected:
  /// A pool whose pretrained model is `pre` (a file) and whose expert 'e' is `expert`, on `dtype`.
  std::unique_ptr<CheckpointModelPool> pool_of(const StateDict& pre, const StateDict& expert,
                                               at::ScalarType dtype = at::kFloat) {
    fusion::save_safetensors(dir_ / "pre.safetensors", pre);
    fusion::save_safetensors(dir_ / "e.safetensors", expert);
    return std::make_unique<CheckpointModelPool>(
        context(dir_ / "pre.safetensors", {{"e", (dir_ / "e.safetensors").string()}}, dtype));
  }
};

TEST_F(NonFiniteWeights, NanAndInfinitiesAreRefusedNamingTheModelFileTensorAndElement) {
  const std::vector<std::pair<at::ScalarType, std::string>> dtypes = {
      {at::kFloat, "F32"}, {at::kHalf, "F16"}, {at::kBFloat16, "BF16"}, {at::kDouble, "F64"}};
  const std::vector<std::pair<double, std::string>> values = {
      {std::numeric_limits<double>::quiet_NaN(), "nan"},
      {std::numeric_limits<double>::infinity(), "inf"},
      {-std::numeric_limits<double>::infinity(), "-inf"}};
  for (const auto& [dtype, dtype_name] : dtypes) {
    for (const auto& [value, value_name] : values) {
      SCOPED_TRACE(dtype_name + " " + value_name);
      StateDict good = toy(1.0);
      good.set("layer.weight", good.at("layer.weight").to(dtype));
      StateDict bad = good;
      bad.set("layer.weight", at::ones({2, 3}, dtype));
      bad.at("layer.weight")[1][1] = value;  // element 4
      auto p = pool_of(good, bad);
      EXPECT_EQ(fusion::testing::error_of([&] { p->load("e"); }),
                "modelpool.models.e: " + (dir_ / "e.safetensors").string() + ": tensor 'layer.weight': " +
                    dtype_name + " element 4 holds " + value_name + " (weights must be finite)");
      // The pretrained model is read through the same check.
      auto q = pool_of(bad, good);
      EXPECT_EQ(fusion::testing::error_of([&] { q->pretrained(); }),
                "modelpool.pretrained: " + (dir_ / "pre.safetensors").string() + ": tensor 'layer.weight': " +
                    dtype_name + " element 4 holds " + value_name + " (weights must be finite)");
      // The public reader reads the file as it is (the golden files hold NaN and ±Inf on purpose).
      const at::Tensor raw = fusion::load_safetensors(dir_ / "pre.safetensors").at("layer.weight");
      EXPECT_EQ(bytes_of(raw), bytes_of(bad.at("layer.weight")));
    }
  }
}

TEST_F(NonFiniteWeights, FiniteValuesLoadBitForBit) {
  for (const at::ScalarType dtype : {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble}) {
    SCOPED_TRACE(c10::toString(dtype));
    StateDict sd;
    sd.set("w", edge_values(dtype));
    sd.set("short", edge_values(dtype, 3));  // shorter than one vector
    // Integer bit patterns that would be NaN or Inf as floats are not checked.
    sd.set("i32", at::tensor({0x7fc00000, 0x7f800000, -0x00800000}, at::kInt));
    sd.set("i16", at::tensor({0x7c01, 0x7f80}, at::kShort));
    sd.set("i64", at::tensor({int64_t{0x7ff8000000000000}}, at::kLong));
    auto p = pool_of(sd, sd, dtype);  // the pool's dtype: no conversion
    for (const fusion::ConstModelPtr& m : {p->pretrained(), fusion::ConstModelPtr(p->load("e"))}) {
      for (const auto& [k, v] : sd) {
        ASSERT_EQ(m->parameters().at(k).scalar_type(), v.scalar_type()) << k;
        EXPECT_EQ(bytes_of(m->parameters().at(k)), bytes_of(v)) << k;
      }
    }
  }
}

TEST_F(NonFiniteWeights, ConvertedAfterTheCheck) {
  // An F16 checkpoint on a float32 pool: the file's values are checked, then converted exactly.
  StateDict sd;
  sd.set("w", edge_values(at::kHalf));
  auto p = pool_of(sd, sd, at::kFloat);
  EXPECT_EQ(bytes_of(p->load("e")->parameters().at("w")), bytes_of(sd.at("w").to(at::kFloat)));
  sd.at("w")[1002] = std::numeric_limits<float>::infinity();  // the last element (the loop's tail)
  fusion::save_safetensors(dir_ / "e.safetensors", sd);
  expect_error([&] { p->load("e"); }, {"tensor 'w': F16 element 1002 holds inf"});
}

TEST_F(NonFiniteWeights, ElementIndexBeyondTheFirstCopyChunk) {
  // The copy works in chunks of 32 MiB; the index counts from the tensor's start across them.
  const int64_t n = (int64_t{34} << 20) / 4 + 5;  // 34 MiB of F32 and an odd tail
  StateDict sd;
  sd.set("a", at::zeros({3}, at::kFloat));  // the big tensor does not start the data section
  sd.set("w", at::zeros({n}, at::kFloat));
  StateDict bad = sd;
  bad.set("w", sd.at("w").clone());
  bad.at("w")[n - 7] = -std::numeric_limits<float>::infinity();
  bad.at("w")[n - 3] = std::numeric_limits<float>::quiet_NaN();
  auto p = pool_of(sd, bad);
  expect_error([&] { p->load("e"); }, {"tensor 'w': F32 element " + std::to_string(n - 7) + " holds -inf"});
}

TEST_F(NonFiniteWeights, TheFirstInFileOrderIsNamedWhateverTheThreadThatFindsIt) {
  // The check reads the data in pieces on several threads: the value named is still the first in
  // file order, across tensors and across the pieces of one tensor.
  at::set_num_threads(2);
  const int64_t n = int64_t{1} << 20;  // 4 MiB of F32 each: many pieces, spread over the threads
  StateDict sd;
  sd.set("a", at::zeros({n}, at::kFloat));
  sd.set("w", at::zeros({n}, at::kFloat));
  StateDict bad = sd;
  bad.set("a", sd.at("a").clone());
  bad.set("w", sd.at("w").clone());
  bad.at("w")[0] = std::numeric_limits<float>::infinity();     // in the last thread's pieces
  bad.at("a")[n - 40000] = -std::numeric_limits<float>::infinity();
  bad.at("a")[40000] = std::numeric_limits<float>::quiet_NaN();  // the first: piece 1 of 'a'
  auto p = pool_of(sd, bad);
  expect_error([&] { p->load("e"); }, {"tensor 'a': F32 element 40000 holds nan"});
  bad.at("a")[40000] = 0.0f;
  fusion::save_safetensors(dir_ / "e.safetensors", bad);
  expect_error([&] { p->load("e"); }, {"tensor 'a': F32 element " + std::to_string(n - 40000) + " holds -inf"});
  bad.at("a")[n - 40000] = 0.0f;
  fusion::save_safetensors(dir_ / "e.safetensors", bad);
  expect_error([&] { p->load("e"); }, {"tensor 'w': F32 element 0 holds inf"});
}

TEST_F(NonFiniteWeights, StreamReadCopiesAndChecksAsFloatsDoes) {
  // CheckpointStream::read (pread into the caller's buffer) gives the bytes floats() views, and
  // refuses a NaN with the same message, the index counted from the tensor's start.
  const int64_t n = 70001;
  StateDict sd;
  sd.set("a", at::zeros({3}, at::kFloat));
  sd.set("w", edge_values(at::kFloat, n));
  auto p = pool_of(sd, sd);
  const auto stream = fusion::detail::CheckpointStream::open(*p, {"pretrained", "e"});
  ASSERT_NE(stream, nullptr);
  size_t w = 0;
  while (stream->tensors()[w].name != "w") ++w;
  std::vector<float> buf(n);
  stream->read(1, w, 5, n, buf.data());
  EXPECT_EQ(0, std::memcmp(buf.data(), stream->floats(1, w, 5, n), (n - 5) * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(buf.data(), sd.at("w").data_ptr<float>() + 5, (n - 5) * sizeof(float)));
  StateDict bad = sd;
  bad.set("w", sd.at("w").clone());
  bad.at("w")[n - 2] = std::numeric_limits<float>::quiet_NaN();
  fusion::save_safetensors(dir_ / "e.safetensors", bad);
  const auto bad_stream = fusion::detail::CheckpointStream::open(*p, {"pretrained", "e"});
  ASSERT_NE(bad_stream, nullptr);
  bad_stream->read(1, w, 0, n - 2, buf.data());  // the range before it is fine
  const std::string message = "modelpool.models.e: " + (dir_ / "e.safetensors").string() +
                              ": tensor 'w': F32 element " + std::to_string(n - 2) + " holds nan (weights must be finite)";
  EXPECT_EQ(fusion::testing::error_of([&] { bad_stream->read(1, w, 1000, n, buf.data()); }), message);
  EXPECT_EQ(fusion::testing::error_of([&] { bad_stream->floats(1, w, 1000, n); }), message);
}

TEST_F(NonFiniteWeights, AFileCutShortAfterItWasOpenedIsNamedNotABusError) {
  // The stream reads with pread(), not through the mapping (where a page past the new end of the
  // file would raise SIGBUS): a file cut short after it was opened gives one line naming it.
  StateDict sd;
  sd.set("w", at::zeros({50000}, at::kFloat));
  auto p = pool_of(sd, sd);
  const auto stream = fusion::detail::CheckpointStream::open(*p, {"pretrained", "e"});
  ASSERT_NE(stream, nullptr);
  fs::resize_file(dir_ / "e.safetensors", fs::file_size(dir_ / "e.safetensors") - 100000);
  std::vector<float> buf(50000);
  const std::string error = fusion::testing::error_of([&] { stream->read(1, 0, 0, 50000, buf.data()); });
  EXPECT_NE(error.find((dir_ / "e.safetensors").string() + ": the file ended at byte "), std::string::npos) << error;
  EXPECT_NE(error.find("while it was read (changed since it was opened?)"), std::string::npos) << error;
}

TEST(ParallelFor, RunsOnSeveralThreadsInCodeThatLinksTheSdk) {
  // at::parallel_for's OpenMP pragma is compiled into the caller: without -fopenmp (which the SDK's
  // target passes on) it runs the whole range on one thread, and every streamed merge with it.
  at::set_num_threads(2);
  std::atomic<int> chunks{0};
  at::parallel_for(0, 1000, 1, [&](int64_t, int64_t) { ++chunks; });
  EXPECT_EQ(chunks.load(), 2);
}

TEST_F(NonFiniteWeights, StreamedMergesCheckAsTheyRead) {
  // Merges that stream from the files (detail::CheckpointStream: weighted_sum_of_experts on the
  // `safetensors` pool) check every chunk as they read it, with the loader's message; the index
  // counts from the tensor's start across the chunks.
  const int64_t n = 100003;
  StateDict sd;
  sd.set("a", at::zeros({3}, at::kFloat));
  sd.set("w", at::zeros({n}, at::kFloat));
  StateDict bad = sd;
  bad.set("w", sd.at("w").clone());
  bad.at("w")[n - 7] = std::numeric_limits<float>::quiet_NaN();
  // The second expert is the bad one: only the stream reads it (the first is loaded as well, for
  // its Model object).
  auto p = pool_of(sd, sd);
  fusion::save_safetensors(dir_ / "f.safetensors", bad);
  p = std::make_unique<CheckpointModelPool>(context(
      dir_ / "pre.safetensors", {{"e", (dir_ / "e.safetensors").string()}, {"f", (dir_ / "f.safetensors").string()}}));
  ASSERT_NE(fusion::detail::CheckpointStream::open(*p, {"e", "f"}), nullptr);
  expect_error([&] { fusion::weighted_sum_of_experts(*p, fusion::Context()); },
               {"modelpool.models.f: " + (dir_ / "f.safetensors").string() + ": tensor 'w': F32 element " +
                std::to_string(n - 7) + " holds nan (weights must be finite)"});
  // Finite weights: the streamed sum is the expert's own (one expert, weight 1), bit for bit.
  auto q = pool_of(sd, sd);
  EXPECT_TRUE(fusion::weighted_sum_of_experts(*q, fusion::Context())->parameters().at("w").equal(sd.at("w")));
  // The streamed merges read unchecked and test their result: a sum of finite weights that overflows
  // to +Inf makes them read the chunk again with the check, which finds nothing to refuse.
  StateDict big = sd;
  big.set("w", at::full({n}, 3e38f));
  fusion::save_safetensors(dir_ / "e.safetensors", big);
  fusion::save_safetensors(dir_ / "f.safetensors", big);
  p = std::make_unique<CheckpointModelPool>(context(
      dir_ / "pre.safetensors", {{"e", (dir_ / "e.safetensors").string()}, {"f", (dir_ / "f.safetensors").string()}}));
  const at::Tensor sum = fusion::weighted_sum_of_experts(*p, fusion::Context())->parameters().at("w");
  EXPECT_TRUE(sum.equal(at::full({n}, std::numeric_limits<float>::infinity())));
}

TEST_F(NonFiniteWeights, UnalignedDataIsCheckedToo) {
  // The format does not align tensors: after a one-byte tensor the others start at odd offsets.
  using fusion::testing::make_file;
  const std::string header =
      R"({"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
      R"("h":{"dtype":"F16","shape":[3],"data_offsets":[1,7]},)"
      R"("w":{"dtype":"F32","shape":[5],"data_offsets":[7,27]}})";
  auto data = [](float w3) {
    const at::Tensor h = at::tensor({1.0f, -2.0f, 0.5f}).to(at::kHalf);
    const at::Tensor w = at::tensor({1.0f, 2.0f, 3.0f, w3, 5.0f});
    return std::string(1, '\x01') + bytes_of(h) + bytes_of(w);
  };
  write_bytes(dir_ / "pre.safetensors", make_file(header, data(4.0f)));
  write_bytes(dir_ / "e.safetensors", make_file(header, data(std::numeric_limits<float>::quiet_NaN())));
  CheckpointModelPool p(context(dir_ / "pre.safetensors", {{"e", (dir_ / "e.safetensors").string()}}));
  const StateDict& pre = p.pretrained()->parameters();
  EXPECT_TRUE(at::equal(pre.at("w"), at::tensor({1.0f, 2.0f, 3.0f, 4.0f, 5.0f})));
  EXPECT_TRUE(at::equal(pre.at("h"), at::tensor({1.0f, -2.0f, 0.5f})));
  expect_error([&] { p.load("e"); }, {"tensor 'w': F32 element 3 holds nan"});
}

TEST_F(NonFiniteWeights, ShardedCheckpointNamesTheShard) {
  // The sharded test checkpoint, its second shard rewritten with an Inf: the message names the shard.
  const fs::path sharded = dir_ / "sharded";
  fs::copy(kData / "sharded", sharded);
  const nlohmann::json index = nlohmann::json::parse(read_bytes(sharded / "model.safetensors.index.json"));
  const std::string name = "layer.1.weight";
  const fs::path shard_path = sharded / index["weight_map"][name].get<std::string>();
  ASSERT_EQ(shard_path.filename(), "model-00002-of-00002.safetensors");
  StateDict sd = fusion::load_safetensors(shard_path);
  at::Tensor t = sd.at(name).clone().to(at::kFloat);
  t.view({-1})[0] = std::numeric_limits<float>::infinity();
  sd.set(name, t.to(sd.at(name).scalar_type()));
  fusion::save_safetensors(shard_path, sd);
  CheckpointModelPool p(context(sharded, {}));
  EXPECT_EQ(fusion::testing::error_of([&] { p.pretrained(); }),
            "modelpool.pretrained: " + shard_path.string() + ": tensor '" + name + "': " +
                fusion::safetensors_dtype(sd.at(name).scalar_type()) + " element 0 holds inf (weights must be finite)");
}

}  // namespace
