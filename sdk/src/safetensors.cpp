// Safetensors I/O (safetensors.hpp): a memory-mapped, validating reader and an atomic writer whose
// output is byte-identical to Python's `safetensors.torch.save_file`.
//
// The format (https://github.com/huggingface/safetensors): an 8-byte little-endian u64 N, then N
// bytes of UTF-8 JSON (the header), then the data section. The header maps each tensor name to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data section) and may
// hold "__metadata__", a string → string map. The data section is entirely covered by the tensors,
// without holes or overlaps.
//
// The writer follows the reference serialiser, `prepare()` in safetensors/src/tensor.rs:
//   - tensors sorted by dtype, in descending order of the Rust `Dtype` enum (which lists dtypes by
//     increasing alignment: BOOL < U8 < I8 < I16 < F16 < BF16 < I32 < F32 < F64 < I64), then by
//     name (byte-wise ascending);
//   - the header serialised with serde_json::to_string (compact: no spaces or newlines),
//     "__metadata__" first, each entry's fields in the order dtype, shape, data_offsets;
//   - the header padded with spaces (b' ') to a multiple of 8 bytes;
//   - then each tensor's bytes, in that order, little-endian.
// The reader applies the same checks as the reference reader (`read_metadata` / `validate`).
//
// This file assumes a little-endian host (x86-64, aarch64): tensors are copied byte for byte.
#include "fusion/safetensors.hpp"

#include <ATen/Parallel.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <unordered_map>

#include "background_flush.hpp"
#include "checkpoint_layout.hpp"
#include "fusion/checkpoint_stream.hpp"
#include "fusion/error.hpp"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "fusion's safetensors I/O assumes a little-endian host");

namespace fusion {

namespace fs = std::filesystem;

namespace {

/// The largest header the reference reader accepts (MAX_HEADER_SIZE in tensor.rs).
constexpr uint64_t kMaxHeaderSize = 100'000'000;

struct DtypeSpec {
  const char* name;
  at::ScalarType type;
  size_t itemsize;
  int rank;  ///< position in the Rust `Dtype` enum (increasing alignment); the writer sorts by it
};

// Ranks as in the current `enum Dtype` of safetensors/src/tensor.rs; only their relative order
// matters, and it is the same in every released version.
constexpr DtypeSpec kDtypes[] = {
    {"BOOL", at::kBool, 1, 0},   {"U8", at::kByte, 1, 4},     {"I8", at::kChar, 1, 5},
    {"I16", at::kShort, 2, 11},  {"F16", at::kHalf, 2, 13},   {"BF16", at::kBFloat16, 2, 14},
    {"I32", at::kInt, 4, 15},    {"F32", at::kFloat, 4, 17},  {"F64", at::kDouble, 8, 19},
    {"I64", at::kLong, 8, 20},
};

const DtypeSpec* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

const DtypeSpec* find_dtype(at::ScalarType t) {
  for (const auto& d : kDtypes) {
    if (t == d.type) return &d;
  }
  return nullptr;
}

std::string supported_list() {
  std::string out;
  for (const auto& d : kDtypes) {
    if (!out.empty()) out += ' ';
    out += d.name;
  }
  return out;
}

/// Why a dtype string is refused (for torch_dtype and the reader).
std::string dtype_problem(const std::string& name) {
  static const std::set<std::string> float8 = {"F8_E4M3", "F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ",
                                               "F8_E5M2FNUZ"};
  static const std::set<std::string> other_known = {"U16", "U32", "U64", "C64", "F4", "F6_E2M3",
                                                    "F6_E3M2"};
  if (float8.count(name)) {
    return "dtype " + name + " (float8) is not supported: LibTorch 1.13 has no float8 type";
  }
  if (other_known.count(name)) {
    return "dtype " + name + " is not supported: LibTorch 1.13 has no such type (fusion reads " +
           supported_list() + ")";
  }
  return "unknown dtype '" + name + "' (expected one of " + supported_list() + ")";
}

/// `s` made safe for a one-line message: control bytes escaped, length capped.
std::string printable(const std::string& s, size_t max_len = 200) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max_len; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > max_len) out += "...";
  return out;
}

[[noreturn]] void fail_file(const fs::path& path, const std::string& what) {
  throw Error(printable(path.string(), 4096) + ": " + printable(what, 4096));
}

std::string errno_text(int err) { return std::strerror(err); }

std::string qname(const std::string& name) { return "'" + printable(name) + "'"; }

size_t page_size() {
  static const size_t size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return size;
}

// Copies between a user buffer and the page cache (pread, pwrite, write).
//
// The kernel's copy runs at a fifth to a half of its speed when the destination lies 1 to 31
// bytes past the source modulo 4 KiB: measured on AMD EPYC, which copies with `rep movsb`; the
// store and the load after it alias (`bench/merge/copy_distance.cpp`: reading into a buffer 16
// bytes past the file offset, 1.5 GB/s against 7.4 GB/s; writing, 1.6 against 3.1). Where the user
// buffer lies is up to malloc, and where a tensor's data starts is up to the checkpoint's header,
// so any read or write of a merge can meet it. Such a copy goes through a buffer of the thread's
// placed half a page from the file offset instead: one more copy, in cache, at memcpy's speed.
constexpr size_t kAliasPage = 4096;
constexpr size_t kStageBytes = size_t{256} << 10;

/// Whether a copy to `dst` from `src` has its destination 1 to 31 bytes past its source modulo
/// 4 KiB (slow from 4 to 28 in steps of 4, the distances an F32 buffer can have; 32 and more ran
/// at full speed).
bool copy_aliases(uintptr_t dst, uintptr_t src) {
  const uintptr_t d = (dst - src) % kAliasPage;
  return d != 0 && d < 32;
}

/// A thread's reusable buffer of `bytes`, whose first byte lies at page offset `phase` (mod 4 KiB):
/// one buffer per `Tag` and thread.
template <class Tag>
uint8_t* thread_buffer(size_t bytes, uint64_t phase) {
  struct Buffer {
    std::unique_ptr<uint8_t[]> data;
    size_t bytes = 0;
  };
  thread_local Buffer buffer;
  if (buffer.bytes < bytes) {
    buffer.data.reset(new uint8_t[bytes + 2 * kAliasPage]);
    buffer.bytes = bytes;
  }
  const auto base = (reinterpret_cast<uintptr_t>(buffer.data.get()) + kAliasPage - 1) / kAliasPage * kAliasPage;
  return reinterpret_cast<uint8_t*>(base + phase % kAliasPage);
}

/// The thread's staging buffer (read_unaliased, write_unaliased): kStageBytes at page offset `phase`.
struct StagingTag;
uint8_t* staging_buffer(uint64_t phase) { return thread_buffer<StagingTag>(kStageBytes, phase); }

/// Reads `n` bytes at file offset `offset` into `dst` with read_at(buffer, count, offset), which
/// reads all `count` bytes: straight into `dst`, or through the staging buffer where that copy
/// would alias (copy_aliases).
template <class ReadAt>
void read_unaliased(uint8_t* dst, size_t n, uint64_t offset, const ReadAt& read_at) {
  if (n < kAliasPage || !copy_aliases(reinterpret_cast<uintptr_t>(dst), offset)) {
    read_at(dst, n, offset);
    return;
  }
  uint8_t* stage = staging_buffer(offset + kAliasPage / 2);
  for (size_t done = 0; done < n;) {
    const size_t m = std::min(kStageBytes, n - done);
    read_at(stage, m, offset + done);
    std::memcpy(dst + done, stage, m);
    done += m;
  }
}

/// Writes `n` bytes from `src` at file offset `offset` with write_at(buffer, count, offset), which
/// writes all `count` bytes: straight from `src`, or through the staging buffer where that copy
/// would alias (copy_aliases).
template <class WriteAt>
void write_unaliased(const uint8_t* src, size_t n, uint64_t offset, const WriteAt& write_at) {
  if (n < kAliasPage || !copy_aliases(offset, reinterpret_cast<uintptr_t>(src))) {
    write_at(src, n, offset);
    return;
  }
  uint8_t* stage = staging_buffer(offset + kAliasPage / 2);
  for (size_t done = 0; done < n;) {
    const size_t m = std::min(kStageBytes, n - done);
    std::memcpy(stage, src + done, m);
    write_at(stage, m, offset + done);
    done += m;
  }
}

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }

nlohmann::json parse_json_file(const fs::path& path, const std::string& what) {
  std::string text;
  {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail_file(path, "cannot open " + what + ": " + errno_text(errno));
    char buf[65536];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        const int err = errno;
        ::close(fd);
        fail_file(path, "cannot read " + what + ": " + errno_text(err));
      }
      if (n == 0) break;
      text.append(buf, static_cast<size_t>(n));
    }
    ::close(fd);
  }
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail_file(path, what + " is not valid JSON: " + e.what());
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// dtypes

