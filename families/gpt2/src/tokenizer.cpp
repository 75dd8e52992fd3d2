#include "fusion/gpt2/tokenizer.hpp"

#include <nlohmann/json.hpp>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <limits>
#include <mutex>
#include <shared_mutex>
#include <sstream>

#include "byte_level_unicode.hpp"
#include "fusion/error.hpp"

namespace fusion::gpt2 {
namespace {

using byte_level::append_utf8;
using byte_level::byte_chars;
using byte_level::is_letter;
using byte_level::is_number;
using byte_level::is_space;

// ---- UTF-8 -------------------------------------------------------------------------------------

std::string hex_byte(unsigned char b) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02X", b);
  return buf;
}

std::string hex_code_point(char32_t c) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "U+%04X", static_cast<unsigned>(c));
  return buf;
}

// Length of the well-formed UTF-8 sequence at s[i] (Unicode's table 3-7: no overlong forms, no
// surrogates, nothing past U+10FFFF), or, when it is ill-formed, minus the length of its maximal
// subpart (at least 1): the bytes that one U+FFFD replaces.
int utf8_sequence_at(const std::string& s, size_t i, char32_t* cp) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  int len;
  unsigned char lo = 0x80, hi = 0xBF;  // the range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  char32_t c = len == 2 ? (b0 & 0x1F) : len == 3 ? (b0 & 0x0F) : (b0 & 0x07);
  for (int k = 1; k < len; ++k) {
    if (i + k >= s.size()) return -k;
    const auto b = static_cast<unsigned char>(s[i + k]);
    if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return -k;
    c = (c << 6) | (b & 0x3F);
  }
  *cp = c;
  return len;
}

// The code points of s and the byte offset each starts at (plus one past the end); refuses
// ill-formed UTF-8, naming the offset of the first bad byte.
void decode_utf8_strict(const std::string& s, std::u32string* cps, std::vector<size_t>* offsets) {
  cps->clear();
  offsets->clear();
  cps->reserve(s.size());
  offsets->reserve(s.size() + 1);
  for (size_t i = 0; i < s.size();) {
    char32_t c = 0;
    const int n = utf8_sequence_at(s, i, &c);
    if (n < 0) {
      const auto b0 = static_cast<unsigned char>(s[i]);
      const bool lead = (b0 >= 0xC2 && b0 <= 0xF4);
      const char* what = !lead ? " cannot start a character"
                         : i + static_cast<size_t>(-n) == s.size() ? " starts a sequence that the text cuts short"
                                                                   : " starts an ill-formed sequence";
      FUSION_FAIL("gpt2 tokenizer: the text is not valid UTF-8: byte ", hex_byte(b0), " at offset ", i, what);
    }
    cps->push_back(c);
    offsets->push_back(i);
    i += static_cast<size_t>(n);
  }
  offsets->push_back(s.size());
}

// ---- the pattern's character classes (Python's `regex` module; the rest in byte_level_unicode.hpp) --

// [^\s\p{L}\p{N}]
bool is_other(char32_t c) { return !is_space(c) && !is_letter(c) && !is_number(c); }

// ---- GPT-2's bytes → unicode table (byte_level::byte_chars) -------------------------------------

// The byte a table character stands for, or -1.
int char_to_byte(char32_t c) {
  static const std::unordered_map<char32_t, int> inverse = [] {
    std::unordered_map<char32_t, int> m;
    for (int b = 0; b < 256; ++b) m.emplace(byte_chars()[static_cast<size_t>(b)], b);
    return m;
  }();
  auto it = inverse.find(c);
  return it == inverse.end() ? -1 : it->second;
}

std::string read_file(const std::filesystem::path& path, const char* what) {
  std::error_code ec;
  FUSION_ENSURE(std::filesystem::is_regular_file(path, ec), "gpt2 tokenizer: the ", what, " ", path.string(),
                " is missing");
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buf;
  buf << in.rdbuf();
  FUSION_ENSURE(in.good() || in.eof(), "gpt2 tokenizer: cannot read ", path.string());
  return buf.str();
}

}  // namespace

