#include "fusion/gpt2/config.hpp"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "fusion/error.hpp"

namespace fusion::gpt2 {
namespace {

const nlohmann::json* field(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

int64_t get_int(const nlohmann::json& j, const char* key, int64_t fallback, const std::string& origin,
                int64_t min = 1) {
  const nlohmann::json* v = field(j, key);
  if (v == nullptr) return fallback;
  FUSION_ENSURE(v->is_number_integer() && v->get<int64_t>() >= min, origin, ": '", key, "' must be ",
                min == 0 ? "a non-negative" : "a positive", " integer, got ", v->dump());
  return v->get<int64_t>();
}

double get_double(const nlohmann::json& j, const char* key, double fallback, const std::string& origin) {
  const nlohmann::json* v = field(j, key);
  if (v == nullptr) return fallback;
  FUSION_ENSURE(v->is_number() && v->get<double>() > 0, origin, ": '", key, "' must be a positive number, got ",
                v->dump());
  return v->get<double>();
}

bool get_bool(const nlohmann::json& j, const char* key, bool fallback, const std::string& origin) {
  const nlohmann::json* v = field(j, key);
  if (v == nullptr) return fallback;
  FUSION_ENSURE(v->is_boolean(), origin, ": '", key, "' must be true or false, got ", v->dump());
  return v->get<bool>();
}

}  // namespace

const std::vector<std::string>& supported_activations() {
  static const std::vector<std::string> names = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu",
                                                 "quick_gelu", "relu", "silu", "swish", "tanh"};
  return names;
}

Gpt2Config Gpt2Config::from_json(const nlohmann::json& j, const std::string& origin) {
  FUSION_ENSURE(j.is_object(), origin, ": config must be a JSON object");
  Gpt2Config c;
  c.vocab_size = get_int(j, "vocab_size", c.vocab_size, origin);
  c.n_positions = get_int(j, "n_positions", c.n_positions, origin);
  c.n_embd = get_int(j, "n_embd", c.n_embd, origin);
  c.n_layer = get_int(j, "n_layer", c.n_layer, origin, 0);
  c.n_head = get_int(j, "n_head", c.n_head, origin);
  c.n_inner = get_int(j, "n_inner", 0, origin);
  c.layer_norm_epsilon = get_double(j, "layer_norm_epsilon", c.layer_norm_epsilon, origin);
  c.scale_attn_weights = get_bool(j, "scale_attn_weights", c.scale_attn_weights, origin);
  c.scale_attn_by_inverse_layer_idx =
      get_bool(j, "scale_attn_by_inverse_layer_idx", c.scale_attn_by_inverse_layer_idx, origin);
  FUSION_ENSURE(!get_bool(j, "add_cross_attention", false, origin), origin,
                ": 'add_cross_attention' is true; GPT-2 with cross-attention (an encoder-decoder) is not supported");
  if (const nlohmann::json* v = field(j, "activation_function")) {
    FUSION_ENSURE(v->is_string(), origin, ": 'activation_function' must be a string, got ", v->dump());
    c.activation_function = v->get<std::string>();
  }
  const auto& acts = supported_activations();
  if (std::find(acts.begin(), acts.end(), c.activation_function) == acts.end()) {
    std::string list;
    for (const auto& a : acts) list += (list.empty() ? "" : ", ") + a;
    FUSION_FAIL(origin, ": 'activation_function' is '", c.activation_function, "'; supported: ", list);
  }
  FUSION_ENSURE(c.n_embd % c.n_head == 0, origin, ": n_embd ", c.n_embd, " is not divisible by n_head ", c.n_head);
  if (field(j, "pad_token_id") != nullptr) c.pad_token_id = get_int(j, "pad_token_id", 0, origin, 0);
  c.eos_token_id = get_int(j, "eos_token_id", c.eos_token_id, origin, 0);
  // id2label decides num_labels when present (transformers' PretrainedConfig does the same).
  if (const nlohmann::json* v = field(j, "id2label")) {
    FUSION_ENSURE(v->is_object() && !v->empty(), origin, ": 'id2label' must be a non-empty object, got ",
                  v->dump());
    c.labels.assign(v->size(), "");
    for (const auto& [key, name] : v->items()) {
      size_t pos = 0;
      int64_t id = -1;
      try {
        id = std::stoll(key, &pos);
      } catch (const std::exception&) {
        pos = 0;
      }
      FUSION_ENSURE(pos == key.size() && id >= 0 && id < static_cast<int64_t>(v->size()), origin,
                    ": 'id2label' key '", key, "' is not a class index 0..", v->size() - 1);
      FUSION_ENSURE(name.is_string(), origin, ": 'id2label' entry '", key, "' must be a string, got ", name.dump());
      c.labels[id] = name.get<std::string>();
    }
    c.num_labels = static_cast<int64_t>(c.labels.size());
    if (const nlohmann::json* n = field(j, "num_labels")) {
      FUSION_ENSURE(n->is_number_integer() && n->get<int64_t>() == c.num_labels, origin, ": 'num_labels' is ",
                    n->dump(), " but 'id2label' names ", c.num_labels, " classes");
    }
  } else {
    c.num_labels = get_int(j, "num_labels", c.num_labels, origin);
    for (int64_t i = 0; i < c.num_labels; ++i) c.labels.push_back("LABEL_" + std::to_string(i));
  }
  if (const nlohmann::json* v = field(j, "architectures")) {
    FUSION_ENSURE(v->is_array(), origin, ": 'architectures' must be a list of strings, got ", v->dump());
    if (!v->empty()) {
      FUSION_ENSURE(v->front().is_string(), origin, ": 'architectures' must be a list of strings, got ", v->dump());
      c.architecture = v->front().get<std::string>();
    }
  }
  return c;
}

nlohmann::json read_config_json(const std::filesystem::path& dir) {
  const std::filesystem::path file =
      std::filesystem::is_directory(dir) ? dir / "config.json" : dir.parent_path() / "config.json";
  FUSION_ENSURE(std::filesystem::is_regular_file(file), file.string(),
                " is missing: a GPT-2 model folder needs its config.json to build the architecture");
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

}  // namespace fusion::gpt2
