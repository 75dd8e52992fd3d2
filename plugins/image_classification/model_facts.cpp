#include "model_facts.hpp"

#include <algorithm>

#include "fusion/checkpoint_pool.hpp"
#include "fusion/clip/config.hpp"
#include "fusion/clip/vision.hpp"
#include "fusion/clip/vision_pool.hpp"
#include "fusion/error.hpp"

namespace fusion::image_classification {
namespace fs = std::filesystem;

namespace {

bool names_architecture(const nlohmann::json& config, const std::string& architecture) {
  auto it = config.find("architectures");
  if (it == config.end() || !it->is_array()) return false;
  return std::any_of(it->begin(), it->end(),
                     [&](const nlohmann::json& a) { return a.is_string() && a.get<std::string>() == architecture; });
}

std::string model_type(const nlohmann::json& config) {
  auto it = config.find("model_type");
  return it != config.end() && it->is_string() ? it->get<std::string>() : std::string();
}

bool has_object(const nlohmann::json& config, const char* key) {
  auto it = config.find(key);
  return it != config.end() && it->is_object();
}

}  // namespace

std::optional<ImageSizeFact> clip_image_size(const nlohmann::json& config, const std::string& where,
                                             bool assume_clip) {
  if (!config.is_object()) return std::nullopt;
  const std::string type = model_type(config);
  const bool clip_model = has_object(config, "vision_config") || type == "clip" || names_architecture(config, "CLIPModel");
  const bool vision_model = type == "clip_vision_model" || names_architecture(config, "CLIPVisionModel");
  if (!clip_model && !vision_model && !assume_clip) return std::nullopt;
  const clip::VisionConfig vision = clip::VisionConfig::from_json(config, where);
  // The field read: a CLIPModel's sits in vision_config (which from_json reads when present).
  const bool nested = has_object(config, "vision_config");
  const std::string field = nested ? "vision_config.image_size" : "image_size";
  const nlohmann::json& table = nested ? config.at("vision_config") : config;
  ImageSizeFact fact;
  fact.size = vision.image_size;
  fact.source = table.contains("image_size") ? field + " in " + where
                                             : where + ", which sets no " + field + " (transformers' default " +
                                                   std::to_string(vision.image_size) + ")";
  return fact;
}

std::optional<ImageSizeFact> model_image_size(const Model& model) {
  if (const auto* vision = dynamic_cast<const clip::ClipVisionModel*>(&model)) {
    return ImageSizeFact{vision->vision_config().image_size, "the image_size of the model's vision config"};
  }
  try {
    return clip_image_size(model.config(), "the model's config");
  } catch (const Error&) {
    return std::nullopt;  // not a config this pool can read: the model does not say
  }
}

PretrainedFacts pretrained_facts(const ModelPool& models) {
  PretrainedFacts facts;
  const auto* pool = dynamic_cast<const CheckpointModelPool*>(&models);
  if (pool == nullptr || !models.has_pretrained()) return facts;
  const bool clip_pool = dynamic_cast<const clip::ClipVisionPool*>(&models) != nullptr;
  facts.option = "modelpool." + option_name(&CheckpointPoolOptions::pretrained);
  const fs::path& path = pool->path_of(option_name(&CheckpointPoolOptions::pretrained));
  std::error_code ec;
  facts.folder = fs::is_directory(path, ec) ? path : path.parent_path();
  const std::string named = facts.option + " (" + facts.folder.string() + ")";
  nlohmann::json config;
  try {
    config = clip::read_config_json(facts.folder);
    facts.image_size = clip_image_size(config, (facts.folder / "config.json").string(), clip_pool);
  } catch (const Error& e) {
    // Unknown; the model pool names the problem when it loads the model.
    if (clip_pool) facts.no_text_tower = facts.option + ": " + e.what();
    facts.image_size.reset();
    return facts;
  }
  facts.text_tower = has_object(config, "text_config") || model_type(config) == "clip";
  if (!facts.text_tower && (clip_pool || facts.image_size)) {
    facts.no_text_tower = named + " has no text tower (its config.json has no text_config: not a CLIPModel)";
  }
  return facts;
}

}  // namespace fusion::image_classification