// ---- the tables ---------------------------------------------------------------------------------

struct Gpt2Tokenizer::Impl {
  std::unordered_map<std::string, int64_t> vocab;     // token → id
  std::unordered_map<int64_t, std::string> tokens;    // id → token
  std::unordered_map<int64_t, std::string> id_bytes;  // id → the bytes it stands for
  std::array<int64_t, 256> byte_ids{};                // byte → the id of its one-character token
  // (first id << 32 | second id) → (rank, merged id)
  std::unordered_map<uint64_t, std::pair<int64_t, int64_t>> merges;
  int64_t eos_id = 0;

  // piece (UTF-8) → ids; bounded so that a long stream of distinct words cannot grow it without end.
  static constexpr size_t kCacheLimit = 1 << 18;
  mutable std::shared_mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int64_t>> cache;

  static uint64_t key(int64_t a, int64_t b) {
    return (static_cast<uint64_t>(a) << 32) | static_cast<uint64_t>(static_cast<uint32_t>(b));
  }

  // Step 3 on one piece: byte ids, then the merges by rank, every occurrence of the best pair left
  // to right (as encoder.py's bpe()).
  std::vector<int64_t> bpe(const std::string& piece) const {
    {
      std::shared_lock<std::shared_mutex> lock(cache_mutex);
      auto it = cache.find(piece);
      if (it != cache.end()) return it->second;
    }
    std::vector<int64_t> word;
    word.reserve(piece.size());
    for (unsigned char b : piece) word.push_back(byte_ids[b]);
    std::vector<int64_t> merged;
    while (word.size() > 1) {
      int64_t best_rank = std::numeric_limits<int64_t>::max();
      uint64_t best_key = 0;
      int64_t best_id = 0;
      for (size_t i = 0; i + 1 < word.size(); ++i) {
        auto it = merges.find(key(word[i], word[i + 1]));
        if (it != merges.end() && it->second.first < best_rank) {
          best_rank = it->second.first;
          best_key = it->first;
          best_id = it->second.second;
        }
      }
      if (best_rank == std::numeric_limits<int64_t>::max()) break;
      merged.clear();
      for (size_t i = 0; i < word.size();) {
        if (i + 1 < word.size() && key(word[i], word[i + 1]) == best_key) {
          merged.push_back(best_id);
          i += 2;
        } else {
          merged.push_back(word[i]);
          ++i;
        }
      }
      word.swap(merged);
    }
    std::unique_lock<std::shared_mutex> lock(cache_mutex);
    if (cache.size() < kCacheLimit) cache.emplace(piece, word);
    return word;
  }

  // Steps 1–3: `<|endoftext|>` split off first (when asked), the pieces between pre-tokenised.
  template <typename OnPiece, typename OnSpecial>
  void split(const std::string& text, bool special_tokens_in_text, OnPiece on_piece, OnSpecial on_special) const {
    const std::string special = kEndOfText;
    size_t start = 0;
    while (start <= text.size()) {
      const size_t at = special_tokens_in_text ? text.find(special, start) : std::string::npos;
      const size_t end = at == std::string::npos ? text.size() : at;
      for (const std::string& piece : pre_tokenize(text.substr(start, end - start))) on_piece(piece);
      if (at == std::string::npos) break;
      on_special();
      start = at + special.size();
    }
  }
};

Gpt2Tokenizer Gpt2Tokenizer::from_folder(const std::filesystem::path& dir) {
  return from_files(dir / "vocab.json", dir / "merges.txt");
}

