#pragma once
// GPT-2's byte-level BPE tokenizer (OpenAI's encoder.py; Hugging Face's GPT2Tokenizer / GPT2TokenizerFast).
#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "fusion/gpt2/export.hpp"

namespace fusion::gpt2 {

/// Which end of a sequence truncation cuts or padding fills.
enum class Side { left, right };

/// How encode_plus / encode_batch pad (Hugging Face's `padding=`).
enum class Padding {
  none,        ///< no padding (`padding=False`); encode_batch then needs rows of equal length
  longest,     ///< to the longest row of the batch (`padding=True` / "longest")
  max_length,  ///< to max_length (`padding="max_length"`, what FusionBench uses)
};

/// Truncation and padding as Hugging Face's tokenizer call applies them
/// (`tokenizer(text, text_pair, truncation=True, padding="max_length", max_length=...)`).
struct FUSION_GPT2_API EncodeOptions {
  /// The most ids a row keeps, text and pair together. Default 1024 (GPT-2's n_positions and
  /// Hugging Face's model_max_length for it). Must be ≥ 1 when truncating or padding to max_length.
  int64_t max_length = 1024;
  /// Cut rows longer than max_length (a pair as the fast tokenizer's `longest_first`: see
  /// encode_plus). Default true.
  bool truncation = true;
  /// Which end truncation removes ids from (Hugging Face's `truncation_side`). Default right.
  Side truncation_side = Side::right;
  /// Default max_length.
  Padding padding = Padding::max_length;
  /// Which end padding fills (Hugging Face's `padding_side`; GPT-2's default is right). Default right.
  Side padding_side = Side::right;
  /// The id padding writes. Default: the tokenizer's `<|endoftext|>` (50256 in GPT-2's vocabulary),
  /// as FusionBench sets pad_token = eos_token. GPT-2 itself has no pad token.
  std::optional<int64_t> pad_id;
  /// `<|endoftext|>` written in the text is that special token (Hugging Face's default,
  /// split_special_tokens=False); false encodes it as plain text (OpenAI's encoder.py). Default true.
  bool special_tokens_in_text = true;
};

/// One encoded row: ids and Hugging Face's attention mask (1 for a real id, 0 for padding).
struct FUSION_GPT2_API Encoding {
  std::vector<int64_t> ids;
  std::vector<int64_t> attention_mask;
};

/// A batch as tensors: input_ids and attention_mask, both int64 [N, L] on the CPU.
struct FUSION_GPT2_API BatchEncoding {
  at::Tensor input_ids;
  at::Tensor attention_mask;
};

/// GPT-2's byte-level BPE tokenizer, as OpenAI's encoder.py and Hugging Face's GPT2Tokenizer encode a
/// text:
///  1. the text must be valid UTF-8 (a Python str always is); anything else is refused with the
///     offset of the first bad byte. No normalisation, no lower-casing, no prefix space.
///  2. `<|endoftext|>` written in the text becomes that token (unless
///     EncodeOptions::special_tokens_in_text is false); the pieces between are split by GPT-2's
///     pattern `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` with the
///     semantics of Python's `regex` module: case-sensitive (so "'S" and "'LL" are not contractions),
///     ` ?` is U+0020 only, `\s` is the White_Space property (U+0085 NEL is white space, U+FEFF is
///     not), \p{L} and \p{N} are general categories by utf8proc (its Unicode version: 15.0 in
///     Debian 12's utf8proc 2.8).
///  3. each piece's UTF-8 bytes map to printable characters (GPT-2's bytes→unicode table), merges
///     apply by rank (merges.txt order, the lowest first, every occurrence left to right); each
///     resulting token is an id of vocab.json. Results are cached per piece.
/// Copies share their (immutable) tables and the cache. All const members are thread-safe.
class FUSION_GPT2_API Gpt2Tokenizer {
 public:
  /// "<|endoftext|>": GPT-2's only special token (eos, bos and unk in Hugging Face's config).
  static constexpr const char* kEndOfText = "<|endoftext|>";

  /// Reads vocab.json ({token: id}) and merges.txt (a first line starting `#version` is skipped; then
  /// one "first second" pair per line, by rank; blank lines are skipped). Throws fusion::Error with one
  /// line naming the file and the position (line, token) of what is wrong: a missing or unreadable
  /// file, JSON that does not parse or is not {string: integer}, a negative or repeated id, a token
  /// outside the byte alphabet, a byte without its token, no `<|endoftext|>`, a merges line that is
  /// not two symbols or names a token (or makes one) that vocab.json lacks.
  static Gpt2Tokenizer from_files(const std::filesystem::path& vocab_json,
                                  const std::filesystem::path& merges_txt);
  /// from_files(dir / "vocab.json", dir / "merges.txt"): Hugging Face's folder layout.
  static Gpt2Tokenizer from_folder(const std::filesystem::path& dir);

