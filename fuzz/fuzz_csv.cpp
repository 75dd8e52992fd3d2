// libFuzzer target for the CSV manifests of the image_classification plugin (Dataset::open with
// DataFormat::Csv): a header naming `path` and `label` among other columns, RFC 4180 quoting, a
// UTF-8 BOM, CRLF line ends, integer labels bounded by the task's class count.
//
// Input: the manifest itself. It is opened twice, without a class count and with 3 classes (the
// seeds' tasks have 3); the image files it names are not read (Dataset::open does not read them).
// A malformed manifest must end in fusion::Error (one line); a crash, a sanitizer report or another
// exception is a bug.
#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>

#include "dataset.hpp"
#include "fuzz_support.hpp"

namespace ic = fusion::image_classification;
namespace fz = fusion::fuzz;

namespace {

void run(const std::string& path, std::optional<int64_t> num_classes) {
  try {
    const ic::Dataset d = ic::Dataset::open(path, ic::DataFormat::Csv, "fuzz", num_classes);
    // Invariants of an accepted manifest.
    if (d.size() <= 0) fz::fail("an accepted manifest lists no samples");
    int64_t largest = -1;
    for (int64_t i = 0; i < d.size(); ++i) {
      const int64_t label = d.label(i);
      if (label < 0) fz::fail("negative label accepted: " + std::to_string(label));
      if (num_classes && label >= *num_classes) fz::fail("label beyond num_classes accepted");
      largest = std::max(largest, label);
      if (d.sample_name(i).empty()) fz::fail("empty sample path accepted");
    }
    if (d.label_count() != largest + 1) fz::fail("label_count is not 1 + the largest label");
  } catch (const fusion::Error& e) {
    fz::check_error(e);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const fz::MemFile file("fuzz_csv");
  const std::string path = file.write(data, size);
  run(path, std::nullopt);
  run(path, 3);
  return 0;
}