Gpt2Tokenizer Gpt2Tokenizer::from_files(const std::filesystem::path& vocab_json,
                                        const std::filesystem::path& merges_txt) {
  const std::string vocab_text = read_file(vocab_json, "vocabulary");
  const std::string merges_text = read_file(merges_txt, "merge list");
  const std::string vname = vocab_json.string();
  const std::string mname = merges_txt.string();

  nlohmann::json j;
  try {
    j = nlohmann::json::parse(vocab_text);
  } catch (const nlohmann::json::exception& e) {
    FUSION_FAIL("gpt2 tokenizer: ", vname, " is not valid JSON: ", e.what());
  }
  FUSION_ENSURE(j.is_object(), "gpt2 tokenizer: ", vname, " must be a JSON object {token: id}, got a ", j.type_name());
  std::unordered_map<std::string, int64_t> vocab;
  vocab.reserve(j.size());
  for (auto it = j.begin(); it != j.end(); ++it) {
    FUSION_ENSURE(it.value().is_number_integer(), "gpt2 tokenizer: ", vname, ": the id of token '", it.key(),
                  "' is not an integer: ", it.value().dump());
    vocab.emplace(it.key(), it.value().get<int64_t>());
  }

  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<size_t> line_of;  // merges.txt's line number of each merge, for the messages
  size_t line_no = 0;
  for (size_t pos = 0; pos < merges_text.size();) {
    size_t eol = merges_text.find('\n', pos);
    if (eol == std::string::npos) eol = merges_text.size();
    std::string line = merges_text.substr(pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line_no == 1 && line.rfind("#version", 0) == 0) continue;
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    FUSION_ENSURE(sp != std::string::npos && sp > 0 && sp + 1 < line.size() &&
                      line.find(' ', sp + 1) == std::string::npos,
                  "gpt2 tokenizer: ", mname, " line ", line_no,
                  ": expected two symbols separated by one space, got '", line, "'");
    merges.emplace_back(line.substr(0, sp), line.substr(sp + 1));
    line_of.push_back(line_no);
  }
  Gpt2Tokenizer t;
  t.impl_ = make_impl(vocab, merges, "gpt2 tokenizer: " + vname, "gpt2 tokenizer: " + mname, &line_of);
  return t;
}

Gpt2Tokenizer::Gpt2Tokenizer(const std::unordered_map<std::string, int64_t>& vocab,
                             const std::vector<std::pair<std::string, std::string>>& merges,
                             const std::string& source)
    : impl_(make_impl(vocab, merges, source, source + ": merges", nullptr)) {}

std::shared_ptr<const Gpt2Tokenizer::Impl> Gpt2Tokenizer::make_impl(
    const std::unordered_map<std::string, int64_t>& vocab,
    const std::vector<std::pair<std::string, std::string>>& merges, const std::string& source,
    const std::string& merges_source, const std::vector<size_t>* merge_lines) {
  auto impl = std::make_shared<Impl>();
  impl->vocab = vocab;
  impl->tokens.reserve(vocab.size());
  impl->id_bytes.reserve(vocab.size());
  // Ordered by id, so that the messages name the same token every time.
  std::vector<std::pair<int64_t, const std::string*>> by_id;
  by_id.reserve(vocab.size());
  for (const auto& [token, id] : vocab) by_id.emplace_back(id, &token);
  std::sort(by_id.begin(), by_id.end(),
            [](const auto& a, const auto& b) { return a.first != b.first ? a.first < b.first : *a.second < *b.second; });
  std::u32string cps;
  std::vector<size_t> offsets;
  for (size_t k = 0; k < by_id.size(); ++k) {
    const auto& [id, token] = by_id[k];
    FUSION_ENSURE(id >= 0 && id <= std::numeric_limits<int32_t>::max(), source, ": the id of token '", *token,
                  "' is ", id, ", outside 0..2147483647");
    FUSION_ENSURE(k == 0 || by_id[k - 1].first != id, source, ": the id ", id, " is given to both '",
                  *by_id[k - 1].second, "' and '", *token, "'");
    FUSION_ENSURE(!token->empty(), source, ": the token of id ", id, " is empty");
    impl->tokens.emplace(id, *token);
    try {
      decode_utf8_strict(*token, &cps, &offsets);
    } catch (const Error&) {
      FUSION_FAIL(source, ": the token of id ", id, " is not valid UTF-8");
    }
    std::string bytes;
    for (char32_t c : cps) {
      const int b = char_to_byte(c);
      FUSION_ENSURE(b >= 0, source, ": token '", *token, "' (id ", id, ") has ", hex_code_point(c),
                    ", which is not in GPT-2's byte alphabet");
      bytes += static_cast<char>(b);
    }
    impl->id_bytes.emplace(id, std::move(bytes));
  }
  auto eos = impl->vocab.find(kEndOfText);
  FUSION_ENSURE(eos != impl->vocab.end(), source, ": there is no '", kEndOfText, "' token");
  impl->eos_id = eos->second;
  for (int b = 0; b < 256; ++b) {
    std::string symbol;
    append_utf8(symbol, byte_chars()[static_cast<size_t>(b)]);
    auto it = impl->vocab.find(symbol);
    FUSION_ENSURE(it != impl->vocab.end(), source, ": there is no token '", symbol, "' for byte ",
                  hex_byte(static_cast<unsigned char>(b)), " (a byte-level vocabulary has all 256)");
    impl->byte_ids[static_cast<size_t>(b)] = it->second;
  }
  impl->merges.reserve(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto& [a, b] = merges[r];
    const std::string where = merge_lines ? " line " + std::to_string(merge_lines->at(r)) : "[" + std::to_string(r) + "]";
    const auto ia = impl->vocab.find(a), ib = impl->vocab.find(b), iab = impl->vocab.find(a + b);
    FUSION_ENSURE(ia != impl->vocab.end(), merges_source, where, ": merge '", a, " ", b, "' names '", a,
                  "', which is not in the vocabulary");
    FUSION_ENSURE(ib != impl->vocab.end(), merges_source, where, ": merge '", a, " ", b, "' names '", b,
                  "', which is not in the vocabulary");
    FUSION_ENSURE(iab != impl->vocab.end(), merges_source, where, ": merge '", a, " ", b, "' makes '", a + b,
                  "', which is not in the vocabulary");
    impl->merges[Impl::key(ia->second, ib->second)] = {static_cast<int64_t>(r), iab->second};  // last rank wins
  }
  return impl;
}

