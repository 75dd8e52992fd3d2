// libFuzzer target for the IDX reader of the image_classification plugin (Dataset::open with
// DataFormat::Idx, read_maybe_gzipped, Dataset::load): MNIST's images file (magic 0x00000803) and
// its labels file (0x00000801), each plain or gzip-compressed.
//
// Input: an images file, then optionally kLabelsSeparator and a labels file. Without a labels
// part the harness writes labels that agree with the images header, so a real images file (plain
// or .gz) is a seed as it is. Each input runs as given (zlib reads a gzip stream or plain bytes)
// and, when the images part is not gzip already, once more with both files gzip-compressed by the
// harness (the full gzip path with fuzzed contents) and once with the compressed images cut short.
// A malformed input must end in fusion::Error (one line); a crash, a sanitizer report or another
// exception is a bug.
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "dataset.hpp"
#include "fuzz_support.hpp"

namespace ic = fusion::image_classification;
namespace fz = fusion::fuzz;

namespace {

constexpr std::string_view kLabelsSeparator = "FUZZ-IDX-LABELS:";

uint32_t be32(std::string_view s, size_t at) {
  if (s.size() < at + 4) return 0;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data() + at);
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

bool is_gzip(std::string_view s) {
  return s.size() >= 2 && static_cast<unsigned char>(s[0]) == 0x1f && static_cast<unsigned char>(s[1]) == 0x8b;
}

// A gzip stream of `s` (deflate level 1: speed matters more than size here).
std::string gzip(std::string_view s) {
  z_stream z{};
  if (deflateInit2(&z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) fz::fail("deflateInit2");
  std::string out(deflateBound(&z, s.size()) + 32, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(s.data()));
  z.avail_in = static_cast<uInt>(s.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) fz::fail("deflate");
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

// The first `n` bytes of the gzip stream `s` (fewer when it is shorter or corrupt).
std::string gunzip_head(std::string_view s, size_t n) {
  z_stream z{};
  if (inflateInit2(&z, 15 + 16) != Z_OK) fz::fail("inflateInit2");
  std::string out(n, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(s.data()));
  z.avail_in = static_cast<uInt>(s.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(n);
  inflate(&z, Z_SYNC_FLUSH);
  out.resize(z.total_out);
  inflateEnd(&z);
  return out;
}

// Labels that agree with the images header: magic, count, label i % 10 (at most 64 Ki of them).
std::string labels_for(std::string_view images) {
  const std::string head = is_gzip(images) ? gunzip_head(images, 8) : std::string(images.substr(0, 8));
  const uint32_t n = std::min<uint32_t>(be32(head, 4), 1u << 16);
  std::string out("\0\0\x08\x01", 4);
  for (int shift = 24; shift >= 0; shift -= 8) out += static_cast<char>((n >> shift) & 0xff);
  for (uint32_t i = 0; i < n; ++i) out += static_cast<char>(i % 10);
  return out;
}

void run(std::string_view images, std::string_view labels, const std::optional<int64_t>& num_classes) {
  const auto& dir = fz::scratch_dir();
  const auto images_path = dir / "fuzz-images-idx3-ubyte";
  fz::write_file(images_path, images);
  fz::write_file(dir / "fuzz-labels-idx1-ubyte", labels);
  try {
    const ic::Dataset d = ic::Dataset::open(images_path, ic::DataFormat::Idx, "fuzz", num_classes);
    // Invariants of an accepted split.
    if (d.size() <= 0) fz::fail("an accepted IDX split is empty");
    for (int64_t label : d.labels()) {
      if (label < 0 || label > 255) fz::fail("label out of the byte range: " + std::to_string(label));
      if (num_classes && label >= *num_classes) fz::fail("label beyond num_classes accepted");
    }
    if (d.label_count() <= 0 || d.label_count() > 256) fz::fail("label_count out of range");
    for (int64_t i = 0; i < d.size() && i < 64; ++i) {
      const ic::Image img = d.load(i);
      if (img.width <= 0 || img.height <= 0 ||
          img.rgb.size() != static_cast<size_t>(img.width) * static_cast<size_t>(img.height) * 3) {
        fz::fail("sample " + std::to_string(i) + " decodes to an inconsistent image");
      }
      (void)d.sample_name(i);
    }
  } catch (const fusion::Error& e) {
    fz::check_error(e);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = fz::split(fz::as_text(data, size), kLabelsSeparator, 2);
  const std::string_view images = parts[0];
  const std::string labels = parts.size() > 1 ? std::string(parts[1]) : labels_for(images);
  // The class count, when given, bounds the labels: take it from the input's last byte.
  const std::optional<int64_t> num_classes =
      size > 0 && (data[size - 1] & 1) ? std::optional<int64_t>(data[size - 1] >> 1) : std::nullopt;

  run(images, labels, num_classes);
  if (!is_gzip(images)) {
    const std::string gz_images = gzip(images);
    run(gz_images, gzip(labels), num_classes);
    if (gz_images.size() > 20) run(std::string_view(gz_images).substr(0, gz_images.size() - 9), labels, num_classes);
  }
  return 0;
}
