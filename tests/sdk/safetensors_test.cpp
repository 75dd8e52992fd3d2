// Safetensors I/O (safetensors.hpp): golden files written by make_safetensors_golden.py (values
// and byte-exact writing), round trips of every dtype, sharded folders, atomic writes, and every
// corrupt-file case, each checked for a one-line message naming the file and the problem.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <limits>

#include "fusion/safetensors.hpp"
#include "support.hpp"

namespace {

using fusion::SafetensorsFile;
using fusion::StateDict;
using fusion::testing::expect_error;
using fusion::testing::make_file;
using fusion::testing::read_bytes;
using fusion::testing::write_bytes;
namespace fs = std::filesystem;

const fs::path kData = FUSION_SDK_TEST_DATA;

nlohmann::json golden() {
  std::ifstream in(kData / "golden.json");
  return nlohmann::json::parse(in);
}

std::string hex_of(const at::Tensor& t) {
  static const char* digits = "0123456789abcdef";
  const at::Tensor c = t.contiguous();
  const auto* p = static_cast<const uint8_t*>(c.data_ptr());
  std::string out;
  for (size_t i = 0; i < c.nbytes(); ++i) {
    out += digits[p[i] >> 4];
    out += digits[p[i] & 15];
  }
  return out;
}

double expected_value(const nlohmann::json& v) {
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "nan") return std::numeric_limits<double>::quiet_NaN();
    return s == "inf" ? std::numeric_limits<double>::infinity() : -std::numeric_limits<double>::infinity();
  }
  return v.get<double>();
}

/// Checks `sd` against the golden description of one file: keys, dtypes, shapes, bytes, values.
void check_against_golden(const StateDict& sd, const nlohmann::json& tensors) {
  ASSERT_EQ(sd.size(), tensors.size());
  for (const auto& [name, want] : tensors.items()) {
    SCOPED_TRACE(name);
    const at::Tensor* t = sd.find(name);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(fusion::safetensors_dtype(t->scalar_type()), want["dtype"].get<std::string>());
    EXPECT_EQ(t->sizes().vec(), want["shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(hex_of(*t), want["hex"].get<std::string>());
    const at::Tensor flat = t->reshape({-1});
    ASSERT_EQ(flat.numel(), static_cast<int64_t>(want["values"].size()));
    for (int64_t i = 0; i < flat.numel(); ++i) {
      if (t->is_floating_point()) {
        const double got = flat[i].item<double>();
        const double exp = expected_value(want["values"][i]);
        if (std::isnan(exp)) {
          EXPECT_TRUE(std::isnan(got)) << i;
        } else {
          EXPECT_EQ(got, exp) << i;
        }
      } else {
        EXPECT_EQ(flat[i].item<int64_t>(), want["values"][i].get<int64_t>()) << i;
      }
    }
  }
}

class Safetensors : public fusion::testing::TempDirTest {};

// ---------------------------------------------------------------------------------------------
// Golden files

TEST_F(Safetensors, ReadsGoldenFilesWithExactValues) {
  const nlohmann::json g = golden();
  for (const char* file : {"all_dtypes.safetensors", "metadata.safetensors"}) {
    SCOPED_TRACE(file);
    SafetensorsFile f(kData / file);
    check_against_golden(f.read_all(), g[file]["tensors"]);
    EXPECT_EQ(f.metadata(), (g[file]["metadata"].get<std::map<std::string, std::string>>()));
    // tensors() is in file order: offsets increase and cover the data section.
    uint64_t pos = 0;
    for (const auto& info : f.tensors()) {
      EXPECT_EQ(info.begin, pos) << info.name;
      pos = info.end;
    }
    const std::string bytes = read_bytes(kData / file);
    uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    EXPECT_EQ(8 + n + pos, bytes.size());
    check_against_golden(fusion::load_safetensors(kData / file), g[file]["tensors"]);
  }
}

TEST_F(Safetensors, GoldenFileOrderAndHeader) {
  // The writer's order rule: descending dtype alignment, then name.
  SafetensorsFile f(kData / "all_dtypes.safetensors");
  std::vector<std::string> names;
  for (const auto& info : f.tensors()) names.push_back(info.name);
  const std::vector<std::string> want = {"i64",        "position_ids", "f64",   "F32_upper", "f32.a",
                                         "f32.b",      "f32.empty",    "f32.scalar", "i32", "bf16",
                                         "f16",        "i16",          "i8",    "u8",        "bool"};
  EXPECT_EQ(names, want);
  const fusion::TensorInfo* s = f.find("f32.scalar");
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(s->shape.empty());
  EXPECT_EQ(s->end - s->begin, 4u);
  EXPECT_EQ(f.tensor("f32.scalar").dim(), 0);
  EXPECT_FLOAT_EQ(f.tensor("f32.scalar").item<float>(), 3.25f);
  EXPECT_EQ(f.tensor("f32.empty").sizes().vec(), (std::vector<int64_t>{0, 3}));
}

TEST_F(Safetensors, WritesGoldenBytesExactly) {
  for (const char* file : {"all_dtypes.safetensors", "metadata.safetensors",
                           "sharded/model-00001-of-00002.safetensors",
                           "sharded/model-00002-of-00002.safetensors"}) {
    SCOPED_TRACE(file);
    SafetensorsFile f(kData / file);
    const StateDict sd = f.read_all();
    // Insertion order must not matter: write the tensors reversed.
    StateDict reversed;
    for (auto it = sd.items().rbegin(); it != sd.items().rend(); ++it) reversed.set(it->first, it->second);
    const fs::path out = dir_ / "out.safetensors";
    fusion::save_safetensors(out, reversed, f.metadata());
    EXPECT_EQ(read_bytes(out), read_bytes(kData / file));
  }
}

TEST_F(Safetensors, ReadsShardedFolder) {
  const nlohmann::json g = golden();
  const StateDict sd = fusion::load_safetensors(kData / "sharded");
  check_against_golden(sd, g["sharded"]["tensors"]);
  // Shards in file-name order, each in file order (I64 before F32 in the second shard).
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"embed.weight", "layer.0.bias", "layer.0.weight",
                                                  "position_ids", "layer.1.weight"}));
  EXPECT_EQ(fusion::resolve_checkpoint(kData / "sharded"), kData / "sharded" / "model.safetensors.index.json");
  const StateDict half = fusion::load_safetensors(kData / "sharded", at::kCPU, at::kHalf);
  EXPECT_EQ(half.at("embed.weight").scalar_type(), at::kHalf);
  EXPECT_EQ(half.at("position_ids").scalar_type(), at::kLong);
}