// ---- step 2: GPT-2's pattern ---------------------------------------------------------------------

std::vector<std::string> Gpt2Tokenizer::pre_tokenize(const std::string& text) {
  std::u32string s;
  std::vector<size_t> offsets;
  decode_utf8_strict(text, &s, &offsets);
  std::vector<std::string> pieces;
  const size_t n = s.size();
  size_t i = 0;
  auto take = [&](size_t end) {
    pieces.push_back(text.substr(offsets[i], offsets[end] - offsets[i]));
    i = end;
  };
  auto run = [&](size_t from, bool (*in_class)(char32_t)) {
    size_t j = from;
    while (j < n && in_class(s[j])) ++j;
    return j;
  };
  while (i < n) {
    const char32_t c = s[i];
    // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive)
    if (c == '\'' && i + 1 < n) {
      const char32_t c1 = s[i + 1];
      const char32_t c2 = i + 2 < n ? s[i + 2] : 0;
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
        take(i + 2);
        continue;
      }
      if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
        take(i + 3);
        continue;
      }
    }
    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: the optional space is U+0020 only.
    const size_t body = (c == ' ' && i + 1 < n) ? i + 1 : i;
    bool matched = false;
    for (bool (*in_class)(char32_t) : {is_letter, is_number, is_other}) {
      if (in_class(s[body])) {
        take(run(body, in_class));
        matched = true;
        break;
      }
    }
    if (matched) continue;
    // Here s[i] is white space (the classes above cover every other character).
    // `\s+(?!\S)`: the run, less its last character when a non-space follows (that one starts the
    // next match, e.g. as the space of ` ?\p{L}+`); `\s+` when that would leave nothing.
    const size_t end = run(i, is_space);
    take(end == n || end - i == 1 ? end : end - 1);
  }
  return pieces;
}

// ---- encoding -----------------------------------------------------------------------------------

std::vector<std::string> Gpt2Tokenizer::tokenize(const std::string& text, bool special_tokens_in_text) const {
  std::vector<std::string> out;
  for (int64_t id : encode(text, special_tokens_in_text)) out.push_back(impl_->tokens.at(id));
  return out;
}

