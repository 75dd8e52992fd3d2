// libFuzzer target for loading GPT-2's tokenizer files (Gpt2Tokenizer::from_files: vocab.json,
// merges.txt) and then encoding with what was loaded.
//
// Input: vocab.json, a NUL byte, merges.txt, a NUL byte, a text (parts left out are empty). The two
// files go to in-memory files. Malformed files must end in fusion::Error (one line); a crash, a
// sanitizer report or another exception is a bug. A vocabulary that loads holds every byte's token
// and every merge's result, so byte-level BPE must lose nothing: decode_bytes(encode(t)) == t for
// the text and a few fixed ones (or encode refuses t, one line, when it is not UTF-8), and every id
// is the vocabulary's id of tokenize's token.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fusion/gpt2/tokenizer.hpp"
#include "fuzz_support.hpp"

namespace fz = fusion::fuzz;
using fusion::gpt2::Gpt2Tokenizer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const fz::MemFile vocab_file("vocab.json"), merges_file("merges.txt");
  const auto parts = fz::split(fz::as_text(data, size), std::string_view("\0", 1), 3);
  const std::string vocab_path = vocab_file.write(parts[0]);
  const std::string merges_path = merges_file.write(parts.size() > 1 ? parts[1] : std::string_view());
  const std::string text(parts.size() > 2 ? parts[2] : std::string_view());
  std::optional<Gpt2Tokenizer> tok;
  try {
    tok.emplace(Gpt2Tokenizer::from_files(vocab_path, merges_path));
  } catch (const fusion::Error& e) {
    fz::check_error(e);
    return 0;
  }
  if (tok->vocab_size() < 257) fz::fail("a vocabulary without every byte and <|endoftext|> loaded");
  for (const std::string& t : {text, std::string("Hello world, it's 2026!"),
                               std::string("<|endoftext|> caf\xc3\xa9  \t\n  x")}) {
    std::vector<int64_t> ids;
    try {
      ids = tok->encode(t);
    } catch (const fusion::Error& e) {
      fz::check_error(e);
      continue;
    }
    if (tok->decode_bytes(ids) != t) fz::fail("decode_bytes(encode(t)) != t");
    const std::vector<std::string> tokens = tok->tokenize(t);
    if (tokens.size() != ids.size()) fz::fail("tokenize and encode give different counts");
    for (size_t i = 0; i < ids.size(); ++i)
      if (tok->token_to_id(tokens[i]) != ids[i]) fz::fail("an id is not its token's");
  }
  return 0;
}
