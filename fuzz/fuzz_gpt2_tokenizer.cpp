// libFuzzer target for GPT-2's tokenizer on text (families/gpt2/src/tokenizer.cpp): UTF-8
// validation, GPT-2's pre-tokenisation pattern, byte-level BPE, truncation and decoding, with GPT-2's
// real vocabulary (tests/gpt2/data/vocab.json.gz, merges.txt.gz), loaded once.
//
// Input: the text (any bytes). Text that is not valid UTF-8 must be refused with fusion::Error (one
// line); a crash, a sanitizer report or another exception is a bug, and so is a result that breaks
// these invariants (byte-level BPE loses nothing):
//   - the pieces of pre_tokenize(t) are not empty and spell t;
//   - decode_bytes(encode(t)) == t, with and without `<|endoftext|>` read as the special token;
//   - tokenize(t) are the vocabulary's tokens of encode(t);
//   - encode_plus(t) truncated to L keeps encode(t)'s first (right) or last (left) L ids, padded with
//     eos to L when asked, with a mask of 1 for each kept id.
#include <zlib.h>

#include <cstdint>
#include <string>
#include <vector>

#include "fusion/gpt2/tokenizer.hpp"
#include "fuzz_support.hpp"

namespace fz = fusion::fuzz;
using fusion::gpt2::Gpt2Tokenizer;

#ifndef FUSION_FUZZ_GPT2_DATA
#error "FUSION_FUZZ_GPT2_DATA: the folder of GPT-2's gzipped vocabulary (fuzz/CMakeLists.txt sets it)"
#endif

namespace {

std::string gunzip(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) fz::fail("cannot open " + path);
  std::string out;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  gzclose(f);
  if (n < 0) fz::fail("cannot read " + path);
  return out;
}

const Gpt2Tokenizer& tokenizer() {
  static const Gpt2Tokenizer tok = [] {
    const std::string dir = FUSION_FUZZ_GPT2_DATA;
    const auto vocab = fz::scratch_dir() / "vocab.json";
    const auto merges = fz::scratch_dir() / "merges.txt";
    fz::write_file(vocab, gunzip(dir + "/vocab.json.gz"));
    fz::write_file(merges, gunzip(dir + "/merges.txt.gz"));
    return Gpt2Tokenizer::from_files(vocab, merges);
  }();
  return tok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Gpt2Tokenizer& tok = tokenizer();
  const std::string text(fz::as_text(data, size));
  std::vector<int64_t> ids;
  try {
    ids = tok.encode(text);
  } catch (const fusion::Error& e) {
    fz::check_error(e);
    // Refused: every other entry point must refuse it too.
    try {
      Gpt2Tokenizer::pre_tokenize(text);
    } catch (const fusion::Error& e2) {
      fz::check_error(e2);
      return 0;
    }
    fz::fail("encode refused a text that pre_tokenize accepted: " + std::string(e.what()));
  }

  std::string spelled;
  for (const auto& piece : Gpt2Tokenizer::pre_tokenize(text)) {
    if (piece.empty()) fz::fail("pre_tokenize gave an empty piece");
    spelled += piece;
  }
  if (spelled != text) fz::fail("the pieces of pre_tokenize do not spell the text");
  if (tok.decode_bytes(ids) != text) fz::fail("decode_bytes(encode(t)) != t");
  const std::vector<int64_t> plain = tok.encode(text, /*special_tokens_in_text=*/false);
  if (tok.decode_bytes(plain) != text) fz::fail("decode_bytes(encode(t, false)) != t");
  if (text.find(Gpt2Tokenizer::kEndOfText) == std::string::npos && plain != ids)
    fz::fail("encode depends on special_tokens_in_text for a text without <|endoftext|>");
  const std::vector<std::string> tokens = tok.tokenize(text);
  if (tokens.size() != ids.size()) fz::fail("tokenize and encode give different counts");
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tok.token_to_id(tokens[i]) != ids[i]) fz::fail("tokenize and encode disagree at " + std::to_string(i));

  const int64_t max_length = 1 + (size > 0 ? data[size - 1] % 40 : 7);
  for (const auto side : {fusion::gpt2::Side::right, fusion::gpt2::Side::left}) {
    fusion::gpt2::EncodeOptions o;
    o.max_length = max_length;
    o.truncation = true;
    o.truncation_side = side;
    o.padding_side = side;
    o.padding = fusion::gpt2::Padding::max_length;
    const fusion::gpt2::Encoding enc = tok.encode_plus(text, o);
    const size_t kept = std::min(ids.size(), static_cast<size_t>(max_length));
    if (enc.ids.size() != static_cast<size_t>(max_length) || enc.attention_mask.size() != enc.ids.size())
      fz::fail("encode_plus did not pad to max_length");
    std::vector<int64_t> expect = side == fusion::gpt2::Side::right
                                      ? std::vector<int64_t>(ids.begin(), ids.begin() + kept)
                                      : std::vector<int64_t>(ids.end() - kept, ids.end());
    int64_t ones = 0;
    for (auto m : enc.attention_mask) ones += m;
    if (ones != static_cast<int64_t>(kept)) fz::fail("attention mask does not count the kept ids");
    std::vector<int64_t> real;
    for (size_t i = 0; i < enc.ids.size(); ++i) {
      if (enc.attention_mask[i] == 1) real.push_back(enc.ids[i]);
      else if (enc.ids[i] != tok.eos_id()) fz::fail("padding is not eos");
    }
    if (real != expect) fz::fail("truncation kept the wrong ids");
  }
  return 0;
}
