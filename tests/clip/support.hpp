#pragma once
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "error_of.hpp"

namespace fusion::clip::testing {

inline std::filesystem::path data_dir() { return FUSION_CLIP_TEST_DATA; }

/// A fresh, empty temporary folder, removed when the object goes.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    path_ = std::filesystem::temp_directory_path() /
            ("fusion_clip_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter()++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  static int& counter() {
    static int n = 0;
    return n;
  }
  std::filesystem::path path_;
};

/// The devices present: always the CPU, CUDA when LibTorch has it and a GPU is there.
inline std::vector<std::string> test_devices() {
  std::vector<std::string> d{"cpu"};
  if (at::hasCUDA()) d.push_back("cuda");
  return d;
}

/// Max |a − b| ≤ atol + rtol·|b| element-wise, with a message showing the worst difference.
inline ::testing::AssertionResult all_close(const at::Tensor& a, const at::Tensor& b, double atol = 1e-5,
                                            double rtol = 1e-5) {
  if (a.sizes() != b.sizes()) {
    return ::testing::AssertionFailure() << "shapes differ: " << a.sizes() << " vs " << b.sizes();
  }
  at::Tensor x = a.detach().to(at::kCPU, at::kDouble), y = b.detach().to(at::kCPU, at::kDouble);
  at::Tensor excess = (x - y).abs() - (atol + rtol * y.abs());
  if (excess.numel() == 0 || excess.max().item<double>() <= 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max |a - b| = " << (x - y).abs().max().item<double>()
                                       << " (atol " << atol << ", rtol " << rtol << ")";
}

using fusion::testing::error_of;

}  // namespace fusion::clip::testing
