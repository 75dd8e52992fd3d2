#include "fusion/clip/tokenizer.hpp"

#include <nlohmann/json.hpp>
#include <utf8proc.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <sstream>

#include "byte_level_unicode.hpp"
#include "fusion/error.hpp"

namespace fusion::clip {
namespace {

using byte_level::append_utf8;
using byte_level::category;
using byte_level::is_letter;
using byte_level::is_number;
using byte_level::is_space;

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

std::string encode_utf8(const std::u32string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

// ---- Unicode, by utf8proc -----------------------------------------------------------------------
// The reference is Python: unicodedata.normalize("NFC"), str.lower(), str.strip() and the `regex`
// module's classes. Categories, case mappings and compositions come from utf8proc (Unicode 15.0 in
// Debian 12's 2.8); what it lacks is derived below from the Unicode files that define it. \p{L}, \p{N},
// \s and the byte table are in families/common/byte_level_unicode.hpp, shared with GPT-2's tokenizer.

// What Python's str.strip() strips (str.isspace): bidirectional class WS, B or S, or category Zs;
// White_Space and the separators U+001C..U+001F.
bool is_python_space(char32_t c) {
  const auto bidi = utf8proc_get_property(static_cast<utf8proc_int32_t>(c))->bidi_class;
  return bidi == UTF8PROC_BIDI_CLASS_WS || bidi == UTF8PROC_BIDI_CLASS_B || bidi == UTF8PROC_BIDI_CLASS_S ||
         category(c) == UTF8PROC_CATEGORY_ZS;
}

char32_t to_lower(char32_t c) { return static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))); }
char32_t to_upper(char32_t c) { return static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(c))); }
char32_t to_title(char32_t c) { return static_cast<char32_t>(utf8proc_totitle(static_cast<utf8proc_int32_t>(c))); }

// Case_Ignorable (DerivedCoreProperties.txt): Mn, Me, Cf, Lm, Sk, and Word_Break = MidLetter, MidNumLet
// or Single_Quote (WordBreakProperty.txt), a fixed set of punctuation utf8proc has no property for.
bool is_case_ignorable(char32_t c) {
  switch (category(c)) {
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_SK:
      return true;
    default:
      break;
  }
  switch (c) {
    case 0x27: case 0x2E: case 0x3A: case 0xB7: case 0x387: case 0x55F: case 0x5F4: case 0x2018:
    case 0x2019: case 0x2024: case 0x2027: case 0xFE13: case 0xFE52: case 0xFE55: case 0xFF07:
    case 0xFF0E: case 0xFF1A:
      return true;
    default:
      return false;
  }
}

// Cased (DerivedCoreProperties.txt): Lu, Ll, Lt, Other_Lowercase, Other_Uppercase. Final_Sigma asks only
// about characters that are not Case_Ignorable, and there it is exact: of Other_Lowercase and
// Other_Uppercase (PropList.txt) the ones outside Lm and Mn have a case mapping (Ⅰ..ⅿ, Ⓐ..ⓩ), except
// ª, º and the squared and negative Latin capitals U+1F130..U+1F189.
bool is_cased(char32_t c) {
  const auto k = category(c);
  return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT ||
         to_lower(c) != c || to_upper(c) != c || to_title(c) != c || c == 0xAA || c == 0xBA ||
         (c >= 0x1F130 && c <= 0x1F149) || (c >= 0x1F150 && c <= 0x1F169) || (c >= 0x1F170 && c <= 0x1F189);
}

// The Final_Sigma condition of SpecialCasing.txt for the capital sigma at s[i]: a cased letter before it
// and none after it, Case_Ignorable characters skipped both ways (as Python's str.lower() tests it).
bool final_sigma(const std::u32string& s, size_t i) {
  size_t j = i;
  while (j > 0 && is_case_ignorable(s[j - 1])) --j;
  if (j == 0 || !is_cased(s[j - 1])) return false;
  size_t k = i + 1;
  while (k < s.size() && is_case_ignorable(s[k])) ++k;
  return k == s.size() || !is_cased(s[k]);
}

// Python's str.lower(): the full lowercase mapping. It differs from the simple one (UnicodeData.txt,
// utf8proc_tolower) in the two language-independent entries of SpecialCasing.txt: U+0130 İ becomes
// i + U+0307 COMBINING DOT ABOVE, and Σ becomes ς in the Final_Sigma context.
std::u32string lower(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    const char32_t c = s[i];
    if (c == 0x130) {
      out.push_back('i');
      out.push_back(0x307);
    } else if (c == 0x3A3) {
      out.push_back(final_sigma(s, i) ? 0x3C2 : 0x3C3);
    } else {
      out.push_back(to_lower(c));
    }
  }
  return out;
}