// ---------------------------------------------------------------------------------------------
// Round trips

StateDict every_dtype() {
  at::manual_seed(7);
  StateDict sd;
  sd.set("f64", at::randn({3, 2}, at::kDouble));
  sd.set("f32", at::randn({4, 5}));
  sd.set("f16", at::randn({2, 3}).to(at::kHalf));
  sd.set("bf16", at::randn({5}).to(at::kBFloat16));
  sd.set("i64", at::randint(-1000000, 1000000, {3}, at::kLong));
  sd.set("i32", at::randint(-100000, 100000, {2, 2}, at::kInt));
  sd.set("i16", at::randint(-30000, 30000, {4}, at::kShort));
  sd.set("i8", at::randint(-128, 127, {4}, at::kChar));
  sd.set("u8", at::randint(0, 255, {4}, at::kByte));
  sd.set("bool", at::randint(0, 2, {6}, at::kLong).to(at::kBool));
  sd.set("scalar", at::tensor(1.5, at::kFloat).reshape({}));
  sd.set("empty", at::zeros({0, 4}));
  sd.set("transposed", at::arange(6, at::kFloat).reshape({2, 3}).t());  // not contiguous
  return sd;
}

TEST_F(Safetensors, RoundTripsEveryDtype) {
  const StateDict sd = every_dtype();
  const fs::path p = dir_ / "rt.safetensors";
  fusion::save_safetensors(p, sd);
  SafetensorsFile f(p);
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  const StateDict back = f.read_all();
  ASSERT_EQ(back.size(), sd.size());
  for (const auto& [k, v] : sd) {
    SCOPED_TRACE(k);
    ASSERT_TRUE(back.contains(k));
    EXPECT_EQ(back.at(k).scalar_type(), v.scalar_type());
    EXPECT_EQ(back.at(k).sizes(), v.sizes());
    EXPECT_TRUE(at::equal(back.at(k), v));
    EXPECT_EQ(f.find(k)->dtype, fusion::safetensors_dtype(v.scalar_type()));
  }
  // Layout: u64 header length (multiple of 8), JSON starting with __metadata__, then the data.
  const std::string bytes = read_bytes(p);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + static_cast<uint64_t>(sd.nbytes()));
  const std::string start = R"({"__metadata__":{"format":"pt"},"i64":{"dtype":"I64","shape":[3],)";
  EXPECT_EQ(bytes.substr(8, start.size()), start);
  EXPECT_EQ(bytes.find(' ', 8), bytes.substr(0, 8 + n).find_last_not_of(' ') + 1);  // spaces only pad
}