std::string safetensors_dtype(at::ScalarType t) {
  const DtypeSpec* d = find_dtype(t);
  FUSION_ENSURE(d != nullptr, "dtype ", c10::toString(t),
                " cannot be written to safetensors by fusion (supported: ", supported_list(), ")");
  return d->name;
}

at::ScalarType torch_dtype(const std::string& safetensors_dtype) {
  const DtypeSpec* d = find_dtype(safetensors_dtype);
  if (d == nullptr) throw Error(printable(dtype_problem(safetensors_dtype)));
  return d->type;
}

namespace detail {
std::string shape_string(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}
}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Reader

namespace {

// The finiteness check (detail::load_weights): fused into the copy out of the mapping, so the data
// is read from memory once, as without it. An IEEE binary float is NaN or ±Inf exactly when its bits
// less the sign, read as an integer, exceed those of its largest finite value (and ±Inf is that
// value + 1): one AND and one compare per element, which the compiler vectorises beside the copy.

/// The first NaN or ±Inf of a tensor: its element index and "nan", "inf" or "-inf".
struct NonFinite {
  uint64_t index;
  const char* value;
};

/// Copies `count` elements of `Bits` from `src` (no alignment needed: a file's data need not be
/// aligned) to `dst`; true when one of them is NaN or ±Inf.
template <typename Bits, Bits kMaxFinite>
bool copy_checking(const uint8_t* __restrict src, uint8_t* __restrict dst, size_t count) {
  constexpr Bits kMagnitude = std::numeric_limits<Bits>::max();  // every bit but the sign
  Bits bad = 0;
  for (size_t i = 0; i < count; ++i) {
    Bits x;
    std::memcpy(&x, src + i * sizeof(Bits), sizeof(Bits));
    std::memcpy(dst + i * sizeof(Bits), &x, sizeof(Bits));
    bad |= static_cast<Bits>(-static_cast<Bits>((x & kMagnitude) > kMaxFinite));
  }
  return bad != 0;
}

/// Whether one of `count` elements at `p` (aligned to `Bits`) is NaN or ±Inf: the check of a tensor
/// read in place, or of a piece pread() into a buffer. One pass, no branch, vectorised like
/// copy_checking; compiled twice, for AVX2 and for the baseline x86-64 (the loader picks one when
/// the library loads), since it runs over every byte of every checkpoint read.
template <typename Bits, Bits kMaxFinite>
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx2", "default")))
#endif
bool any_non_finite(const uint8_t* p, size_t count) {
  constexpr Bits kMagnitude = std::numeric_limits<Bits>::max();
  Bits bad = 0;
  for (size_t i = 0; i < count; ++i) {
    Bits x;
    std::memcpy(&x, p + i * sizeof(Bits), sizeof(Bits));
    bad |= static_cast<Bits>(-static_cast<Bits>((x & kMagnitude) > kMaxFinite));
  }
  return bad != 0;
}

/// The first NaN or ±Inf among `count` elements at `p` (aligned to `Bits`), if any.
template <typename Bits, Bits kMaxFinite>
std::optional<NonFinite> first_non_finite(const uint8_t* p, size_t count) {
  constexpr Bits kMagnitude = std::numeric_limits<Bits>::max();
  for (size_t i = 0; i < count; ++i) {
    Bits x;
    std::memcpy(&x, p + i * sizeof(Bits), sizeof(Bits));
    if ((x & kMagnitude) > kMaxFinite) {
      return NonFinite{i, (x & kMagnitude) > kMaxFinite + 1 ? "nan" : x < 0 ? "-inf" : "inf"};
    }
  }
  return std::nullopt;
}

struct FiniteCheck {
  size_t itemsize;
  bool (*copy)(const uint8_t* __restrict src, uint8_t* __restrict dst, size_t count);
  bool (*any)(const uint8_t* p, size_t count);
  std::optional<NonFinite> (*first)(const uint8_t* p, size_t count);
};

template <typename Bits, Bits kMaxFinite>
constexpr FiniteCheck kFiniteCheck{sizeof(Bits), &copy_checking<Bits, kMaxFinite>,
                                   &any_non_finite<Bits, kMaxFinite>, &first_non_finite<Bits, kMaxFinite>};

/// The check for a floating-point dtype; nullptr for the others (integers and bool are not checked).
const FiniteCheck* finite_check(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return &kFiniteCheck<int32_t, 0x7f7fffff>;
    case at::kHalf: return &kFiniteCheck<int16_t, 0x7bff>;
    case at::kBFloat16: return &kFiniteCheck<int16_t, 0x7f7f>;
    case at::kDouble: return &kFiniteCheck<int64_t, 0x7fefffffffffffff>;
    default: return nullptr;
  }
}

/// What names a model in a non-finite value's message (a pool's option, "modelpool.models.mnist";
/// may be empty).
struct FiniteLabel {
  const std::string& label;
};

/// A whole file mapped copy-on-write (MAP_PRIVATE, readable and writable): tensors read from it are
/// views of the page cache, and a write to one copies the page it touches into this process alone,
/// so a tensor handed out behaves as an owned copy and the file is never changed. Shared by the
/// MappedFile and every tensor viewing it; unmapped when the last goes.
struct Mapping {
  void* base = nullptr;
  size_t size = 0;
  int fd = -1;  ///< a finished OutputFile's file, kept open for the save that links it
  /// fd's flusher, still making the file durable after the OutputFile finished (destroyed, so
  /// stopped, before fd is closed).
  std::unique_ptr<detail::BackgroundFlush> flush;
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping();
};

/// A finished detail::OutputFile, as save_safetensors finds it: the mapping its tensors view, the
/// header its file starts with, and whether a save has linked it under a name already.
struct OutputRecord {
  const Mapping* mapping;
  std::string header;  ///< the padded header text (after the 8-byte length)
  size_t entries;      ///< how many tensors the file holds
  bool linked = false;
};
std::mutex& outputs_mutex() {
  static std::mutex mu;
  return mu;
}
std::vector<OutputRecord>& outputs() {
  static std::vector<OutputRecord> records;
  return records;
}

Mapping::~Mapping() {
  flush.reset();
  if (fd >= 0) {
    {
      std::lock_guard<std::mutex> lock(outputs_mutex());
      auto& records = outputs();
      records.erase(std::remove_if(records.begin(), records.end(),
                                   [this](const OutputRecord& r) { return r.mapping == this; }),
                    records.end());
    }
    ::close(fd);  // an unnamed file never linked goes with it
  }
  if (base != nullptr) ::munmap(base, size);
}

/// The reader: SafetensorsFile's Impl is one, and the checkpoint loaders (load_safetensors,
/// detail::load_weights, which alone checks finiteness) open their files as these directly.
///
/// Tensors are read without a copy where the file allows it (the dtype the caller keeps, data
/// aligned to the element size, as every file written by safetensors is): the tensor is a view of
/// the mapping that keeps it alive. This is what makes reading run at page-cache speed: a copy
/// would write every byte again and fault in fresh memory for it (the reader used to copy, and
/// took ~10x the time of `cat` on bench/merge's files). Where a copy is needed (misaligned data)
/// it is made as before, the finiteness check in the copying loop.
///
/// The finiteness check does not touch the mapping: it pread()s the data in pieces into a small
/// buffer per thread, as `cat` reads, and checks each piece while it is in cache (check_finite).
/// Checking through the mapping cost a page-table entry per 4 KiB set up and torn down again, ~1.5x
/// the time of `cat` on bench/merge's files; a view handed out is then mapped only where it is used.
struct MappedFile {
  fs::path path;
  int fd = -1;  ///< the file, open while this lives (check_finite and CheckpointStream read it)
  std::shared_ptr<Mapping> mapping;
  const uint8_t* base = nullptr;  ///< mapping->base
  size_t size = 0;
  size_t data_start = 0;  ///< 8 + header length
  size_t data_size = 0;
  std::vector<TensorInfo> tensors;
  std::unordered_map<std::string, size_t> index;
  std::map<std::string, std::string> metadata;

  MappedFile() = default;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() {
    if (fd >= 0) ::close(fd);
  }

  [[noreturn]] void fail(const std::string& what) const { fail_file(path, what); }