// Canonical composition (NFC) by utf8proc.
std::u32string nfc(const std::u32string& s) {
  if (s.empty()) return s;
  const std::string bytes = encode_utf8(s);
  const auto* str = reinterpret_cast<const utf8proc_uint8_t*>(bytes.data());
  const auto len = static_cast<utf8proc_ssize_t>(bytes.size());
  const auto options = static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE);
  utf8proc_ssize_t n = utf8proc_decompose(str, len, nullptr, 0, options);
  FUSION_ENSURE(n >= 0, "clip tokenizer: NFC failed: ", utf8proc_errmsg(n));
  std::vector<utf8proc_int32_t> buf(static_cast<size_t>(n));
  n = utf8proc_decompose(str, len, buf.data(), n, options);
  FUSION_ENSURE(n >= 0 && static_cast<size_t>(n) == buf.size(), "clip tokenizer: NFC failed: ", utf8proc_errmsg(n));
  n = utf8proc_normalize_utf32(buf.data(), n, options);
  FUSION_ENSURE(n >= 0, "clip tokenizer: NFC failed: ", utf8proc_errmsg(n));
  return std::u32string(buf.begin(), buf.begin() + n);
}

// Case-insensitive equality with an ASCII letter of the pattern, as re.IGNORECASE matches it (simple
// case folding): `'s` also matches U+017F ſ.
bool equal_ignoring_case(char32_t c, char32_t ascii) {
  return c == ascii || to_lower(c) == ascii || to_lower(to_upper(c)) == ascii;
}

// Under re.IGNORECASE the negated class [^\s\p{L}\p{N}] also refuses a character whose case partner is a
// letter or number, while [\p{L}] and [\p{N}] look at the character's own category: so findall skips
// such a character (U+0345 COMBINING GREEK YPOGEGRAMMENI, whose upper case is Ι).
bool matched_by_no_alternative(char32_t c) {
  if (is_space(c) || is_letter(c) || is_number(c)) return false;
  for (char32_t partner : {to_lower(c), to_upper(c), to_title(c)}) {
    if (is_letter(partner) || is_number(partner)) return true;
  }
  return false;
}

// GPT-2's reversible map from bytes to printable code points: printable Latin-1 bytes map to
// themselves, the others to 256, 257, ... in byte order.
std::vector<std::string> make_byte_symbols() {
  std::vector<std::string> table(256);
  for (size_t b = 0; b < 256; ++b) append_utf8(table[b], byte_level::byte_chars()[b]);
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

// The pattern's own `<\|startoftext\|>|<\|endoftext\|>` alternatives, case-insensitive.
bool starts_with_ignoring_case_at(const std::u32string& s, size_t i, const char* lit) {
  for (size_t k = 0; lit[k]; ++k) {
    if (i + k >= s.size() || !equal_ignoring_case(s[i + k], static_cast<char32_t>(lit[k]))) return false;
  }
  return true;
}

// Length of the contraction 's 't 're 've 'm 'll 'd at i (0 if none); case-insensitive as the
// pattern is compiled with re.IGNORECASE.
size_t contraction_at(const std::u32string& s, size_t i) {
  if (s[i] != '\'' || i + 1 >= s.size()) return 0;
  for (const char* c : {"s", "t", "m", "d", "re", "ve", "ll"}) {
    if (starts_with_ignoring_case_at(s, i + 1, c)) return 1 + std::char_traits<char>::length(c);
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
  const std::u32string in = nfc(decode_utf8(text));
  // whitespace_clean: each run of white space becomes one space, then str.strip().
  std::u32string out;
  out.reserve(in.size());
  bool in_run = false;
  for (char32_t c : in) {
    if (is_space(c)) {
      if (!in_run) out.push_back(' ');
      in_run = true;
    } else {
      out.push_back(c);
      in_run = false;
    }
  }
  size_t b = 0, e = out.size();
  while (b < e && is_python_space(out[b])) ++b;
  while (e > b && is_python_space(out[e - 1])) --e;
  return encode_utf8(lower(out.substr(b, e - b)));
}

std::vector<std::string> ClipTokenizer::split_words(const std::string& cleaned) {
  const std::u32string s = decode_utf8(cleaned);
  std::vector<std::string> words;
  size_t i = 0;
  auto take = [&](size_t n) {
    words.push_back(encode_utf8(s.substr(i, n)));
    i += n;
  };
  // The added tokens, split off (exactly) before the pattern runs on the pieces between them.
  auto added_token_at = [&](size_t j) { return starts_with_at(s, j, kBos) || starts_with_at(s, j, kEos); };
  while (i < s.size()) {
    const char32_t c = s[i];
    if (starts_with_ignoring_case_at(s, i, kBos)) {
      take(std::char_traits<char>::length(kBos));
    } else if (starts_with_ignoring_case_at(s, i, kEos)) {
      take(std::char_traits<char>::length(kEos));
    } else if (is_space(c) || matched_by_no_alternative(c)) {
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
      size_t j = i + 1;
      while (j < s.size() && !is_space(s[j]) && !is_letter(s[j]) && !is_number(s[j]) &&
             !matched_by_no_alternative(s[j]) && !added_token_at(j)) {
        ++j;
      }
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
