// Merged models written as they are produced (detail::OutputFile): with an output folder set (as the
// host sets it when it saves the models), the streamed merges write each model into an unnamed file
// of that folder and a save links it. Checked here: the models equal those of the flat-buffer path
// bit for bit (every golden case, and sweeps); the linked file holds exactly the bytes a plain save
// writes, and is the very file the model's tensors view; a model written to after it was made, or
// saved a second time, is written as before; nothing is left in the folder of a model never saved.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "fusion/checkpoint_pool.hpp"
#include "fusion/checkpoint_stream.hpp"
#include "fusion/merging.hpp"
#include "fusion/safetensors.hpp"
#include "support.hpp"
#include "task_arithmetic.hpp"
#include "ties_merging.hpp"

using namespace fusion;
using namespace fusion::methods;
namespace fs = std::filesystem;

namespace {

// The inode of the file mapped at `p` in this process (/proc/self/maps), 0 when none.
uint64_t mapped_inode(const void* p) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  const auto addr = reinterpret_cast<uintptr_t>(p);
  while (std::getline(maps, line)) {
    std::istringstream in(line);
    std::string range, perms, offset, dev;
    uint64_t inode = 0;
    in >> range >> perms >> offset >> dev >> inode;
    const size_t dash = range.find('-');
    const uintptr_t lo = std::stoull(range.substr(0, dash), nullptr, 16);
    const uintptr_t hi = std::stoull(range.substr(dash + 1), nullptr, 16);
    if (addr >= lo && addr < hi) return inode;
  }
  return 0;
}