TEST_F(Safetensors, ReadAllConvertsFloatsOnly) {
  const fs::path p = dir_ / "rt.safetensors";
  fusion::save_safetensors(p, every_dtype());
  const StateDict h = SafetensorsFile(p).read_all(at::kCPU, at::kFloat);
  EXPECT_EQ(h.at("f64").scalar_type(), at::kFloat);
  EXPECT_EQ(h.at("f16").scalar_type(), at::kFloat);
  EXPECT_EQ(h.at("bf16").scalar_type(), at::kFloat);
  EXPECT_EQ(h.at("i64").scalar_type(), at::kLong);
  EXPECT_EQ(h.at("bool").scalar_type(), at::kBool);
  EXPECT_TRUE(at::equal(h.at("bf16"), every_dtype().at("bf16").to(at::kFloat)));
}

TEST_F(Safetensors, TensorsAreOwnedCopies) {
  const fs::path p = dir_ / "rt.safetensors";
  fusion::save_safetensors(p, every_dtype());
  at::Tensor t;
  {
    SafetensorsFile f(p);
    t = f.tensor("f32");
    t.add_(1.0);  // writable
  }
  // Still valid after the file is closed (and the mapping gone).
  EXPECT_TRUE(at::allclose(t, every_dtype().at("f32") + 1.0));
  expect_error([&] { SafetensorsFile(p).tensor("nope"); }, {p.string(), "'nope'"});
}

TEST_F(Safetensors, MetadataIsKeptAndFormatDefaultsToPt) {
  const fs::path p = dir_ / "m.safetensors";
  StateDict sd;
  sd.set("x", at::ones({2}));
  fusion::save_safetensors(p, sd, {{"author", "me"}});
  EXPECT_EQ(SafetensorsFile(p).metadata(),
            (std::map<std::string, std::string>{{"author", "me"}, {"format", "pt"}}));
  fusion::save_safetensors(p, sd, {{"format", "np"}});
  EXPECT_EQ(SafetensorsFile(p).metadata(), (std::map<std::string, std::string>{{"format", "np"}}));
}

TEST_F(Safetensors, ReadAllDoesNotKeepTheMappingResident) {
  // 64 MiB of f32: after read_all the tensors are anonymous memory; the file's pages must not stay
  // in our resident set as well (that would double a checkpoint's footprint while merging).
  auto rss_file_kb = [] {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("RssFile:", 0) == 0) return std::stol(line.substr(8));
    }
    return -1L;
  };
  const fs::path p = dir_ / "big.safetensors";
  {
    StateDict sd;
    for (int i = 0; i < 4; ++i) sd.set("t" + std::to_string(i), at::full({4 << 20}, i, at::kFloat));
    fusion::save_safetensors(p, sd);
  }
  const long before = rss_file_kb();
  ASSERT_GE(before, 0);
  SafetensorsFile f(p);
  const StateDict sd = f.read_all();
  const long after = rss_file_kb();
  EXPECT_FLOAT_EQ(sd.at("t3")[12345].item<float>(), 3.0f);
  EXPECT_LT(after - before, 16 * 1024) << "file-backed RSS grew by " << (after - before) << " kB";
}

// ---------------------------------------------------------------------------------------------
// Atomic writing

TEST_F(Safetensors, WriteLeavesNoTemporaryFiles) {
  fusion::save_safetensors(dir_ / "a.safetensors", every_dtype());
  fusion::write_file_atomic(dir_ / "b.txt", "hello\n");
  fusion::write_file_atomic(dir_ / "b.txt", "again\n");  // replaces
  EXPECT_EQ(read_bytes(dir_ / "b.txt"), "again\n");
  EXPECT_EQ(listing(dir_), (std::vector<std::string>{"a.safetensors", "b.txt"}));
}

