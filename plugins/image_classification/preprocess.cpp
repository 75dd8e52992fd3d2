#include "preprocess.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "fusion/error.hpp"

namespace fusion::image_classification {
namespace {

// Pillow's fixed-point precision for 8-bit images: 32 bits minus 8 for the value and 2 for the
// filter's overshoot.
constexpr int kPrecisionBits = 32 - 8 - 2;

// The cubic convolution kernel with a = −0.5 (Keys 1981), support 2.
double bicubic(double x) {
  constexpr double a = -0.5;
  x = std::abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// The taps of output samples [first, first + count) of a resampling from `in_size` to `out_size`:
// for output i, the input range [start[i], start[i] + len[i]) and its fixed-point weights.
struct Taps {
  int64_t ksize = 0;
  std::vector<int64_t> start, len;
  std::vector<int32_t> weights;  // count × ksize
};

Taps make_taps(int64_t in_size, int64_t out_size, int64_t first, int64_t count) {
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  // When shrinking, the kernel is stretched by the scale: that is the antialiasing.
  const double filter_scale = std::max(scale, 1.0);
  const double support = 2.0 * filter_scale;
  Taps t;
  t.ksize = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  t.start.resize(count);
  t.len.resize(count);
  t.weights.assign(count * t.ksize, 0);
  std::vector<double> w(t.ksize);
  for (int64_t i = 0; i < count; ++i) {
    const double center = (static_cast<double>(first + i) + 0.5) * scale;
    // Truncation toward zero, as Pillow's (int) casts.
    int64_t lo = static_cast<int64_t>(center - support + 0.5);
    int64_t hi = static_cast<int64_t>(center + support + 0.5);
    lo = std::max<int64_t>(lo, 0);
    hi = std::min<int64_t>(hi, in_size);
    const int64_t n = hi - lo;
    double sum = 0.0;
    for (int64_t k = 0; k < n; ++k) {
      w[k] = bicubic((static_cast<double>(k + lo) - center + 0.5) / filter_scale);
      sum += w[k];
    }
    for (int64_t k = 0; k < n; ++k) {
      const double v = (sum != 0.0 ? w[k] / sum : w[k]) * static_cast<double>(1 << kPrecisionBits);
      // Round half away from zero, as Pillow's normalize_coeffs_8bpc.
      t.weights[i * t.ksize + k] = static_cast<int32_t>(v < 0 ? v - 0.5 : v + 0.5);
    }
    t.start[i] = lo;
    t.len[i] = n;
  }
  return t;
}

inline uint8_t clip8(int32_t acc) {
  const int32_t v = acc >> kPrecisionBits;  // floor: acc started at one half
  return static_cast<uint8_t>(std::clamp(v, 0, 255));
}

}  // namespace

std::pair<int64_t, int64_t> resized_size(int64_t width, int64_t height, int64_t shortest) {
  FUSION_ENSURE(width > 0 && height > 0 && shortest > 0, "resize: empty image or size");
  const bool wide = width >= height;
  const int64_t s = wide ? height : width, l = wide ? width : height;
  const auto other = static_cast<int64_t>(static_cast<double>(shortest * l) / static_cast<double>(s));
  return wide ? std::make_pair(other, shortest) : std::make_pair(shortest, other);
}

Image resize_bicubic(const Image& in, int64_t width, int64_t height, int64_t x0, int64_t y0,
                     int64_t out_w, int64_t out_h) {
  if (out_w < 0) out_w = width - x0;
  if (out_h < 0) out_h = height - y0;
  FUSION_ENSURE(x0 >= 0 && y0 >= 0 && out_w >= 0 && out_h >= 0 && x0 + out_w <= width &&
                    y0 + out_h <= height,
                "resize: window outside the resized image");
  FUSION_ENSURE(in.width > 0 && in.height > 0 &&
                    static_cast<int64_t>(in.rgb.size()) == in.width * in.height * 3,
                "resize: malformed image");

  // Only the input rows the vertical window reads go through the horizontal pass (as Pillow,
  // which resamples the rows of its box only).
  const bool vertical = height != in.height;
  Taps vt;
  int64_t r0 = y0, r1 = y0 + out_h;
  if (vertical) {
    vt = make_taps(in.height, height, y0, out_h);
    r0 = in.height;
    r1 = 0;
    for (int64_t y = 0; y < out_h; ++y) {
      if (vt.len[y] == 0) continue;
      r0 = std::min(r0, vt.start[y]);
      r1 = std::max(r1, vt.start[y] + vt.len[y]);
    }
    if (r1 < r0) r0 = r1 = 0;
  }

  // Horizontal pass (skipped, as in Pillow, when the width does not change): rows r0..r1 of
  // out_w pixels.
  Image mid;
  mid.width = out_w;
  mid.height = r1 - r0;
  mid.rgb.resize(static_cast<size_t>(out_w * mid.height * 3));
  if (width != in.width) {
    const Taps t = make_taps(in.width, width, x0, out_w);
    for (int64_t y = r0; y < r1; ++y) {
      const uint8_t* row = &in.rgb[y * in.width * 3];
      uint8_t* dst = &mid.rgb[(y - r0) * out_w * 3];
      for (int64_t x = 0; x < out_w; ++x) {
        const int32_t* k = &t.weights[x * t.ksize];
        const uint8_t* src = row + t.start[x] * 3;
        int32_t r = 1 << (kPrecisionBits - 1), g = r, b = r;
        for (int64_t j = 0; j < t.len[x]; ++j) {
          r += src[3 * j] * k[j];
          g += src[3 * j + 1] * k[j];
          b += src[3 * j + 2] * k[j];
        }
        dst[3 * x] = clip8(r);
        dst[3 * x + 1] = clip8(g);
        dst[3 * x + 2] = clip8(b);
      }
    }
  } else {
    for (int64_t y = r0; y < r1; ++y) {
      std::copy_n(&in.rgb[(y * in.width + x0) * 3], out_w * 3, &mid.rgb[(y - r0) * out_w * 3]);
    }
  }
  if (!vertical) return mid;

  // Vertical pass: out_h rows.
  Image out;
  out.width = out_w;
  out.height = out_h;
  out.rgb.resize(static_cast<size_t>(out_w * out_h * 3));
  const int64_t stride = out_w * 3;
  std::vector<int32_t> acc(stride);
  for (int64_t y = 0; y < out_h; ++y) {
    std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
    const int32_t* k = &vt.weights[y * vt.ksize];
    for (int64_t j = 0; j < vt.len[y]; ++j) {
      const uint8_t* src = &mid.rgb[(vt.start[y] - r0 + j) * stride];
      const int32_t kj = k[j];
      for (int64_t i = 0; i < stride; ++i) acc[i] += src[i] * kj;
    }
    uint8_t* dst = &out.rgb[y * stride];
    for (int64_t i = 0; i < stride; ++i) dst[i] = clip8(acc[i]);
  }
  return out;
}

Image resize_center_crop(const Image& image, int64_t size) {
  const auto [w, h] = resized_size(image.width, image.height, size);
  return resize_bicubic(image, w, h, (w - size) / 2, (h - size) / 2, size, size);
}

void normalize_into(const Image& crop, const PreprocessOptions& options, float* out) {
  const int64_t plane = crop.width * crop.height;
  // transformers rescales in float64 and casts to float32, then normalises in float32.
  float table[3][256];
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) {
      const auto scaled = static_cast<float>(static_cast<double>(v) * (1.0 / 255.0));
      table[c][v] = (scaled - options.mean[c]) / options.std[c];
    }
  }
  const uint8_t* px = crop.rgb.data();
  for (int64_t i = 0; i < plane; ++i) {
    out[i] = table[0][px[3 * i]];
    out[plane + i] = table[1][px[3 * i + 1]];
    out[2 * plane + i] = table[2][px[3 * i + 2]];
  }
}

at::Tensor preprocess(const Image& image, const PreprocessOptions& options) {
  const Image crop = resize_center_crop(image, options.image_size);
  at::Tensor out = at::empty({3, options.image_size, options.image_size}, at::kFloat);
  normalize_into(crop, options, out.data_ptr<float>());
  return out;
}

}  // namespace fusion::image_classification
