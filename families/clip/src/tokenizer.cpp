#include "fusion/clip/tokenizer.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <limits>
#include <sstream>

#include "fusion/error.hpp"

namespace fusion::clip {
namespace {

const char* const kBos = "<|startoftext|>";
const char* const kEos = "<|endoftext|>";

// ---- UTF-8 -------------------------------------------------------------------------------------

// Decodes UTF-8; an invalid or truncated sequence becomes U+FFFD (one per bad byte).
std::u32string decode_utf8(const std::string& s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    char32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    bool ok = len > 0 && i + len <= s.size();
    for (int k = 1; ok && k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      ok = (cc >> 6) == 2;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are invalid too.
    if (ok && ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
               (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)) {
      ok = false;
    }
    if (!ok) {
      out.push_back(0xFFFD);
      ++i;
    } else {
      out.push_back(cp);
      i += len;
    }
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string encode_utf8(const std::u32string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

// ---- Unicode classes (approximate tables, see the header) -------------------------------------

struct Range {
  char32_t lo, hi;
};

template <size_t N>
bool in_ranges(char32_t c, const Range (&r)[N]) {
  for (size_t i = 0; i < N; ++i) {
    if (c < r[i].lo) return false;  // ranges are sorted
    if (c <= r[i].hi) return true;
  }
  return false;
}

// The White_Space property (what \s matches in the `regex` module and in the fast tokenizer).
bool is_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// \p{L} over the common blocks.
constexpr Range kLetters[] = {
    {0x41, 0x5A},       {0x61, 0x7A},       {0xAA, 0xAA},       {0xB5, 0xB5},       {0xBA, 0xBA},
    {0xC0, 0xD6},       {0xD8, 0xF6},       {0xF8, 0x2C1},      {0x2C6, 0x2D1},     {0x2E0, 0x2E4},
    {0x2EC, 0x2EC},     {0x2EE, 0x2EE},     {0x370, 0x374},     {0x376, 0x377},     {0x37A, 0x37D},
    {0x37F, 0x37F},     {0x386, 0x386},     {0x388, 0x38A},     {0x38C, 0x38C},     {0x38E, 0x3A1},
    {0x3A3, 0x3F5},     {0x3F7, 0x481},     {0x48A, 0x52F},     {0x531, 0x556},     {0x559, 0x559},
    {0x560, 0x588},     {0x5D0, 0x5EA},     {0x5EF, 0x5F2},     {0x620, 0x64A},     {0x66E, 0x66F},
    {0x671, 0x6D3},     {0x6D5, 0x6D5},     {0x904, 0x939},     {0x93D, 0x93D},     {0x950, 0x950},
    {0x958, 0x961},     {0xE01, 0xE30},     {0xE32, 0xE33},     {0xE40, 0xE46},     {0x10A0, 0x10FF},
    {0x1100, 0x11FF},   {0x1E00, 0x1FBC},   {0x2071, 0x2071},   {0x207F, 0x207F},   {0x2090, 0x209C},
    {0x2C00, 0x2CE4},   {0x3005, 0x3006},   {0x3031, 0x3035},   {0x303B, 0x303C},   {0x3041, 0x3096},
    {0x309D, 0x309F},   {0x30A1, 0x30FA},   {0x30FC, 0x30FF},   {0x3105, 0x312F},   {0x3131, 0x318E},
    {0x3400, 0x4DBF},   {0x4E00, 0x9FFF},   {0xA000, 0xA48C},   {0xAC00, 0xD7A3},   {0xF900, 0xFAFF},
    {0xFB00, 0xFB06},   {0xFF21, 0xFF3A},   {0xFF41, 0xFF5A},   {0xFF66, 0xFFBE},   {0x1D400, 0x1D7CB},
    {0x20000, 0x2FFFF}, {0x30000, 0x3134F},
};

// \p{N} (Nd, Nl, No) over the common blocks.
constexpr Range kNumbers[] = {
    {0x30, 0x39},     {0xB2, 0xB3},     {0xB9, 0xB9},     {0xBC, 0xBE},     {0x660, 0x669},
    {0x6F0, 0x6F9},   {0x966, 0x96F},   {0x9E6, 0x9EF},   {0xE50, 0xE59},   {0x2070, 0x2070},
    {0x2074, 0x2079}, {0x2080, 0x2089}, {0x2150, 0x2182}, {0x2185, 0x2189}, {0x2460, 0x249B},
    {0x24EA, 0x24FF}, {0x2776, 0x2793}, {0x3007, 0x3007}, {0x3021, 0x3029}, {0x3038, 0x303A},
    {0x3192, 0x3195}, {0x3220, 0x3229}, {0x3248, 0x324F}, {0x3251, 0x325F}, {0x3280, 0x3289},
    {0x32B1, 0x32BF}, {0xFF10, 0xFF19}, {0x1D7CE, 0x1D7FF},
};

bool is_letter(char32_t c) { return in_ranges(c, kLetters); }
bool is_number(char32_t c) { return in_ranges(c, kNumbers); }

// Simple lower-casing of the common cased scripts; İ becomes i + combining dot, as Python does.
void append_lower(std::u32string& out, char32_t c) {
  auto even_in = [&](char32_t lo, char32_t hi) { return c >= lo && c <= hi && (c - lo) % 2 == 0; };
  if (c < 0x80) {
    out.push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
  } else if ((c >= 0xC0 && c <= 0xDE && c != 0xD7) || (c >= 0x391 && c <= 0x3AB && c != 0x3A2) ||
             (c >= 0x410 && c <= 0x42F) || (c >= 0xFF21 && c <= 0xFF3A)) {
    out.push_back(c + 32);
  } else if (c == 0x130) {
    out.push_back('i');
    out.push_back(0x307);
  } else if (even_in(0x100, 0x12F) || even_in(0x132, 0x137) || even_in(0x14A, 0x177) ||
             even_in(0x460, 0x481) || even_in(0x48A, 0x4BF) || even_in(0x4D0, 0x52F) ||
             even_in(0x1E00, 0x1E95) || even_in(0x1EA0, 0x1EFF) || even_in(0x139, 0x148) ||
             even_in(0x179, 0x17E) || even_in(0x4C1, 0x4CE)) {
    out.push_back(c + 1);
  } else if (c == 0x1E9E) {
    out.push_back(0xDF);
  } else if (c == 0x178) {
    out.push_back(0xFF);
  } else if (c == 0x386) {
    out.push_back(0x3AC);
  } else if (c >= 0x388 && c <= 0x38A) {
    out.push_back(c + 37);
  } else if (c == 0x38C) {
    out.push_back(0x3CC);
  } else if (c == 0x38E || c == 0x38F) {
    out.push_back(c + 63);
  } else if (c >= 0x400 && c <= 0x40F) {
    out.push_back(c + 80);
  } else if (c >= 0x531 && c <= 0x556) {
    out.push_back(c + 48);
  } else if (c >= 0x2160 && c <= 0x216F) {
    out.push_back(c + 16);
  } else if (c >= 0x24B6 && c <= 0x24CF) {
    out.push_back(c + 26);
  } else {
    out.push_back(c);
  }
}

// GPT-2's reversible map from bytes to printable code points: printable Latin-1 bytes map to
// themselves, the others to 256, 257, ... in byte order.
std::vector<std::string> make_byte_symbols() {
  std::vector<std::string> table(256);
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    append_utf8(table[b], printable ? static_cast<char32_t>(b) : next++);
  }
  return table;
}

const std::vector<std::string>& byte_symbols() {
  static const std::vector<std::string> table = make_byte_symbols();
  return table;
}

bool starts_with_at(const std::u32string& s, size_t i, const char* lit) {
  for (size_t k = 0; lit[k]; ++k) {
    if (i + k >= s.size() || s[i + k] != static_cast<char32_t>(lit[k])) return false;
  }
  return true;
}

// Length of the contraction 's 't 're 've 'm 'll 'd at i (0 if none); case-insensitive as the
// pattern is compiled with re.IGNORECASE.
size_t contraction_at(const std::u32string& s, size_t i) {
  if (s[i] != '\'' || i + 1 >= s.size()) return 0;
  auto lower = [](char32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; };
  const char32_t a = lower(s[i + 1]);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 < s.size()) {
    const char32_t b = lower(s[i + 2]);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  }
  return 0;
}

std::string read_text_file(const std::filesystem::path& path, const char* what) {
  FUSION_ENSURE(std::filesystem::is_regular_file(path), "clip tokenizer: the ", what, " ", path.string(),
                " is missing");
  std::ifstream in(path, std::ios::binary);
  FUSION_ENSURE(in.good(), "clip tokenizer: cannot read ", path.string());
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

}  // namespace

std::string ClipTokenizer::clean(const std::string& text) {
  const std::u32string in = decode_utf8(text);
  std::u32string out;
  out.reserve(in.size());
  bool pending_space = false;
  for (char32_t c : in) {
    if (is_space(c)) {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out.push_back(' ');
    pending_space = false;
    append_lower(out, c);
  }
  return encode_utf8(out);
}

std::vector<std::string> ClipTokenizer::split_words(const std::string& cleaned) {
  const std::u32string s = decode_utf8(cleaned);
  std::vector<std::string> words;
  size_t i = 0;
  auto take = [&](size_t n) {
    words.push_back(encode_utf8(s.substr(i, n)));
    i += n;
  };
  auto special_at = [&](size_t j) { return starts_with_at(s, j, kBos) || starts_with_at(s, j, kEos); };
  while (i < s.size()) {
    const char32_t c = s[i];
    if (starts_with_at(s, i, kBos)) {
      take(std::char_traits<char>::length(kBos));
    } else if (starts_with_at(s, i, kEos)) {
      take(std::char_traits<char>::length(kEos));
    } else if (is_space(c)) {
      ++i;
    } else if (size_t n = contraction_at(s, i); n > 0) {
      take(n);
    } else if (is_letter(c)) {
      size_t j = i;
      while (j < s.size() && is_letter(s[j])) ++j;
      take(j - i);
    } else if (is_number(c)) {
      take(1);
    } else {
      // A run of other characters. Special tokens are added tokens, split off before the pattern.
      size_t j = i + 1;
      while (j < s.size() && !is_space(s[j]) && !is_letter(s[j]) && !is_number(s[j]) && !special_at(j)) ++j;
      take(j - i);
    }
  }
  return words;
}

ClipTokenizer ClipTokenizer::from_folder(const std::filesystem::path& dir) {
  return from_files(dir / "vocab.json", dir / "merges.txt");
}

ClipTokenizer ClipTokenizer::from_files(const std::filesystem::path& vocab_json,
                                        const std::filesystem::path& merges_txt) {
  const std::string vocab_text = read_text_file(vocab_json, "vocabulary");
  const std::string merges_text = read_text_file(merges_txt, "merge list");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(vocab_text);
  } catch (const std::exception& e) {
    FUSION_FAIL("clip tokenizer: ", vocab_json.string(), " is not valid JSON: ", e.what());
  }
  FUSION_ENSURE(j.is_object(), "clip tokenizer: ", vocab_json.string(), " must be a JSON object {token: id}");
  std::unordered_map<std::string, int64_t> vocab;
  vocab.reserve(j.size());
  for (auto it = j.begin(); it != j.end(); ++it) {
    FUSION_ENSURE(it.value().is_number_integer(), "clip tokenizer: ", vocab_json.string(), ": the id of '",
                  it.key(), "' is not an integer");
    vocab.emplace(it.key(), it.value().get<int64_t>());
  }
  for (const char* special : {kBos, kEos}) {
    FUSION_ENSURE(vocab.count(special), "clip tokenizer: ", vocab_json.string(), " has no '", special, "'");
  }
  std::vector<std::pair<std::string, std::string>> merges;
  std::istringstream lines(merges_text);
  std::string line;
  size_t line_no = 0;
  while (std::getline(lines, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line_no == 1 && line.rfind("#version", 0) == 0) continue;
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    std::istringstream fields(line);
    std::string a, b, extra;
    fields >> a >> b;
    FUSION_ENSURE(!a.empty() && !b.empty() && !(fields >> extra), "clip tokenizer: ", merges_txt.string(),
                  " line ", line_no, ": expected two symbols, got '", line, "'");
    merges.emplace_back(std::move(a), std::move(b));
  }
  return ClipTokenizer(std::move(vocab), merges);
}

ClipTokenizer::ClipTokenizer(std::unordered_map<std::string, int64_t> vocab,
                             const std::vector<std::pair<std::string, std::string>>& merges)
    : vocab_(std::move(vocab)) {
  auto bos = vocab_.find(kBos), eos = vocab_.find(kEos);
  FUSION_ENSURE(bos != vocab_.end() && eos != vocab_.end(), "clip tokenizer: the vocabulary lacks ", kBos,
                " or ", kEos);
  bos_id_ = bos->second;
  eos_id_ = eos->second;
  ranks_.reserve(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    ranks_.emplace(merges[r].first + " " + merges[r].second, static_cast<int64_t>(r));  // first wins
  }
}

std::vector<std::string> ClipTokenizer::bpe(const std::string& word) const {
  std::vector<std::string> sym;
  const auto& table = byte_symbols();
  for (unsigned char b : word) sym.push_back(table[b]);
  if (sym.empty()) return sym;
  sym.back() += "</w>";
  std::string key;
  while (sym.size() > 1) {
    // The adjacent pair with the lowest rank; stop when no pair has one.
    int64_t best = std::numeric_limits<int64_t>::max();
    size_t best_i = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      key.assign(sym[i]).append(" ").append(sym[i + 1]);
      auto it = ranks_.find(key);
      if (it != ranks_.end() && it->second < best) {
        best = it->second;
        best_i = i;
      }
    }
    if (best == std::numeric_limits<int64_t>::max()) break;
    const std::string first = sym[best_i], second = sym[best_i + 1];
    // Merge every occurrence, left to right, without overlap.
    std::vector<std::string> merged;
    merged.reserve(sym.size());
    for (size_t i = 0; i < sym.size();) {
      if (i + 1 < sym.size() && sym[i] == first && sym[i + 1] == second) {
        merged.push_back(first + second);
        i += 2;
      } else {
        merged.push_back(sym[i]);
        ++i;
      }
    }
    sym.swap(merged);
  }
  return sym;
}

std::vector<std::string> ClipTokenizer::tokenize(const std::string& text) const {
  std::vector<std::string> tokens;
  for (const std::string& word : split_words(clean(text))) {
    if (word == kBos || word == kEos) {
      tokens.push_back(word);
      continue;
    }
    for (std::string& t : bpe(word)) tokens.push_back(std::move(t));
  }
  return tokens;
}

std::vector<int64_t> ClipTokenizer::encode(const std::string& text, int64_t max_length) const {
  FUSION_ENSURE(max_length >= 2, "clip tokenizer: max_length must be at least 2, got ", max_length);
  std::vector<int64_t> ids{bos_id_};
  for (const std::string& t : tokenize(text)) {
    if (static_cast<int64_t>(ids.size()) == max_length - 1) break;  // truncation keeps the eos slot
    auto it = vocab_.find(t);
    ids.push_back(it == vocab_.end() ? unk_id() : it->second);
  }
  ids.push_back(eos_id_);
  return ids;
}

at::Tensor ClipTokenizer::encode_batch(const std::vector<std::string>& texts, int64_t max_length,
                                       bool pad_to_max) const {
  std::vector<std::vector<int64_t>> rows;
  rows.reserve(texts.size());
  int64_t len = pad_to_max ? max_length : 0;
  for (const std::string& t : texts) {
    rows.push_back(encode(t, max_length));
    len = std::max<int64_t>(len, static_cast<int64_t>(rows.back().size()));
  }
  at::Tensor out = at::full({static_cast<int64_t>(rows.size()), len}, pad_id(), at::kLong);
  auto acc = out.accessor<int64_t, 2>();
  for (size_t r = 0; r < rows.size(); ++r) {
    for (size_t c = 0; c < rows[r].size(); ++c) acc[r][c] = rows[r][c];
  }
  return out;
}

}  // namespace fusion::clip
