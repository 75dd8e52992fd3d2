// Loading and saving GPT-2 models as Hugging Face folders.
#include "fusion/checkpoint_pool.hpp"
#include "fusion/error.hpp"
#include "fusion/gpt2/model.hpp"
#include "fusion/safetensors.hpp"

namespace fusion::gpt2 {

ModelPtr load_gpt2(const std::filesystem::path& dir, std::optional<Gpt2Head> head, const at::Device& device,
                   std::optional<at::ScalarType> dtype) {
  const nlohmann::json config = read_config_json(dir);
  const std::filesystem::path config_file =
      std::filesystem::is_directory(dir) ? dir / "config.json" : dir.parent_path() / "config.json";
  // The config first: its errors name the file, and come before any weight is read.
  const Gpt2Config cfg = Gpt2Config::from_json(config, config_file.string());
  const Gpt2Head h = head ? *head : head_of(cfg);
  return std::make_shared<Gpt2Model>(load_safetensors(dir, device, dtype), config, h, dir.string());
}

void save_gpt2(const Model& model, const std::filesystem::path& dir_in) {
  const auto* gpt2 = dynamic_cast<const Gpt2Model*>(&model);
  FUSION_ENSURE(gpt2 != nullptr, "gpt2: cannot save a model of architecture '", model.architecture(),
                "' as a GPT-2 folder");
  nlohmann::json config = model.config();
  config["architectures"] = {hf_class_name(gpt2->head())};
  config["model_type"] = "gpt2";
  save_model_folder(dir_in, model.parameters(), std::move(config), "gpt2");
}

}  // namespace fusion::gpt2