  void open();
  void parse_header(const char* begin, const char* end);
  void parse_entry(const std::string& name, const nlohmann::json& value);
  void check_offsets();
  const TensorInfo* find(const std::string& name) const {
    auto it = index.find(name);
    return it == index.end() ? nullptr : &tensors[it->second];
  }
  /// Copies bytes [begin, end) of the data section to `dst`. With `check`, the elements are checked
  /// for NaN and ±Inf in the loop that copies them; the first one found is returned and the copy
  /// stops there.
  std::optional<NonFinite> copy_out(uint64_t begin, uint64_t end, void* dst, const FiniteCheck* check) const;
  /// The error for a NaN or ±Inf in a model's weights (detail::load_weights).
  [[noreturn]] void fail_non_finite(const TensorInfo& info, const NonFinite& bad, const std::string& label) const {
    const std::string what = "tensor " + qname(info.name) + ": " + info.dtype + " element " +
                             std::to_string(bad.index) + " holds " + bad.value + " (weights must be finite)";
    if (label.empty()) fail(what);
    throw Error(printable(label) + ": " + printable(path.string(), 4096) + ": " + printable(what, 4096));
  }
  /// Drops every page of the mapping from this process's resident set (they come back from the
  /// page cache when touched). Only while no tensor handed out can have been written: a page a
  /// write has copied would be lost. The loaders call it once a checkpoint is read and checked,
  /// before the tensors reach the caller, so a loaded model costs no memory until it is used.
  void drop_resident() const { ::madvise(mapping->base, size, MADV_DONTNEED); }
  /// Reads bytes [begin, end) of the data section into `dst` with pread() (not through the
  /// mapping). Throws naming the file when the read fails or the file has shrunk.
  void pread_data(uint64_t begin, uint64_t end, void* dst) const;
  /// The first NaN or ±Inf of the floating-point tensors read in place (aligned; read() checks the
  /// others as it copies them), in file order: the tensor's index in `tensors` and the element.
  /// The data is pread() in pieces, on the intra-op threads, and checked in cache.
  std::optional<std::pair<size_t, NonFinite>> check_finite() const;
  /// One tensor (SafetensorsFile::tensor): a view of the mapping, or a copy where the data is not
  /// aligned to its element size. With `finite`, a NaN or ±Inf in a copied floating-point tensor
  /// throws, naming `finite->label` (when not empty), the file, the tensor, the element and the
  /// value; a view's data is read_all's to check first (check_finite); integer and bool tensors
  /// are not checked.
  at::Tensor read(const TensorInfo& info, const FiniteLabel* finite) const;
  /// Every tensor, in file order (SafetensorsFile::read_all), checked as read() with `finite`.
  /// With `drop`, the pages of each tensor are dropped from the resident set once it is read
  /// (the loaders: as drop_resident, for the tensors a dtype or device conversion has read).
  StateDict read_all(const at::Device& device, std::optional<at::ScalarType> dtype,
                     const FiniteLabel* finite, bool drop = false) const;
};

}  // namespace

struct SafetensorsFile::Impl : MappedFile {};

void MappedFile::open() {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) fail("no such file");
    fail("cannot open: " + errno_text(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail("cannot stat: " + errno_text(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(S_ISDIR(st.st_mode) ? "is a folder, not a .safetensors file" : "is not a regular file");
  }
  size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    fail("file is " + std::to_string(size) +
         " bytes, too short for a safetensors file (truncated? it must start with an 8-byte header "
         "length)");
  }
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  const int err = errno;
  if (p == MAP_FAILED) {
    ::close(fd);
    fail("cannot map the file: " + errno_text(err));
  }
  this->fd = fd;
  mapping = std::make_shared<Mapping>();
  mapping->base = p;
  mapping->size = size;
  base = static_cast<const uint8_t*>(p);

  uint64_t n = 0;
  std::memcpy(&n, base, 8);  // little-endian host
  if (n > size - 8) {
    fail("header length " + std::to_string(n) + " runs past the end of the file (" +
         std::to_string(size) + " bytes; truncated or not a safetensors file?)");
  }
  if (n > kMaxHeaderSize) {
    fail("header length " + std::to_string(n) + " exceeds the format's limit of " +
         std::to_string(kMaxHeaderSize) + " bytes");
  }
  data_start = 8 + static_cast<size_t>(n);
  data_size = size - data_start;
  parse_header(reinterpret_cast<const char*>(base) + 8, reinterpret_cast<const char*>(base) + data_start);
  // The header pages are not needed any more.
  ::madvise(const_cast<uint8_t*>(base), data_start, MADV_DONTNEED);
}

void MappedFile::parse_header(const char* begin, const char* end) {
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(begin, end);
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("the header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) {
    fail(std::string("the header must be a JSON object, not ") + header.type_name());
  }
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (value.is_null()) continue;
      if (!value.is_object()) {
        fail(std::string("__metadata__ must be an object of strings, not ") + value.type_name());
      }
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) {
          fail("__metadata__ must map strings to strings, but " + qname(k) + " holds " +
               v.type_name());
        }
        metadata[k] = v.get<std::string>();
      }
      continue;
    }
    parse_entry(name, value);
  }
  check_offsets();
}

void MappedFile::parse_entry(const std::string& name, const nlohmann::json& value) {
  const std::string where = "tensor " + qname(name);
  if (!value.is_object()) fail(where + ": entry must be an object, not " + value.type_name());
  const auto dtype_it = value.find("dtype");
  const auto shape_it = value.find("shape");
  const auto offsets_it = value.find("data_offsets");
  if (dtype_it == value.end()) fail(where + ": no \"dtype\"");
  if (shape_it == value.end()) fail(where + ": no \"shape\"");
  if (offsets_it == value.end()) fail(where + ": no \"data_offsets\"");
  if (!dtype_it->is_string()) fail(where + ": \"dtype\" must be a string");

  TensorInfo info;
  info.name = name;
  info.dtype = dtype_it->get<std::string>();
  const DtypeSpec* spec = find_dtype(info.dtype);
  if (spec == nullptr) fail(where + ": " + dtype_problem(info.dtype));

  if (!shape_it->is_array()) fail(where + ": \"shape\" must be an array of non-negative integers");
  uint64_t numel = 1;
  bool overflow = false;
  for (const auto& d : *shape_it) {
    if (!d.is_number_unsigned() ||
        d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail(where + ": \"shape\" must be an array of non-negative integers, got " + shape_it->dump());
    }
    const uint64_t dim = d.get<uint64_t>();
    info.shape.push_back(static_cast<int64_t>(dim));
    overflow = overflow || mul_overflows(numel, dim, &numel);
  }
  uint64_t nbytes = 0;
  if (overflow || mul_overflows(numel, spec->itemsize, &nbytes) ||
      numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    fail(where + ": shape " + detail::shape_string(info.shape) + " is too large (overflow)");
  }

  if (!offsets_it->is_array() || offsets_it->size() != 2 || !(*offsets_it)[0].is_number_unsigned() ||
      !(*offsets_it)[1].is_number_unsigned()) {
    fail(where + ": \"data_offsets\" must be [begin, end] with non-negative integers, got " +
         offsets_it->dump());
  }
  info.begin = (*offsets_it)[0].get<uint64_t>();
  info.end = (*offsets_it)[1].get<uint64_t>();
  const std::string offsets = "[" + std::to_string(info.begin) + ", " + std::to_string(info.end) + "]";
  if (info.end < info.begin) fail(where + ": data_offsets " + offsets + " end before they begin");
  if (info.end > data_size) {
    fail(where + ": data_offsets " + offsets + " lie outside the data section (" +
         std::to_string(data_size) + " bytes; truncated file?)");
  }
  if (info.end - info.begin != nbytes) {
    fail(where + ": shape " + detail::shape_string(info.shape) + " of " + info.dtype + " needs " +
         std::to_string(nbytes) + " bytes but data_offsets " + offsets + " hold " +
         std::to_string(info.end - info.begin));
  }
  index.emplace(name, tensors.size());
  tensors.push_back(std::move(info));
}

void MappedFile::check_offsets() {
  std::stable_sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  const TensorInfo* prev = nullptr;
  for (const auto& t : tensors) {
    if (t.begin < pos) {
      fail("tensor " + qname(t.name) + ": data_offsets [" + std::to_string(t.begin) + ", " +
           std::to_string(t.end) + "] overlap those of tensor " + qname(prev->name) + " [" +
           std::to_string(prev->begin) + ", " + std::to_string(prev->end) + "]");
    }
    if (t.begin > pos) {
      fail("tensor " + qname(t.name) + ": data_offsets begin at " + std::to_string(t.begin) +
           " but the previous tensor ends at " + std::to_string(pos) +
           " (the format forbids holes in the data section)");
    }
    pos = t.end;
    prev = &t;
  }
  if (pos != data_size) {
    fail("the tensors cover " + std::to_string(pos) + " bytes but the data section holds " +
         std::to_string(data_size) + " (trailing bytes, or a wrong header length)");
  }
  index.clear();
  for (size_t i = 0; i < tensors.size(); ++i) index.emplace(tensors[i].name, i);
}

