#pragma once
#include <ATen/ATen.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "fusion/clip/zero_shot.hpp"

namespace fusion::image_classification {

/// The head file format: a safetensors file with three tensors matching clip::ZeroShotHead —
///   `projection`  [proj_dim, hidden]       CLIPModel's visual_projection.weight
///   `text_embeds` [num_classes, proj_dim]  one unit-norm row per class
///   `logit_scale` [] (or [1])              the multiplier itself, exp(CLIPModel.logit_scale) ≈ 100
/// Any float dtype; metadata is free (the cache writes task, classes, templates and the model).
/// Throws fusion::Error naming the file and the offending tensor (missing, wrong rank, shapes that
/// disagree).
clip::ZeroShotHead load_head(const std::filesystem::path& path, const at::Device& device,
                             at::ScalarType dtype);

/// Writes `head` in the format above (float32, atomically).
void save_head(const std::filesystem::path& path, const clip::ZeroShotHead& head,
               const std::map<std::string, std::string>& metadata = {});

/// The number of classes of a head file, from its header alone (text_embeds' first dimension).
int64_t head_file_classes(const std::filesystem::path& path);

/// A 16-hex-digit key for the zero-shot head of (CLIP model folder, class names, templates): FNV-1a
/// over the folder's absolute path, the name, size and modification time of its config.json,
/// tokenizer files and weight files, and the class names and templates. A changed model, list or
/// template gives another key.
std::string head_cache_key(const std::filesystem::path& clip_dir, const std::vector<std::string>& classnames,
                           const std::vector<std::string>& templates);

/// $XDG_CACHE_HOME/fusion/zero_shot_heads, else $HOME/.cache/fusion/zero_shot_heads, else "".
std::filesystem::path default_head_cache_dir();

}  // namespace fusion::image_classification
