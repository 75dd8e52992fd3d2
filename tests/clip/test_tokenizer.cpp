#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <zlib.h>

#include <cstdio>
#include <fstream>
#include <sstream>

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

std::string utf8(char32_t cp) {
  std::string out;
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
  return out;
}

std::string gunzip(const std::filesystem::path& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) return {};
  std::string out;
  char buf[1 << 16];
  int n = 0;
  while ((n = gzread(f, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  gzclose(f);
  return out;
}

std::string ids_text(const std::vector<int64_t>& ids) {
  std::string s;
  for (int64_t id : ids) s += (s.empty() ? "" : " ") + std::to_string(id);
  return "[" + s + "]";
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

// make_tokenizer_golden.py: every code point of the BMP that the reference's Unicode version assigns,
// inside a word, before Σ, between Σ and a letter, after an apostrophe: NFC, lower-casing (with İ and
// Final_Sigma), white space, letters, numbers and the pattern's classes, code point by code point.
TEST(ClipTokenizer, MatchesTheReferenceOnEveryAssignedBmpCodePoint) {
  const std::string text = gunzip(data_dir() / "tokenizer_bmp.txt.gz");
  ASSERT_FALSE(text.empty()) << "cannot read tokenizer_bmp.txt.gz";
  std::istringstream lines(text);
  std::string line;
  ASSERT_TRUE(std::getline(lines, line));
  const nlohmann::json header = nlohmann::json::parse(line);
  std::vector<std::pair<std::string, std::string>> templates;
  for (const auto& t : header["templates"]) templates.emplace_back(t[0].get<std::string>(), t[1].get<std::string>());
  ASSERT_EQ(templates.size(), 4u);
  const ClipTokenizer& tok = tokenizer();
  size_t rows = 0, mismatching = 0;
  std::vector<size_t> per_template(templates.size(), 0);
  std::string first;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    ++rows;
    std::vector<std::string> fields;
    std::istringstream f(line);
    for (std::string x; std::getline(f, x, '\t');) fields.push_back(x);
    ASSERT_EQ(fields.size(), templates.size() + 1) << line;
    const auto cp = static_cast<char32_t>(std::stoul(fields[0], nullptr, 16));
    bool bad = false;
    for (size_t k = 0; k < templates.size(); ++k) {
      std::vector<int64_t> expected{tok.bos_id()};
      std::istringstream ids(fields[k + 1]);
      for (int64_t id = 0; ids >> id;) expected.push_back(id);
      expected.push_back(tok.eos_id());
      const std::vector<int64_t> got = tok.encode(templates[k].first + utf8(cp) + templates[k].second);
      if (got != expected) {
        ++per_template[k];
        if (!bad && mismatching < 8) {
          first += "\n  U+" + fields[0] + " in '" + templates[k].first + "·" + templates[k].second +
                   "': expected " + ids_text(expected) + ", got " + ids_text(got);
        }
        bad = true;
      }
    }
    mismatching += bad ? 1 : 0;
  }
  EXPECT_EQ(rows, header["count"].get<size_t>());
  EXPECT_GT(rows, 50000u);
  std::string by_template;
  for (size_t k = 0; k < templates.size(); ++k) {
    by_template += " '" + templates[k].first + "·" + templates[k].second + "' " + std::to_string(per_template[k]);
  }
  EXPECT_EQ(mismatching, 0u) << mismatching << " of " << rows << " code points (Unicode "
                             << header["unicode_version"].get<std::string>()
                             << ") tokenise differently; by text:" << by_template << "; first:" << first;
}

// make_tokenizer_golden.py: class names in many scripts and the corners of case mapping (İ, final σ),
// NFC (decomposed input, singletons), white space and the pattern.
TEST(ClipTokenizer, MatchesTheReferenceOnMultilingualClassNames) {
  std::ifstream in(data_dir() / "tokenizer_multilingual.json");
  const nlohmann::json golden = nlohmann::json::parse(in);
  ASSERT_GE(golden["cases"].size(), 50u);
  for (const auto& c : golden["cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: '" + text + "'");
    const std::string cleaned = ClipTokenizer::clean(text);
    EXPECT_EQ(cleaned, c["cleaned"].get<std::string>());
    EXPECT_EQ(ClipTokenizer::split_words(cleaned), c["words"].get<std::vector<std::string>>());
    EXPECT_EQ(tokenizer().encode(text), c["ids"].get<std::vector<int64_t>>());
  }
}

TEST(ClipTokenizer, InvalidUtf8BecomesOneReplacementCharacterPerBadByte) {
  const std::string fffd = "\xEF\xBF\xBD";
  EXPECT_EQ(ClipTokenizer::clean("a\xFF" "b"), "a" + fffd + "b");
  EXPECT_EQ(ClipTokenizer::clean("\xE2\x82"), fffd + fffd);                 // truncated
  EXPECT_EQ(ClipTokenizer::clean("\xC0\xAF"), fffd + fffd);                 // overlong
  EXPECT_EQ(ClipTokenizer::clean("\xED\xA0\x80"), fffd + fffd + fffd);     // a surrogate
  EXPECT_EQ(ClipTokenizer::clean("\xF4\x90\x80\x80"), fffd + fffd + fffd + fffd);  // past U+10FFFF
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