std::optional<NonFinite> MappedFile::copy_out(uint64_t begin, uint64_t end, void* dst,
                                              const FiniteCheck* check) const {
  constexpr size_t kChunk = size_t{32} << 20;  // a multiple of every itemsize
  auto* out = static_cast<uint8_t*>(dst);
  const size_t start = data_start + static_cast<size_t>(begin);
  const size_t stop = data_start + static_cast<size_t>(end);
  for (size_t pos = start; pos < stop;) {
    const size_t n = std::min(kChunk, stop - pos);
    bool bad = false;
    if (check != nullptr) {
      bad = check->copy(base + pos, out, n / check->itemsize);
    } else {
      std::memcpy(out, base + pos, n);
    }
    if (bad) {
      std::optional<NonFinite> found = check->first(out, n / check->itemsize);
      found->index += (pos - start) / check->itemsize;
      return found;
    }
    out += n;
    pos += n;
  }
  return std::nullopt;
}

at::Tensor MappedFile::read(const TensorInfo& info, const FiniteLabel* finite) const {
  const DtypeSpec* spec = find_dtype(info.dtype);
  const auto options = at::TensorOptions().dtype(spec->type);
  const FiniteCheck* check = finite != nullptr ? finite_check(spec->type) : nullptr;
  const uint8_t* src = base + data_start + info.begin;
  at::Tensor t;
  std::optional<NonFinite> bad;
  if (info.end > info.begin && reinterpret_cast<uintptr_t>(src) % spec->itemsize == 0) {
    // A view: with `finite`, read_all has checked its data already (check_finite).
    std::shared_ptr<Mapping> keep = mapping;
    t = at::from_blob(const_cast<uint8_t*>(src), info.shape, [keep](void*) {}, options);
  } else {
    t = at::empty(info.shape, options);
    if (info.end > info.begin) bad = copy_out(info.begin, info.end, t.data_ptr(), check);
  }
  if (bad) fail_non_finite(info, *bad, finite->label);
  if (spec->type == at::kBool) {
    // A bool byte other than 0 or 1 is undefined behaviour for every consumer: refuse it here.
    const auto* p = static_cast<const uint8_t*>(t.data_ptr());
    for (int64_t i = 0; i < t.numel(); ++i) {
      if (p[i] > 1) {
        fail("tensor " + qname(info.name) + ": BOOL element " + std::to_string(i) + " holds byte " +
             std::to_string(p[i]) + " (must be 0 or 1)");
      }
    }
  }
  return t;
}

void MappedFile::pread_data(uint64_t begin, uint64_t end, void* dst) const {
  read_unaliased(static_cast<uint8_t*>(dst), static_cast<size_t>(end - begin), data_start + begin,
                 [this](uint8_t* out, size_t count, uint64_t pos) {
                   const uint64_t stop = pos + count;
                   while (pos < stop) {
                     const ssize_t n = ::pread(fd, out, static_cast<size_t>(std::min<uint64_t>(stop - pos, uint64_t{1} << 30)),
                                               static_cast<off_t>(pos));
                     if (n < 0 && errno == EINTR) continue;
                     if (n < 0) fail("cannot read: " + errno_text(errno));
                     if (n == 0) {
                       fail("the file ended at byte " + std::to_string(pos) +
                            " while it was read (changed since it was opened?)");
                     }
                     out += n;
                     pos += static_cast<uint64_t>(n);
                   }
                 });
}

namespace {
/// Bytes per pread() piece: large enough that a syscall's cost is small against the copy, small
/// enough that the piece is still in the core's L2 cache when it is checked.
constexpr uint64_t kPieceBytes = uint64_t{128} << 10;
/// A thread's buffer for the pread() piece at file offset `offset`, reused: 64-byte aligned, at most
/// 63 bytes before the offset modulo 4 KiB, a distance at which the kernel's copy runs at full speed
/// (copy_aliases), so the piece never goes through the staging buffer.
struct PieceTag;
uint8_t* piece_buffer(uint64_t offset) { return thread_buffer<PieceTag>(kPieceBytes, offset % kAliasPage / 64 * 64); }
}  // namespace

std::optional<std::pair<size_t, NonFinite>> MappedFile::check_finite() const {
  struct Piece {
    size_t tensor;
    uint64_t begin, end;  // in the data section
  };
  std::vector<Piece> pieces;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorInfo& info = tensors[i];
    const DtypeSpec* spec = find_dtype(info.dtype);
    if (finite_check(spec->type) == nullptr || info.end == info.begin) continue;
    if ((reinterpret_cast<uintptr_t>(base) + data_start + info.begin) % spec->itemsize != 0) continue;
    for (uint64_t b = info.begin; b < info.end; b += kPieceBytes) pieces.push_back({i, b, std::min(b + kPieceBytes, info.end)});
  }
  // The first bad piece in file order; pieces after one found are skipped.
  std::atomic<size_t> first_bad{pieces.size()};
  std::atomic<bool> failed{false};
  std::string error;
  std::mutex error_mu;
  at::parallel_for(0, static_cast<int64_t>(pieces.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e && !failed; ++p) {
      if (static_cast<size_t>(p) > first_bad) break;
      const Piece& piece = pieces[static_cast<size_t>(p)];
      uint8_t* buf = piece_buffer(data_start + piece.begin);
      try {
        pread_data(piece.begin, piece.end, buf);
      } catch (const std::exception& ex) {  // kept for the calling thread
        std::lock_guard<std::mutex> lock(error_mu);
        if (!failed.exchange(true)) error = ex.what();
        return;
      }
      const FiniteCheck* check = finite_check(find_dtype(tensors[piece.tensor].dtype)->type);
      if (check->any(buf, (piece.end - piece.begin) / check->itemsize)) {
        size_t cur = first_bad;
        while (static_cast<size_t>(p) < cur && !first_bad.compare_exchange_weak(cur, static_cast<size_t>(p))) {
        }
        return;
      }
    }
  });
  if (failed) throw Error(error);
  if (first_bad == pieces.size()) return std::nullopt;
  const Piece& piece = pieces[first_bad];
  const TensorInfo& info = tensors[piece.tensor];
  const FiniteCheck* check = finite_check(find_dtype(info.dtype)->type);
  uint8_t* buf = piece_buffer(data_start + piece.begin);
  pread_data(piece.begin, piece.end, buf);
  NonFinite bad = *check->first(buf, (piece.end - piece.begin) / check->itemsize);
  bad.index += (piece.begin - info.begin) / check->itemsize;
  return std::make_pair(piece.tensor, bad);
}

StateDict MappedFile::read_all(const at::Device& device, std::optional<at::ScalarType> dtype,
                               const FiniteLabel* finite, bool drop) const {
  StateDict out;
  const size_t page = page_size();
  size_t dropped = 0;  // pages before this offset are dropped
  const std::optional<std::pair<size_t, NonFinite>> bad = finite != nullptr ? check_finite() : std::nullopt;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorInfo& info = tensors[i];
    if (bad && bad->first == i) fail_non_finite(info, bad->second, finite->label);
    at::Tensor t = read(info, finite);
    if (dtype && at::isFloatingType(t.scalar_type()) && t.scalar_type() != *dtype) t = t.to(*dtype);
    if (t.device() != device) t = t.to(device);
    out.set(info.name, std::move(t));
    if (drop) {  // the pages this tensor's check touched, up to the page the next one starts in
      const size_t upto = (data_start + static_cast<size_t>(info.end)) / page * page;
      if (upto > dropped) ::madvise(static_cast<uint8_t*>(mapping->base) + dropped, upto - dropped, MADV_DONTNEED);
      dropped = std::max(dropped, upto);
    }
  }
  return out;
}

SafetensorsFile::SafetensorsFile(const fs::path& path) : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  impl_->open();
}

SafetensorsFile::~SafetensorsFile() = default;

const fs::path& SafetensorsFile::path() const { return impl_->path; }
const std::vector<TensorInfo>& SafetensorsFile::tensors() const& { return impl_->tensors; }
std::vector<TensorInfo> SafetensorsFile::tensors() && { return std::move(impl_->tensors); }
const std::map<std::string, std::string>& SafetensorsFile::metadata() const& { return impl_->metadata; }
std::map<std::string, std::string> SafetensorsFile::metadata() && { return std::move(impl_->metadata); }

const TensorInfo* SafetensorsFile::find(const std::string& name) const { return impl_->find(name); }

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo* info = find(name);
  if (info == nullptr) impl_->fail("no tensor named " + qname(name));
  return impl_->read(*info, nullptr);
}

StateDict SafetensorsFile::read_all(const at::Device& device, std::optional<at::ScalarType> dtype) const {
  return impl_->read_all(device, dtype, nullptr);
}

// ---------------------------------------------------------------------------------------------
// Checkpoints: a file, a folder with model.safetensors, or a sharded folder