std::vector<int64_t> Gpt2Tokenizer::encode(const std::string& text, bool special_tokens_in_text) const {
  std::vector<int64_t> ids;
  impl_->split(
      text, special_tokens_in_text,
      [&](const std::string& piece) {
        const std::vector<int64_t> p = impl_->bpe(piece);
        ids.insert(ids.end(), p.begin(), p.end());
      },
      [&] { ids.push_back(impl_->eos_id); });
  return ids;
}

std::vector<int64_t> Gpt2Tokenizer::encode_pair(const std::string& a, const std::string& b,
                                                bool special_tokens_in_text) const {
  std::vector<int64_t> ids = encode(a, special_tokens_in_text);
  const std::vector<int64_t> second = encode(b, special_tokens_in_text);
  ids.insert(ids.end(), second.begin(), second.end());
  return ids;
}

namespace {

void check_options(const EncodeOptions& o) {
  FUSION_ENSURE(!(o.truncation || o.padding == Padding::max_length) || o.max_length >= 1,
                "gpt2 tokenizer: max_length must be at least 1 to truncate or pad to it, got ", o.max_length);
}

void cut(std::vector<int64_t>& ids, size_t keep, Side side) {
  if (ids.size() <= keep) return;
  if (side == Side::right) {
    ids.resize(keep);
  } else {
    ids.erase(ids.begin(), ids.end() - static_cast<std::ptrdiff_t>(keep));
  }
}

Encoding finish(std::vector<int64_t> ids, const EncodeOptions& o, int64_t pad_id, size_t pad_to) {
  Encoding e;
  const size_t real = ids.size();
  const size_t pads = pad_to > real ? pad_to - real : 0;
  e.ids.reserve(real + pads);
  e.attention_mask.reserve(real + pads);
  if (o.padding_side == Side::left) {
    e.ids.assign(pads, pad_id);
    e.attention_mask.assign(pads, 0);
  }
  e.ids.insert(e.ids.end(), ids.begin(), ids.end());
  e.attention_mask.insert(e.attention_mask.end(), real, 1);
  if (o.padding_side == Side::right) {
    e.ids.insert(e.ids.end(), pads, pad_id);
    e.attention_mask.insert(e.attention_mask.end(), pads, 0);
  }
  return e;
}

size_t pad_length(const EncodeOptions& o) {
  return o.padding == Padding::max_length ? static_cast<size_t>(o.max_length) : 0;
}

}  // namespace

Encoding Gpt2Tokenizer::encode_plus(const std::string& text, const EncodeOptions& o) const {
  check_options(o);
  std::vector<int64_t> ids = encode(text, o.special_tokens_in_text);
  if (o.truncation) cut(ids, static_cast<size_t>(o.max_length), o.truncation_side);
  return finish(std::move(ids), o, o.pad_id.value_or(impl_->eos_id), pad_length(o));
}

Encoding Gpt2Tokenizer::encode_plus(const std::string& text, const std::string& text_pair,
                                    const EncodeOptions& o) const {
  check_options(o);
  std::vector<int64_t> a = encode(text, o.special_tokens_in_text);
  std::vector<int64_t> b = encode(text_pair, o.special_tokens_in_text);
  const auto max = static_cast<size_t>(o.max_length);
  if (o.truncation && a.size() + b.size() > max) {
    // The fast tokenizer's longest_first (tokenizers' truncate_encodings).
    const bool first_longer = a.size() > b.size();
    size_t n_short = first_longer ? b.size() : a.size();
    size_t n_long = n_short > max ? n_short : std::max(n_short, max - n_short);
    if (n_short + n_long > max) {
      n_short = max / 2;
      n_long = n_short + max % 2;
    }
    cut(a, first_longer ? n_long : n_short, o.truncation_side);
    cut(b, first_longer ? n_short : n_long, o.truncation_side);
  }
  a.insert(a.end(), b.begin(), b.end());
  return finish(std::move(a), o, o.pad_id.value_or(impl_->eos_id), pad_length(o));
}

