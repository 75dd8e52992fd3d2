#include "clip_vision_pool.hpp"

#include <fstream>
#include <sstream>

#include "clip_vision.hpp"
#include "fusion/error.hpp"
#include "fusion/safetensors.hpp"

namespace fusion::clip {
namespace {

const std::string kPrefix = "vision_model.";

// Runs `f`, prefixing any fusion::Error with the folder it concerns.
template <typename F>
auto with_origin(const std::filesystem::path& dir, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    const std::string msg = e.what();
    if (msg.find(dir.string()) != std::string::npos) throw;
    FUSION_FAIL("clip_vision: ", dir.string(), ": ", msg);
  }
}

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kDouble: return "float64";
    default: return "float32";
  }
}

}  // namespace

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

ModelPtr make_clip_vision(const StateDict& params, const nlohmann::json& config) {
  FUSION_ENSURE(config.is_object() && !config.empty(),
                "config.json is missing or empty: clip_vision needs it to build the vision tower");
  StateDict vision;
  for (const auto& [key, t] : params) {
    if (key.compare(0, kPrefix.size(), kPrefix) == 0) vision.set(key, t);
  }
  FUSION_ENSURE(!vision.empty(), "the weights have no 'vision_model.*' tensors (not a CLIP model?)");
  return std::make_shared<ClipVisionModel>(std::move(vision), config);
}

ModelPtr load_clip_vision(const std::filesystem::path& dir, const at::Device& device,
                          std::optional<at::ScalarType> dtype) {
  return with_origin(dir, [&] {
    nlohmann::json config = read_config_json(dir);
    return make_clip_vision(load_safetensors(dir, device, dtype), config);
  });
}

void save_clip_vision(const Model& model, const std::filesystem::path& dir) {
  const auto* vision = dynamic_cast<const ClipVisionModel*>(&model);
  FUSION_ENSURE(vision != nullptr, "clip_vision: cannot save a model of architecture '", model.architecture(),
                "' as a CLIPVisionModel");
  std::filesystem::create_directories(dir);
  nlohmann::json config = vision->vision_config().to_json();
  for (const auto& [key, t] : model.parameters()) {
    if (t.is_floating_point()) {
      config["torch_dtype"] = dtype_name(t.scalar_type());
      break;
    }
  }
  save_safetensors(dir / "model.safetensors", model.parameters());
  write_file_atomic(dir / "config.json", config.dump(2) + "\n");
}

ClipVisionPool::ClipVisionPool(const Context& ctx) : CheckpointModelPool(ctx) {}

ComponentInfo ClipVisionPool::info() {
  ComponentInfo info;
  info.name = "clip_vision";
  info.summary = "CLIP vision towers from Hugging Face CLIPModel / CLIPVisionModel folders";
  info.reference = "https://huggingface.co/docs/transformers/model_doc/clip";
  info.schema = CheckpointModelPool::schema();
  return info;
}

std::unique_ptr<ModelPool> ClipVisionPool::create(const Context& ctx) {
  return std::make_unique<ClipVisionPool>(ctx);
}

ModelPtr ClipVisionPool::pretrained() {
  const std::filesystem::path& dir = path_of("pretrained");
  return with_origin(dir, [&] {
    read_config_json(dir);  // a clear error before any weight is read
    return CheckpointModelPool::pretrained();
  });
}

ModelPtr ClipVisionPool::load(const std::string& name) {
  const std::filesystem::path& dir = path_of(name);
  return with_origin(dir, [&] {
    read_config_json(dir);
    return CheckpointModelPool::load(name);
  });
}

void ClipVisionPool::save(const Model& model, const std::filesystem::path& dir) const {
  save_clip_vision(model, dir);
}

ModelPtr ClipVisionPool::make_model(StateDict params, nlohmann::json config) const {
  return make_clip_vision(params.to(ctx_.device(), ctx_.dtype()), config);
}

}  // namespace fusion::clip
