// libFuzzer target for loading CLIP's tokenizer files (ClipTokenizer::from_files: vocab.json,
// merges.txt) and then tokenizing with what was loaded.
//
// Input: vocab.json, a NUL byte, merges.txt, a NUL byte, a text (parts left out are empty). The two
// files go to in-memory files; when they load, the text and a few fixed ones are encoded. Malformed
// files must end in fusion::Error (one line); a crash, a sanitizer report or another exception is a
// bug, and so is an encoding that does not start with <|startoftext|>, end with <|endoftext|> and
// keep within max_length.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fusion/clip/tokenizer.hpp"
#include "fuzz_support.hpp"

namespace fz = fusion::fuzz;
using fusion::clip::ClipTokenizer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const fz::MemFile vocab_file("vocab.json"), merges_file("merges.txt");
  const auto parts = fz::split(fz::as_text(data, size), std::string_view("\0", 1), 3);
  const std::string vocab_path = vocab_file.write(parts[0]);
  const std::string merges_path = merges_file.write(parts.size() > 1 ? parts[1] : std::string_view());
  const std::string text(parts.size() > 2 ? parts[2] : std::string_view());
  try {
    const ClipTokenizer tok = ClipTokenizer::from_files(vocab_path, merges_path);
    if (tok.vocab_size() < 1) fz::fail("a tokenizer with an empty vocabulary");
    for (const std::string& t : {text, std::string("a photo of a cat."), std::string("<|endoftext|>Don't 42!")}) {
      for (int64_t max_length : {2, 5, 77}) {
        const std::vector<int64_t> ids = tok.encode(t, max_length);
        if (ids.size() < 2 || static_cast<int64_t>(ids.size()) > max_length || ids.front() != tok.bos_id() ||
            ids.back() != tok.eos_id()) {
          fz::fail("encode broke its contract");
        }
      }
      for (const auto& token : tok.tokenize(t))
        if (token.empty()) fz::fail("tokenize gave an empty token");
    }
  } catch (const fusion::Error& e) {
    fz::check_error(e);
  }
  return 0;
}
