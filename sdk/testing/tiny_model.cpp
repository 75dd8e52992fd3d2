// TinyModel: the tiny functional model of the test kit (fusion/testing/tiny_model.hpp).
#include "fusion/testing/tiny_model.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <string>
#include <vector>

#include "fusion/error.hpp"

namespace fusion::testing {

namespace {

std::string layer_prefix(int64_t layer) { return "model.encoder.layers." + std::to_string(layer) + "."; }

int64_t positive(const nlohmann::json& j, const char* key) {
  FUSION_ENSURE(j.is_object() && j.contains(key) && j[key].is_number_integer(), "tiny_mlp config: '", key,
                "' is missing or not an integer");
  const auto v = j[key].get<int64_t>();
  FUSION_ENSURE(v > 0, "tiny_mlp config: '", key, "' must be positive, got ", v);
  return v;
}

}  // namespace

nlohmann::json TinyModelConfig::to_json() const {
  return {{"input_dim", input_dim}, {"hidden", hidden}, {"ffn", ffn}, {"layers", layers}, {"attention", attention}};
}

TinyModelConfig TinyModelConfig::from_json(const nlohmann::json& j) {
  TinyModelConfig c;
  c.input_dim = positive(j, "input_dim");
  c.hidden = positive(j, "hidden");
  c.ffn = positive(j, "ffn");
  c.layers = positive(j, "layers");
  FUSION_ENSURE(j.contains("attention") && j["attention"].is_boolean(),
                "tiny_mlp config: 'attention' is missing or not a boolean");
  c.attention = j["attention"].get<bool>();
  return c;
}

StateDict TinyModel::random_parameters(const TinyModelConfig& c, uint64_t seed, double scale) {
  FUSION_ENSURE(c.input_dim > 0 && c.hidden > 0 && c.ffn > 0 && c.layers >= 0,
                "tiny_mlp: every dimension must be positive");
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto rnd = [&](std::vector<int64_t> shape) { return at::randn(shape, g) * scale; };
  StateDict p;
  p.set("model.embeddings.position_ids", at::arange(c.input_dim, at::kLong));
  p.set("model.embeddings.weight", rnd({c.hidden, c.input_dim}));
  p.set("model.embeddings.bias", rnd({c.hidden}));
  for (int64_t l = 0; l < c.layers; ++l) {
    const std::string pre = layer_prefix(l);
    if (c.attention) {
      p.set(pre + "self_attn.weight", rnd({c.hidden, c.hidden}));
      p.set(pre + "self_attn.bias", rnd({c.hidden}));
    }
    p.set(pre + "mlp.fc1.weight", rnd({c.ffn, c.hidden}));
    p.set(pre + "mlp.fc1.bias", rnd({c.ffn}));
    p.set(pre + "mlp.fc2.weight", rnd({c.hidden, c.ffn}));
    p.set(pre + "mlp.fc2.bias", rnd({c.hidden}));
  }
  p.set("model.post_layernorm.weight", at::ones({c.hidden}));
  p.set("model.post_layernorm.bias", at::zeros({c.hidden}));
  return p;
}

std::shared_ptr<TinyModel> TinyModel::random(const TinyModelConfig& config, uint64_t seed) {
  return std::make_shared<TinyModel>(random_parameters(config, seed), config);
}

TinyModel::TinyModel(StateDict parameters, TinyModelConfig config)
    : Model(kArchitecture, std::move(parameters), config.to_json()), tiny_(config) {
  // The layout the config implies: the keys and shapes of any random draw.
  check_same_layout(random_parameters(tiny_, 0), parameters_, "tiny_mlp " + config_.dump(), "the parameters");
}

at::Tensor TinyModel::forward(const StateDict& p, const at::Tensor& x) const {
  FUSION_ENSURE(x.dim() == 2 && x.size(1) == tiny_.input_dim, "tiny_mlp: inputs must be [N, ", tiny_.input_dim,
                "], got ", x.sizes());
  at::Tensor h = at::linear(x, p.at("model.embeddings.weight"), p.at("model.embeddings.bias"));
  for (int64_t l = 0; l < tiny_.layers; ++l) {
    const std::string pre = layer_prefix(l);
    if (tiny_.attention)
      h = h + at::tanh(at::linear(h, p.at(pre + "self_attn.weight"), p.at(pre + "self_attn.bias")));
    at::Tensor m = at::gelu(at::linear(h, p.at(pre + "mlp.fc1.weight"), p.at(pre + "mlp.fc1.bias")));
    h = h + at::linear(m, p.at(pre + "mlp.fc2.weight"), p.at(pre + "mlp.fc2.bias"));
  }
  return at::layer_norm(h, {tiny_.hidden}, p.at("model.post_layernorm.weight"), p.at("model.post_layernorm.bias"),
                        1e-5);
}

std::shared_ptr<Model> TinyModel::with_parameters(StateDict parameters) const {
  check_same_layout(parameters_, parameters, "model", "new parameters");
  return std::make_shared<TinyModel>(std::move(parameters), tiny_);
}

}  // namespace fusion::testing