TEST_F(Safetensors, FailedWriteKeepsTheOldFileAndCleansUp) {
  const fs::path p = dir_ / "model.safetensors";
  StateDict good;
  good.set("x", at::ones({3}));
  fusion::save_safetensors(p, good);
  const std::string old = read_bytes(p);
  StateDict bad = good;
  bad.set("z", at::ones({2}, at::kComplexFloat));
  expect_error([&] { fusion::save_safetensors(p, bad); }, {p.string(), "'z'", "ComplexFloat"});
  EXPECT_EQ(read_bytes(p), old);
  EXPECT_EQ(listing(dir_), (std::vector<std::string>{"model.safetensors"}));
}

TEST_F(Safetensors, UnwritableFolderIsNamed) {
  write_bytes(dir_ / "file", "x");
  // A "folder" that is a regular file: no file can be created in it, even as root.
  expect_error([&] { fusion::write_file_atomic(dir_ / "file" / "out.txt", "x"); },
               {(dir_ / "file").string(), "not a folder"});
  expect_error([&] { fusion::save_safetensors(dir_ / "missing" / "m.safetensors", StateDict()); },
               {(dir_ / "missing").string(), "does not exist"});
  if (::geteuid() != 0) {
    fs::create_directories(dir_ / "ro");
    fs::permissions(dir_ / "ro", fs::perms::owner_read | fs::perms::owner_exec);
    expect_error([&] { fusion::write_file_atomic(dir_ / "ro" / "out.txt", "x"); },
                 {(dir_ / "ro").string(), "Permission denied"});
    fs::permissions(dir_ / "ro", fs::perms::owner_all);
    EXPECT_TRUE(fs::is_empty(dir_ / "ro"));
  }
  expect_error([&] { fusion::write_file_atomic(dir_, "x"); }, {dir_.string(), "folder"});
}

TEST_F(Safetensors, DtypeNames) {
  const std::vector<std::pair<std::string, at::ScalarType>> all = {
      {"F64", at::kDouble}, {"F32", at::kFloat}, {"F16", at::kHalf}, {"BF16", at::kBFloat16},
      {"I64", at::kLong},   {"I32", at::kInt},   {"I16", at::kShort}, {"I8", at::kChar},
      {"U8", at::kByte},    {"BOOL", at::kBool}};
  for (const auto& [name, type] : all) {
    EXPECT_EQ(fusion::torch_dtype(name), type);
    EXPECT_EQ(fusion::safetensors_dtype(type), name);
  }
  expect_error([] { fusion::torch_dtype("F8_E4M3"); }, {"F8_E4M3", "float8", "LibTorch 1.13"});
  expect_error([] { fusion::torch_dtype("F8_E5M2"); }, {"F8_E5M2", "float8"});
  expect_error([] { fusion::torch_dtype("U16"); }, {"U16", "not supported"});
  expect_error([] { fusion::torch_dtype("Q4"); }, {"unknown dtype 'Q4'"});
  expect_error([] { fusion::safetensors_dtype(at::kComplexDouble); }, {"ComplexDouble"});
}

// ---------------------------------------------------------------------------------------------
// Corrupt and missing files: one line naming the file and the problem

class CorruptFile : public fusion::testing::TempDirTest {
 protected:
  /// Writes `bytes` and expects opening + reading it to fail with the path and `fragments`.
  void expect_corrupt(const std::string& bytes, std::vector<std::string> fragments) {
    const fs::path p = dir_ / "bad.safetensors";
    write_bytes(p, bytes);
    fragments.push_back(p.string());
    expect_error([&] { SafetensorsFile(p).read_all(); }, fragments);
    expect_error([&] { fusion::load_safetensors(p); }, fragments);
  }
  static std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                           uint64_t b, uint64_t e) {
    return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
           std::to_string(b) + "," + std::to_string(e) + "]}";
  }
};

TEST_F(CorruptFile, MissingFileAndFolder) {
  expect_error([&] { SafetensorsFile(dir_ / "nope.safetensors"); },
               {(dir_ / "nope.safetensors").string(), "no such file"});
  expect_error([&] { fusion::load_safetensors(dir_ / "nope"); }, {(dir_ / "nope").string(), "no such file"});
  expect_error([&] { fusion::load_safetensors(dir_); },
               {dir_.string(), "neither model.safetensors nor model.safetensors.index.json"});
  expect_error([&] { SafetensorsFile f(dir_); }, {dir_.string(), "folder"});
}