uint64_t inode_of(const fs::path& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

std::string bytes_of_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

StateDict cloned(const StateDict& sd) {
  StateDict out;
  for (const auto& [k, t] : sd) out.set(k, t.clone());
  return out;
}

// Sets the output folder for one scope, as the host does around a run.
struct OutputFolder {
  explicit OutputFolder(const fs::path& p) { fusion::detail::set_output_folder(p); }
  ~OutputFolder() { fusion::detail::set_output_folder(fs::path()); }
};

class WrittenAsProduced : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("fusion_baselines_" + std::string(info->name()) + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;

  // Pretrained + 3 experts with tensors of odd sizes (so chunks and pages do not line up), an F32
  // tensor larger than one chunk of every merge, and an integer tensor.
  std::unique_ptr<CheckpointModelPool> pool() {
    StringMap models;
    for (int m = 0; m < 4; ++m) {
      at::manual_seed(100 + m);
      StateDict sd;
      sd.set("b.weight", at::randn({301, 257}));
      sd.set("a.bias", at::randn({7}));
      sd.set("c.big", at::randn({70001}));
      sd.set("d.count", at::randn({5}).to(at::kLong).to(at::kInt));
      sd.set("position_ids", at::arange(9, at::kLong));
      const std::string name = m == 0 ? "pretrained" : "expert_" + std::to_string(m);
      save_safetensors(dir_ / (name + ".safetensors"), sd);
      if (m > 0) models.emplace_back(name, (dir_ / (name + ".safetensors")).string());
    }
    std::map<std::string, Value> values{{"pretrained", (dir_ / "pretrained.safetensors").string()}, {"models", models}};
    return std::make_unique<CheckpointModelPool>(
        Context().with_config(Config::validate("modelpool", values, schema_of<CheckpointPoolOptions>())));
  }
  fs::path run_dir() {
    const fs::path d = dir_ / "run";
    fs::create_directories(d);
    return d;
  }
  std::vector<StateDict> models_of(Algorithm& method, ModelPool& p) {
    Result r = method.run(p, nullptr, Context());
    std::vector<StateDict> out;
    for (ResultModel& m : r.models) out.push_back(m.make()->parameters());
    return out;
  }
  // Runs `method` without and with an output folder: the models are equal bit for bit, and each
  // written model, saved, is linked (the file its tensors view) with a plain save's bytes.
  void check(Algorithm& method) {
    auto p = pool();
    const std::vector<StateDict> flat = models_of(method, *p);
    const fs::path run = run_dir();
    OutputFolder folder(run);
    const std::vector<StateDict> written = models_of(method, *p);
    ASSERT_EQ(written.size(), flat.size());
    for (size_t k = 0; k < flat.size(); ++k) {
      SCOPED_TRACE("model " + std::to_string(k));
      ASSERT_EQ(written[k].keys(), flat[k].keys());
      for (const auto& [key, t] : flat[k]) EXPECT_TRUE(written[k].at(key).equal(t)) << key;
      const void* data = written[k].at("b.weight").data_ptr();
      ASSERT_NE(mapped_inode(data), 0u) << "not written as produced";
      const fs::path linked = run / ("linked_" + std::to_string(k) + ".safetensors");
      const fs::path plain = run / ("plain_" + std::to_string(k) + ".safetensors");
      save_safetensors(linked, written[k]);
      save_safetensors(plain, cloned(written[k]));
      EXPECT_EQ(inode_of(linked), mapped_inode(data)) << "the save wrote the model again";
      EXPECT_NE(inode_of(plain), mapped_inode(data));
      EXPECT_EQ(bytes_of_file(linked), bytes_of_file(plain));
    }
  }
};

TEST_F(WrittenAsProduced, TaskArithmetic) {
  TaskArithmetic method(TaskArithmeticOptions{0.3, {}});
  check(method);
}

TEST_F(WrittenAsProduced, TaskArithmeticSweepMakesEveryModelInOnePass) {
  TaskArithmetic method(TaskArithmeticOptions{0.3, std::vector<double>{0.1, 0.5, 1.0}});
  check(method);
}

TEST_F(WrittenAsProduced, WeightedAverage) {
  auto p = pool();
  const ModelPtr flat = weighted_sum_of_experts(*p, Context(), {0.2, 0.3, 0.5});
  OutputFolder folder(run_dir());
  const ModelPtr written = weighted_sum_of_experts(*p, Context(), {0.2, 0.3, 0.5});
  ASSERT_NE(mapped_inode(written->parameters().at("c.big").data_ptr()), 0u);
  for (const auto& [key, t] : flat->parameters()) EXPECT_TRUE(written->parameters().at(key).equal(t)) << key;
}

TEST_F(WrittenAsProduced, TiesMergingWithRemovedKeys) {
  for (const std::string merge : {"sum", "mean", "max"}) {
    SCOPED_TRACE(merge);
    TiesMergingOptions o;
    o.threshold = 30;
    o.merge_func = merge;
    o.remove_keys = {"a\\..*"};
    TiesMerging method(o);
    check(method);
  }
}

TEST_F(WrittenAsProduced, StreamedTiesFindsTheInMemoryThresholdsAndModel) {
  // The streamed TIES (a sample's bracket, pass A's counts and candidates, pass B's fused merge with
  // its AVX2 form where the CPU has it, over several threads) against the in-memory TIES (the exact
  // radix select over whole task vectors, ATen's ops) on the same models: the same thresholds bit
  // for bit, and the same merged model (to float32 rounding: ATen's θ₀ + λτ may fuse the
  // multiply-add).
  at::set_num_threads(2);
  auto p = pool();
  std::vector<std::pair<std::string, StateDict>> experts;
  for (const std::string& name : p->expert_names()) experts.emplace_back(name, cloned(p->load(name)->parameters()));
  auto memory = fusion::testing::MemoryModelPool::from_state_dicts(cloned(p->pretrained()->parameters()), experts);
  for (const std::string merge : {"sum", "mean", "max"}) {
    for (const double threshold : {20.0, 50.0, 97.0}) {
      SCOPED_TRACE(merge + " " + std::to_string(threshold));
      TiesMergingOptions o;
      o.threshold = threshold;
      o.merge_func = merge;
      o.scaling_factor = 0.7;
      const Result streamed = TiesMerging(o).run(*p, nullptr, Context());
      const Result in_memory = TiesMerging(o).run(*memory, nullptr, Context());
      ASSERT_TRUE(streamed.info.contains("trim_select_fallbacks")) << "the streamed path did not run";
      EXPECT_EQ(streamed.info.at("trim_select_fallbacks").get<int>(), 0);  // the bracket held each threshold
      EXPECT_EQ(streamed.info.at("trim_thresholds").dump(), in_memory.info.at("trim_thresholds").dump());
      EXPECT_EQ(fusion::testing::state_dict_difference(streamed.models.at(0).make()->parameters(),
                                                       in_memory.models.at(0).make()->parameters(), 1e-6, 1e-6),
                "");
    }
  }
}

TEST_F(WrittenAsProduced, StreamedTiesKernelsAllGiveTheSameBits) {
  // A CPU runs the best form of the streamed TIES kernels (pass A's scan, pass B's fused merge) it
  // has: AVX-512, AVX2, or the portable form, which the vector forms also run on the last few
  // elements of each chunk. Each forced here, over whole chunks: the same thresholds and the same
  // model, bit for bit, as the portable form's.
  using fusion::methods::TiesKernels;
  std::vector<std::pair<std::string, TiesKernels>> vector_forms;
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_cpu_supports("avx2")) vector_forms.emplace_back("avx2", TiesKernels::Avx2);
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f")) vector_forms.emplace_back("avx512", TiesKernels::Best);
#endif
  if (vector_forms.empty()) GTEST_SKIP() << "no AVX2 here: the portable kernels are the ones every test runs";
  at::set_num_threads(2);
  auto p = pool();
  struct Reset {
    ~Reset() { fusion::methods::ties_use_kernels(TiesKernels::Best); }
  } reset;
  for (const std::string merge : {"sum", "mean", "max"}) {
    for (const double threshold : {20.0, 97.0}) {
      TiesMergingOptions o;
      o.threshold = threshold;
      o.merge_func = merge;
      o.scaling_factor = 0.7;
      fusion::methods::ties_use_kernels(TiesKernels::Portable);
      const Result portable = TiesMerging(o).run(*p, nullptr, Context());
      ASSERT_TRUE(portable.info.contains("trim_select_fallbacks")) << "the streamed path did not run";
      const StateDict b = portable.models.at(0).make()->parameters();
      for (const auto& [name, kernels] : vector_forms) {
        SCOPED_TRACE(merge + " " + std::to_string(threshold) + " " + name);
        fusion::methods::ties_use_kernels(kernels);
        const Result vec = TiesMerging(o).run(*p, nullptr, Context());
        EXPECT_EQ(portable.info.at("trim_thresholds").dump(), vec.info.at("trim_thresholds").dump());
        const StateDict a = vec.models.at(0).make()->parameters();
        ASSERT_EQ(a.size(), b.size());
        for (const auto& [key, t] : a) EXPECT_TRUE(b.at(key).equal(t)) << key;
      }
    }
  }
}

