#include "support.hpp"

#include <zlib.h>

#include <fstream>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#endif
#include <stb/stb_image_write.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace fusion::image_classification::testing {
namespace fs = std::filesystem;

TempDir::TempDir(const std::string& tag) {
  static int counter = 0;
  path_ = fs::temp_directory_path() /
          ("fusion_ic_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  fs::remove_all(path_);
  fs::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

std::vector<std::string> test_devices() {
  std::vector<std::string> d{"cpu"};
  if (at::hasCUDA()) d.push_back("cuda");
  return d;
}

void write_image(const fs::path& path, int width, int height, int channels, const std::vector<uint8_t>& pixels) {
  fs::create_directories(path.parent_path());
  const std::string ext = path.extension().string();
  int ok = 0;
  if (ext == ".jpg" || ext == ".jpeg") {
    ok = stbi_write_jpg(path.c_str(), width, height, channels, pixels.data(), 95);
  } else {
    ok = stbi_write_png(path.c_str(), width, height, channels, pixels.data(), width * channels);
  }
  ASSERT_TRUE(ok) << "cannot write " << path;
}

void write_solid(const fs::path& path, int width, int height, uint8_t r, uint8_t g, uint8_t b) {
  std::vector<uint8_t> px(static_cast<size_t>(width) * height * 3);
  for (size_t i = 0; i < px.size(); i += 3) {
    px[i] = r;
    px[i + 1] = g;
    px[i + 2] = b;
  }
  write_image(path, width, height, 3, px);
}

void write_bytes(const fs::path& path, const std::vector<uint8_t>& bytes, bool gzip) {
  fs::create_directories(path.parent_path());
  if (gzip) {
    gzFile f = gzopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
    gzclose(f);
  } else {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
}

namespace {
void be32(std::vector<uint8_t>& v, uint32_t x) {
  for (int s = 24; s >= 0; s -= 8) v.push_back(static_cast<uint8_t>(x >> s));
}
}  // namespace

fs::path write_idx(const fs::path& dir, const std::string& prefix, const std::vector<uint8_t>& pixels,
                   const std::vector<uint8_t>& labels, int64_t rows, int64_t cols, bool gzip) {
  std::vector<uint8_t> img, lab;
  be32(img, 0x00000803);
  be32(img, static_cast<uint32_t>(pixels.size() / (rows * cols)));
  be32(img, static_cast<uint32_t>(rows));
  be32(img, static_cast<uint32_t>(cols));
  img.insert(img.end(), pixels.begin(), pixels.end());
  be32(lab, 0x00000801);
  be32(lab, static_cast<uint32_t>(labels.size()));
  lab.insert(lab.end(), labels.begin(), labels.end());
  const std::string gz = gzip ? ".gz" : "";
  const fs::path images = dir / (prefix + "-images-idx3-ubyte" + gz);
  write_bytes(images, img, gzip);
  write_bytes(dir / (prefix + "-labels-idx1-ubyte" + gz), lab, gzip);
  return images;
}

void write_text(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

}  // namespace fusion::image_classification::testing
