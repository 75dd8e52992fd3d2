#include "image.hpp"

#include <algorithm>
#include <cctype>
#include <cstring>
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

// Two defects of stb_image 2.27 (Debian 12's libstb-dev) in JPEG Huffman tables, both found by
// fuzz/fuzz_image and fixed upstream after 2.27 (nothings/stb issue 1289, pull request 1297):
// - it does not check that a DHT segment's 16 code counts add up to at most 256: with more,
//   stbi__build_huffman and the symbol loop write past the table into the rest of its decoder
//   state on the heap;
// - a scan may use a table no DHT segment defined: stb then decodes with uninitialised heap memory
//   and indexes its symbol array with it (out of bounds).
// Walks the JPEG's markers as stb does (segments by their length, scans until the next marker) and
// refuses either, before stb sees the file. "" when the file is fine (or not a JPEG), else why not.
std::string jpeg_huffman_problem(const uint8_t* data, size_t size) {
  auto byte = [&](size_t i) -> unsigned { return i < size ? data[i] : 0; };  // stb reads 0 past the end
  // stb takes any file that starts with FF ... FF D8 for a JPEG.
  size_t i = 0;
  while (i < size && data[i] == 0xFF) ++i;
  if (i == 0 || i == size || data[i] != 0xD8) return "";
  ++i;  // after SOI
  bool defined[2][4] = {};  // [DC, AC][table id]
  bool progressive = false;
  while (i + 1 < size) {
    if (data[i] != 0xFF) {  // entropy-coded data or junk: stb scans on to the next marker too
      ++i;
      continue;
    }
    const unsigned m = data[i + 1];
    if (m == 0xFF || m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD8)) {  // fill, stuffing, RSTn, SOI
      i += m == 0xFF ? 1 : 2;
      continue;
    }
    if (m == 0xD9) break;  // EOI
    const size_t length = (byte(i + 2) << 8) | byte(i + 3);
    if (m >= 0xC0 && m <= 0xC2) progressive = m == 0xC2;  // the frames stb reads
    if (m == 0xC4) {
      long left = static_cast<long>(length) - 2;
      size_t p = i + 4;
      while (left > 0 && p < size) {  // tables: class/id byte, 16 counts, the symbols
        unsigned codes = 0;
        for (size_t k = 1; k <= 16; ++k) codes += byte(p + k);
        if (codes > 256) return "a Huffman table holds more than 256 codes";
        const unsigned table_class = byte(p) >> 4, id = byte(p) & 15;
        if (table_class <= 1 && id <= 3) defined[table_class][id] = true;
        left -= 17 + static_cast<long>(codes);
        p += 17 + codes;
      }
    }
    if (m == 0xDA) {  // the tables this scan decodes with, as stb picks them
      const unsigned n = byte(i + 4);
      const unsigned spectral_start = byte(i + 5 + 2 * n), successive_high = byte(i + 7 + 2 * n) >> 4;
      for (unsigned c = 0; c < n && c < 4; ++c) {
        const unsigned dc = byte(i + 6 + 2 * c) >> 4, ac = byte(i + 6 + 2 * c) & 15;
        const bool uses_dc = !progressive || (spectral_start == 0 && successive_high == 0);
        const bool uses_ac = !progressive || spectral_start != 0;
        if ((uses_dc && dc <= 3 && !defined[0][dc]) || (uses_ac && ac <= 3 && !defined[1][ac])) {
          return "a scan uses a Huffman table that is not defined";
        }
      }
    }
    i += 2 + length;
  }
  return "";
}

// stb_image 2.27 reads a PNM header's numbers (width, height, maxval) into an int without a bound:
// "P5 99999999999 ..." overflows it (signed overflow, found by fuzz/fuzz_image; fixed upstream in
// 2.28). Reads the header as stb does (white space and # comments between numbers) and refuses a
// number of more than 9 digits, which no valid PNM has (stb takes at most 65,535 per side and as
// maxval).
bool pnm_header_numbers_fit(const uint8_t* data, size_t size) {
  if (size < 2 || data[0] != 'P' || (data[1] != '5' && data[1] != '6')) return true;
  auto space = [](uint8_t c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
  };
  size_t i = 2;
  for (int number = 0; number < 3; ++number) {
    for (;;) {
      while (i < size && space(data[i])) ++i;
      if (i >= size || data[i] != '#') break;
      while (i < size && data[i] != '\n' && data[i] != '\r') ++i;
    }
    size_t digits = 0;
    while (i < size && data[i] >= '0' && data[i] <= '9') ++i, ++digits;
    if (digits > 9) return false;
    if (digits == 0) break;  // stb reads no further number either
  }
  return true;
}

