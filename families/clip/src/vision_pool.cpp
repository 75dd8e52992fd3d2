#include "fusion/clip/vision_pool.hpp"

#include "fusion/clip/vision.hpp"
#include "fusion/error.hpp"
#include "fusion/safetensors.hpp"

namespace fusion::clip {
namespace {

const std::string kPrefix = "vision_model.";

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

// The name the base pool gives the pretrained model, which is also its option's.
const std::string& pretrained_name() {
  static const std::string name = option_name(&CheckpointPoolOptions::pretrained);
  return name;
}

}  // namespace

ModelPtr make_clip_vision(const StateDict& params, const nlohmann::json& config) {
  FUSION_ENSURE(config.is_object() && !config.empty(),
                "config.json is missing or empty: clip_vision needs it to build the vision tower");
  // Only the vision tower; the position_ids buffers (saved by transformers before 4.31, not by
  // later versions) are dropped, so every checkpoint vintage gives the same keys.
  StateDict vision;
  const std::string buffer = "position_ids";
  for (const auto& [key, t] : params) {
    const bool is_buffer = key.size() >= buffer.size() &&
                           key.compare(key.size() - buffer.size(), buffer.size(), buffer) == 0;
    if (key.compare(0, kPrefix.size(), kPrefix) == 0 && !is_buffer) vision.set(key, t);
  }
  FUSION_ENSURE(!vision.empty(), "the weights have no 'vision_model.*' tensors (not a CLIP model?)");
  return std::make_shared<ClipVisionModel>(std::move(vision), config);
}

ModelPtr load_clip_vision(const std::filesystem::path& dir, const at::Device& device,
                          std::optional<at::ScalarType> dtype) {
  return with_origin("clip_vision", dir, [&] {
    nlohmann::json config = read_config_json(dir);
    return make_clip_vision(load_safetensors(dir, device, dtype), config);
  });
}

void save_clip_vision(const Model& model, const std::filesystem::path& dir_in) {
  const auto* vision = dynamic_cast<const ClipVisionModel*>(&model);
  FUSION_ENSURE(vision != nullptr, "clip_vision: cannot save a model of architecture '", model.architecture(),
                "' as a CLIPVisionModel");
  save_model_folder(dir_in, model.parameters(), vision->vision_config().to_json(), "clip_vision");
}

void ClipVisionPoolOptions::bind(fusion::Options<ClipVisionPoolOptions>& o) { o.include(&ClipVisionPoolOptions::base); }

ClipVisionPool::ClipVisionPool(const ClipVisionPoolOptions& options, const Context& ctx)
    : CheckpointModelPool(options.base, ctx) {}

ClipVisionPool::~ClipVisionPool() = default;

ComponentInfo ClipVisionPool::info() {
  ComponentInfo info;
  info.name = "clip_vision";
  info.summary = "CLIP vision towers from Hugging Face CLIPModel / CLIPVisionModel folders";
  info.reference = "https://huggingface.co/docs/transformers/model_doc/clip";
  return info;
}

ConstModelPtr ClipVisionPool::pretrained() {
  const std::filesystem::path& dir = path_of(pretrained_name());
  return with_origin(option_of("pretrained"), dir, [&] {
    read_config_json(dir);  // a clear error before any weight is read
    return CheckpointModelPool::pretrained();
  });
}

ModelPtr ClipVisionPool::load(const std::string& name) {
  const std::filesystem::path& dir = path_of(name);
  const std::string label = option_of(name);
  const std::string option = label + " (" + dir.string() + ")";
  // The expert must have the pretrained model's architecture. Both configs are compared before any
  // weight is read; each model's weights are then checked against its own config. (The generic
  // pool compares whole checkpoints, which fails for a CLIPModel against a CLIPVisionModel.)
  const VisionConfig expert_cfg = with_origin(label, dir, [&] {
    return VisionConfig::from_json(read_config_json(dir), (dir / "config.json").string());
  });
  const std::filesystem::path& pre_dir = path_of(pretrained_name());
  const VisionConfig pre_cfg = with_origin(option_of("pretrained"), pre_dir, [&] {
    return VisionConfig::from_json(read_config_json(pre_dir), (pre_dir / "config.json").string());
  });
  const auto want = ClipVisionModel::expected_parameters(pre_cfg);
  const auto have = ClipVisionModel::expected_parameters(expert_cfg);
  for (size_t i = 0; i < want.size(); ++i) {
    FUSION_ENSURE(i < have.size(), option, ": expert '", name, "' lacks key '", want[i].first,
                  "' that pretrained has (num_hidden_layers ", expert_cfg.num_hidden_layers, " vs ",
                  pre_cfg.num_hidden_layers, ")");
    FUSION_ENSURE(want[i] == have[i], option, ": key '", want[i].first, "': pretrained has shape ",
                  c10::IntArrayRef(want[i].second), " but expert '", name, "' has shape ",
                  c10::IntArrayRef(have[i].second));
  }
  FUSION_ENSURE(have.size() == want.size(), option, ": expert '", name, "' has key '", have[want.size()].first,
                "' that pretrained lacks (num_hidden_layers ", expert_cfg.num_hidden_layers, " vs ",
                pre_cfg.num_hidden_layers, ")");
  FUSION_ENSURE(expert_cfg.hidden_act == pre_cfg.hidden_act && expert_cfg.layer_norm_eps == pre_cfg.layer_norm_eps,
                option, ": expert '", name, "' has hidden_act '", expert_cfg.hidden_act, "', layer_norm_eps ",
                expert_cfg.layer_norm_eps, " but pretrained has '", pre_cfg.hidden_act, "', ",
                pre_cfg.layer_norm_eps);
  return with_origin(label, dir, [&] { return load_path(dir); });
}

void ClipVisionPool::save(const Model& model, const std::filesystem::path& dir) const {
  save_clip_vision(model, dir);
}

ModelPtr ClipVisionPool::make_model(StateDict params, nlohmann::json config) const {
  return make_clip_vision(params.to(ctx_.device(), ctx_.dtype()), config);
}

}  // namespace fusion::clip
