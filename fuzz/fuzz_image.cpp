// libFuzzer target for image decoding in the image_classification plugin (decode_image: stb_image
// with JPEG, PNG, BMP, GIF and PNM enabled, PIL's pixel limit, the truncated-JPEG check).
//
// Input: the bytes of an image file. An undecodable input must end in BadImage (a fusion::Error,
// one line); a crash, a sanitizer report or another exception is a bug. Images over 4 Mi pixels
// are skipped before decoding (fuzzing speed and libFuzzer's memory limit; decode_image accepts up
// to PIL's 178,956,970 pixels, each decoded into 3 bytes and more for a progressive JPEG).
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <string>

#include "fuzz_support.hpp"
#include "image.hpp"

namespace ic = fusion::image_classification;
namespace fz = fusion::fuzz;

namespace {

// The pixel count an image's header declares (0 when it cannot tell), read here rather than by
// stb, which must not see the input before decode_image does.
uint64_t declared_pixels(const uint8_t* d, size_t n) {
  auto at = [&](size_t i) -> uint64_t { return i < n ? d[i] : 0; };
  auto be16 = [&](size_t i) { return (at(i) << 8) | at(i + 1); };
  auto le16 = [&](size_t i) { return at(i) | (at(i + 1) << 8); };
  auto le32 = [&](size_t i) {
    const auto v = static_cast<int32_t>(static_cast<uint32_t>(le16(i) | (le16(i + 2) << 16)));
    return static_cast<uint64_t>(v < 0 ? -static_cast<int64_t>(v) : v);
  };
  if (n >= 24 && std::memcmp(d, "\x89PNG", 4) == 0)
    return ((at(16) << 24) | (at(17) << 16) | (at(18) << 8) | at(19)) *
           ((at(20) << 24) | (at(21) << 16) | (at(22) << 8) | at(23));
  if (n >= 10 && std::memcmp(d, "GIF8", 4) == 0) return le16(6) * le16(8);
  if (n >= 26 && d[0] == 'B' && d[1] == 'M') {
    return le32(14) == 12 ? le16(18) * le16(20) : le32(18) * le32(22);
  }
  if (n >= 2 && d[0] == 'P' && (d[1] == '5' || d[1] == '6')) {  // the header is text
    size_t i = 2;
    uint64_t dims[2] = {0, 0};
    for (auto& v : dims) {
      while (i < n && (std::isspace(d[i]) || d[i] == '#')) {
        if (d[i] == '#')
          while (i < n && d[i] != '\n' && d[i] != '\r') ++i;
        else
          ++i;
      }
      while (i < n && std::isdigit(d[i]) && v < (uint64_t{1} << 32)) v = v * 10 + (d[i++] - '0');
    }
    return dims[0] * dims[1];
  }
  size_t i = 0;  // JPEG: FF... D8, then segments to the first SOFn
  while (i < n && d[i] == 0xFF) ++i;
  if (i == 0 || i >= n || d[i] != 0xD8) return 0;
  uint64_t largest = 0;
  for (++i; i + 8 < n;) {
    if (d[i] != 0xFF) {
      ++i;
      continue;
    }
    const unsigned m = d[i + 1];
    if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC)
      largest = std::max(largest, be16(i + 5) * be16(i + 7));
    i += m == 0xFF ? 1 : 2;  // every SOFn, wherever it is (a scan's data too): an upper bound
  }
  return largest;
}

constexpr uint64_t kMaxFuzzPixels = uint64_t{1} << 22;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (declared_pixels(data, size) > kMaxFuzzPixels) return -1;  // -1: not added to the corpus
  try {
    const ic::Image img = ic::decode_image(data, size, "fuzz");
    if (img.width <= 0 || img.height <= 0) fz::fail("decoded image with no pixels");
    if (img.rgb.size() != static_cast<size_t>(img.width) * static_cast<size_t>(img.height) * 3)
      fz::fail("decoded image whose buffer is not width x height x 3 bytes");
  } catch (const ic::BadImage& e) {
    fz::check_error(e);
  } catch (const fusion::Error& e) {
    fz::fail(std::string("fusion::Error that is not BadImage: ") + e.what());
  }
  return 0;
}
