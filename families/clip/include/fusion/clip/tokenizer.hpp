#pragma once
// CLIP's byte-level BPE tokenizer (Hugging Face's CLIPTokenizer).
#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "fusion/clip/export.hpp"

namespace fusion::clip {

/// CLIP's byte-level BPE tokenizer, as OpenAI's simple_tokenizer and Hugging Face's CLIPTokenizer (with
/// ftfy) encode a text, ftfy's and HTML's fixes left out:
///  1. cleaning: the text, decoded as UTF-8 (each byte of an invalid sequence becomes U+FFFD), is
///     normalised to NFC; each run of white space (White_Space, what the pattern's `\s` matches) becomes
///     one space and what Python's str.strip() strips goes from both ends; then the text is lower-cased
///     as Python's str.lower() does it: the full lowercase mapping, so İ becomes i + U+0307 and Σ
///     becomes ς at the end of a word (SpecialCasing.txt's Final_Sigma). No ftfy fixes and no HTML
///     unescaping; Hugging Face's fallback without ftfy (BasicTokenizer: drops control characters,
///     spaces out CJK ideographs) is not what this follows, and CLIPTokenizerFast may differ in
///     corners (it lower-cases character by character, without the final sigma).
///  2. `<|startoftext|>` / `<|endoftext|>` in the text are taken as those special tokens; the rest is
///     split into words by CLIP's pattern, case-insensitive as re.IGNORECASE makes it:
///     `'s|'t|'re|'ve|'m|'ll|'d`, a run of letters (\p{L}), one number (\p{N}), a run of other
///     non-space characters. Normalisation, case mappings and general categories come from utf8proc
///     (the Unicode version of the utf8proc in use; Debian 12's is 15.0).
///  3. each word's UTF-8 bytes map to printable characters (GPT-2's bytes→unicode table), so every
///     character is representable (byte fallback); the last symbol gets `</w>`; merges apply by
///     rank (merges.txt order); each resulting token is looked up in vocab.json, and one absent
///     there becomes `<|endoftext|>` (Hugging Face's unk token).
///  4. `<|startoftext|>` + ids + `<|endoftext|>`, truncated as Hugging Face's truncation does: at
///     most max_length − 2 text tokens, so the end-of-text token stays last.
/// Immutable after construction; thread-safe.
class FUSION_CLIP_API ClipTokenizer {
 public:
  /// Reads vocab.json ({token: id}) and merges.txt (a `#version` first line is skipped; then one
  /// "first second" pair per line, by rank). Throws fusion::Error naming a missing or malformed file.
  static ClipTokenizer from_files(const std::filesystem::path& vocab_json,
                                  const std::filesystem::path& merges_txt);
  /// from_files(dir / "vocab.json", dir / "merges.txt").
  static ClipTokenizer from_folder(const std::filesystem::path& dir);

  /// `vocab` must hold `<|startoftext|>` and `<|endoftext|>`; `merges` in rank order.
  ClipTokenizer(std::unordered_map<std::string, int64_t> vocab,
                const std::vector<std::pair<std::string, std::string>>& merges);

  /// Step 1: the cleaned text (UTF-8).
  static std::string clean(const std::string& text);
  /// Step 2 on a cleaned text: the words, special tokens included.
  static std::vector<std::string> split_words(const std::string& cleaned);
  /// Steps 1–3: the BPE tokens (as in vocab.json, `</w>` included), no special tokens added.
  std::vector<std::string> tokenize(const std::string& text) const;
  /// Steps 1–4: ids with `<|startoftext|>` and `<|endoftext|>`, at most `max_length` (≥ 2) of them.
  std::vector<int64_t> encode(const std::string& text, int64_t max_length = 77) const;
  /// encode() of each text as an int64 tensor [N, L], L the longest (padded with pad_id(), i.e.
  /// `<|endoftext|>`, as Hugging Face's `padding=True`), or `max_length` when `pad_to_max`.
  at::Tensor encode_batch(const std::vector<std::string>& texts, int64_t max_length = 77,
                          bool pad_to_max = false) const;

  int64_t bos_id() const { return bos_id_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t pad_id() const { return eos_id_; }
  int64_t unk_id() const { return eos_id_; }
  size_t vocab_size() const { return vocab_.size(); }

 private:
  std::vector<std::string> bpe(const std::string& word) const;

  std::unordered_map<std::string, int64_t> vocab_;
  std::unordered_map<std::string, int64_t> ranks_;  ///< "first second" → rank
  int64_t bos_id_ = 0;
  int64_t eos_id_ = 0;
};

}  // namespace fusion::clip