namespace {

constexpr const char* kSingleName = "model.safetensors";
constexpr const char* kIndexName = "model.safetensors.index.json";

std::unique_ptr<MappedFile> open_mapped(const fs::path& path) {
  auto file = std::make_unique<MappedFile>();
  file->path = path;
  file->open();
  return file;
}

/// A sharded checkpoint's shards (in file-name order), opened and checked against the index.
std::vector<std::unique_ptr<MappedFile>> open_sharded(const fs::path& index_path) {
  const nlohmann::json index = parse_json_file(index_path, "the shard index");
  if (!index.is_object()) fail_file(index_path, "the shard index must be a JSON object");
  const auto wm = index.find("weight_map");
  if (wm == index.end() || !wm->is_object()) {
    fail_file(index_path, "the shard index has no \"weight_map\" object");
  }
  if (wm->empty()) fail_file(index_path, "the shard index's \"weight_map\" is empty");
  std::map<std::string, std::vector<std::string>> by_shard;  // shard file → tensor names
  std::unordered_map<std::string, std::string> shard_of;
  for (const auto& [name, shard] : wm->items()) {
    if (!shard.is_string() || shard.get<std::string>().empty()) {
      fail_file(index_path, "weight_map entry " + qname(name) + " must name a shard file");
    }
    by_shard[shard.get<std::string>()].push_back(name);
    shard_of[name] = shard.get<std::string>();
  }
  const fs::path dir = index_path.parent_path();
  std::vector<std::unique_ptr<MappedFile>> shards;
  for (const auto& [shard, names] : by_shard) {
    const fs::path shard_path = dir / shard;
    std::error_code ec;
    if (!fs::is_regular_file(shard_path, ec)) {
      fail_file(index_path, "shard " + qname(shard) + " (listed for tensor " + qname(names.front()) +
                                ") does not exist: " + shard_path.string());
    }
    auto file = open_mapped(shard_path);
    for (const auto& name : names) {
      if (file->find(name) == nullptr) {
        fail_file(index_path, "the index puts tensor " + qname(name) + " in shard " + qname(shard) +
                                  ", which does not hold it");
      }
    }
    for (const auto& info : file->tensors) {
      auto it = shard_of.find(info.name);
      if (it == shard_of.end()) {
        fail_file(index_path, "shard " + qname(shard) + " holds tensor " + qname(info.name) +
                                  ", which the index does not list");
      }
      if (it->second != shard) {
        fail_file(index_path, "shard " + qname(shard) + " holds tensor " + qname(info.name) +
                                  ", which the index puts in shard " + qname(it->second));
      }
    }
    shards.push_back(std::move(file));
  }
  return shards;
}

/// The files of a checkpoint, opened (headers checked), in reading order.
std::vector<std::unique_ptr<MappedFile>> open_checkpoint(const fs::path& path) {
  const fs::path file = resolve_checkpoint(path);
  if (file.filename() == kIndexName && fs::is_directory(path)) return open_sharded(file);
  std::vector<std::unique_ptr<MappedFile>> out;
  out.push_back(open_mapped(file));
  return out;
}

}  // namespace

fs::path resolve_checkpoint(const fs::path& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) fail_file(path, "no such file or folder");
  if (fs::is_directory(st)) {
    if (fs::is_regular_file(path / kSingleName, ec)) return path / kSingleName;
    if (fs::is_regular_file(path / kIndexName, ec)) return path / kIndexName;
    fail_file(path, std::string("the folder holds neither ") + kSingleName + " nor " + kIndexName);
  }
  return path;
}

namespace {
StateDict load_checkpoint(const fs::path& path, const at::Device& device, std::optional<at::ScalarType> dtype,
                          const FiniteLabel* finite) {
  // Each file's pages are dropped once it is read (and checked): nothing has written to its views
  // yet, and a model that is loaded but not yet used then costs no memory (the pages come back
  // from the page cache as it is used).
  const auto files = open_checkpoint(path);
  if (files.size() == 1) {
    StateDict out = files.front()->read_all(device, dtype, finite, true);
    files.front()->drop_resident();
    return out;
  }
  StateDict out;
  for (const auto& file : files) {
    for (const auto& [name, t] : file->read_all(device, dtype, finite, true)) out.set(name, t);
    file->drop_resident();
  }
  return out;
}
}  // namespace

StateDict load_safetensors(const fs::path& path, const at::Device& device,
                           std::optional<at::ScalarType> dtype) {
  return load_checkpoint(path, device, dtype, nullptr);
}

namespace detail {
StateDict load_weights(const fs::path& path, const at::Device& device, std::optional<at::ScalarType> dtype,
                       const std::string& label) {
  const FiniteLabel finite{label};
  return load_checkpoint(path, device, dtype, &finite);
}
}  // namespace detail

namespace detail {
std::vector<TensorInfo> read_checkpoint_layout(const fs::path& path) {
  std::vector<TensorInfo> out;
  for (const auto& file : open_checkpoint(path)) {
    out.insert(out.end(), file->tensors.begin(), file->tensors.end());
  }
  return out;
}
}  // namespace detail

// ---------------------------------------------------------------------------------------------
// CheckpointStream (checkpoint_stream.hpp)

struct detail::CheckpointStream::Impl {
  struct Model {
    std::string label;
    std::vector<std::unique_ptr<MappedFile>> files;
    std::vector<const MappedFile*> file_of;  ///< per tensor of `tensors`
    std::vector<const TensorInfo*> info_of;
  };
  std::vector<Model> models;
  std::vector<TensorInfo> tensors;
  std::vector<bool> is_float;
  std::vector<int64_t> offsets;  ///< flat offsets of the F32 tensors (-1 for the others)
  int64_t numel = 0;
  /// Whether floats() has handed out views of the mappings: for_each_chunk then drops the pages
  /// used (read() maps nothing).
  mutable std::atomic<bool> mapped{false};

  /// Elements [begin, end) of F32 tensor `i` of model `m`, at `p`, checked for NaN and ±Inf (the
  /// pool's loader's message, the index counted from the tensor's start).
  void check(size_t m, size_t i, const uint8_t* p, int64_t begin, int64_t end) const {
    const FiniteCheck& f32 = kFiniteCheck<int32_t, 0x7f7fffff>;
    const auto count = static_cast<size_t>(end - begin);
    if (!f32.any(p, count)) return;
    NonFinite bad = *f32.first(p, count);
    bad.index += static_cast<uint64_t>(begin);
    models[m].file_of[i]->fail_non_finite(*models[m].info_of[i], bad, models[m].label);
  }

  const uint8_t* data(size_t m, size_t i) const {
    const MappedFile* f = models[m].file_of[i];
    return f->base + f->data_start + models[m].info_of[i]->begin;
  }
};

detail::CheckpointStream::CheckpointStream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
detail::CheckpointStream::~CheckpointStream() = default;

std::unique_ptr<detail::CheckpointStream> detail::CheckpointStream::open(ModelPool& pool,
                                                                         const std::vector<std::string>& models) {
  const std::optional<std::vector<StreamSource>> sources = stream_sources(pool, models);
  if (!sources || sources->empty()) return nullptr;
  auto impl = std::make_unique<Impl>();
  for (const StreamSource& source : *sources) {
    Impl::Model model;
    model.label = source.label;
    model.files = open_checkpoint(source.path);
    std::unordered_map<std::string, std::pair<const MappedFile*, const TensorInfo*>> by_name;
    for (const auto& file : model.files) {
      for (const TensorInfo& info : file->tensors) by_name.emplace(info.name, std::make_pair(file.get(), &info));
    }
    if (impl->models.empty()) {
      for (const auto& file : model.files) {
        impl->tensors.insert(impl->tensors.end(), file->tensors.begin(), file->tensors.end());
      }
      for (const TensorInfo& t : impl->tensors) {
        impl->is_float.push_back(t.dtype == "F32");
        impl->offsets.push_back(t.dtype == "F32" ? impl->numel : -1);
        if (t.dtype == "F32") impl->numel += static_cast<int64_t>((t.end - t.begin) / sizeof(float));
      }
    }
    for (size_t i = 0; i < impl->tensors.size(); ++i) {
      const TensorInfo& ref = impl->tensors[i];
      const auto it = by_name.find(ref.name);
      // Layouts were checked against the pretrained model's (stream_sources); a dtype other than the
      // first model's, or other than F32 for a floating tensor, is left to ModelPool::load.
      if (it == by_name.end() || it->second.second->shape != ref.shape || it->second.second->dtype != ref.dtype) {
        return nullptr;
      }
      const DtypeSpec* spec = find_dtype(ref.dtype);
      if (at::isFloatingType(spec->type) && spec->type != at::kFloat) return nullptr;
      const MappedFile* f = it->second.first;
      if ((reinterpret_cast<uintptr_t>(f->base) + f->data_start + it->second.second->begin) % spec->itemsize != 0) {
        return nullptr;
      }
      model.file_of.push_back(f);
      model.info_of.push_back(it->second.second);
    }
    impl->models.push_back(std::move(model));
  }
  return std::unique_ptr<CheckpointStream>(new CheckpointStream(std::move(impl)));
}

