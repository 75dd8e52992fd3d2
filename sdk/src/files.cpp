// Atomic folder writes, random suffixes (files.hpp); seeds (seed.hpp); dtype names (dtype.hpp);
// the training log (train_log.hpp).
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>

#include "fusion/dtype.hpp"
#include "fusion/error.hpp"
#include "fusion/files.hpp"
#include "fusion/seed.hpp"
#include "fusion/train_log.hpp"

namespace fusion {

namespace fs = std::filesystem;

std::string random_suffix() {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t seed = std::random_device{}() ^ (static_cast<uint64_t>(::getpid()) << 32);
  const uint64_t x = splitmix64(seed ^ (counter.fetch_add(1) * 0x9E3779B97F4A7C15ULL));
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08llx", static_cast<unsigned long long>(x & 0xffffffffULL));
  return buf;
}

void write_directory_atomic(const fs::path& dir_in, const std::function<void(const fs::path&)>& fill) {
  const fs::path dir = dir_in.has_filename() ? dir_in : dir_in.parent_path();
  FUSION_ENSURE(!dir.empty() && dir.filename() != "." && dir.filename() != "..",
                "cannot write the output folder '", dir_in.string(), "': not a folder name");
  const fs::path parent = dir.parent_path().empty() ? fs::path(".") : dir.parent_path();
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec || !fs::is_directory(parent)) {
    FUSION_FAIL("cannot write the output folder ", dir.string(), ": cannot create ", parent.string(), ": ",
                ec ? ec.message() : std::string("not a folder"));
  }
  const bool replace = fs::exists(dir, ec);
  FUSION_ENSURE(!replace || fs::is_directory(dir, ec), "cannot write the output folder ", dir.string(),
                ": a file of that name exists");

  fs::path tmp;
  for (int attempt = 0;; ++attempt) {
    tmp = parent / (dir.filename().string() + ".tmp-" + random_suffix());
    if (::mkdir(tmp.c_str(), 0777) == 0) break;
    const int err = errno;
    FUSION_ENSURE(err == EEXIST && attempt < 100, "cannot write the output folder ", dir.string(), ": ",
                  std::strerror(err));
  }
  try {
    fill(tmp);
    if (!replace) {
      if (::rename(tmp.c_str(), dir.c_str()) != 0)
        FUSION_FAIL("cannot write the output folder ", dir.string(), ": rename: ", std::strerror(errno));
    } else if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dir.c_str(), RENAME_EXCHANGE) == 0) {
      fs::remove_all(tmp, ec);  // tmp now holds the previous contents
    } else {
      const int why = errno;
      FUSION_ENSURE(why == EINVAL || why == ENOSYS || why == ENOTSUP, "cannot replace the output folder ",
                    dir.string(), ": ", std::strerror(why));
      // No atomic exchange on this file system: move the old folder aside, then the new one in.
      const fs::path old = parent / (dir.filename().string() + ".old-" + random_suffix());
      if (::rename(dir.c_str(), old.c_str()) != 0)
        FUSION_FAIL("cannot replace the output folder ", dir.string(), ": ", std::strerror(errno));
      if (::rename(tmp.c_str(), dir.c_str()) != 0) {
        const int err = errno;
        ::rename(old.c_str(), dir.c_str());
        FUSION_FAIL("cannot replace the output folder ", dir.string(), ": ", std::strerror(err));
      }
      fs::remove_all(old, ec);
    }
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

// ---------------------------------------------------------------------------------------------
// Seeds

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t derive_seed(uint64_t seed, uint64_t a, uint64_t b) {
  return splitmix64(splitmix64(splitmix64(seed) ^ a) ^ (b * 0xD1B54A32D192ED03ull));
}

// ---------------------------------------------------------------------------------------------
// dtype names

namespace {
struct DtypeName {
  at::ScalarType type;
  const char* name;
};
constexpr DtypeName kDtypeNames[] = {
    {at::kFloat, "float32"}, {at::kHalf, "float16"}, {at::kBFloat16, "bfloat16"}, {at::kDouble, "float64"},
    {at::kLong, "int64"},    {at::kInt, "int32"},    {at::kShort, "int16"},       {at::kChar, "int8"},
    {at::kByte, "uint8"},    {at::kBool, "bool"},
};
}  // namespace

std::string dtype_name(at::ScalarType t) {
  for (const auto& d : kDtypeNames)
    if (d.type == t) return d.name;
  FUSION_FAIL("dtype ", c10::toString(t), " has no name here (float32, float16, bfloat16, float64, int64, "
              "int32, int16, int8, uint8, bool)");
}

at::ScalarType parse_dtype(const std::string& name, const std::string& where) {
  for (const auto& d : kDtypeNames)
    if (name == d.name) return d.type;
  FUSION_FAIL(where, ": unknown dtype \"", name, "\"");
}

// ---------------------------------------------------------------------------------------------
// TrainLog

TrainLog::TrainLog(fs::path path, std::vector<std::string> columns, int64_t keep_through_step)
    : path_(std::move(path)), columns_(columns.size()) {
  FUSION_ENSURE(!columns.empty(), "TrainLog: no columns");
  if (path_.empty()) return;
  std::vector<std::string> kept;
  if (keep_through_step >= 0) {
    std::ifstream in(path_);
    std::string line;
    bool header = true;
    while (std::getline(in, line)) {
      if (header) {
        header = false;
        continue;
      }
      const auto comma = line.find(',');
      try {
        if (std::stoll(line.substr(0, comma)) <= keep_through_step) kept.push_back(line);
      } catch (const std::exception&) {
        // a torn last line of a stopped run: dropped
      }
    }
  }
  out_.open(path_, std::ios::trunc);
  FUSION_ENSURE(out_.good(), "cannot write the training log ", path_.string());
  for (size_t i = 0; i < columns.size(); ++i) out_ << (i ? "," : "") << columns[i];
  out_ << '\n';
  for (const auto& l : kept) out_ << l << '\n';
  out_.flush();
  out_.precision(8);
  rows_ = kept.size();
}

TrainLog::~TrainLog() = default;

void TrainLog::add(const std::vector<Cell>& row) {
  FUSION_ENSURE(row.size() == columns_, "TrainLog: ", row.size(), " values for ", columns_, " columns");
  ++rows_;
  if (path_.empty()) return;
  for (size_t i = 0; i < row.size(); ++i) {
    if (i) out_ << ',';
    std::visit([&](const auto& v) { out_ << v; }, row[i]);
  }
  out_ << '\n';
  out_.flush();
  FUSION_ENSURE(out_.good(), "cannot write the training log ", path_.string());
}

}  // namespace fusion
