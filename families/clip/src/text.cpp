#include "fusion/clip/text.hpp"

#include "fusion/error.hpp"
#include "mixed_precision.hpp"

namespace fusion::clip {
namespace {
const std::string kPrefix = "text_model.";
const std::string kEmb = "text_model.embeddings.";
const std::string kProj = "text_projection.weight";

int64_t projection_dim_of(const nlohmann::json& config) {
  auto it = config.find("projection_dim");
  if (it == config.end() || it->is_null()) return 512;  // Hugging Face's default
  FUSION_ENSURE(it->is_number_integer() && it->get<int64_t>() > 0,
                "config.json: 'projection_dim' must be a positive integer, got ", it->dump());
  return it->get<int64_t>();
}
}  // namespace

std::vector<ExpectedTensor> ClipTextModel::expected_parameters(const TextConfig& c, int64_t projection_dim) {
  const int64_t d = c.hidden_size;
  std::vector<ExpectedTensor> e;
  e.push_back({kEmb + "token_embedding.weight", {c.vocab_size, d}});
  e.push_back({kEmb + "position_embedding.weight", {c.max_position_embeddings, d}});
  append_encoder_shapes(e, kPrefix + "encoder.", c);
  e.push_back({kPrefix + "final_layer_norm.weight", {d}});
  e.push_back({kPrefix + "final_layer_norm.bias", {d}});
  e.push_back({kProj, {projection_dim, d}});
  return e;
}

ClipTextModel::ClipTextModel(StateDict params, const nlohmann::json& config)
    : Model("clip_text", std::move(params), config),
      tcfg_(TextConfig::from_json(config, "config.json")),
      projection_dim_(projection_dim_of(config)),
      keys_(encoder_keys(kPrefix + "encoder.", tcfg_)) {
  check_params(parameters_, expected_parameters(tcfg_, projection_dim_), kPrefix);
}

ClipTextModel::~ClipTextModel() = default;

std::shared_ptr<Model> ClipTextModel::with_parameters(StateDict parameters) const {
  check_same_layout(parameters_, parameters, "model", "new parameters");
  return std::make_shared<ClipTextModel>(std::move(parameters), config_);
}

at::Tensor ClipTextModel::forward(const StateDict& p, const at::Tensor& input_ids) const {
  FUSION_ENSURE(input_ids.dim() == 2 && !input_ids.is_floating_point(),
                "clip_text: input_ids must be an integer tensor [batch, length], got ",
                input_ids.scalar_type(), " ", input_ids.sizes());
  const int64_t b = input_ids.size(0), len = input_ids.size(1), d = tcfg_.hidden_size;
  FUSION_ENSURE(len >= 1 && len <= tcfg_.max_position_embeddings, "clip_text: sequence length ", len,
                " is outside 1..", tcfg_.max_position_embeddings);
  const at::Tensor& tok = p.at(kEmb + "token_embedding.weight");
  at::Tensor ids = input_ids.to(tok.device(), at::kLong);
  at::Tensor x = at::embedding(tok, ids) + p.at(kEmb + "position_embedding.weight").narrow(0, 0, len);
  x = encoder_forward(p, keys_, tcfg_, std::move(x), /*causal=*/true);
  // With 16-bit weights the encoder returns its float32 residual stream (mixed_precision.hpp).
  x = detail::norm(x, d, p.at(kPrefix + "final_layer_norm.weight"), p.at(kPrefix + "final_layer_norm.bias"),
                   tcfg_.layer_norm_eps);
  // The end-of-text position (transformers' rule, see the class comment).
  at::Tensor eos_pos;
  const bool legacy = tcfg_.eos_token_id == 2 || (std::get<0>(ids.max(-1)) == 49407).all().item<bool>();
  if (legacy) {
    eos_pos = ids.argmax(-1);
  } else {
    at::Tensor is_eos = (ids == tcfg_.eos_token_id);
    FUSION_ENSURE(is_eos.any(-1).all().item<bool>(), "clip_text: a sequence has no end-of-text token (id ",
                  tcfg_.eos_token_id, ")");
    eos_pos = is_eos.to(at::kInt).argmax(-1);
  }
  at::Tensor rows = at::arange(b, ids.options()) * len + eos_pos;
  at::Tensor pooled = x.reshape({b * len, d}).index_select(0, rows);
  return detail::linear(pooled, p.at(kProj));
}

}  // namespace fusion::clip
