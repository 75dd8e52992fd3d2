#pragma once
// What the byte-level BPE tokenizers of families/clip and families/gpt2 share: the character classes
// of their pre-tokenisation patterns as Python's `regex` module defines them (general categories from
// utf8proc), UTF-8 encoding of one code point, and GPT-2's bytes → printable code points table
// (bytes_to_unicode() in OpenAI's encoder.py and CLIP's simple_tokenizer.py). Internal: compiled into
// each family's library (and its fuzz targets), never installed.
#include <utf8proc.h>

#include <array>
#include <string>

namespace fusion::byte_level {

inline utf8proc_category_t category(char32_t c) { return utf8proc_category(static_cast<utf8proc_int32_t>(c)); }

/// \p{L}: Lu, Ll, Lt, Lm, Lo.
inline bool is_letter(char32_t c) {
  const auto k = category(c);
  return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}

/// \p{N}: Nd, Nl, No.
inline bool is_number(char32_t c) {
  const auto k = category(c);
  return k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO;
}

/// `\s` of the `regex` module (and of Hugging Face's fast tokenizers): the White_Space property,
/// which PropList.txt gives as TAB..CR, U+0085 (NEL) and the separators Zs, Zl, Zp. (JavaScript's \s
/// differs: it has U+FEFF and lacks U+0085.)
inline bool is_space(char32_t c) {
  if ((c >= 0x09 && c <= 0x0D) || c == 0x85) return true;
  const auto k = category(c);
  return k == UTF8PROC_CATEGORY_ZS || k == UTF8PROC_CATEGORY_ZL || k == UTF8PROC_CATEGORY_ZP;
}

/// Appends the UTF-8 bytes of code point `cp` (a valid scalar value) to `out`.
inline void append_utf8(std::string& out, char32_t cp) {
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

/// GPT-2's reversible map from bytes to printable code points: printable Latin-1 bytes ('!'..'~',
/// U+00A1..U+00AC, U+00AE..U+00FF) map to themselves, the others to 256, 257, ... in byte order.
inline const std::array<char32_t, 256>& byte_chars() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[static_cast<size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

}  // namespace fusion::byte_level
