#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fusion/export.hpp"
#include "fusion/files.hpp"
#include "fusion/state_dict.hpp"

namespace fusion {

/// One tensor's entry in a safetensors header.
struct FUSION_SDK_API TensorInfo {
  std::string name;
  std::string dtype;            ///< as in the file: "F32", "F16", "BF16", "I64", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0;           ///< offsets into the data section
  uint64_t end = 0;
};

/// A safetensors file opened read-only and memory-mapped. The header is parsed and validated on
/// open (header length within the file, valid JSON, known dtypes, offsets inside the data and not
/// overlapping, byte size = numel × dtype size); every violation throws fusion::Error naming the
/// file and what is wrong. Tensors are read on demand. Thread-safe to read after construction.
class FUSION_SDK_API SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const;
  /// Tensor entries in file order (by data offset). On a temporary (`SafetensorsFile(p).tensors()`)
  /// the entries are returned by value, so no reference outlives the file object.
  const std::vector<TensorInfo>& tensors() const&;
  std::vector<TensorInfo> tensors() &&;
  const TensorInfo* find(const std::string& name) const;
  /// The `__metadata__` map (empty if absent); by value on a temporary, as tensors().
  const std::map<std::string, std::string>& metadata() const&;
  std::map<std::string, std::string> metadata() &&;
  /// A CPU tensor with the file's dtype: a copy-on-write view of the mapping (writable; a write
  /// copies the page it touches, the file never changes), or a copy where the data is not aligned.
  at::Tensor tensor(const std::string& name) const;
  /// All tensors, in file order, converted to `dtype` (when given; integer tensors keep theirs)
  /// and moved to `device`.
  StateDict read_all(const at::Device& device = at::kCPU,
                     std::optional<at::ScalarType> dtype = std::nullopt) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Loads a checkpoint: a `.safetensors` file, or a folder holding `model.safetensors` or a sharded
/// `model.safetensors.index.json` (its `weight_map` names the shard of every tensor). Floating
/// tensors are converted to `dtype` when given. Throws fusion::Error naming the path on failure.
FUSION_SDK_API StateDict load_safetensors(const std::filesystem::path& path,
                                          const at::Device& device = at::kCPU,
                                          std::optional<at::ScalarType> dtype = std::nullopt);

/// The file a checkpoint path resolves to for metadata purposes: the path itself for a file, the
/// folder's model.safetensors, or the index json for a sharded folder. Throws when none exists.
FUSION_SDK_API std::filesystem::path resolve_checkpoint(const std::filesystem::path& path);

/// Writes `tensors` to `path` in the safetensors format, byte-compatible with Python's
/// `safetensors.torch.save_file`: header JSON with `__metadata__` first (always holding
/// "format": "pt" unless `metadata` sets it), tensors ordered by dtype alignment (largest first)
/// then by name, header padded with spaces to a multiple of 8, tensors contiguous little-endian.
/// Written to a temporary file in the same folder and renamed, so `path` is never half-written.
/// Tensors may be on any device; they are copied to the CPU.
FUSION_SDK_API void save_safetensors(const std::filesystem::path& path, const StateDict& tensors,
                                     const std::map<std::string, std::string>& metadata = {});

/// The safetensors dtype string of a torch dtype ("F32" for at::kFloat); throws for types the
/// format lacks.
FUSION_SDK_API std::string safetensors_dtype(at::ScalarType t);
/// The torch dtype of a safetensors dtype string; throws fusion::Error for unknown ones.
FUSION_SDK_API at::ScalarType torch_dtype(const std::string& safetensors_dtype);


}  // namespace fusion