namespace {

BatchEncoding stack(std::vector<Encoding> rows, const EncodeOptions& o, int64_t pad_id) {
  size_t len = pad_length(o);  // so that an empty batch is [0, max_length] too
  for (const Encoding& r : rows) len = std::max(len, r.ids.size());
  for (size_t k = 0; k < rows.size(); ++k) {
    if (rows[k].ids.size() == len) continue;
    FUSION_ENSURE(o.padding != Padding::none, "gpt2 tokenizer: without padding every row needs the same length; row ",
                  k, " has ", rows[k].ids.size(), " ids, another ", len);
    std::vector<int64_t> ids;
    ids.swap(rows[k].ids);
    rows[k] = finish(std::move(ids), o, pad_id, len);
  }
  const auto n = static_cast<int64_t>(rows.size());
  BatchEncoding out;
  out.input_ids = at::empty({n, static_cast<int64_t>(len)}, at::kLong);
  out.attention_mask = at::empty({n, static_cast<int64_t>(len)}, at::kLong);
  auto ids = out.input_ids.accessor<int64_t, 2>();
  auto mask = out.attention_mask.accessor<int64_t, 2>();
  for (int64_t r = 0; r < n; ++r) {
    for (size_t c = 0; c < len; ++c) {
      ids[r][static_cast<int64_t>(c)] = rows[static_cast<size_t>(r)].ids[c];
      mask[r][static_cast<int64_t>(c)] = rows[static_cast<size_t>(r)].attention_mask[c];
    }
  }
  return out;
}

}  // namespace

BatchEncoding Gpt2Tokenizer::encode_batch(const std::vector<std::string>& texts, const EncodeOptions& o) const {
  std::vector<Encoding> rows;
  rows.reserve(texts.size());
  for (const std::string& t : texts) rows.push_back(encode_plus(t, o));
  return stack(std::move(rows), o, o.pad_id.value_or(impl_->eos_id));
}

BatchEncoding Gpt2Tokenizer::encode_batch(const std::vector<std::string>& texts,
                                          const std::vector<std::string>& text_pairs, const EncodeOptions& o) const {
  FUSION_ENSURE(texts.size() == text_pairs.size(), "gpt2 tokenizer: ", texts.size(), " texts but ", text_pairs.size(),
                " text pairs");
  std::vector<Encoding> rows;
  rows.reserve(texts.size());
  for (size_t k = 0; k < texts.size(); ++k) rows.push_back(encode_plus(texts[k], text_pairs[k], o));
  return stack(std::move(rows), o, o.pad_id.value_or(impl_->eos_id));
}

// ---- decoding -----------------------------------------------------------------------------------

std::string Gpt2Tokenizer::decode_bytes(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::string out;
  for (size_t k = 0; k < ids.size(); ++k) {
    if (skip_special_tokens && ids[k] == impl_->eos_id) continue;
    auto it = impl_->id_bytes.find(ids[k]);
    FUSION_ENSURE(it != impl_->id_bytes.end(), "gpt2 tokenizer: cannot decode id ", ids[k], " (position ", k,
                  "): it is not in the vocabulary");
    out += it->second;
  }
  return out;
}

std::string Gpt2Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  const std::string bytes = decode_bytes(ids, skip_special_tokens);
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    char32_t c = 0;
    const int n = utf8_sequence_at(bytes, i, &c);
    if (n > 0) {
      out.append(bytes, i, static_cast<size_t>(n));
      i += static_cast<size_t>(n);
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD for the maximal subpart
      i += static_cast<size_t>(-n);
    }
  }
  return out;
}

std::optional<int64_t> Gpt2Tokenizer::token_to_id(const std::string& token) const {
  auto it = impl_->vocab.find(token);
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

std::string Gpt2Tokenizer::id_to_token(int64_t id) const {
  auto it = impl_->tokens.find(id);
  FUSION_ENSURE(it != impl_->tokens.end(), "gpt2 tokenizer: the id ", id, " is not in the vocabulary");
  return it->second;
}

int64_t Gpt2Tokenizer::eos_id() const { return impl_->eos_id; }
size_t Gpt2Tokenizer::vocab_size() const { return impl_->vocab.size(); }
size_t Gpt2Tokenizer::num_merges() const { return impl_->merges.size(); }

}  // namespace fusion::gpt2