TEST_F(WrittenAsProduced, StreamedTiesNamesANonFiniteWeightTheSampleDoesNotRead) {
  // The streamed TIES's passes read without read()'s own check: a NaN or ±Inf in θ₀ or θₜ makes
  // |θₜ − θ₀| one, which the scan and the fused merge notice, and read() then names it. Here at an
  // element of 'c.big' that the sample (blocks of 1024 every 65536 elements of the flat vector) does
  // not read, with each form of the kernels (AVX-512, AVX2, portable: as the CPU has them): each run
  // refused with the loader's message.
  at::set_num_threads(2);
  struct Reset {
    ~Reset() { fusion::methods::ties_use_kernels(fusion::methods::TiesKernels::Best); }
  } reset;
  auto p = pool();
  const int64_t at_element = 20000;  // flat position 77364 + 20000: between two sample blocks
  for (const std::string model : {"expert_2", "pretrained"}) {
    for (const float value : {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
      for (const auto kernels : {fusion::methods::TiesKernels::Best, fusion::methods::TiesKernels::Avx2,
                                 fusion::methods::TiesKernels::Portable}) {
        SCOPED_TRACE(model + " " + std::to_string(value) + " kernels " + std::to_string(static_cast<int>(kernels)));
        const fs::path file = dir_ / (model + ".safetensors");
        StateDict sd = cloned(load_safetensors(file));
        const at::Tensor original = sd.at("c.big").clone();
        sd.at("c.big")[at_element] = value;
        save_safetensors(file, sd);
        fusion::methods::ties_use_kernels(kernels);
        TiesMergingOptions o;
        o.threshold = 20;
        const std::string option = model == "pretrained" ? "modelpool.pretrained" : "modelpool.models." + model;
        EXPECT_EQ(fusion::testing::error_of([&] { TiesMerging(o).run(*p, nullptr, Context()); }),
                  option + ": " + file.string() + ": tensor 'c.big': F32 element " + std::to_string(at_element) +
                      " holds " + (std::isnan(value) ? "nan" : "-inf") + " (weights must be finite)");
        sd.set("c.big", original);
        save_safetensors(file, sd);
      }
    }
  }
  // Finite weights whose difference overflows (θₜ − θ₀ = +Inf) are no error: the streamed TIES
  // gives the in-memory TIES's thresholds, and its +Inf there. (A new pool: one that has loaded a
  // model keeps it.)
  fusion::methods::ties_use_portable_kernels(false);
  p = pool();
  StateDict pre = cloned(load_safetensors(dir_ / "pretrained.safetensors"));
  StateDict two = cloned(load_safetensors(dir_ / "expert_2.safetensors"));
  pre.at("c.big")[at_element] = -3e38f;
  two.at("c.big")[at_element] = 3e38f;
  save_safetensors(dir_ / "pretrained.safetensors", pre);
  save_safetensors(dir_ / "expert_2.safetensors", two);
  std::vector<std::pair<std::string, StateDict>> experts;
  for (const std::string& name : p->expert_names()) experts.emplace_back(name, cloned(p->load(name)->parameters()));
  auto memory = fusion::testing::MemoryModelPool::from_state_dicts(cloned(p->pretrained()->parameters()), experts);
  TiesMergingOptions o;
  o.threshold = 20;
  const Result streamed = TiesMerging(o).run(*p, nullptr, Context());
  const Result in_memory = TiesMerging(o).run(*memory, nullptr, Context());
  ASSERT_TRUE(streamed.info.contains("trim_select_fallbacks")) << "the streamed path did not run";
  EXPECT_EQ(streamed.info.at("trim_thresholds").dump(), in_memory.info.at("trim_thresholds").dump());
  const float merged = streamed.models.at(0).make()->parameters().at("c.big")[at_element].item<float>();
  EXPECT_EQ(merged, std::numeric_limits<float>::infinity());
  EXPECT_EQ(in_memory.models.at(0).make()->parameters().at("c.big")[at_element].item<float>(), merged);
}

TEST_F(WrittenAsProduced, AModelChangedAfterItWasMadeIsSavedAsItIsNow) {
  auto p = pool();
  OutputFolder folder(run_dir());
  TaskArithmetic method(TaskArithmeticOptions{0.3, {}});
  StateDict sd = models_of(method, *p)[0];
  const std::string before = bytes_of_file([&] {
    const fs::path f = dir_ / "before.safetensors";
    save_safetensors(f, cloned(sd));
    return f;
  }());
  sd.at("c.big")[70000].add_(1.0);  // a private copy of that page: the file does not change
  const fs::path out = dir_ / "after.safetensors";
  save_safetensors(out, sd);
  EXPECT_NE(inode_of(out), mapped_inode(sd.at("c.big").data_ptr()));
  const StateDict saved = load_safetensors(out);
  EXPECT_TRUE(saved.at("c.big").equal(sd.at("c.big")));
  EXPECT_NE(bytes_of_file(out), before);
}

TEST_F(WrittenAsProduced, ASecondSaveWritesACopy) {
  auto p = pool();
  OutputFolder folder(run_dir());
  TaskArithmetic method(TaskArithmeticOptions{0.3, {}});
  const StateDict sd = models_of(method, *p)[0];
  save_safetensors(dir_ / "one.safetensors", sd);
  save_safetensors(dir_ / "two.safetensors", sd);
  EXPECT_EQ(inode_of(dir_ / "one.safetensors"), mapped_inode(sd.at("c.big").data_ptr()));
  EXPECT_NE(inode_of(dir_ / "two.safetensors"), inode_of(dir_ / "one.safetensors"));
  EXPECT_EQ(bytes_of_file(dir_ / "one.safetensors"), bytes_of_file(dir_ / "two.safetensors"));
}

TEST_F(WrittenAsProduced, NothingIsLeftOfAModelNeverSaved) {
  auto p = pool();
  const fs::path run = run_dir();
  {
    OutputFolder folder(run);
    TaskArithmetic method(TaskArithmeticOptions{0.3, std::vector<double>{0.1, 0.2}});
    const std::vector<StateDict> models = models_of(method, *p);
    ASSERT_NE(mapped_inode(models[1].at("c.big").data_ptr()), 0u);
  }
  EXPECT_TRUE(fs::is_empty(run));
}

// The byte offset in `path` of tensor `name`'s data: 8 + the header's length + its begin.
uint64_t data_offset_of(const fs::path& path, const std::string& name) {
  std::ifstream in(path, std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);  // little-endian host
  const TensorInfo* info = SafetensorsFile(path).find(name);
  return info == nullptr ? 0 : 8 + n + info->begin;
}

// A float32 buffer of `n` elements whose first lies `d` bytes past `offset` modulo 4 KiB, inside
// `storage` (a NaN on each side, to find a write outside it).
float* placed(std::vector<float>& storage, size_t n, uint64_t offset, size_t d) {
  storage.assign(n + 2048, std::numeric_limits<float>::quiet_NaN());
  const auto base = reinterpret_cast<uintptr_t>(storage.data()) + 4;  // room for the NaN before
  const uintptr_t want = (offset + d) % 4096;
  return reinterpret_cast<float*>(base + (want - base % 4096 + 4096) % 4096);
}

// The reader and the writer copy through a staging buffer where the kernel's copy would have its
// destination 1-31 bytes past its source modulo 4 KiB (slow on some CPUs; bench/merge's
// copy_distance). Every distance gives the same bytes: reads of a tensor larger than one staging
// piece, whole and from an odd element, into buffers at every 4-byte distance from the file; and
// writes, merged as produced and saved, from sources at distances inside and outside that window.
TEST_F(WrittenAsProduced, EveryDistanceBetweenBufferAndFileGivesTheSameBytes) {
  auto p = pool();
  const auto stream = fusion::detail::CheckpointStream::open(*p, {"pretrained"});
  ASSERT_NE(stream, nullptr);
  size_t big = 0;
  while (stream->tensors()[big].name != "c.big") ++big;
  const at::Tensor expected = p->pretrained()->parameters().at("c.big").contiguous();
  const int64_t n = expected.numel();
  const float* want = expected.data_ptr<float>();
  const uint64_t in_offset = data_offset_of(dir_ / "pretrained.safetensors", "c.big");
  ASSERT_GT(in_offset, 0u);
  std::vector<float> storage;
  for (size_t d = 0; d < 4096; d += 4) {
    SCOPED_TRACE("read, distance " + std::to_string(d));
    float* dst = placed(storage, static_cast<size_t>(n), in_offset, d);
    stream->read_unchecked(0, big, 0, n, dst);
    ASSERT_EQ(std::memcmp(dst, want, static_cast<size_t>(n) * 4), 0);
    ASSERT_TRUE(std::isnan(dst[-1]) && std::isnan(dst[n]));
    const int64_t from = 4097;  // an odd element: the file offset moves, and the distance with it
    float* part = placed(storage, static_cast<size_t>(n - from), in_offset + from * 4, d);
    stream->read(0, big, from, n, part);
    ASSERT_EQ(std::memcmp(part, want + from, static_cast<size_t>(n - from) * 4), 0);
    ASSERT_TRUE(std::isnan(part[-1]) && std::isnan(part[n - from]));
  }

  // Writes. Where c.big's data lies in a merged file, and in a saved one: where a plain save of
  // the base model puts it.
  const StateDict& base = p->pretrained()->parameters();
  const fs::path layout = dir_ / "layout.safetensors";
  save_safetensors(layout, base, {{"format", "pt"}});
  const uint64_t out_offset = data_offset_of(layout, "c.big");
  ASSERT_GT(out_offset, 0u);
  const std::string plain = bytes_of_file(layout);
  OutputFolder folder(run_dir());
  for (size_t d : {size_t{0}, size_t{4}, size_t{16}, size_t{28}, size_t{60}, size_t{64}, size_t{2048}}) {
    SCOPED_TRACE("write, distance " + std::to_string(d));
    // The file offset lies d bytes past the source: the source sits 4096 - d bytes past it.
    float* src = placed(storage, static_cast<size_t>(n), out_offset, (4096 - d) % 4096);
    std::memcpy(src, want, static_cast<size_t>(n) * 4);
    auto file = fusion::detail::OutputFile::create(*stream, base);
    ASSERT_NE(file, nullptr);
    for (size_t i = 0; i < stream->tensors().size(); ++i) {
      if (!stream->is_float(i)) continue;
      const at::Tensor t = base.at(stream->tensors()[i].name).contiguous();
      file->write(i, 0, t.numel(), i == big ? src : t.data_ptr<float>());
    }
    StateDict merged = file->finish();
    EXPECT_TRUE(merged.at("c.big").equal(expected));
    const fs::path linked = dir_ / "run" / ("linked_" + std::to_string(d) + ".safetensors");
    save_safetensors(linked, merged);
    EXPECT_EQ(bytes_of_file(linked), plain);
    // A plain save (FileWriter) of a model whose c.big lies at that distance from its file offset.
    StateDict moved;
    for (const auto& [key, t] : base) {
      moved.set(key, key == "c.big" ? at::from_blob(src, {n}, at::kFloat) : t);
    }
    const fs::path saved = dir_ / "run" / ("saved_" + std::to_string(d) + ".safetensors");
    save_safetensors(saved, moved, {{"format", "pt"}});
    EXPECT_EQ(bytes_of_file(saved), plain);
  }
}

TEST_F(WrittenAsProduced, NoFolderNoFile) {
  auto p = pool();
  std::vector<std::string> names{"pretrained", "expert_1"};
  const auto stream = fusion::detail::CheckpointStream::open(*p, names);
  ASSERT_NE(stream, nullptr);
  EXPECT_EQ(fusion::detail::OutputFile::create(*stream, p->pretrained()->parameters()), nullptr);
  OutputFolder folder(run_dir());
  EXPECT_NE(fusion::detail::OutputFile::create(*stream, p->pretrained()->parameters()), nullptr);
}

}  // namespace
