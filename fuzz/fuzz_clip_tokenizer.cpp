// libFuzzer target for CLIP's tokenizer on text (families/clip/src/tokenizer.cpp): cleaning, the
// word pattern, byte-level BPE and encoding, with the test vocabulary of tests/clip/data/clip_model
// (vocab.json, merges.txt), loaded once.
//
// Input: the text (any bytes; invalid UTF-8 included). Every text must tokenize: an exception, a
// crash or a sanitizer report is a bug, and so is a result that breaks these invariants:
//   - the words of split_words(clean(t)) are pieces of clean(t), in order (nothing invented or
//     reordered; characters no alternative of the pattern matches, as U+0345, are skipped);
//   - tokenize(t) joined is, word by word, the special token itself or the word's bytes mapped
//     through GPT-2's byte table with `</w>` after them (BPE only regroups symbols);
//   - encode(t, L) is <|startoftext|>, the vocabulary ids of the first L - 2 tokens (unknown
//     tokens as <|endoftext|>), <|endoftext|>.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "fusion/clip/tokenizer.hpp"
#include "fuzz_support.hpp"

namespace fz = fusion::fuzz;
using fusion::clip::ClipTokenizer;

#ifndef FUSION_FUZZ_CLIP_DATA
#error "FUSION_FUZZ_CLIP_DATA: the folder of the test vocabulary (fuzz/CMakeLists.txt sets it)"
#endif

namespace {

const char* const kBos = "<|startoftext|>";
const char* const kEos = "<|endoftext|>";

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else {  // the byte table needs code points below U+0800 only
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// GPT-2's bytes → printable characters (bytes_to_unicode() in CLIP's simple_tokenizer.py).
const std::vector<std::string>& byte_table() {
  static const std::vector<std::string> table = [] {
    std::vector<std::string> t(256);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      append_utf8(t[b], printable ? static_cast<char32_t>(b) : next++);
    }
    return t;
  }();
  return table;
}

const ClipTokenizer& tokenizer() {
  static const ClipTokenizer tok = ClipTokenizer::from_folder(FUSION_FUZZ_CLIP_DATA);
  return tok;
}

std::unordered_map<std::string, int64_t> vocabulary() {
  const nlohmann::json j = nlohmann::json::parse(fz::read_file(std::string(FUSION_FUZZ_CLIP_DATA) + "/vocab.json"));
  std::unordered_map<std::string, int64_t> v;
  for (auto it = j.begin(); it != j.end(); ++it) v.emplace(it.key(), it.value().get<int64_t>());
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::unordered_map<std::string, int64_t> vocab = vocabulary();
  const ClipTokenizer& tok = tokenizer();
  const std::string text(fz::as_text(data, size));

  const std::string cleaned = ClipTokenizer::clean(text);
  const std::vector<std::string> words = ClipTokenizer::split_words(cleaned);
  std::string expected_tokens;
  size_t at = 0;
  for (const auto& w : words) {
    if (w.empty()) fz::fail("split_words gave an empty word");
    at = cleaned.find(w, at);
    if (at == std::string::npos) fz::fail("split_words gave a word that is not next in '" + cleaned + "'");
    at += w.size();
    if (w == kBos || w == kEos) {
      expected_tokens += w;
    } else {
      for (unsigned char b : w) expected_tokens += byte_table()[b];
      expected_tokens += "</w>";
    }
  }

  const std::vector<std::string> tokens = tok.tokenize(text);
  std::string all_tokens;
  for (const auto& t : tokens) {
    if (t.empty()) fz::fail("tokenize gave an empty token");
    all_tokens += t;
  }
  if (all_tokens != expected_tokens) fz::fail("BPE tokens do not spell the words of '" + cleaned + "'");

  const int64_t max_length = 2 + (size > 0 ? data[0] % 80 : 75);
  const std::vector<int64_t> ids = tok.encode(text, max_length);
  std::vector<int64_t> expected{tok.bos_id()};
  for (const auto& t : tokens) {
    if (static_cast<int64_t>(expected.size()) == max_length - 1) break;
    const auto it = vocab.find(t);
    expected.push_back(it == vocab.end() ? tok.unk_id() : it->second);
  }
  expected.push_back(tok.eos_id());
  if (ids != expected) fz::fail("encode disagrees with tokenize and the vocabulary");
  return 0;
}