const std::vector<TensorInfo>& detail::CheckpointStream::tensors() const { return impl_->tensors; }
size_t detail::CheckpointStream::num_models() const { return impl_->models.size(); }
bool detail::CheckpointStream::is_float(size_t i) const { return impl_->is_float.at(i); }

const float* detail::CheckpointStream::floats(size_t m, size_t i, int64_t begin, int64_t end) const {
  const uint8_t* p = impl_->data(m, i) + static_cast<size_t>(begin) * sizeof(float);
  impl_->check(m, i, p, begin, end);
  impl_->mapped.store(true, std::memory_order_relaxed);
  return reinterpret_cast<const float*>(p);
}

void detail::CheckpointStream::read(size_t m, size_t i, int64_t begin, int64_t end, float* dst) const {
  read_unchecked(m, i, begin, end, dst);
  impl_->check(m, i, reinterpret_cast<const uint8_t*>(dst), begin, end);
}

void detail::CheckpointStream::read_unchecked(size_t m, size_t i, int64_t begin, int64_t end, float* dst) const {
  const Impl::Model& model = impl_->models.at(m);
  const TensorInfo& info = *model.info_of.at(i);
  model.file_of[i]->pread_data(info.begin + static_cast<uint64_t>(begin) * sizeof(float),
                               info.begin + static_cast<uint64_t>(end) * sizeof(float), dst);
}

void detail::CheckpointStream::check_models(size_t i, int64_t begin, int64_t end) const {
  std::vector<float> buffer(static_cast<size_t>(end - begin));
  for (size_t m = 0; m < impl_->models.size(); ++m) read(m, i, begin, end, buffer.data());
}

void detail::CheckpointStream::check_result(size_t i, int64_t begin, int64_t end, const float* result) const {
  if (kFiniteCheck<int32_t, 0x7f7fffff>.any(reinterpret_cast<const uint8_t*>(result), static_cast<size_t>(end - begin))) {
    check_models(i, begin, end);
  }
}

void detail::CheckpointStream::release(size_t m, size_t i, int64_t begin, int64_t end) const {
  const size_t page = page_size();
  const size_t itemsize = find_dtype(impl_->tensors[i].dtype)->itemsize;
  const auto lo = reinterpret_cast<uintptr_t>(impl_->data(m, i)) + static_cast<size_t>(begin) * itemsize;
  const auto hi = reinterpret_cast<uintptr_t>(impl_->data(m, i)) + static_cast<size_t>(end) * itemsize;
  const uintptr_t first = (lo + page - 1) / page * page;
  const uintptr_t last = hi / page * page;
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

void detail::CheckpointStream::for_each_chunk(const std::function<void(size_t, int64_t, int64_t)>& f,
                                              int64_t chunk) const {
  // One parallel loop over the pieces of every F32 tensor (a loop per tensor left a core idle on
  // the small ones); each thread takes a contiguous run of pieces, in file order.
  struct Piece {
    size_t tensor;
    int64_t begin, end;
  };
  std::vector<Piece> pieces;
  for (size_t i = 0; i < impl_->tensors.size(); ++i) {
    if (!impl_->is_float[i]) continue;
    const TensorInfo& info = impl_->tensors[i];
    const auto n = static_cast<int64_t>((info.end - info.begin) / sizeof(float));
    for (int64_t b = 0; b < n; b += chunk) pieces.push_back({i, b, std::min(b + chunk, n)});
  }
  constexpr int64_t kRelease = int64_t{1} << 18;  // elements between madvise calls (1 MiB of F32)
  at::parallel_for(0, static_cast<int64_t>(pieces.size()), 1, [&](int64_t p0, int64_t p1) {
    // The pages floats() mapped, dropped in runs of at least kRelease elements of one tensor.
    size_t run_tensor = 0;
    int64_t run_begin = 0, run_end = 0;
    const auto flush = [&] {
      if (run_end > run_begin && impl_->mapped.load(std::memory_order_relaxed)) {
        for (size_t m = 0; m < impl_->models.size(); ++m) release(m, run_tensor, run_begin, run_end);
      }
      run_begin = run_end;
    };
    for (int64_t p = p0; p < p1; ++p) {
      const Piece& piece = pieces[static_cast<size_t>(p)];
      f(piece.tensor, piece.begin, piece.end);
      if (piece.tensor != run_tensor || piece.begin != run_end) {
        flush();
        run_tensor = piece.tensor;
        run_begin = piece.begin;
      }
      run_end = piece.end;
      if (run_end - run_begin >= kRelease) flush();
    }
    flush();
  });
}

int64_t detail::CheckpointStream::flat_offset(size_t i) const { return impl_->offsets.at(i); }
int64_t detail::CheckpointStream::flat_numel() const { return impl_->numel; }

at::Tensor detail::CheckpointStream::flat_buffer() const {
  constexpr size_t kHuge = size_t{2} << 20;
  // Over-allocated by one huge page so that the advised range can start on a huge-page boundary.
  const int64_t extra = static_cast<int64_t>(kHuge / sizeof(float));
  at::Tensor raw = at::empty({impl_->numel + extra}, at::kFloat);
  const auto addr = reinterpret_cast<uintptr_t>(raw.data_ptr());
  const uintptr_t start = (addr + kHuge - 1) / kHuge * kHuge;
  const uintptr_t end = (addr + raw.nbytes()) / kHuge * kHuge;
  if (end > start) ::madvise(reinterpret_cast<void*>(start), end - start, MADV_HUGEPAGE);
  return raw.narrow(0, static_cast<int64_t>((start - addr) / sizeof(float)), impl_->numel);
}

StateDict detail::CheckpointStream::unflatten(const at::Tensor& flat, const StateDict& base) const {
  std::unordered_map<std::string, size_t> index;
  for (size_t i = 0; i < impl_->tensors.size(); ++i) index.emplace(impl_->tensors[i].name, i);
  StateDict out;
  for (const auto& [key, t] : base) {
    const auto it = index.find(key);
    if (it == index.end() || !impl_->is_float[it->second]) {
      out.set(key, t);
      continue;
    }
    const TensorInfo& info = impl_->tensors[it->second];
    const int64_t n = static_cast<int64_t>((info.end - info.begin) / sizeof(float));
    out.set(key, flat.narrow(0, impl_->offsets[it->second], n).view(info.shape));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Writer

namespace {

/// Writes through a file descriptor, naming `path` in errors. With a flusher, asks it to flush
/// after each BackgroundFlush::kEvery bytes written.
class FileWriter {
 public:
  FileWriter(int fd, const fs::path& path, detail::BackgroundFlush* flush = nullptr)
      : fd_(fd), path_(path), flush_(flush) {}
  void write(const void* data, size_t n) {
    // Through the staging buffer where the kernel's copy would alias (write_unaliased).
    write_unaliased(static_cast<const uint8_t*>(data), n, pos_,
                    [this](const uint8_t* p, size_t count, uint64_t) { write_all(p, count); });
  }
  void write(const std::string& s) { write(s.data(), s.size()); }

 private:
  void write_all(const uint8_t* p, size_t n) {
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, std::min(n, size_t{1} << 30));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) fail_file(path_, "cannot write: " + errno_text(errno));
      p += w;
      n -= static_cast<size_t>(w);
      const uint64_t before = pos_;
      pos_ += static_cast<uint64_t>(w);
      if (flush_ != nullptr && pos_ / detail::BackgroundFlush::kEvery != before / detail::BackgroundFlush::kEvery) {
        flush_->request();
      }
    }
  }

  int fd_;
  const fs::path& path_;
  detail::BackgroundFlush* flush_;
  uint64_t pos_ = 0;  ///< the file offset: every write goes through this writer, from 0
};

/// Creates a temporary file beside `path`, lets `body` fill it, fsyncs and renames it over `path`.
/// On any failure the temporary file is removed and the error rethrown; `path` is untouched.
void write_atomic_with(const fs::path& path, const std::function<void(FileWriter&)>& body) {
  FUSION_ENSURE(!path.empty() && path.has_filename(), "cannot write to '", path.string(),
                "': not a file path");
  const fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  std::error_code ec;
  const fs::file_status dst = fs::status(dir, ec);
  if (!fs::exists(dst)) {
    FUSION_FAIL("cannot write ", path.string(), ": folder ", dir.string(), " does not exist");
  }
  if (!fs::is_directory(dst)) {
    FUSION_FAIL("cannot write ", path.string(), ": ", dir.string(), " is not a folder");
  }
  if (fs::is_directory(path, ec)) FUSION_FAIL("cannot write ", path.string(), ": it is a folder");

  fs::path tmp;
  int fd = -1;
  for (int attempt = 0; attempt < 100 && fd < 0; ++attempt) {
    tmp = dir / ("." + path.filename().string() + ".tmp-" + random_suffix());
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) {
      FUSION_FAIL("cannot write ", path.string(), ": cannot create a file in folder ", dir.string(),
                  ": ", errno_text(errno));
    }
  }
  FUSION_ENSURE(fd >= 0, "cannot write ", path.string(), ": no free temporary name in ", dir.string());
  try {
    {
      // A large file is flushed as it is written, so that the fsync below finds little to do.
      detail::BackgroundFlush flush(fd);
      FileWriter writer(fd, path, &flush);
      body(writer);
      if (const int err = flush.stop()) FUSION_FAIL("cannot write ", path.string(), ": fsync: ", errno_text(err));
    }
    if (::fsync(fd) != 0) FUSION_FAIL("cannot write ", path.string(), ": fsync: ", errno_text(errno));
    const int fd_copy = fd;
    fd = -1;
    if (::close(fd_copy) != 0) FUSION_FAIL("cannot write ", path.string(), ": close: ", errno_text(errno));
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      FUSION_FAIL("cannot write ", path.string(), ": rename from ", tmp.filename().string(), ": ",
                  errno_text(errno));
    }
  } catch (...) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  // Make the rename durable (best effort: some file systems refuse fsync on folders).
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace

