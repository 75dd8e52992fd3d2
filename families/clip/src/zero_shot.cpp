#include "fusion/clip/zero_shot.hpp"

#include <ATen/core/grad_mode.h>

#include <cmath>

#include "fusion/clip/config.hpp"
#include "fusion/clip/text.hpp"
#include "fusion/clip/tokenizer.hpp"
#include "fusion/error.hpp"
#include "fusion/safetensors.hpp"

namespace fusion::clip {
namespace {

bool wanted(const std::string& key) {
  return key.rfind("text_model.", 0) == 0 || key == "text_projection.weight" ||
         key == "visual_projection.weight" || key == "logit_scale";
}

// The text tower, the projections and logit_scale of a CLIPModel folder; reads only those tensors
// when the folder has a single model.safetensors.
StateDict load_head_params(const std::filesystem::path& dir, const at::Device& device, at::ScalarType dtype) {
  StateDict out;
  if (std::filesystem::is_regular_file(dir / "model.safetensors")) {
    SafetensorsFile file(dir / "model.safetensors");
    for (const TensorInfo& info : file.tensors()) {
      if (!wanted(info.name)) continue;
      at::Tensor t = file.tensor(info.name);
      out.set(info.name, t.is_floating_point() ? t.to(device, dtype) : t.to(device));
    }
    return out;
  }
  for (const auto& [key, t] : load_safetensors(dir, device, dtype)) {
    if (wanted(key)) out.set(key, t);
  }
  return out;
}

std::string fill_template(const std::string& tmpl, const std::string& classname) {
  const size_t at = tmpl.find("{}");
  FUSION_ENSURE(at != std::string::npos, "zero-shot template '", tmpl, "' has no {} placeholder for the class name");
  return tmpl.substr(0, at) + classname + tmpl.substr(at + 2);
}

at::Tensor normalize(const at::Tensor& x) { return x / x.norm(2, -1, true); }

}  // namespace

ZeroShotHead build_zero_shot_head(const std::filesystem::path& clip_dir,
                                  const std::vector<std::string>& classnames,
                                  const std::vector<std::string>& templates, const at::Device& device,
                                  at::ScalarType dtype) {
  FUSION_ENSURE(!classnames.empty(), "zero-shot head: no class names");
  FUSION_ENSURE(!templates.empty(), "zero-shot head: no templates");
  const nlohmann::json config = read_config_json(clip_dir);
  FUSION_ENSURE(is_clip_model_config(config), (clip_dir / "config.json").string(),
                " is not a CLIPModel config (no text_config): the zero-shot head needs the base CLIP "
                "model with its text tower");
  const ClipTokenizer tokenizer = ClipTokenizer::from_folder(clip_dir);
  StateDict params = load_head_params(clip_dir, device, dtype);
  ZeroShotHead head;
  for (const char* key : {"visual_projection.weight", "logit_scale"}) {
    FUSION_ENSURE(params.contains(key), clip_dir.string(), ": the weights lack '", key, "'");
  }
  head.projection = params.at("visual_projection.weight");
  head.logit_scale = std::exp(params.at("logit_scale").to(at::kDouble).item<double>());
  params.erase("visual_projection.weight");
  params.erase("logit_scale");
  std::unique_ptr<ClipTextModel> text;
  try {
    text = std::make_unique<ClipTextModel>(std::move(params), config);
  } catch (const Error& e) {
    FUSION_FAIL(clip_dir.string(), ": ", e.what());
  }
  const int64_t max_length = text->text_config().max_position_embeddings;

  at::NoGradGuard no_grad;
  std::vector<at::Tensor> rows;
  rows.reserve(classnames.size());
  std::vector<std::string> texts(templates.size());
  for (const std::string& name : classnames) {
    for (size_t i = 0; i < templates.size(); ++i) texts[i] = fill_template(templates[i], name);
    at::Tensor ids = tokenizer.encode_batch(texts, max_length).to(device);
    // Per template normalised, averaged, normalised again (FusionBench's zero-shot head).
    rows.push_back(normalize(normalize(text->forward(ids)).mean(0)));
  }
  head.text_embeds = at::stack(rows);
  return head;
}

at::Tensor apply_head(const ZeroShotHead& head, const at::Tensor& pooled) {
  FUSION_ENSURE(head.projection.defined() && head.text_embeds.defined(), "apply_head: empty head");
  FUSION_ENSURE(pooled.dim() == 2 && pooled.size(1) == head.projection.size(1), "apply_head: pooled must be [batch, ",
                head.projection.size(1), "], got ", pooled.sizes());
  at::Tensor image = normalize(at::linear(pooled, head.projection));
  return at::matmul(image, head.text_embeds.t()) * head.logit_scale;
}

}  // namespace fusion::clip
