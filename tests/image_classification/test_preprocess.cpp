// Decoding and CLIP preprocessing against PIL + transformers (golden files from make_golden.py).
#include <gtest/gtest.h>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "fusion/safetensors.hpp"
#include "image.hpp"
#include "preprocess.hpp"
#include "support.hpp"

namespace fusion::image_classification {
namespace {
using namespace testing;
namespace fs = std::filesystem;

int max_diff(const Image& a, const Image& b) {
  EXPECT_EQ(a.width, b.width);
  EXPECT_EQ(a.height, b.height);
  int m = 0;
  for (size_t i = 0; i < std::min(a.rgb.size(), b.rgb.size()); ++i) m = std::max(m, std::abs(a.rgb[i] - b.rgb[i]));
  return m;
}

TEST(Preprocess, ResizedSizeTruncatesLikeTransformers) {
  EXPECT_EQ(resized_size(61, 37, 224), std::make_pair(int64_t{369}, int64_t{224}));  // 369.29
  EXPECT_EQ(resized_size(150, 203, 64), std::make_pair(int64_t{64}, int64_t{86}));   // 86.61
  EXPECT_EQ(resized_size(28, 28, 224), std::make_pair(int64_t{224}, int64_t{224}));
  EXPECT_EQ(resized_size(500, 375, 224), std::make_pair(int64_t{298}, int64_t{224}));  // 298.67
}

// Every golden case: the 8-bit crop equals PIL's within its tolerance (1 grey level for lossless
// images; JPEG decoders differ a little), and the normalised tensor within tolerance/255/std.
TEST(Preprocess, MatchesPilGolden) {
  std::ifstream in(data_dir() / "golden.json");
  ASSERT_TRUE(in);
  const auto golden = nlohmann::json::parse(in);
  ASSERT_GE(golden.size(), 15u);
  int exact = 0, lossless = 0;
  PreprocessOptions opt;
  for (const auto& g : golden) {
    const std::string name = g["image"];
    const int64_t size = g["size"];
    const int tol = g["tolerance"];
    SCOPED_TRACE(name + " at " + std::to_string(size));
    const Image img = read_image(data_dir() / "images" / name);
    EXPECT_EQ(img.width, g["width"].get<int64_t>());
    EXPECT_EQ(img.height, g["height"].get<int64_t>());
    const Image crop = resize_center_crop(img, size);
    const Image expected = read_image(data_dir() / "expected" / g["expected"].get<std::string>());
    const int d = max_diff(crop, expected);
    EXPECT_LE(d, tol);
    if (tol > 1) std::cout << "  " << name << " at " << size << ": max difference to PIL " << d << " grey levels\n";
    if (tol == 1) {
      ++lossless;
      exact += d == 0;
    }
    // The float tensor: same crop through the normalisation.
    opt.image_size = size;
    at::Tensor x = preprocess(img, opt);
    at::Tensor e = at::empty({3, size, size}, at::kFloat);
    normalize_into(expected, opt, e.data_ptr<float>());
    ASSERT_EQ(x.sizes(), e.sizes());
    for (int c = 0; c < 3; ++c) {
      const double bound = tol / 255.0 / opt.std[c] + 1e-6;
      EXPECT_LE((x[c] - e[c]).abs().max().item<double>(), bound) << "channel " << c;
    }
  }
  // The resampler is Pillow's fixed-point algorithm: lossless inputs agree bit for bit.
  EXPECT_EQ(exact, lossless);
}

TEST(Preprocess, NormalisationMatchesTransformersExactly) {
  SafetensorsFile f(data_dir() / "normalized.safetensors");
  at::Tensor expected = f.tensor("rgb_square_17");
  PreprocessOptions opt;
  opt.image_size = 17;
  at::Tensor x = preprocess(read_image(data_dir() / "images" / "rgb_square.png"), opt);
  EXPECT_LE((x - expected).abs().max().item<double>(), 1e-6);
}

TEST(Decode, GreyIsReplicatedAndAlphaDropped) {
  const Image grey = read_image(data_dir() / "images" / "grey.png");
  for (size_t i = 0; i < grey.rgb.size(); i += 3) {
    ASSERT_EQ(grey.rgb[i], grey.rgb[i + 1]);
    ASSERT_EQ(grey.rgb[i], grey.rgb[i + 2]);
  }
  // RGBA: the colour channels as stored, whatever the alpha (PIL's convert("RGB") does not composite).
  TempDir tmp("alpha");
  std::vector<uint8_t> px{10, 20, 30, 0, 200, 100, 50, 128};
  write_image(tmp / "a.png", 2, 1, 4, px);
  const Image img = read_image(tmp / "a.png");
  EXPECT_EQ(img.rgb, (std::vector<uint8_t>{10, 20, 30, 200, 100, 50}));
}

TEST(Decode, SixteenBitKeepsTheHighByte) {
  // grey16.png's reference is the high byte of each sample; a clipping reduction would be all white.
  const Image img = read_image(data_dir() / "images" / "grey16.png");
  int white = 0;
  for (uint8_t v : img.rgb) white += v == 255;
  EXPECT_LT(white, static_cast<int>(img.rgb.size()) / 2);
}

TEST(Decode, BadImagesNameTheFile) {
  TempDir tmp("bad");
  write_bytes(tmp / "garbage.png", {1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
  write_bytes(tmp / "empty.jpg", {});
  // A PNG and a JPEG cut in half.
  for (const char* name : {"rgb_wide.png", "photo_420.jpg"}) {
    std::ifstream in(data_dir() / "images" / name, std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    bytes.resize(bytes.size() / 2);
    write_bytes(tmp / (std::string("cut_") + name), bytes);
  }
  for (const char* name : {"garbage.png", "empty.jpg", "cut_rgb_wide.png", "cut_photo_420.jpg", "missing.png"}) {
    SCOPED_TRACE(name);
    const fs::path p = tmp / name;
    std::string msg;
    try {
      read_image(p);
      ADD_FAILURE() << "no error";
    } catch (const BadImage& e) {
      msg = e.what();
    }
    EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
  }
  EXPECT_NE(error_of([&] { read_image(tmp / "cut_photo_420.jpg"); }).find("truncated JPEG"), std::string::npos);
}

// Found by fuzz/fuzz_image. stb_image 2.27 writes past its Huffman table when a JPEG's DHT segment
// declares more than 256 codes (nothings/stb issue 1289); decode_image refuses such a file before
// stb reads it, also when the table comes after fill bytes or after a scan.
TEST(Decode, JpegHuffmanTableOverCodesIsRefused) {
  auto dht = [](std::vector<uint8_t> counts, size_t symbols) {
    std::vector<uint8_t> seg{0xFF, 0xC4, 0, 0, 0x00};
    seg.insert(seg.end(), counts.begin(), counts.end());
    seg.insert(seg.end(), symbols, 0x01);
    const size_t len = seg.size() - 2;
    seg[2] = static_cast<uint8_t>(len >> 8);
    seg[3] = static_cast<uint8_t>(len & 0xFF);
    return seg;
  };
  std::vector<uint8_t> counts(16, 0);
  counts[14] = 255;
  counts[15] = 255;  // 510 codes
  for (const std::vector<uint8_t>& prefix : {std::vector<uint8_t>{0xFF, 0xD8}, std::vector<uint8_t>{0xFF, 0xFF, 0xD8},
                                             std::vector<uint8_t>{0xFF, 0xD8, 0xFF, 0xDA, 0, 3, 0, 0x12, 0x34}}) {
    std::vector<uint8_t> bytes = prefix;
    const std::vector<uint8_t> seg = dht(counts, 510);
    bytes.insert(bytes.end(), seg.begin(), seg.end());
    bytes.insert(bytes.end(), {0xFF, 0xD9});
    const std::string msg = error_of([&] { decode_image(bytes.data(), bytes.size(), "x.jpg"); });
    EXPECT_EQ(msg, "cannot decode image 'x.jpg': corrupt JPEG (a Huffman table holds more than 256 codes)");
  }
  // 256 codes is the most a table has: stb's own checks decide (here: no frame).
  std::vector<uint8_t> ok{0xFF, 0xD8};
  counts.assign(16, 0);
  counts[15] = 255;
  counts[14] = 1;
  const std::vector<uint8_t> seg = dht(counts, 256);
  ok.insert(ok.end(), seg.begin(), seg.end());
  ok.insert(ok.end(), {0xFF, 0xD9});
  const std::string msg = error_of([&] { decode_image(ok.data(), ok.size(), "ok.jpg"); });
  EXPECT_EQ(msg.find("Huffman table holds"), std::string::npos) << msg;
}

// Found by fuzz/fuzz_image: a scan that names a Huffman table no DHT segment defined made stb 2.27
// decode with uninitialised memory and index its symbols out of bounds. Refused, also for
// progressive scans; the files as written decode.
TEST(Decode, JpegScanWithUndefinedHuffmanTableIsRefused) {
  for (const char* name : {"photo_420.jpg", "photo_444.jpg"}) {
    SCOPED_TRACE(name);
    std::ifstream in(data_dir() / "images" / name, std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_GT(decode_image(bytes.data(), bytes.size(), name).width, 0);
    size_t sos = 2;
    while (sos + 1 < bytes.size() && !(bytes[sos] == 0xFF && bytes[sos + 1] == 0xDA)) ++sos;
    ASSERT_LT(sos + 1, bytes.size());
    for (unsigned c = 0; c < bytes[sos + 4]; ++c) bytes[sos + 6 + 2 * c] = 0x33;  // DC and AC table 3
    EXPECT_EQ(error_of([&] { decode_image(bytes.data(), bytes.size(), "x.jpg"); }),
              "cannot decode image 'x.jpg': corrupt JPEG (a scan uses a Huffman table that is not defined)");
  }
}

// Found by fuzz/fuzz_image: stb 2.27 reads "P5 -" as a PNM of width 0 and returns an empty image.
TEST(Decode, EmptyImageIsABadImage) {
  for (const std::string text : {"P5\n0 2\n255\n", "P5-\n16 12\n255\n", "P6\n3 0\n255\n"}) {
    SCOPED_TRACE(text);
    std::vector<uint8_t> bytes(text.begin(), text.end());
    bytes.resize(bytes.size() + 64, 7);
    try {
      const Image img = decode_image(bytes.data(), bytes.size(), "e.pgm");
      ADD_FAILURE() << "decoded " << img.width << " x " << img.height;
    } catch (const BadImage& e) {
      EXPECT_NE(std::string(e.what()).find("cannot decode image 'e.pgm'"), std::string::npos) << e.what();
    }
  }
}

// Found by fuzz/fuzz_image: stb 2.27 reads past the pixels of a 16-bit grey PGM (it converts the
// channels as 8-bit data, then the samples as 16-bit) and keeps the low byte of 16-bit PNM samples.
// 16-bit PNM is refused; 8-bit PNM decodes as before.
TEST(Decode, SixteenBitPnmIsRefused) {
  const std::vector<uint8_t> pgm = {'P', '5', '\n', '3', ' ', '1', '\n', '6', '5', '5', '3', '5', '\n',
                                    0x12, 0x34, 0xAB, 0xCD, 0xFF, 0x01};
  const std::vector<uint8_t> ppm = {'P', '6', '\n', '1', ' ', '1', '\n', '1', '0', '0', '0', '\n',
                                    0x01, 0x02, 0x03, 0x04, 0x05, 0x06};
  EXPECT_EQ(error_of([&] { decode_image(pgm.data(), pgm.size(), "g16.pgm"); }),
            "cannot decode image 'g16.pgm': 16-bit PNM (maxval over 255) is not supported");
  EXPECT_EQ(error_of([&] { decode_image(ppm.data(), ppm.size(), "c16.ppm"); }),
            "cannot decode image 'c16.ppm': 16-bit PNM (maxval over 255) is not supported");
  const std::vector<uint8_t> pgm8 = {'P', '5', ' ', '2', ' ', '1', ' ', '2', '5', '5', '\n', 7, 200};
  Image img = decode_image(pgm8.data(), pgm8.size(), "g8.pgm");
  EXPECT_EQ(img.rgb, (std::vector<uint8_t>{7, 7, 7, 200, 200, 200}));
  const std::vector<uint8_t> ppm8 = {'P', '6', ' ', '1', ' ', '1', ' ', '2', '5', '5', '\n', 1, 2, 3};
  img = decode_image(ppm8.data(), ppm8.size(), "c8.ppm");
  EXPECT_EQ(img.rgb, (std::vector<uint8_t>{1, 2, 3}));
}

// Found by fuzz/fuzz_image: stb 2.27 parses a PNM header's numbers into an int without a bound
// (signed overflow); a number of more than 9 digits is refused first, wherever it is.
TEST(Decode, PnmHeaderNumberTooLongIsRefused) {
  for (const std::string text :
       {"P5 44444444440 1 255\n", "P6\n1 # c\n44444444440\n255\n", "P5 1 1\n#\n444444444444\n"}) {
    SCOPED_TRACE(text);
    std::vector<uint8_t> bytes(text.begin(), text.end());
    bytes.resize(bytes.size() + 8, 1);
    EXPECT_EQ(error_of([&] { decode_image(bytes.data(), bytes.size(), "n.pgm"); }),
              "cannot decode image 'n.pgm': corrupt PNM (a header number of more than 9 digits)");
  }
  const std::string ok = "P5 000000002 1 255\n";  // nine digits: stb's own checks decide (here: fine)
  std::vector<uint8_t> bytes(ok.begin(), ok.end());
  bytes.insert(bytes.end(), {5, 6});
  EXPECT_EQ(decode_image(bytes.data(), bytes.size(), "ok.pgm").rgb, (std::vector<uint8_t>{5, 5, 5, 6, 6, 6}));
}

// Found by fuzz/fuzz_image: stb_image 2.27 grew its buffer to an IDAT chunk's claimed length
// (here 1.2 GB in a file of a few hundred bytes) before reading the chunk.
TEST(Decode, PngChunkLongerThanTheFileIsRefused) {
  std::ifstream in(data_dir() / "images" / "rgb_tall_large.png", std::ios::binary);
  std::vector<uint8_t> png((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(png.size(), 33u);
  const Image good = decode_image(png.data(), png.size(), "p.png");
  // Bytes after IEND are not chunks: stb never reads them, nor does the check.
  std::vector<uint8_t> trailing = png;
  trailing.insert(trailing.end(), {0xff, 0xff, 0xff, 0xff, 'I', 'D', 'A', 'T'});
  EXPECT_EQ(decode_image(trailing.data(), trailing.size(), "p.png").rgb, good.rgb);
  // The chunk after IHDR (8 + 25 bytes in) claims 0x48000000 bytes.
  std::vector<uint8_t> bad = png;
  const std::string type(bad.begin() + 37, bad.begin() + 41);
  bad[33] = 0x48, bad[34] = 0, bad[35] = 0, bad[36] = 0;
  EXPECT_EQ(error_of([&] { decode_image(bad.data(), bad.size(), "p.png"); }),
            "cannot decode image 'p.png': corrupt PNG (chunk '" + type + "' at byte 33 claims 1207959552 bytes but the file has " +
                std::to_string(png.size() - 41) + " left)");
}

TEST(Resize, IdentityAndWindowEqualsCrop) {
  const Image img = read_image(data_dir() / "images" / "rgb_tall_large.png");
  // Same size: a copy (Pillow skips both passes).
  EXPECT_EQ(resize_bicubic(img, img.width, img.height).rgb, img.rgb);
  // Computing a window equals resizing everything and cropping.
  const Image full = resize_bicubic(img, 71, 97);
  const Image win = resize_bicubic(img, 71, 97, 5, 9, 30, 40);
  for (int64_t y = 0; y < 40; ++y) {
    for (int64_t x = 0; x < 30 * 3; ++x) {
      ASSERT_EQ(win.rgb[y * 90 + x], full.rgb[((y + 9) * 71 + 5) * 3 + x]);
    }
  }
  // A solid colour stays solid through the filter (weights sum to one).
  Image solid;
  solid.width = 13;
  solid.height = 7;
  solid.rgb.assign(13 * 7 * 3, 77);
  for (uint8_t v : resize_bicubic(solid, 40, 3).rgb) ASSERT_EQ(v, 77);
}

}  // namespace
}  // namespace fusion::image_classification
