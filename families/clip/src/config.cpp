#include "fusion/clip/config.hpp"

#include <fstream>
#include <sstream>

#include "fusion/error.hpp"

namespace fusion::clip {
namespace {

int64_t get_int(const nlohmann::json& j, const char* key, int64_t fallback, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  FUSION_ENSURE(it->is_number_integer() && it->get<int64_t>() > 0, origin, ": '", key,
                "' must be a positive integer, got ", it->dump());
  return it->get<int64_t>();
}

double get_double(const nlohmann::json& j, const char* key, double fallback, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  FUSION_ENSURE(it->is_number() && it->get<double>() > 0, origin, ": '", key,
                "' must be a positive number, got ", it->dump());
  return it->get<double>();
}

void read_encoder(EncoderConfig& c, const nlohmann::json& j, const std::string& origin) {
  c.hidden_size = get_int(j, "hidden_size", c.hidden_size, origin);
  c.intermediate_size = get_int(j, "intermediate_size", c.intermediate_size, origin);
  c.num_attention_heads = get_int(j, "num_attention_heads", c.num_attention_heads, origin);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", c.num_hidden_layers, origin);
  c.layer_norm_eps = get_double(j, "layer_norm_eps", c.layer_norm_eps, origin);
  if (auto it = j.find("hidden_act"); it != j.end() && !it->is_null()) {
    FUSION_ENSURE(it->is_string(), origin, ": 'hidden_act' must be a string, got ", it->dump());
    c.hidden_act = it->get<std::string>();
  }
  FUSION_ENSURE(c.hidden_act == "quick_gelu" || c.hidden_act == "gelu", origin, ": 'hidden_act' is '",
                c.hidden_act, "'; supported: quick_gelu, gelu");
  FUSION_ENSURE(c.hidden_size % c.num_attention_heads == 0, origin, ": hidden_size ", c.hidden_size,
                " is not divisible by num_attention_heads ", c.num_attention_heads);
}

// The tower's table of a CLIPModel config (`vision_config`, with the fields of the legacy
// `vision_config_dict` taking precedence as transformers does), or the config itself.
nlohmann::json section(const nlohmann::json& config, const std::string& key, const std::string& origin) {
  FUSION_ENSURE(config.is_object(), origin, ": config must be a JSON object");
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return config;
  FUSION_ENSURE(it->is_object(), origin, ": '", key, "' must be an object");
  nlohmann::json out = *it;
  auto legacy = config.find(key + "_dict");
  if (legacy != config.end() && legacy->is_object()) out.update(*legacy);
  return out;
}

}  // namespace

bool is_clip_model_config(const nlohmann::json& config) {
  return config.is_object() && (config.contains("vision_config") || config.contains("text_config"));
}

nlohmann::json read_config_json(const std::filesystem::path& dir) {
  const std::filesystem::path file =
      std::filesystem::is_directory(dir) ? dir / "config.json" : dir.parent_path() / "config.json";
  FUSION_ENSURE(std::filesystem::is_regular_file(file), file.string(),
                " is missing: a CLIP model folder needs its config.json to build the architecture");
  std::ifstream in(file);
  std::ostringstream buf;
  buf << in.rdbuf();
  try {
    nlohmann::json j = nlohmann::json::parse(buf.str());
    FUSION_ENSURE(j.is_object(), file.string(), " must hold a JSON object");
    return j;
  } catch (const nlohmann::json::exception& e) {
    FUSION_FAIL(file.string(), " is not valid JSON: ", e.what());
  }
}

VisionConfig VisionConfig::from_json(const nlohmann::json& config, const std::string& origin) {
  const nlohmann::json j = section(config, "vision_config", origin);
  VisionConfig c;
  read_encoder(c, j, origin);
  c.image_size = get_int(j, "image_size", c.image_size, origin);
  c.patch_size = get_int(j, "patch_size", c.patch_size, origin);
  c.num_channels = get_int(j, "num_channels", c.num_channels, origin);
  FUSION_ENSURE(c.image_size % c.patch_size == 0, origin, ": image_size ", c.image_size,
                " is not a multiple of patch_size ", c.patch_size);
  return c;
}

nlohmann::json VisionConfig::to_json() const {
  return nlohmann::json{{"architectures", {"CLIPVisionModel"}},
                        {"model_type", "clip_vision_model"},
                        {"hidden_size", hidden_size},
                        {"intermediate_size", intermediate_size},
                        {"num_attention_heads", num_attention_heads},
                        {"num_hidden_layers", num_hidden_layers},
                        {"hidden_act", hidden_act},
                        {"layer_norm_eps", layer_norm_eps},
                        {"image_size", image_size},
                        {"patch_size", patch_size},
                        {"num_channels", num_channels},
                        {"attention_dropout", 0.0},
                        {"initializer_factor", 1.0},
                        {"initializer_range", 0.02},
                        {"torch_dtype", "float32"}};
}

TextConfig TextConfig::from_json(const nlohmann::json& config, const std::string& origin) {
  const nlohmann::json j = section(config, "text_config", origin);
  TextConfig c;
  c.hidden_size = 512;
  c.intermediate_size = 2048;
  c.num_attention_heads = 8;
  read_encoder(c, j, origin);
  c.vocab_size = get_int(j, "vocab_size", c.vocab_size, origin);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", c.max_position_embeddings, origin);
  c.eos_token_id = get_int(j, "eos_token_id", c.eos_token_id, origin);
  return c;
}

}  // namespace fusion::clip