void write_file_atomic(const fs::path& path, const std::string& contents) {
  write_atomic_with(path, [&](FileWriter& w) { w.write(contents); });
}

namespace {

/// One tensor of a file to write, placed by plan_file.
struct PlanEntry {
  const std::string* name;
  const DtypeSpec* spec;
  std::vector<int64_t> shape;
  uint64_t nbytes;
  size_t source;        ///< the caller's index of the tensor
  uint64_t offset = 0;  ///< in the data section
};

/// The layout of save_safetensors: `entries` sorted as prepare() in tensor.rs sorts them (descending
/// dtype, i.e. alignment, then ascending name) and given their offsets; returns the header text,
/// padded with spaces to a multiple of 8. `path` names the file in errors.
std::string plan_file(std::vector<PlanEntry>& entries, const std::map<std::string, std::string>& metadata,
                      const fs::path& path) {
  std::sort(entries.begin(), entries.end(), [](const PlanEntry& a, const PlanEntry& b) {
    if (a.spec->rank != b.spec->rank) return a.spec->rank > b.spec->rank;
    return *a.name < *b.name;
  });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  std::map<std::string, std::string> meta = metadata;
  meta.emplace("format", "pt");
  header["__metadata__"] = meta;
  uint64_t offset = 0;
  for (auto& e : entries) {
    nlohmann::ordered_json info = nlohmann::ordered_json::object();
    info["dtype"] = e.spec->name;
    info["shape"] = e.shape;
    info["data_offsets"] = {offset, offset + e.nbytes};
    header[*e.name] = std::move(info);
    e.offset = offset;
    offset += e.nbytes;
  }
  std::string text;
  try {
    text = header.dump();  // compact, like serde_json::to_string
  } catch (const nlohmann::json::exception& e) {
    FUSION_FAIL("cannot save ", path.string(), ": a tensor name or metadata entry is not valid UTF-8 (",
                e.what(), ")");
  }
  text.resize((text.size() + 7) / 8 * 8, ' ');
  FUSION_ENSURE(text.size() <= kMaxHeaderSize, "cannot save ", path.string(), ": the header would be ",
                text.size(), " bytes, over the format's limit of ", kMaxHeaderSize);
  return text;
}

/// Whether a page of [p, p + n) of this process's private file mapping holds a private copy (was
/// written to since it was mapped): a page present but not the file's page, or swapped out, in
/// /proc/self/pagemap (bits 63 present, 62 swapped, 61 file page). nullopt when it cannot be read.
std::optional<bool> written_since_mapped(const void* p, size_t n) {
  const size_t page = page_size();
  const uint64_t first = reinterpret_cast<uintptr_t>(p) / page;
  const uint64_t last = (reinterpret_cast<uintptr_t>(p) + n + page - 1) / page;
  const int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::vector<uint64_t> entries(size_t{1} << 16);
  std::optional<bool> out = false;
  for (uint64_t pg = first; pg < last && out == false;) {
    const size_t count = static_cast<size_t>(std::min<uint64_t>(entries.size(), last - pg));
    const ssize_t got = ::pread(fd, entries.data(), count * 8, static_cast<off_t>(pg * 8));
    if (got != static_cast<ssize_t>(count * 8)) {
      out = std::nullopt;
      break;
    }
    for (size_t j = 0; j < count; ++j) {
      const uint64_t e = entries[j];
      const bool present = (e >> 63) & 1, swapped = (e >> 62) & 1, file_page = (e >> 61) & 1;
      if (swapped || (present && !file_page)) {
        out = true;
        break;
      }
    }
    pg += count;
  }
  ::close(fd);
  return out;
}

/// save_safetensors without writing the data again: when every tensor of `entries` (placed by
/// plan_file, `text` its header) is the unchanged view, at its place, of one finished OutputFile
/// that no save has linked yet, that file is fsynced and linked at `path` (through a temporary name
/// and a rename, as write_atomic_with does). Returns false, having changed nothing, otherwise.
bool link_output_file(const fs::path& path, const std::vector<PlanEntry>& entries,
                      const std::vector<at::Tensor>& tensors, const std::string& text) {
  const uint8_t* first = nullptr;
  for (const PlanEntry& e : entries) {
    const at::Tensor& t = tensors[e.source];
    if (!t.device().is_cpu() || !t.is_contiguous() || t.scalar_type() != e.spec->type) return false;
    if (e.nbytes > 0 && first == nullptr) first = static_cast<const uint8_t*>(t.data_ptr()) - e.offset;
  }
  if (first == nullptr) return false;
  std::lock_guard<std::mutex> lock(outputs_mutex());
  OutputRecord* record = nullptr;
  for (OutputRecord& r : outputs()) {
    const auto* base = static_cast<const uint8_t*>(r.mapping->base);
    if (first == base + 8 + r.header.size()) record = &r;
  }
  if (record == nullptr || record->linked || record->header != text || record->entries != entries.size()) return false;
  for (const PlanEntry& e : entries) {
    if (e.nbytes > 0 && static_cast<const uint8_t*>(tensors[e.source].data_ptr()) != first + e.offset) return false;
  }
  const Mapping& mapping = *record->mapping;
  if (written_since_mapped(mapping.base, mapping.size) != std::optional<bool>(false)) return false;
  if (path.empty() || !path.has_filename()) return false;
  const fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  std::error_code ec;
  if (!fs::is_directory(dir, ec) || fs::is_directory(path, ec)) return false;
  if (mapping.flush != nullptr && mapping.flush->stop() != 0) return false;
  if (::fsync(mapping.fd) != 0) return false;
  const std::string proc = "/proc/self/fd/" + std::to_string(mapping.fd);
  fs::path tmp;
  bool made = false;
  for (int attempt = 0; attempt < 100 && !made; ++attempt) {
    tmp = dir / ("." + path.filename().string() + ".tmp-" + random_suffix());
    made = ::linkat(AT_FDCWD, proc.c_str(), AT_FDCWD, tmp.c_str(), AT_SYMLINK_FOLLOW) == 0;
    if (!made && errno != EEXIST) return false;
  }
  if (!made) return false;
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return false;
  }
  record->linked = true;
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return true;
}

}  // namespace

