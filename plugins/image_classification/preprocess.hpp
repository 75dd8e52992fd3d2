#pragma once
#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <utility>

#include "image.hpp"

namespace fusion::image_classification {

/// CLIP's image preprocessing (Hugging Face's CLIPImageProcessor, as FusionBench uses it).
struct PreprocessOptions {
  /// Shortest edge after resizing, and the side of the centre crop. Default 224.
  int64_t image_size = 224;
  /// Per-channel mean subtracted after scaling to [0, 1]. Default: CLIP's.
  std::array<float, 3> mean{0.48145466f, 0.4578275f, 0.40821073f};
  /// Per-channel standard deviation divided by. Default: CLIP's.
  std::array<float, 3> std{0.26862954f, 0.26130258f, 0.27577711f};
};

/// The size (width, height) Hugging Face resizes a width × height image to: the shortest edge
/// becomes `shortest`, the other int(shortest · long / short) (truncated, as transformers'
/// get_resize_output_image_size).
std::pair<int64_t, int64_t> resized_size(int64_t width, int64_t height, int64_t shortest);

/// Resizes `image` to `width × height` with PIL's antialiased bicubic filter (a = −0.5, support
/// scaled by the downscaling factor), bit for bit as Pillow resizes an 8-bit RGB image: fixed-point
/// weights with 22 fractional bits, a horizontal pass then a vertical pass, each rounded and
/// clamped to 0..255. Only the output window [x0, x0 + out_w) × [y0, y0 + out_h) is computed
/// (default: all), which equals resizing and then cropping.
Image resize_bicubic(const Image& image, int64_t width, int64_t height, int64_t x0 = 0, int64_t y0 = 0,
                     int64_t out_w = -1, int64_t out_h = -1);

/// Resize of the shortest edge to `size` then centre crop `size × size` (top-left at
/// ((W − size) / 2, (H − size) / 2), floored, as transformers' center_crop): an 8-bit RGB image.
Image resize_center_crop(const Image& image, int64_t size);

/// Writes the CHW float32 pixel values of `crop` (size × size RGB) into `out` (3 · size² floats):
/// float32(v · (1/255)), minus mean, divided by std, computed in float32 as transformers does.
void normalize_into(const Image& crop, const PreprocessOptions& options, float* out);

/// The whole pipeline for one decoded image: a [3, S, S] float32 CPU tensor.
at::Tensor preprocess(const Image& image, const PreprocessOptions& options = {});

}  // namespace fusion::image_classification