TEST_F(CorruptFile, TooShortForTheHeaderLength) {
  expect_corrupt("", {"0 bytes", "too short"});
  expect_corrupt("abc", {"3 bytes", "too short"});
}

TEST_F(CorruptFile, HeaderLengthPastTheEnd) {
  expect_corrupt(make_file("{}", "", 1000), {"header length 1000", "past the end", "10 bytes"});
  expect_corrupt(make_file("{}", "", std::numeric_limits<int64_t>::max()), {"past the end"});
}

TEST_F(CorruptFile, InvalidJson) {
  expect_corrupt(make_file("{\"a\":", ""), {"not valid JSON"});
  expect_corrupt(make_file("{\"a\":{}}garbage", ""), {"not valid JSON"});
  expect_corrupt(make_file("\n\x01{{", ""), {"not valid JSON"});  // control bytes escaped in the message
  expect_corrupt(make_file("[1,2]", ""), {"must be a JSON object", "array"});
}

TEST_F(CorruptFile, BadMetadata) {
  expect_corrupt(make_file(R"({"__metadata__":{"a":1}})", ""), {"__metadata__", "'a'", "number"});
  expect_corrupt(make_file(R"({"__metadata__":[1]})", ""), {"__metadata__", "array"});
}

TEST_F(CorruptFile, IncompleteEntries) {
  expect_corrupt(make_file(R"({"x":{"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')),
                 {"'x'", "no \"dtype\""});
  expect_corrupt(make_file(R"({"x":{"dtype":"F32","data_offsets":[0,4]}})", std::string(4, '\0')),
                 {"'x'", "no \"shape\""});
  expect_corrupt(make_file(R"({"x":{"dtype":"F32","shape":[1]}})", std::string(4, '\0')),
                 {"'x'", "no \"data_offsets\""});
  expect_corrupt(make_file(R"({"x":3})", ""), {"'x'", "must be an object"});
  expect_corrupt(make_file("{" + entry("x", "F32", "[-1]", 0, 4) + "}", std::string(4, '\0')),
                 {"'x'", "non-negative"});
  expect_corrupt(make_file("{" + entry("x", "F32", "[1.5]", 0, 4) + "}", std::string(4, '\0')),
                 {"'x'", "non-negative integers"});
  expect_corrupt(make_file(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", std::string(4, '\0')),
                 {"'x'", "data_offsets"});
}

TEST_F(CorruptFile, UnknownDtype) {
  expect_corrupt(make_file("{" + entry("w", "F33", "[1]", 0, 4) + "}", std::string(4, '\0')),
                 {"'w'", "unknown dtype 'F33'"});
  expect_corrupt(make_file("{" + entry("w", "F8_E4M3", "[4]", 0, 4) + "}", std::string(4, '\0')),
                 {"'w'", "F8_E4M3", "float8"});
}

TEST_F(CorruptFile, OffsetsOutsideTheData) {
  expect_corrupt(make_file("{" + entry("w", "F32", "[2]", 0, 8) + "}", std::string(4, '\0')),
                 {"'w'", "[0, 8]", "outside the data section", "4 bytes"});
  expect_corrupt(make_file("{" + entry("w", "F32", "[1]", 8, 4) + "}", std::string(8, '\0')),
                 {"'w'", "[8, 4]", "end before"});
  expect_corrupt(make_file("{" + entry("w", "F32", "[1]", 18446744073709551612ULL, 18446744073709551615ULL) +
                               "}", std::string(8, '\0')),
                 {"'w'", "outside the data section"});
}

TEST_F(CorruptFile, OverlappingOffsets) {
  expect_corrupt(make_file("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[2]", 4, 12) + "}",
                           std::string(12, '\0')),
                 {"'b'", "overlap", "'a'", "[0, 8]", "[4, 12]"});
  expect_corrupt(make_file("{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "F32", "[1]", 8, 12) + "}",
                           std::string(12, '\0')),
                 {"'b'", "holes"});
  expect_corrupt(make_file("{" + entry("a", "F32", "[1]", 0, 4) + "}", std::string(12, '\0')),
                 {"cover 4 bytes", "12"});
}

TEST_F(CorruptFile, ShapeDisagreesWithBytes) {
  expect_corrupt(make_file("{" + entry("w", "F32", "[3]", 0, 8) + "}", std::string(8, '\0')),
                 {"'w'", "shape [3]", "12 bytes", "[0, 8]", "hold 8"});
  expect_corrupt(make_file("{" + entry("w", "F64", "[4611686018427387904,4]", 0, 8) + "}", std::string(8, '\0')),
                 {"'w'", "too large"});
}