// stb_image 2.27 grows its IDAT buffer to a chunk's claimed length before it reads the chunk, so a
// 200-byte PNG claiming a 1.2 GB IDAT asks malloc for 2 GiB (found by fuzz/fuzz_image). Walks the
// chunks as stb does, up to IEND, and refuses one whose claimed length runs past the end of the
// file: stb would fail on it anyway, once it had read the chunk. "" when fine (or not a PNG).
std::string png_chunk_problem(const uint8_t* data, size_t size) {
  static const uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (size < 8 || std::memcmp(data, kSignature, 8) != 0) return "";
  size_t pos = 8;
  while (pos + 8 <= size) {
    const uint32_t length = (uint32_t{data[pos]} << 24) | (uint32_t{data[pos + 1]} << 16) |
                            (uint32_t{data[pos + 2]} << 8) | uint32_t{data[pos + 3]};
    const std::string type(reinterpret_cast<const char*>(data + pos + 4), 4);
    const size_t left = size - pos - 8;
    if (length > left) {
      std::string printable;
      for (char c : type) printable += (c >= 0x21 && c <= 0x7e) ? c : '?';
      return "chunk '" + printable + "' at byte " + std::to_string(pos) + " claims " +
             std::to_string(length) + " bytes but the file has " + std::to_string(left) + " left";
    }
    if (type == "IEND") break;
    pos += 12 + static_cast<size_t>(length);  // length, type, data, CRC
  }
  return "";
}

}  // namespace

Image decode_image(const uint8_t* data, size_t size, const std::string& name) {
  if (size == 0) throw BadImage("cannot decode image '" + name + "': the file is empty");
  if (size > static_cast<size_t>(INT32_MAX))
    throw BadImage("cannot decode image '" + name + "': the file is larger than 2 GiB");
  const int len = static_cast<int>(size);
  if (const std::string problem = jpeg_huffman_problem(data, size); !problem.empty()) {
    throw BadImage("cannot decode image '" + name + "': corrupt JPEG (" + problem + ")");
  }
  if (const std::string problem = png_chunk_problem(data, size); !problem.empty()) {
    throw BadImage("cannot decode image '" + name + "': corrupt PNG (" + problem + ")");
  }
  if (!pnm_header_numbers_fit(data, size)) {
    throw BadImage("cannot decode image '" + name + "': corrupt PNM (a header number of more than 9 digits)");
  }
  int w = 0, h = 0, channels = 0;
  if (!stbi_info_from_memory(data, len, &w, &h, &channels)) {
    throw BadImage("cannot decode image '" + name + "': " + stbi_failure_reason());
  }
  // stb 2.27 accepts a PNM header whose width or height is 0 (or no number at all) and returns an
  // empty image (found by fuzz/fuzz_image).
  if (w <= 0 || h <= 0) {
    throw BadImage("cannot decode image '" + name + "': " + std::to_string(w) + " x " + std::to_string(h) +
                   " pixels (an image has at least one)");
  }
  if (static_cast<int64_t>(w) * h > kMaxPixels) {
    throw BadImage("cannot decode image '" + name + "': " + std::to_string(w) + " x " +
                   std::to_string(h) + " pixels is over the limit of " + std::to_string(kMaxPixels));
  }
  // stb 2.27 decodes a 16-bit PNM wrongly: it converts the channels with its 8-bit routine, then
  // reads that buffer as 16-bit samples (a heap over-read for every 16-bit grey PGM, found by
  // fuzz/fuzz_image), and it keeps each sample's low byte (it does not swap the big-endian bytes).
  const bool pnm = size >= 2 && data[0] == 'P' && (data[1] == '5' || data[1] == '6');  // stb's test
  if (pnm && stbi_is_16_bit_from_memory(data, len)) {
    throw BadImage("cannot decode image '" + name + "': 16-bit PNM (maxval over 255) is not supported");
  }
  if (is_jpeg(data, size) && !jpeg_has_end_marker(data, size)) {
    throw BadImage("cannot decode image '" + name + "': truncated JPEG (no end-of-image marker)");
  }
  // Requesting 3 channels makes stb replicate grey, drop alpha and expand palettes; 16-bit PNGs are
  // reduced to their high byte.
  stbi_uc* pixels = stbi_load_from_memory(data, len, &w, &h, &channels, 3);
  if (!pixels) throw BadImage("cannot decode image '" + name + "': " + stbi_failure_reason());
  if (w <= 0 || h <= 0) {
    stbi_image_free(pixels);
    throw BadImage("cannot decode image '" + name + "': no pixels");
  }
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
