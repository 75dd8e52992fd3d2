// The `safetensors` checkpoint pool (checkpoint_pool.hpp): options, lazy loading on the context's
// dtype, layout checks against the pretrained model, and atomic saving as a Hugging Face folder.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "fusion/checkpoint_pool.hpp"
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

}  // namespace