void save_safetensors(const fs::path& path, const StateDict& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<PlanEntry> entries;
  std::vector<at::Tensor> values;
  entries.reserve(tensors.size());
  values.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    FUSION_ENSURE(t.defined(), "cannot save ", path.string(), ": tensor ", qname(name), " is undefined");
    const DtypeSpec* spec = find_dtype(t.scalar_type());
    FUSION_ENSURE(spec != nullptr, "cannot save ", path.string(), ": tensor ", qname(name), " has dtype ",
                  c10::toString(t.scalar_type()), ", which fusion cannot write to safetensors (supported: ",
                  supported_list(), ")");
    entries.push_back({&name, spec, t.sizes().vec(), static_cast<uint64_t>(t.numel()) * spec->itemsize,
                       values.size()});
    values.push_back(t);
  }
  const std::string text = plan_file(entries, metadata, path);
  if (link_output_file(path, entries, values, text)) return;

  write_atomic_with(path, [&](FileWriter& w) {
    const uint64_t n = text.size();
    w.write(&n, 8);  // little-endian host
    w.write(text);
    for (const auto& e : entries) {
      if (e.nbytes == 0) continue;
      // One tensor at a time on the CPU, so a model on a GPU never needs a full CPU copy.
      const at::Tensor t = values[e.source].detach().to(at::kCPU).contiguous();
      w.write(t.data_ptr(), e.nbytes);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// OutputFile (checkpoint_stream.hpp): a merged model written as it is produced

namespace {
std::mutex& output_folder_mutex() {
  static std::mutex mu;
  return mu;
}
fs::path& output_folder_path() {
  static fs::path folder;
  return folder;
}

/// pwrite() of all `n` bytes at `offset`, through the staging buffer where the kernel's copy would
/// alias (write_unaliased). Throws naming `folder`.
void pwrite_all(int fd, const uint8_t* p, size_t n, uint64_t offset, const fs::path& folder) {
  write_unaliased(p, n, offset, [&](const uint8_t* q, size_t m, uint64_t off) {
    while (m > 0) {
      const ssize_t w = ::pwrite(fd, q, std::min(m, size_t{1} << 30), static_cast<off_t>(off));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) FUSION_FAIL("cannot write a merged model in ", folder.string(), ": ", errno_text(errno));
      q += w;
      m -= static_cast<size_t>(w);
      off += static_cast<uint64_t>(w);
    }
  });
}
}  // namespace

void detail::set_output_folder(const fs::path& folder) {
  std::lock_guard<std::mutex> lock(output_folder_mutex());
  output_folder_path() = folder;
}

fs::path detail::output_folder() {
  std::lock_guard<std::mutex> lock(output_folder_mutex());
  return output_folder_path();
}

struct detail::OutputFile::Impl {
  fs::path folder;
  int fd = -1;
  std::string header;        ///< padded header text
  size_t data_start = 0;     ///< 8 + header.size()
  size_t file_size = 0;
  std::vector<int64_t> offset_of;  ///< per stream tensor: its data's offset in the file, or -1
  struct View {
    std::string name;
    at::ScalarType type;
    std::vector<int64_t> shape;
    uint64_t offset;  ///< in the file
  };
  std::vector<View> views;  ///< the model's tensors, in base's order
  uint64_t expected = 0;    ///< bytes of the F32 tensors the merge writes
  mutable std::atomic<uint64_t> written{0};
  std::unique_ptr<detail::BackgroundFlush> flush;  ///< fd's; stopped before fd is closed

  ~Impl() {
    flush.reset();
    if (fd >= 0) ::close(fd);
  }
};

detail::OutputFile::OutputFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
detail::OutputFile::~OutputFile() = default;

std::unique_ptr<detail::OutputFile> detail::OutputFile::create(const CheckpointStream& stream,
                                                               const StateDict& base) {
  const fs::path folder = output_folder();
  if (folder.empty()) return nullptr;
  const CheckpointStream::Impl& s = *stream.impl_;
  std::unordered_map<std::string, size_t> index;
  for (size_t i = 0; i < s.tensors.size(); ++i) index.emplace(s.tensors[i].name, i);
  auto impl = std::make_unique<Impl>();
  impl->folder = folder;
  impl->offset_of.assign(s.tensors.size(), -1);
  // The model unflatten() would give: base's keys, the stream's F32 tensors in place of base's.
  std::vector<PlanEntry> entries;
  std::vector<std::pair<at::Tensor, size_t>> from_base;  // (tensor, entry source) written here
  std::vector<int64_t> stream_index;                     // per entry source: the stream tensor, or -1
  for (const auto& [key, t] : base) {
    const auto it = index.find(key);
    const size_t source = entries.size();
    if (it != index.end() && s.is_float[it->second]) {
      const TensorInfo& info = s.tensors[it->second];
      entries.push_back({&key, find_dtype(at::kFloat), info.shape, info.end - info.begin, source});
      stream_index.push_back(static_cast<int64_t>(it->second));
      impl->expected += info.end - info.begin;
      continue;
    }
    const DtypeSpec* spec = find_dtype(t.scalar_type());
    if (spec == nullptr) return nullptr;  // save_safetensors refuses it, with its message
    entries.push_back({&key, spec, t.sizes().vec(), static_cast<uint64_t>(t.numel()) * spec->itemsize, source});
    stream_index.push_back(-1);
    from_base.emplace_back(t, source);
  }
  impl->header = plan_file(entries, {{"format", "pt"}}, folder / "model.safetensors");
  impl->data_start = 8 + impl->header.size();
  uint64_t data = 0;
  for (const PlanEntry& e : entries) data += e.nbytes;
  impl->file_size = impl->data_start + data;
  impl->views.resize(entries.size());
  for (const PlanEntry& e : entries) {
    impl->views[e.source] = {*e.name, e.spec->type, e.shape, impl->data_start + e.offset};
    if (stream_index[e.source] >= 0) {
      impl->offset_of[static_cast<size_t>(stream_index[e.source])] = static_cast<int64_t>(impl->data_start + e.offset);
    }
  }

  impl->fd = ::open(folder.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0666);
  if (impl->fd < 0) return nullptr;  // a file system without unnamed files: saved as before
  impl->flush = std::make_unique<detail::BackgroundFlush>(impl->fd);
  if (::ftruncate(impl->fd, static_cast<off_t>(impl->file_size)) != 0) {
    FUSION_FAIL("cannot write a merged model in ", folder.string(), ": ", errno_text(errno));
  }
  // The file's blocks allocated in one call, rather than by each write as it comes (ext4: the
  // writes of a 350 MB model took ~0.21 s on 2 threads without, ~0.12 s with, the fsync ~0.04 s
  // more). A file system that cannot preallocate allocates as it writes; one that is full says so
  // here, before the merge.
  if (::fallocate(impl->fd, 0, 0, static_cast<off_t>(impl->file_size)) != 0 && errno == ENOSPC) {
    FUSION_FAIL("cannot write a merged model in ", folder.string(), ": ", errno_text(ENOSPC));
  }
  const uint64_t n = impl->header.size();
  std::string head(8, '\0');
  std::memcpy(head.data(), &n, 8);  // little-endian host
  head += impl->header;
  pwrite_all(impl->fd, reinterpret_cast<const uint8_t*>(head.data()), head.size(), 0, folder);
  for (const auto& [t, source] : from_base) {
    const PlanEntry* e = nullptr;
    for (const PlanEntry& p : entries) {
      if (p.source == source) e = &p;
    }
    if (e->nbytes == 0) continue;
    const at::Tensor c = t.detach().to(at::kCPU).contiguous();
    pwrite_all(impl->fd, static_cast<const uint8_t*>(c.data_ptr()), e->nbytes, impl->data_start + e->offset, folder);
  }
  return std::unique_ptr<OutputFile>(new OutputFile(std::move(impl)));
}

void detail::OutputFile::write(size_t i, int64_t begin, int64_t end, const float* src) const {
  const int64_t at = impl_->offset_of.at(i);
  FUSION_ENSURE(at >= 0 && impl_->fd >= 0, "OutputFile::write: tensor ", i, " is not one the merge writes");
  const size_t bytes = static_cast<size_t>(end - begin) * sizeof(float);
  pwrite_all(impl_->fd, reinterpret_cast<const uint8_t*>(src), bytes,
             static_cast<uint64_t>(at) + static_cast<uint64_t>(begin) * sizeof(float), impl_->folder);
  const uint64_t before = impl_->written.fetch_add(bytes);
  if ((before + bytes) / BackgroundFlush::kEvery != before / BackgroundFlush::kEvery) {
    // Make what is there durable meanwhile, so that the save's fsync finds little left to do.
    impl_->flush->request();
  }
}

StateDict detail::OutputFile::finish() {
  Impl& impl = *impl_;
  FUSION_ENSURE(impl.fd >= 0, "OutputFile::finish called twice");
  FUSION_ENSURE(impl.written >= impl.expected, "OutputFile::finish: the merge wrote ", impl.written.load(),
                " of the ", impl.expected, " bytes of its F32 tensors");
  impl.flush->request();
  void* p = ::mmap(nullptr, impl.file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, impl.fd, 0);
  if (p == MAP_FAILED) FUSION_FAIL("cannot map a merged model in ", impl.folder.string(), ": ", errno_text(errno));
  auto mapping = std::make_shared<Mapping>();
  mapping->base = p;
  mapping->size = impl.file_size;
  mapping->fd = impl.fd;
  mapping->flush = std::move(impl.flush);
  impl.fd = -1;
  {
    std::lock_guard<std::mutex> lock(outputs_mutex());
    outputs().push_back({mapping.get(), impl.header, impl.views.size(), false});
  }
  StateDict out;
  for (const Impl::View& v : impl.views) {
    std::shared_ptr<Mapping> keep = mapping;
    out.set(v.name, at::from_blob(static_cast<uint8_t*>(p) + v.offset, v.shape, [keep](void*) {},
                                  at::TensorOptions().dtype(v.type)));
  }
  return out;
}

}  // namespace fusion