TEST_F(CorruptFile, TruncatedFile) {
  const std::string good = read_bytes(kData / "all_dtypes.safetensors");
  expect_corrupt(good.substr(0, good.size() - 3), {"'bool'", "outside the data section", "truncated"});
  expect_corrupt(good.substr(0, 100), {"past the end", "100 bytes"});
  expect_corrupt(good.substr(0, 8), {"past the end"});
}

TEST_F(CorruptFile, InvalidBoolBytes) {
  const fs::path p = dir_ / "bad.safetensors";
  write_bytes(p, make_file("{" + entry("mask", "BOOL", "[2]", 0, 2) + "}", std::string("\x01\x07", 2)));
  SafetensorsFile f(p);  // the header is fine
  expect_error([&] { f.tensor("mask"); }, {p.string(), "'mask'", "byte 7"});
}

TEST_F(CorruptFile, NamesWithControlCharactersStayOnOneLine) {
  expect_corrupt(make_file(R"({"a\nb":{"dtype":"XX","shape":[],"data_offsets":[0,0]}})", ""),
                 {"'a\\x0ab'", "unknown dtype"});
}

// ---------------------------------------------------------------------------------------------
// Sharded folders that disagree with their index

class BadShards : public fusion::testing::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    fs::copy(kData / "sharded", dir_ / "m", fs::copy_options::recursive);
    index_ = dir_ / "m" / "model.safetensors.index.json";
  }
  void write_index(const nlohmann::json& weight_map) {
    write_bytes(index_, nlohmann::json{{"metadata", nlohmann::json::object()}, {"weight_map", weight_map}}.dump());
  }
  nlohmann::json weight_map() const {
    std::ifstream in(index_);
    return nlohmann::json::parse(in)["weight_map"];
  }
  fs::path index_;
};

TEST_F(BadShards, MissingShard) {
  fs::remove(dir_ / "m" / "model-00002-of-00002.safetensors");
  expect_error([&] { fusion::load_safetensors(dir_ / "m"); },
               {index_.string(), "'model-00002-of-00002.safetensors'", "does not exist"});
}

TEST_F(BadShards, TensorNotWhereTheIndexSays) {
  nlohmann::json wm = weight_map();
  wm["layer.1.weight"] = "model-00001-of-00002.safetensors";
  write_index(wm);
  expect_error([&] { fusion::load_safetensors(dir_ / "m"); },
               {index_.string(), "'layer.1.weight'", "'model-00001-of-00002.safetensors'", "does not hold it"});
}

TEST_F(BadShards, ShardHoldsUnlistedTensor) {
  nlohmann::json wm = weight_map();
  wm.erase("position_ids");
  write_index(wm);
  expect_error([&] { fusion::load_safetensors(dir_ / "m"); },
               {index_.string(), "'position_ids'", "does not list"});
}

TEST_F(BadShards, BadIndexJson) {
  write_bytes(index_, "{\"weight_map\": ");
  expect_error([&] { fusion::load_safetensors(dir_ / "m"); }, {index_.string(), "not valid JSON"});
  write_bytes(index_, "{\"metadata\": {}}");
  expect_error([&] { fusion::load_safetensors(dir_ / "m"); }, {index_.string(), "weight_map"});
}

TEST_F(BadShards, CorruptShardNamesTheShard) {
  const fs::path shard = dir_ / "m" / "model-00001-of-00002.safetensors";
  const std::string bytes = read_bytes(shard);
  write_bytes(shard, bytes.substr(0, bytes.size() - 1));
  expect_error([&] { fusion::load_safetensors(dir_ / "m"); }, {shard.string(), "outside the data section"});
}

TEST_F(BadShards, SingleFileWinsOverIndex) {
  StateDict sd;
  sd.set("only", at::ones({1}));
  fusion::save_safetensors(dir_ / "m" / "model.safetensors", sd);
  EXPECT_EQ(fusion::load_safetensors(dir_ / "m").keys(), (std::vector<std::string>{"only"}));
  EXPECT_EQ(fusion::resolve_checkpoint(dir_ / "m"), dir_ / "m" / "model.safetensors");
}

}  // namespace
