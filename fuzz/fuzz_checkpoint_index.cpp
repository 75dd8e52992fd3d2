// libFuzzer target for sharded checkpoints (sdk/src/safetensors.cpp: the index
// model.safetensors.index.json and its "weight_map", checked against the shards' headers, through
// read_checkpoint_layout, which model pools use to compare experts, and load_safetensors).
//
// Input: the index. It is written into a scratch folder beside the two shards of the test
// checkpoint tests/sdk/data/sharded (copied there once), so the weight map's shard names and tensor
// names meet real files; the shards' own parsing is fuzz_safetensors' job. A bad index must end in
// fusion::Error (one line); a crash, a sanitizer report or another exception is a bug, and so is an
// accepted checkpoint whose layout and loaded tensors disagree.
#include <cstdint>
#include <filesystem>
#include <set>
#include <string>

#include "checkpoint_layout.hpp"
#include "fusion/safetensors.hpp"
#include "fuzz_support.hpp"

#ifndef FUSION_FUZZ_SHARDED_DATA
#error "FUSION_FUZZ_SHARDED_DATA: the test checkpoint's folder (fuzz/CMakeLists.txt sets it)"
#endif

namespace fs = std::filesystem;
namespace fz = fusion::fuzz;

namespace {

const fs::path& checkpoint_dir() {
  static const fs::path dir = [] {
    const fs::path d = fz::scratch_dir() / "checkpoint";
    fs::create_directories(d);
    for (const char* shard : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}) {
      fz::write_file(d / shard, fz::read_file(fs::path(FUSION_FUZZ_SHARDED_DATA) / shard));
    }
    return d;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fs::path& dir = checkpoint_dir();
  fz::write_file(dir / "model.safetensors.index.json", fz::as_text(data, size));
  try {
    if (fusion::resolve_checkpoint(dir) != dir / "model.safetensors.index.json")
      fz::fail("the folder does not resolve to its index");
    const std::vector<fusion::TensorInfo> layout = fusion::detail::read_checkpoint_layout(dir);
    const fusion::StateDict sd = fusion::load_safetensors(dir, at::kCPU, at::kFloat);
    // Invariants of an accepted checkpoint.
    std::set<std::string> names;
    for (const auto& t : layout) {
      if (!names.insert(t.name).second) fz::fail("tensor listed twice in the layout: " + t.name);
    }
    if (layout.empty() || sd.size() != layout.size()) fz::fail("layout and loaded tensors differ in number");
    for (const auto& t : layout) {
      if (!sd.contains(t.name)) fz::fail("layout lists a tensor that was not loaded: " + t.name);
      if (sd.at(t.name).sizes().vec() != t.shape) fz::fail("loaded shape differs from the layout: " + t.name);
    }
  } catch (const fusion::Error& e) {
    fz::check_error(e);
  }
  return 0;
}
