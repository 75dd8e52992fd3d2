#include "fusion/gpt2/pool.hpp"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "fusion/error.hpp"
#include "fusion/safetensors.hpp"

namespace fusion::gpt2 {
namespace {

// Runs `f`, prefixing any fusion::Error with `label` (the option, e.g. "modelpool.models.x") and
// the folder it concerns (unless the message names it already).
template <typename F>
auto with_origin(const std::string& label, const std::filesystem::path& dir, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    const std::string msg = e.what();
    if (msg.rfind(label, 0) == 0) throw;
    if (msg.find(dir.string()) != std::string::npos) FUSION_FAIL(label, ": ", msg);
    FUSION_FAIL(label, " (", dir.string(), "): ", msg);
  }
}

const std::string& pretrained_name() {
  static const std::string name = option_name(&CheckpointPoolOptions::pretrained);
  return name;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << c10::IntArrayRef(s);
  return o.str();
}

Gpt2Config config_of(const std::filesystem::path& dir) {
  const std::filesystem::path file =
      std::filesystem::is_directory(dir) ? dir / "config.json" : dir.parent_path() / "config.json";
  return Gpt2Config::from_json(read_config_json(dir), file.string());
}

}  // namespace

void Gpt2PoolOptions::bind(fusion::Options<Gpt2PoolOptions>& o) { o.include(&Gpt2PoolOptions::base); }

Gpt2Pool::Gpt2Pool(const Gpt2PoolOptions& options, const Context& ctx) : CheckpointModelPool(options.base, ctx) {}

Gpt2Pool::~Gpt2Pool() = default;

ComponentInfo Gpt2Pool::info() {
  ComponentInfo info;
  info.name = "gpt2";
  info.summary =
      "GPT-2 transformer bodies from Hugging Face GPT-2 folders; heads (score, lm_head) are never merged: each "
      "task keeps its own expert's head";
  info.reference = "https://huggingface.co/docs/transformers/model_doc/gpt2";
  return info;
}

ConstModelPtr Gpt2Pool::pretrained() {
  const std::filesystem::path& dir = path_of(pretrained_name());
  return with_origin(option_of("pretrained"), dir, [&] {
    config_of(dir);  // a clear error before any weight is read
    return CheckpointModelPool::pretrained();
  });
}

ModelPtr Gpt2Pool::load(const std::string& name) {
  const std::filesystem::path& dir = path_of(name);
  const std::string label = option_of(name);
  const std::string option = label + " (" + dir.string() + ")";
  // The expert's body must have the pretrained body's keys and shapes: both configs are compared
  // before any weight is read; each model's weights are then checked against its own config.
  const Gpt2Config expert_cfg = with_origin(label, dir, [&] { return config_of(dir); });
  const std::filesystem::path& pre_dir = path_of(pretrained_name());
  const Gpt2Config pre_cfg = with_origin(option_of("pretrained"), pre_dir, [&] { return config_of(pre_dir); });
  const auto want = Gpt2Model::expected_parameters(pre_cfg, Gpt2Head::kNone);
  const auto have = Gpt2Model::expected_parameters(expert_cfg, Gpt2Head::kNone);
  for (size_t i = 0; i < want.size(); ++i) {
    FUSION_ENSURE(i < have.size(), option, ": expert '", name, "' lacks key '", want[i].first,
                  "' that pretrained has (n_layer ", expert_cfg.n_layer, " vs ", pre_cfg.n_layer, ")");
    FUSION_ENSURE(want[i] == have[i], option, ": key '", want[i].first, "': pretrained has shape ",
                  shape_str(want[i].second), " but expert '", name, "' has shape ", shape_str(have[i].second));
  }
  FUSION_ENSURE(have.size() == want.size(), option, ": expert '", name, "' has key '", have[want.size()].first,
                "' that pretrained lacks (n_layer ", expert_cfg.n_layer, " vs ", pre_cfg.n_layer, ")");
  FUSION_ENSURE(expert_cfg.activation_function == pre_cfg.activation_function &&
                    expert_cfg.layer_norm_epsilon == pre_cfg.layer_norm_epsilon,
                option, ": expert '", name, "' has activation_function '", expert_cfg.activation_function,
                "', layer_norm_epsilon ", expert_cfg.layer_norm_epsilon, " but pretrained has '",
                pre_cfg.activation_function, "', ", pre_cfg.layer_norm_epsilon);
  return with_origin(label, dir, [&] { return load_path(dir); });
}

void Gpt2Pool::save(const Model& model, const std::filesystem::path& dir) const { save_gpt2(model, dir); }

ModelPtr Gpt2Pool::make_model(StateDict params, nlohmann::json config) const {
  FUSION_ENSURE(config.is_object() && !config.empty(),
                "config.json is missing or empty: the gpt2 pool needs it to build the model");
  return std::make_shared<Gpt2Model>(params.to(ctx_.device(), ctx_.dtype()), config, Gpt2Head::kNone);
}

std::optional<ScoreWeightInfo> find_score_weight(const std::filesystem::path& path) {
  static const std::string kScore = "score.weight";
  std::filesystem::path file = resolve_checkpoint(path);
  if (file.extension() == ".json") {  // a sharded folder's model.safetensors.index.json
    nlohmann::json index;
    try {
      std::ifstream in(file);
      index = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      FUSION_FAIL(file.string(), " is not valid JSON: ", e.what());
    }
    const auto map = index.find("weight_map");
    if (map == index.end() || !map->is_object() || !map->contains(kScore) || !(*map)[kScore].is_string())
      return std::nullopt;
    file = file.parent_path() / (*map)[kScore].get<std::string>();
  }
  SafetensorsFile f(file);
  const TensorInfo* info = f.find(kScore);
  if (info == nullptr) return std::nullopt;
  return ScoreWeightInfo{file, info->shape};
}

at::Tensor read_score_weight(const std::filesystem::path& path, const at::Device& device, at::ScalarType dtype) {
  const auto info = find_score_weight(path);
  FUSION_ENSURE(info, path.string(),
                ": the weights have no 'score.weight' (not a GPT2ForSequenceClassification checkpoint?)");
  return SafetensorsFile(info->file).tensor("score.weight").to(device, dtype);
}

ScoreHead load_score_head(const std::filesystem::path& dir, const at::Device& device, at::ScalarType dtype) {
  const std::filesystem::path file =
      std::filesystem::is_directory(dir) ? dir / "config.json" : dir.parent_path() / "config.json";
  const Gpt2Config cfg = Gpt2Config::from_json(read_config_json(dir), file.string());
  at::Tensor w = read_score_weight(dir, device, dtype);
  const std::vector<int64_t> want{cfg.num_labels, cfg.n_embd};
  FUSION_ENSURE(w.sizes() == at::IntArrayRef(want), dir.string(), ": 'score.weight' has shape ",
                shape_str(w.sizes().vec()), " but config.json implies ", shape_str(want));
  return ScoreHead{w, cfg.labels, cfg.pad_token_id};
}

at::Tensor classify(const at::Tensor& hidden, const at::Tensor& input_ids, const ScoreHead& head) {
  FUSION_ENSURE(head.weight.defined() && head.weight.dim() == 2 && hidden.dim() == 3 &&
                    head.weight.size(1) == hidden.size(2),
                "gpt2: a score head of shape ", head.weight.defined() ? head.weight.sizes() : at::IntArrayRef{},
                " cannot classify hidden states of shape ", hidden.sizes());
  return at::linear(pool_last_token(hidden, input_ids, head.pad_token_id), head.weight.to(hidden.device(), hidden.scalar_type()));
}

}  // namespace fusion::gpt2
