#pragma once
// Shared by safetensors.cpp and checkpoint_pool.cpp inside libfusion_sdk; not part of the public API.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "fusion/safetensors.hpp"

namespace fusion::detail {
/// The tensor entries of a checkpoint (file, folder or sharded folder), headers only, every file
/// validated.
std::vector<TensorInfo> read_checkpoint_layout(const std::filesystem::path& path);
/// "[3, 4]".
std::string shape_string(const std::vector<int64_t>& shape);
}  // namespace fusion::detail
