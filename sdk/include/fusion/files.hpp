#pragma once
// Writing outputs so that a reader never sees them half-written.
#include <filesystem>
#include <functional>
#include <string>

#include "fusion/export.hpp"

namespace fusion {

/// Writes `contents` to `path` atomically (temporary file in the same folder, fsync, rename).
/// Throws fusion::Error naming `path`; on failure `path` is untouched and no temporary file stays.
FUSION_SDK_API void write_file_atomic(const std::filesystem::path& path, const std::string& contents);

/// Writes the folder `dir` atomically: `fill(tmp)` writes the contents into a fresh sibling folder,
/// which then takes `dir`'s place. A new `dir` appears by rename; an existing one is swapped in one
/// step (renameat2 RENAME_EXCHANGE), so `dir` is never missing and never half-written; where the
/// file system cannot exchange, the old folder is moved aside for the instant of the second rename.
/// The old contents are removed afterwards. If `fill` throws, the temporary folder is removed, `dir`
/// is untouched and the exception propagates. Throws fusion::Error naming `dir` when `dir` is a file
/// or its parent cannot be created.
FUSION_SDK_API void write_directory_atomic(const std::filesystem::path& dir,
                                           const std::function<void(const std::filesystem::path&)>& fill);

/// A short random hexadecimal string for temporary names (8 characters; unique per call within a
/// process with overwhelming probability). Thread-safe.
FUSION_SDK_API std::string random_suffix();

}  // namespace fusion
