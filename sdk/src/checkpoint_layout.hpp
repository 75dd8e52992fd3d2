#pragma once
// Shared by safetensors.cpp and checkpoint_pool.cpp inside libfusion_sdk; not part of the public API.
#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "fusion/model_pool.hpp"
#include "fusion/safetensors.hpp"
#include "fusion/state_dict.hpp"

namespace fusion::detail {
/// The tensor entries of a checkpoint (file, folder or sharded folder), headers only, every file
/// validated.
std::vector<TensorInfo> read_checkpoint_layout(const std::filesystem::path& path);
/// "[3, 4]".
std::string shape_string(const std::vector<int64_t>& shape);
/// A model's weights: load_safetensors, and every floating-point tensor (F32, F16, BF16, F64) checked
/// for NaN and ±Inf in the loop that copies it out of the file, so memory is read once, as without
/// the check. The first one found throws fusion::Error, one line:
///   "<label>: <file>: tensor '<name>': F32 element <i> holds nan (weights must be finite)"
/// (`label`, the model's option such as "modelpool.models.mnist", and its ": " left out when empty;
/// the value is "nan", "inf" or "-inf"; <i> counts elements in row-major order). Integer and bool
/// tensors are not checked. The public reader (SafetensorsFile, load_safetensors) reads
/// non-finite values as they are.
StateDict load_weights(const std::filesystem::path& path, const at::Device& device,
                       std::optional<at::ScalarType> dtype, const std::string& label);

/// A checkpoint CheckpointStream reads, and the option that names it in messages.
struct StreamSource {
  std::filesystem::path path;
  std::string label;
};
/// For CheckpointStream::open (checkpoint_pool.cpp): the checkpoints of `models` ("pretrained" or
/// expert names) when `pool` is the `safetensors` pool itself loading onto the CPU in float32, each
/// expert's header checked against the pretrained model's as CheckpointModelPool::load checks it;
/// nullopt when the pool is another (or loads elsewhere).
std::optional<std::vector<StreamSource>> stream_sources(ModelPool& pool, const std::vector<std::string>& models);
}  // namespace fusion::detail
