#include "image.hpp"

#include <algorithm>
#include <cctype>
#include <fstream>

// stb_image (Debian's libstb-dev ships the header), compiled here with static linkage. Only the
// formats image folders hold are enabled: without TGA (which has no magic number) arbitrary bytes
// are never mistaken for an image.
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#define STBI_ONLY_PNM
#define STBI_NO_STDIO
#define STBI_NO_HDR
#define STBI_NO_LINEAR
// PIL refuses images over 2 × 89,478,485 pixels as decompression bombs; stb's side limit is ours.
#define STBI_MAX_DIMENSIONS (1 << 16)
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#endif
#include <stb/stb_image.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace fusion::image_classification {
namespace {

constexpr int64_t kMaxPixels = 178956970;  // PIL's DecompressionBombError threshold

bool is_jpeg(const uint8_t* data, size_t size) {
  return size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF;
}

// stb_image decodes a JPEG cut short without complaint (the missing blocks come out grey), where
// PIL raises "image file is truncated". A complete JPEG ends with the EOI marker FF D9, possibly
// followed by padding or trailing metadata, so look for it near the end.
bool jpeg_has_end_marker(const uint8_t* data, size_t size) {
  const size_t lo = size > 64 * 1024 ? size - 64 * 1024 : 0;
  for (size_t i = size; i >= lo + 2; --i) {
    if (data[i - 2] == 0xFF && data[i - 1] == 0xD9) return true;
  }
  return false;
}

}  // namespace

Image decode_image(const uint8_t* data, size_t size, const std::string& name) {
  if (size == 0) throw BadImage("cannot decode image '" + name + "': the file is empty");
  if (size > static_cast<size_t>(INT32_MAX))
    throw BadImage("cannot decode image '" + name + "': the file is larger than 2 GiB");
  const int len = static_cast<int>(size);
  int w = 0, h = 0, channels = 0;
  if (!stbi_info_from_memory(data, len, &w, &h, &channels)) {
    throw BadImage("cannot decode image '" + name + "': " + stbi_failure_reason());
  }
  if (static_cast<int64_t>(w) * h > kMaxPixels) {
    throw BadImage("cannot decode image '" + name + "': " + std::to_string(w) + " x " +
                   std::to_string(h) + " pixels is over the limit of " + std::to_string(kMaxPixels));
  }
  if (is_jpeg(data, size) && !jpeg_has_end_marker(data, size)) {
    throw BadImage("cannot decode image '" + name + "': truncated JPEG (no end-of-image marker)");
  }
  // Requesting 3 channels makes stb replicate grey, drop alpha and expand palettes; 16-bit PNGs are
  // reduced to their high byte.
  stbi_uc* pixels = stbi_load_from_memory(data, len, &w, &h, &channels, 3);
  if (!pixels) throw BadImage("cannot decode image '" + name + "': " + stbi_failure_reason());
  Image img;
  img.width = w;
  img.height = h;
  img.rgb.assign(pixels, pixels + static_cast<size_t>(w) * h * 3);
  stbi_image_free(pixels);
  return img;
}

Image read_image(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw BadImage("cannot read image '" + path.string() + "': the file cannot be opened");
  const std::streamoff size = in.tellg();
  if (size < 0) throw BadImage("cannot read image '" + path.string() + "': cannot tell its size");
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  in.seekg(0);
  if (!in.read(reinterpret_cast<char*>(bytes.data()), size))
    throw BadImage("cannot read image '" + path.string() + "': read error");
  return decode_image(bytes.data(), bytes.size(), path.string());
}

Image grey_to_rgb(const uint8_t* grey, int64_t width, int64_t height) {
  Image img;
  img.width = width;
  img.height = height;
  img.rgb.resize(static_cast<size_t>(width * height * 3));
  for (int64_t i = 0; i < width * height; ++i) {
    img.rgb[3 * i] = img.rgb[3 * i + 1] = img.rgb[3 * i + 2] = grey[i];
  }
  return img;
}

bool is_image_file(const std::filesystem::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  static const char* const kExts[] = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pnm"};
  return std::any_of(std::begin(kExts), std::end(kExts), [&](const char* e) { return ext == e; });
}

}  // namespace fusion::image_classification
