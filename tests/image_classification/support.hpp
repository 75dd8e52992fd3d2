#pragma once
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "error_of.hpp"

namespace fusion::image_classification::testing {

inline std::filesystem::path data_dir() { return FUSION_IC_TEST_DATA; }

/// A fresh, empty temporary folder, removed when the object goes.
class TempDir {
 public:
  explicit TempDir(const std::string& tag);
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& p) const { return path_ / p; }

 private:
  std::filesystem::path path_;
};

/// The devices present: always the CPU, CUDA when LibTorch has it and a GPU is there.
std::vector<std::string> test_devices();

/// Writes an 8-bit image (`channels` 1..4, interleaved) as PNG or JPEG (by extension) with stb_image_write.
void write_image(const std::filesystem::path& path, int width, int height, int channels,
                 const std::vector<uint8_t>& pixels);
/// A solid-colour RGB PNG.
void write_solid(const std::filesystem::path& path, int width, int height, uint8_t r, uint8_t g, uint8_t b);
/// Writes `bytes` to `path`, gzipped when `gzip`.
void write_bytes(const std::filesystem::path& path, const std::vector<uint8_t>& bytes, bool gzip = false);
/// IDX files (MNIST's format) for `n` images of rows × cols: `<prefix>-images-idx3-ubyte` and
/// `<prefix>-labels-idx1-ubyte`, with ".gz" when gzipped. Returns the images file.
std::filesystem::path write_idx(const std::filesystem::path& dir, const std::string& prefix,
                                const std::vector<uint8_t>& pixels, const std::vector<uint8_t>& labels,
                                int64_t rows, int64_t cols, bool gzip);
void write_text(const std::filesystem::path& path, const std::string& text);

using fusion::testing::error_of;

}  // namespace fusion::image_classification::testing
