#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "fusion/error.hpp"

namespace fusion::image_classification {

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (HWC).
struct Image {
  int64_t width = 0;
  int64_t height = 0;
  std::vector<uint8_t> rgb;  ///< width · height · 3 bytes
};

/// A file that is not a readable image (corrupt, truncated, unsupported or missing). Its message
/// names the file; with on_bad_image = "skip" the loaders catch it and count the sample as skipped.
class BadImage : public Error {
 public:
  using Error::Error;
};

/// Decodes JPEG, PNG, BMP, GIF (first frame) or PNM bytes into RGB exactly as PIL's
/// `Image.convert("RGB")` would: grey is replicated, alpha dropped (not composited), palettes
/// expanded. 16-bit samples keep their high byte (as PIL does for 16-bit RGB; for 16-bit grey PIL
/// clips to 255 instead, which is a known PIL defect we do not copy); 16-bit PNM is refused (the
/// stb_image of Debian 12 misreads it). `name` names the source in errors. Throws BadImage.
/// Thread-safe.
Image decode_image(const uint8_t* data, size_t size, const std::string& name);

/// Reads and decodes the file at `path`. Throws BadImage naming the file.
Image read_image(const std::filesystem::path& path);

/// An RGB image from `width × height` 8-bit grey values (an IDX digit).
Image grey_to_rgb(const uint8_t* grey, int64_t width, int64_t height);

/// Whether `path` has an extension the decoder reads (.jpg .jpeg .png .bmp .gif .ppm .pgm .pnm,
/// case-insensitive).
bool is_image_file(const std::filesystem::path& path);

}  // namespace fusion::image_classification