  /// The same checks as from_files, on tables already read; `merges` in rank order (a repeated pair
  /// takes its last rank, as Python's dict and the fast tokenizer do). `source` prefixes the messages.
  Gpt2Tokenizer(const std::unordered_map<std::string, int64_t>& vocab,
                const std::vector<std::pair<std::string, std::string>>& merges,
                const std::string& source = "gpt2 tokenizer");

  /// Step 2 on one piece of text (no special tokens): the pattern's matches, as UTF-8. Their
  /// concatenation is the text. Throws fusion::Error for invalid UTF-8.
  static std::vector<std::string> pre_tokenize(const std::string& text);

  /// Steps 1–3: the tokens as vocab.json spells them (byte symbols: a space is "Ġ").
  std::vector<std::string> tokenize(const std::string& text, bool special_tokens_in_text = true) const;
  /// Steps 1–3: the ids, no special token added (GPT-2 adds none).
  std::vector<int64_t> encode(const std::string& text, bool special_tokens_in_text = true) const;
  /// A pair as Hugging Face's GPT-2 tokenizer joins it: encode(a) followed by encode(b), nothing
  /// between (no separator and no special token; no space is added before b).
  std::vector<int64_t> encode_pair(const std::string& a, const std::string& b,
                                   bool special_tokens_in_text = true) const;

  /// encode(text), truncated and padded as `options` says, with its attention mask. Truncation keeps
  /// the first (right) or last (left) max_length ids. Padding to max_length fills with pad_id on
  /// options.padding_side; Padding::longest does not pad a single row.
  Encoding encode_plus(const std::string& text, const EncodeOptions& options = {}) const;
  /// The pair (text, text_pair): encode_pair's ids, and when they are more than max_length, both
  /// parts cut as Hugging Face's fast tokenizer's `longest_first` (what AutoTokenizer gives
  /// FusionBench): with s the shorter part's length and the second part counted as the longer on a
  /// tie, the shorter may keep n_s = s and the longer n_l = max(s, max_length − s); if
  /// n_s + n_l > max_length, n_s = ⌊max_length / 2⌋ and n_l = ⌈max_length / 2⌉. Each part keeps at
  /// most its n, cut on truncation_side. (The slow GPT2Tokenizer removes one id at a time from the
  /// longer part, the second on a tie: it can end one id apart, e.g. 5 + 5 ids cut to 7 are 4 + 3
  /// there and 3 + 4 here.)
  Encoding encode_plus(const std::string& text, const std::string& text_pair,
                       const EncodeOptions& options = {}) const;
  /// encode_plus of each text (and pair, when `text_pairs` is given: one per text) as a batch.
  /// Padding::none needs all rows of one length (throws fusion::Error naming the first that differs).
  BatchEncoding encode_batch(const std::vector<std::string>& texts, const EncodeOptions& options = {}) const;
  BatchEncoding encode_batch(const std::vector<std::string>& texts, const std::vector<std::string>& text_pairs,
                             const EncodeOptions& options = {}) const;

  /// The bytes the ids stand for, concatenated (`<|endoftext|>` as its 13 characters unless
  /// skip_special_tokens). Throws fusion::Error naming an id that is not in the vocabulary.
  std::string decode_bytes(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const;
  /// decode_bytes as text: each maximal invalid UTF-8 subsequence (a character cut between tokens)
  /// becomes U+FFFD, as Python's bytes.decode("utf-8", errors="replace") does. Hugging Face's decode
  /// also applies clean_up_tokenization_spaces when asked to (" ." → "." and such); this does not.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const;

  /// The id of a token as vocab.json spells it; nullopt if absent.
  std::optional<int64_t> token_to_id(const std::string& token) const;
  /// The token of an id, as vocab.json spells it. Throws fusion::Error if absent.
  std::string id_to_token(int64_t id) const;

  int64_t eos_id() const;   ///< `<|endoftext|>` (50256 in GPT-2's vocabulary)
  int64_t bos_id() const { return eos_id(); }
  int64_t unk_id() const { return eos_id(); }
  size_t vocab_size() const;  ///< entries of vocab.json (50257 for GPT-2)
  size_t num_merges() const;  ///< distinct merge pairs (50000 for GPT-2)

 private:
  struct Impl;
  Gpt2Tokenizer() = default;
  // merge_lines: merges.txt's line of each merge, for the messages (nullptr: name merges by index).
  static std::shared_ptr<const Impl> make_impl(const std::unordered_map<std::string, int64_t>& vocab,
                                               const std::vector<std::pair<std::string, std::string>>& merges,
                                               const std::string& source, const std::string& merges_source,
                                               const std::vector<size_t>* merge_lines);
  std::shared_ptr<const Impl> impl_;
};

}  // namespace fusion::gpt2
