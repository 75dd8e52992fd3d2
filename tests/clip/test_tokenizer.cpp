#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "fusion/clip/tokenizer.hpp"
#include "fusion/error.hpp"
#include "support.hpp"

namespace fusion::clip {
namespace {

using testing::data_dir;
using testing::error_of;

nlohmann::json load_cases() {
  std::ifstream in(data_dir() / "tokenizer_cases.json");
  return nlohmann::json::parse(in);
}

const ClipTokenizer& tokenizer() {
  static const ClipTokenizer tok = ClipTokenizer::from_folder(data_dir() / "clip_model");
  return tok;
}

TEST(ClipTokenizer, SpecialIdsReadFromTheVocabulary) {
  const nlohmann::json cases = load_cases();
  EXPECT_EQ(tokenizer().bos_id(), cases["bos"].get<int64_t>());
  EXPECT_EQ(tokenizer().eos_id(), cases["eos"].get<int64_t>());
  EXPECT_EQ(tokenizer().pad_id(), tokenizer().eos_id());
}

// Every case of make_golden.py: cleaning, the word pattern, BPE tokens, ids, truncation to 10.
TEST(ClipTokenizer, MatchesTheReferenceOnEveryCase) {
  const nlohmann::json cases = load_cases();
  ASSERT_GE(cases["cases"].size(), 10u);
  for (const auto& c : cases["cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: '" + text + "'");
    const std::string cleaned = ClipTokenizer::clean(text);
    EXPECT_EQ(cleaned, c["cleaned"].get<std::string>());
    EXPECT_EQ(ClipTokenizer::split_words(cleaned), c["words"].get<std::vector<std::string>>());
    EXPECT_EQ(tokenizer().tokenize(text), c["tokens"].get<std::vector<std::string>>());
    EXPECT_EQ(tokenizer().encode(text), c["ids"].get<std::vector<int64_t>>());
    EXPECT_EQ(tokenizer().encode(text, 10), c["ids_max_10"].get<std::vector<int64_t>>());
  }
}

TEST(ClipTokenizer, CleaningCollapsesWhiteSpaceAndLowerCases) {
  EXPECT_EQ(ClipTokenizer::clean("  A\t\tPHOTO\n of  ÉTÉ  "), "a photo of été");
  EXPECT_EQ(ClipTokenizer::clean("Привет ΑΒΓ"), "привет αβγ");
  EXPECT_EQ(ClipTokenizer::clean(""), "");
}

TEST(ClipTokenizer, PatternSplitsContractionsLettersDigitsAndOthers) {
  using V = std::vector<std::string>;
  EXPECT_EQ(ClipTokenizer::split_words("they're 2024 cats!!"), (V{"they", "'re", "2", "0", "2", "4", "cats", "!!"}));
  EXPECT_EQ(ClipTokenizer::split_words("it's naïve 中文"), (V{"it", "'s", "naïve", "中文"}));
  EXPECT_EQ(ClipTokenizer::split_words("a<|endoftext|>"), (V{"a", "<|endoftext|>"}));
  EXPECT_EQ(ClipTokenizer::split_words("!<|startoftext|>"), (V{"!", "<|startoftext|>"}));
}

TEST(ClipTokenizer, EndOfWordMarkerAndRankOrder) {
  using V = std::vector<std::string>;
  // "o t" outranks "h o": a left-to-right merger would produce "ho".
  EXPECT_EQ(tokenizer().tokenize("photo"), (V{"photo</w>"}));
  // With </w> on the last symbol "o t" no longer applies, so "h o" merges and "p h" cannot.
  EXPECT_EQ(tokenizer().tokenize("phot"), (V{"p", "ho", "t</w>"}));
  // "a n" merges both occurrences at once, then "an a</w>" and "b an" (ranks 18, 19).
  EXPECT_EQ(tokenizer().tokenize("banana"), (V{"ban", "ana</w>"}));
  EXPECT_EQ(tokenizer().tokenize("a a"), (V{"a</w>", "a</w>"}));
}

TEST(ClipTokenizer, ByteFallbackAndUnknownTokens) {
  using V = std::vector<std::string>;
  // é is the UTF-8 bytes C3 A9, i.e. the byte symbols "Ã" and "©".
  EXPECT_EQ(tokenizer().tokenize("é"), (V{"Ã", "©</w>"}));
  // "Ã" alone was left out of the test vocabulary: it becomes <|endoftext|>, Hugging Face's unk.
  const std::vector<int64_t> ids = tokenizer().encode("é");
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(ids[1], tokenizer().unk_id());
  EXPECT_NE(ids[2], tokenizer().unk_id());
}

TEST(ClipTokenizer, TruncatesAt77KeepingEndOfText) {
  std::string text;
  for (int i = 0; i < 100; ++i) text += "cat ";
  const std::vector<int64_t> ids = tokenizer().encode(text);
  ASSERT_EQ(ids.size(), 77u);
  EXPECT_EQ(ids.front(), tokenizer().bos_id());
  EXPECT_EQ(ids.back(), tokenizer().eos_id());
  EXPECT_EQ(ids[75], ids[1]);  // still a "cat" just before the end
  EXPECT_EQ(tokenizer().encode("cat", 77).size(), 3u);
}

TEST(ClipTokenizer, EncodeBatchPadsWithEndOfText) {
  at::Tensor ids = tokenizer().encode_batch({"a photo of a cat.", "cat"});
  ASSERT_EQ(ids.dim(), 2);
  EXPECT_EQ(ids.size(0), 2);
  EXPECT_EQ(ids.size(1), 8);
  EXPECT_EQ(ids[1][3].item<int64_t>(), tokenizer().eos_id());
  EXPECT_EQ(ids[1][7].item<int64_t>(), tokenizer().pad_id());
  EXPECT_EQ(tokenizer().encode_batch({"cat"}, 77, /*pad_to_max=*/true).size(1), 77);
}

TEST(ClipTokenizer, MissingOrMalformedFilesAreNamed) {
  testing::TempDir dir("tok");
  std::string msg = error_of([&] { ClipTokenizer::from_folder(dir.path()); });
  EXPECT_NE(msg.find("vocab.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing"), std::string::npos) << msg;
  std::filesystem::copy_file(data_dir() / "clip_model" / "vocab.json", dir.path() / "vocab.json");
  msg = error_of([&] { ClipTokenizer::from_folder(dir.path()); });
  EXPECT_NE(msg.find("merges.txt"), std::string::npos) << msg;
  {
    std::ofstream(dir.path() / "merges.txt") << "#version: 0.2\nt h\nthree symbols here\n";
  }
  msg = error_of([&] { ClipTokenizer::from_folder(dir.path()); });
  EXPECT_NE(msg.find("line 3"), std::string::npos) << msg;
  {
    std::ofstream(dir.path() / "merges.txt") << "#version: 0.2\n";
    std::ofstream(dir.path() / "vocab.json") << "{\"a\": 0}";
  }
  msg = error_of([&] { ClipTokenizer::from_folder(dir.path()); });
  EXPECT_NE(msg.find("<|startoftext|>"), std::string::npos) << msg;
  {
    std::ofstream(dir.path() / "vocab.json") << "{not json";
  }
  msg = error_of([&] { ClipTokenizer::from_folder(dir.path()); });
  EXPECT_NE(msg.find("not valid JSON"), std::string::npos) << msg;
}

}  // namespace
}  // namespace fusion::clip
