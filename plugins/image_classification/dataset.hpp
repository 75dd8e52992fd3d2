#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "image.hpp"

namespace fusion::image_classification {

/// Where a split's samples come from.
enum class DataFormat {
  Auto,    ///< a folder → Folder; a `.csv` file → Csv; a file whose name holds "idx3" → Idx
  Folder,  ///< one subfolder per class holding image files
  Csv,     ///< a manifest with a header naming the columns `path` and `label`
  Idx,     ///< MNIST's IDX files, gzipped or not: the images file; labels beside it
};

/// "auto", "folder", "csv", "idx" ⇄ DataFormat. parse_format throws fusion::Error naming `where`.
DataFormat parse_format(const std::string& text, const std::string& where);
const char* format_name(DataFormat format);

/// One split of a task: labelled samples, decoded on demand. Immutable after opening; load() is
/// thread-safe.
class Dataset {
 public:
  /// Opens the split at `path`. `where` prefixes every error ("task 'mnist' test split").
  /// `num_classes` (when known) bounds the labels. Folder: classes are the subfolders, sorted by
  /// name — or by number when every name is a non-negative integer, which is then the label itself;
  /// image files are .jpg .jpeg .png .bmp .gif .ppm .pgm .pnm, other files are ignored (counted in
  /// ignored_files()); an empty class folder is an error. Csv: a header with `path` and `label`
  /// columns (others ignored; RFC 4180 quoting), paths relative to the CSV's folder, integer labels.
  /// Idx: `path` is the images file (magic 0x00000803); the labels file (0x00000801) has the same
  /// name with "images" → "labels" and "idx3" → "idx1". Throws fusion::Error naming the path, the
  /// line or the sample for a missing split, a malformed file, an empty split, a label out of range.
  static Dataset open(const std::filesystem::path& path, DataFormat format, const std::string& where,
                      std::optional<int64_t> num_classes = std::nullopt);

  int64_t size() const { return static_cast<int64_t>(labels_.size()); }
  int64_t label(int64_t i) const { return labels_[i]; }
  const std::vector<int64_t>& labels() const { return labels_; }
  /// The decoded RGB image of sample i. Throws BadImage naming the file (or IDX sample).
  Image load(int64_t i) const;
  /// The file of sample i, or "<images file>[i]" for IDX.
  std::string sample_name(int64_t i) const;

  DataFormat format() const { return format_; }
  const std::filesystem::path& path() const { return path_; }
  /// Folder format: the class subfolder names in label order (empty for numeric folders and the
  /// other formats).
  const std::vector<std::string>& folder_classes() const { return folder_classes_; }
  /// 1 + the largest label.
  int64_t label_count() const;
  /// Files in class folders that are not images (and so not samples).
  int64_t ignored_files() const { return ignored_files_; }

 private:
  DataFormat format_ = DataFormat::Folder;
  std::filesystem::path path_;
  std::vector<std::filesystem::path> files_;
  std::vector<int64_t> labels_;
  std::vector<std::string> folder_classes_;
  int64_t ignored_files_ = 0;
  // IDX: all images, row-major grey bytes.
  std::shared_ptr<const std::vector<uint8_t>> idx_pixels_;
  int64_t idx_rows_ = 0, idx_cols_ = 0;
};

/// The whole content of a file, gunzipped when it is gzip-compressed (zlib reads plain files
/// as they are). Throws fusion::Error naming the file.
std::vector<uint8_t> read_maybe_gzipped(const std::filesystem::path& path);

}  // namespace fusion::image_classification
