// GPT-2's tokenizer (fusion/gpt2/tokenizer.hpp) on GPT-2's real vocabulary against the golden ids of
// npm's gpt-3-encoder 1.1.4 (data/, made by make_tokenizer_golden.sh), plus truncation, padding,
// pairs and the errors, each message in full.
#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "fusion/error.hpp"
#include "fusion/gpt2/tokenizer.hpp"

namespace fs = std::filesystem;
using fusion::gpt2::EncodeOptions;
using fusion::gpt2::Gpt2Tokenizer;
using fusion::gpt2::Padding;
using fusion::gpt2::Side;
using Ids = std::vector<int64_t>;

namespace {

const fs::path kData = FUSION_GPT2_TEST_DATA;

std::string gunzip(const fs::path& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error("cannot open " + path.string());
  std::string out;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  gzclose(f);
  if (n < 0) throw std::runtime_error("cannot gunzip " + path.string());
  return out;
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// A fresh empty folder under the test temp dir.
fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("fusion_gpt2_tokenizer_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// GPT-2's vocabulary, written in Hugging Face's folder layout from the gzipped copies and read once.
// The folder is this process's own (ctest -j runs several of these tests at once, each in its own
// process: a shared folder was removed under another's reading) and goes once read.
const Gpt2Tokenizer& gpt2() {
  static const Gpt2Tokenizer tok = [] {
    const fs::path dir = fresh_dir("real_" + std::to_string(::getpid()));
    write_file(dir / "vocab.json", gunzip(kData / "vocab.json.gz"));
    write_file(dir / "merges.txt", gunzip(kData / "merges.txt.gz"));
    Gpt2Tokenizer t = Gpt2Tokenizer::from_folder(dir);
    fs::remove_all(dir);
    return t;
  }();
  return tok;
}

struct GoldenRow {
  std::string source, text;
  Ids ids;
  std::vector<std::pair<size_t, std::string>> prefixes;
};

struct Golden {
  nlohmann::json header;
  std::vector<GoldenRow> rows;
};

const Golden& golden() {
  static const Golden g = [] {
    Golden out;
    const std::string text = gunzip(kData / "tokenizer_golden.jsonl.gz");
    size_t pos = 0, line_no = 0;
    while (pos < text.size()) {
      size_t eol = text.find('\n', pos);
      if (eol == std::string::npos) eol = text.size();
      const auto j = nlohmann::json::parse(text.substr(pos, eol - pos));
      pos = eol + 1;
      if (line_no++ == 0) {
        out.header = j;
        continue;
      }
      GoldenRow row{j.at("source"), j.at("text"), j.at("ids").get<Ids>(), {}};
      for (const auto& p : j.at("prefixes")) row.prefixes.emplace_back(p.at(0).get<size_t>(), p.at(1).get<std::string>());
      out.rows.push_back(std::move(row));
    }
    return out;
  }();
  return g;
}

Ids concat(Ids a, const Ids& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The message of the fusion::Error that f throws ("" if none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const fusion::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// ---- GPT-2's real vocabulary ---------------------------------------------------------------------

TEST(Gpt2Tokenizer, ReadsGpt2sVocabulary) {
  const Gpt2Tokenizer& t = gpt2();
  EXPECT_EQ(t.vocab_size(), 50257u);
  EXPECT_EQ(t.num_merges(), 50000u);
  EXPECT_EQ(t.eos_id(), 50256);
  EXPECT_EQ(t.id_to_token(50256), "<|endoftext|>");
  EXPECT_EQ(t.token_to_id("Ġthe"), 262);
  EXPECT_EQ(t.token_to_id("not a token"), std::nullopt);
  EXPECT_EQ(t.encode("Hello world"), (Ids{15496, 995}));
  EXPECT_EQ(t.tokenize("Hello world"), (std::vector<std::string>{"Hello", "Ġworld"}));
}

TEST(Gpt2Tokenizer, BatteryIdsEqualGpt3Encoder) {
  const Golden& g = golden();
  ASSERT_EQ(g.header.at("generator"), "gpt-3-encoder@1.1.4 encode()/decode()");
  ASSERT_EQ(g.rows.size(), g.header.at("count").get<size_t>());
  ASSERT_GE(g.rows.size(), 4000u);
  size_t wrong = 0;
  for (const GoldenRow& r : g.rows) {
    // gpt-3-encoder reads `<|endoftext|>` in a text as plain text.
    const Ids ids = gpt2().encode(r.text, /*special_tokens_in_text=*/false);
    if (ids != r.ids && ++wrong <= 10) {
      ADD_FAILURE() << r.source << ": " << nlohmann::json(r.text).dump() << "\n  got      "
                    << nlohmann::json(ids).dump() << "\n  expected " << nlohmann::json(r.ids).dump();
    }
  }
  EXPECT_EQ(wrong, 0u) << "of " << g.rows.size() << " texts";
}

TEST(Gpt2Tokenizer, BatteryDecodesBackToItsText) {
  for (const GoldenRow& r : golden().rows) {
    ASSERT_EQ(gpt2().decode(r.ids), r.text) << r.source;
    ASSERT_EQ(gpt2().decode_bytes(r.ids), r.text) << r.source;
  }
}

TEST(Gpt2Tokenizer, DecodingACutCharacterGivesOneReplacementPerMaximalSubpart) {
  size_t checked = 0;
  for (const GoldenRow& r : golden().rows) {
    for (const auto& [k, text] : r.prefixes) {
      const Ids head(r.ids.begin(), r.ids.begin() + static_cast<std::ptrdiff_t>(k));
      ASSERT_EQ(gpt2().decode(head), text) << r.source << ": " << nlohmann::json(r.text).dump() << " cut at " << k;
      ++checked;
    }
  }
  EXPECT_GE(checked, 1000u);
  // By hand: "€" is E2 82 AC; the ids of its bytes one by one decode to the maximal subparts.
  const Ids byte_e2 = {*gpt2().token_to_id("\xC3\xA2")}, byte_82 = {*gpt2().token_to_id("\xC4\xA4")};
  EXPECT_EQ(gpt2().decode_bytes(concat(byte_e2, byte_82)), "\xE2\x82");
  EXPECT_EQ(gpt2().decode(concat(byte_e2, byte_82)), "\xEF\xBF\xBD");                   // one truncated sequence
  EXPECT_EQ(gpt2().decode(concat(byte_82, byte_e2)), "\xEF\xBF\xBD\xEF\xBF\xBD");       // a lone continuation, then one
  EXPECT_EQ(gpt2().decode(concat(concat(byte_e2, byte_82), {64})), "\xEF\xBF\xBD" "a");  // then 'a' is kept
}

TEST(Gpt2Tokenizer, PreTokenizedPiecesSpellTheText) {
  size_t pieces = 0;
  for (const GoldenRow& r : golden().rows) {
    std::string joined;
    for (const std::string& p : Gpt2Tokenizer::pre_tokenize(r.text)) {
      ASSERT_FALSE(p.empty());
      joined += p;
      ++pieces;
    }
    ASSERT_EQ(joined, r.text);
  }
  EXPECT_GT(pieces, golden().rows.size());
}

TEST(Gpt2Tokenizer, EncodingIsTheSameFromManyThreads) {
  const Gpt2Tokenizer copy = gpt2();  // copies share the cache
  std::vector<size_t> wrong(4, 0);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < wrong.size(); ++t) {
    threads.emplace_back([&, t] {
      const auto& rows = golden().rows;
      for (size_t k = t; k < rows.size() + t; ++k) {
        const GoldenRow& r = rows[(k * 7919) % rows.size()];
        if ((t % 2 ? copy : gpt2()).encode(r.text, false) != r.ids) ++wrong[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong, std::vector<size_t>(4, 0));
}

// ---- the pattern, by hand --------------------------------------------------------------------------

TEST(Gpt2Tokenizer, PatternSplitsContractionsCaseSensitively) {
  using V = std::vector<std::string>;
  EXPECT_EQ(Gpt2Tokenizer::pre_tokenize("I'll've'd"), (V{"I", "'ll", "'ve", "'d"}));
  // Upper case is not a contraction: the apostrophe is "other", the letters a word.
  EXPECT_EQ(Gpt2Tokenizer::pre_tokenize("He'S"), (V{"He", "'", "S"}));
  EXPECT_EQ(Gpt2Tokenizer::pre_tokenize("I'LL go"), (V{"I", "'", "LL", " go"}));
  EXPECT_EQ(gpt2().encode("I'LL go"), (Ids{40, 6, 3069, 467}));
  EXPECT_EQ(gpt2().encode("I'll"), (Ids{40, 1183}));
  // A contraction is taken first, even inside a word; after a space the apostrophe joins the space.
  EXPECT_EQ(Gpt2Tokenizer::pre_tokenize("'sup 's"), (V{"'s", "up", " '", "s"}));
}

TEST(Gpt2Tokenizer, PatternKeepsTheSpaceBeforeAWordAndSplitsWhiteSpaceRuns) {
  using V = std::vector<std::string>;
  EXPECT_EQ(Gpt2Tokenizer::pre_tokenize("a  b"), (V{"a", " ", " b"}));
  EXPECT_EQ(Gpt2Tokenizer::pre_tokenize("a \t b"), (V{"a", " \t", " b"}));
  EXPECT_EQ(Gpt2Tokenizer::pre_tokenize("\tb"), (V{"\t", "b"}));
  EXPECT_EQ(Gpt2Tokenizer::pre_tokenize("x   "), (V{"x", "   "}));
  EXPECT_EQ(Gpt2Tokenizer::pre_tokenize(" 42 !? \xC2\xA0z"), (V{" 42", " !?", " ", "\xC2\xA0", "z"}));
  EXPECT_EQ(Gpt2Tokenizer::pre_tokenize(""), V{});
}

// Where JavaScript's \s differs from Python's `regex` module, the battery has no text; expectations
// from check_tokenizer_golden.py --print (Python), which gpt-3-encoder does not reproduce.
TEST(Gpt2Tokenizer, NextLineIsWhiteSpaceAndByteOrderMarkIsNotAsInPython) {
  using V = std::vector<std::string>;
  EXPECT_EQ(Gpt2Tokenizer::pre_tokenize("x \xC2\x85y"), (V{"x", " ", "\xC2\x85", "y"}));
  EXPECT_EQ(gpt2().encode("x \xC2\x85y"), (Ids{87, 220, 126, 227, 88}));  // gpt-3-encoder: 87, 1587, 227, 88
  EXPECT_EQ(gpt2().encode("a\xC2\x85\xC2\x85" "b"), (Ids{64, 126, 227, 126, 227, 65}));
  EXPECT_EQ(Gpt2Tokenizer::pre_tokenize("a \xEF\xBB\xBF" "b"), (V{"a", " \xEF\xBB\xBF", "b"}));
  EXPECT_EQ(gpt2().encode("a \xEF\xBB\xBF" "b"), (Ids{64, 27332, 119, 123, 65}));  // gpt-3-encoder: 64, 220, 171, ...
  EXPECT_EQ(gpt2().encode("end\xC2\x85"), (Ids{437, 126, 227}));
}

TEST(Gpt2Tokenizer, EndOfTextInTheTextIsTheSpecialTokenAsInHuggingFace) {
  const std::string text = "a<|endoftext|> b<|endoftext|>";
  EXPECT_EQ(gpt2().encode(text), concat(concat(concat(gpt2().encode("a"), {50256}), gpt2().encode(" b")), {50256}));
  EXPECT_EQ(gpt2().encode(text, /*special_tokens_in_text=*/false),
            concat(concat(concat(gpt2().encode("a"), gpt2().encode("<|endoftext|>", false)), gpt2().encode(" b", false)),
                   gpt2().encode("<|endoftext|>", false)));
  EXPECT_EQ(gpt2().decode(gpt2().encode(text)), text);
  EXPECT_EQ(gpt2().decode(gpt2().encode(text), /*skip_special_tokens=*/true), "a b");
  // Only the exact spelling is special.
  EXPECT_EQ(gpt2().encode("<|ENDOFTEXT|>"), gpt2().encode("<|ENDOFTEXT|>", false));
  // The battery texts that hold it (gpt-3-encoder reads it as text).
  size_t seen = 0;
  for (const GoldenRow& r : golden().rows) {
    if (r.text.find("<|endoftext|>") == std::string::npos) continue;
    ++seen;
    const Ids ids = gpt2().encode(r.text);
    EXPECT_NE(ids, r.ids);
    EXPECT_NE(std::find(ids.begin(), ids.end(), 50256), ids.end());
    EXPECT_EQ(gpt2().decode(ids), r.text);
  }
  EXPECT_GE(seen, 3u);
}

// ---- pairs, truncation, padding ------------------------------------------------------------------

TEST(Gpt2Tokenizer, PairIsTheTwoIdListsWithNothingBetween) {
  EXPECT_EQ(gpt2().encode_pair("Hello", "world"), (Ids{15496, 6894}));  // not " world" (995)
  EXPECT_NE(gpt2().encode_pair("Hello", "world"), gpt2().encode("Hello world"));
  // Against the reference: consecutive battery texts as pairs.
  const auto& rows = golden().rows;
  for (size_t k = 0; k + 1 < rows.size(); k += 97) {
    EXPECT_EQ(gpt2().encode_pair(rows[k].text, rows[k + 1].text, false), concat(rows[k].ids, rows[k + 1].ids));
    EncodeOptions o;
    o.padding = Padding::none;
    o.max_length = 100000;
    o.special_tokens_in_text = false;
    EXPECT_EQ(gpt2().encode_plus(rows[k].text, rows[k + 1].text, o).ids, concat(rows[k].ids, rows[k + 1].ids));
  }
}

namespace {
// "a a a ..." encodes to 64 then 257 for each " a"; "b b ..." to 65 then 275s: easy to count.
std::string as(int n) {
  std::string s = "a";
  for (int k = 1; k < n; ++k) s += " a";
  return s;
}
std::string bs(int n) {
  std::string s = "b";
  for (int k = 1; k < n; ++k) s += " b";
  return s;
}
Ids a_ids(int n) {
  Ids v{64};
  v.insert(v.end(), static_cast<size_t>(n - 1), 257);
  return v;
}
Ids b_ids(int n) {
  Ids v{65};
  v.insert(v.end(), static_cast<size_t>(n - 1), 275);
  return v;
}
Ids cut(const Ids& v, size_t n, Side side) {
  if (v.size() <= n) return v;
  return side == Side::right ? Ids(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n))
                             : Ids(v.end() - static_cast<std::ptrdiff_t>(n), v.end());
}
}  // namespace

TEST(Gpt2Tokenizer, TruncatesAndPadsOnEitherSide) {
  EXPECT_EQ(gpt2().encode(as(4)), a_ids(4));
  EncodeOptions o;
  o.max_length = 6;
  // Defaults: truncate right, pad right with <|endoftext|>, as FusionBench.
  auto e = gpt2().encode_plus(as(4), o);
  EXPECT_EQ(e.ids, (Ids{64, 257, 257, 257, 50256, 50256}));
  EXPECT_EQ(e.attention_mask, (Ids{1, 1, 1, 1, 0, 0}));
  o.padding_side = Side::left;
  o.pad_id = 7;
  e = gpt2().encode_plus(as(4), o);
  EXPECT_EQ(e.ids, (Ids{7, 7, 64, 257, 257, 257}));
  EXPECT_EQ(e.attention_mask, (Ids{0, 0, 1, 1, 1, 1}));
  // Longer than max_length: right truncation keeps the start, left the end.
  e = gpt2().encode_plus(as(8), o);
  EXPECT_EQ(e.ids, (Ids{64, 257, 257, 257, 257, 257}));
  EXPECT_EQ(e.attention_mask, Ids(6, 1));
  o.truncation_side = Side::left;
  e = gpt2().encode_plus(as(8), o);
  EXPECT_EQ(e.ids, Ids(6, 257));
  // No truncation: all ids; no padding: no pads.
  o.truncation = false;
  EXPECT_EQ(gpt2().encode_plus(as(8), o).ids, a_ids(8));
  o.padding = Padding::none;
  e = gpt2().encode_plus(as(2), o);
  EXPECT_EQ(e.ids, a_ids(2));
  EXPECT_EQ(e.attention_mask, (Ids{1, 1}));
}

TEST(Gpt2Tokenizer, PairsAreCutAsTheFastTokenizersLongestFirst) {
  EncodeOptions o;
  o.padding = Padding::none;
  auto pair = [&](int na, int nb, int64_t max, Side side = Side::right) {
    o.max_length = max;
    o.truncation_side = side;
    return gpt2().encode_plus(as(na), bs(nb), o).ids;
  };
  // Fits: untouched.
  EXPECT_EQ(pair(3, 4, 7), concat(a_ids(3), b_ids(4)));
  // Equal lengths: the second counts as the longer and keeps the odd id (the slow tokenizer: 4 + 3).
  EXPECT_EQ(pair(5, 5, 7), concat(a_ids(3), b_ids(4)));
  EXPECT_EQ(pair(5, 5, 8), concat(a_ids(4), b_ids(4)));
  // The longer is cut first, to what the shorter leaves...
  EXPECT_EQ(pair(10, 2, 7), concat(a_ids(5), b_ids(2)));
  EXPECT_EQ(pair(2, 10, 7), concat(a_ids(2), b_ids(5)));
  // ...and both to half when the shorter is more than half.
  EXPECT_EQ(pair(10, 8, 7), concat(a_ids(4), b_ids(3)));
  EXPECT_EQ(pair(8, 10, 7), concat(a_ids(3), b_ids(4)));
  EXPECT_EQ(pair(4, 9, 7), concat(a_ids(3), b_ids(4)));
  // Left truncation cuts both parts at their start.
  EXPECT_EQ(pair(10, 8, 7, Side::left), concat(cut(a_ids(10), 4, Side::left), cut(b_ids(8), 3, Side::left)));
  // Padding after the pair; mask over both parts.
  o.padding = Padding::max_length;
  o.max_length = 6;
  o.truncation_side = Side::right;
  const auto e = gpt2().encode_plus(as(2), bs(1), o);
  EXPECT_EQ(e.ids, (Ids{64, 257, 65, 50256, 50256, 50256}));
  EXPECT_EQ(e.attention_mask, (Ids{1, 1, 1, 0, 0, 0}));
}

TEST(Gpt2Tokenizer, BatchesPadToTheLongestOrToMaxLength) {
  EncodeOptions o;
  o.padding = Padding::longest;
  o.padding_side = Side::left;
  auto b = gpt2().encode_batch({as(1), as(3), as(2)}, o);
  ASSERT_EQ(b.input_ids.sizes(), (at::IntArrayRef{3, 3}));
  EXPECT_EQ(b.input_ids.scalar_type(), at::kLong);
  EXPECT_TRUE(at::equal(b.input_ids, at::tensor(Ids{50256, 50256, 64, 64, 257, 257, 50256, 64, 257}).view({3, 3})));
  EXPECT_TRUE(at::equal(b.attention_mask, at::tensor(Ids{0, 0, 1, 1, 1, 1, 0, 1, 1}).view({3, 3})));
  o.padding = Padding::max_length;
  o.padding_side = Side::right;
  o.max_length = 4;
  b = gpt2().encode_batch({as(1), as(6)}, {bs(1), bs(1)}, o);
  EXPECT_TRUE(at::equal(b.input_ids, at::tensor(Ids{64, 65, 50256, 50256, 64, 257, 257, 65}).view({2, 4})));
  EXPECT_TRUE(at::equal(b.attention_mask, at::tensor(Ids{1, 1, 0, 0, 1, 1, 1, 1}).view({2, 4})));
  // An empty text is all padding; an empty batch keeps the width.
  b = gpt2().encode_batch({"", as(1)}, o);
  EXPECT_TRUE(at::equal(b.input_ids, at::tensor(Ids{50256, 50256, 50256, 50256, 64, 50256, 50256, 50256}).view({2, 4})));
  EXPECT_TRUE(at::equal(b.attention_mask, at::tensor(Ids{0, 0, 0, 0, 1, 0, 0, 0}).view({2, 4})));
  EXPECT_EQ(gpt2().encode_batch({}, o).input_ids.sizes(), (at::IntArrayRef{0, 4}));
}

// ---- errors --------------------------------------------------------------------------------------

TEST(Gpt2TokenizerErrors, TextThatIsNotUtf8IsRefusedNamingTheByte) {
  EXPECT_EQ(error_of([] { gpt2().encode("ok \xFF"); }),
            "gpt2 tokenizer: the text is not valid UTF-8: byte 0xFF at offset 3 cannot start a character");
  EXPECT_EQ(error_of([] { gpt2().encode("ab\xE2\x82"); }),
            "gpt2 tokenizer: the text is not valid UTF-8: byte 0xE2 at offset 2 starts a sequence that the text cuts short");
  EXPECT_EQ(error_of([] { gpt2().encode("ab\xE2\x82z"); }),
            "gpt2 tokenizer: the text is not valid UTF-8: byte 0xE2 at offset 2 starts an ill-formed sequence");
  EXPECT_EQ(error_of([] { gpt2().encode("\xC0\xAF"); }),  // overlong '/'
            "gpt2 tokenizer: the text is not valid UTF-8: byte 0xC0 at offset 0 cannot start a character");
  EXPECT_EQ(error_of([] { gpt2().encode("x\xED\xA0\x80"); }),  // a surrogate
            "gpt2 tokenizer: the text is not valid UTF-8: byte 0xED at offset 1 starts an ill-formed sequence");
  EXPECT_EQ(error_of([] { gpt2().encode_plus("\x80"); }),
            "gpt2 tokenizer: the text is not valid UTF-8: byte 0x80 at offset 0 cannot start a character");
}

TEST(Gpt2TokenizerErrors, BadIdsAndOptions) {
  EXPECT_EQ(error_of([] { gpt2().decode({15496, 50257}); }),
            "gpt2 tokenizer: cannot decode id 50257 (position 1): it is not in the vocabulary");
  EXPECT_EQ(error_of([] { gpt2().decode({-1}); }),
            "gpt2 tokenizer: cannot decode id -1 (position 0): it is not in the vocabulary");
  EXPECT_EQ(error_of([] { gpt2().id_to_token(60000); }), "gpt2 tokenizer: the id 60000 is not in the vocabulary");
  EncodeOptions zero;
  zero.max_length = 0;
  EXPECT_EQ(error_of([&] { gpt2().encode_plus("a", zero); }),
            "gpt2 tokenizer: max_length must be at least 1 to truncate or pad to it, got 0");
  EncodeOptions none;
  none.padding = Padding::none;
  EXPECT_EQ(error_of([&] { gpt2().encode_batch({"a", "a b"}, none); }),
            "gpt2 tokenizer: without padding every row needs the same length; row 0 has 1 ids, another 2");
  EXPECT_EQ(error_of([] { gpt2().encode_batch({"a", "b"}, {"c"}); }), "gpt2 tokenizer: 2 texts but 1 text pairs");
}

namespace {

// A small valid byte-level vocabulary: the 256 byte symbols (ids 0..255 in byte order), then
// <|endoftext|> and the tokens `extra` names; merges.txt as given.
struct TinyFiles {
  fs::path dir;
  fs::path vocab() const { return dir / "vocab.json"; }
  fs::path merges() const { return dir / "merges.txt"; }
};

nlohmann::json tiny_vocab(const std::vector<std::string>& extra = {}) {
  // The same table as the library's (GPT-2's bytes_to_unicode), written out here independently.
  nlohmann::json v = nlohmann::json::object();
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    const int cp = printable ? b : next++;
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    v[s] = b;
  }
  v["<|endoftext|>"] = 256;
  int id = 257;
  for (const auto& t : extra) v[t] = id++;
  return v;
}

TinyFiles tiny(const std::string& name, const std::string& vocab_json, const std::string& merges_txt) {
  TinyFiles f{fresh_dir(name)};
  write_file(f.vocab(), vocab_json);
  write_file(f.merges(), merges_txt);
  return f;
}

}  // namespace

TEST(Gpt2Tokenizer, MergesApplyByRank) {
  const std::string vocab = tiny_vocab({"ab", "bc", "abc"}).dump();
  // "a b" ranks first: abc → ab + c.
  auto f = tiny("rank1", vocab, "#version: 0.2\na b\nb c\n");
  auto t = Gpt2Tokenizer::from_files(f.vocab(), f.merges());
  EXPECT_EQ(t.tokenize("abc"), (std::vector<std::string>{"ab", "c"}));
  EXPECT_EQ(t.num_merges(), 2u);
  // "b c" ranks first: abc → a + bc; no #version line, CRLF, blank lines skipped.
  f = tiny("rank2", vocab, "b c\r\n\r\na b\r\n");
  t = Gpt2Tokenizer::from_folder(f.dir);
  EXPECT_EQ(t.tokenize("abc"), (std::vector<std::string>{"a", "bc"}));
  // Then "a bc" merges too; a repeated pair takes its last rank.
  t = Gpt2Tokenizer(tiny_vocab({"ab", "bc", "abc"}).get<std::unordered_map<std::string, int64_t>>(),
                    {{"a", "b"}, {"b", "c"}, {"a", "bc"}, {"a", "b"}});
  EXPECT_EQ(t.tokenize("abc abab"), (std::vector<std::string>{"abc", "Ġ", "ab", "ab"}));
  EXPECT_EQ(t.encode("abc"), (Ids{259}));
  EXPECT_EQ(t.num_merges(), 3u);
}

TEST(Gpt2TokenizerErrors, MissingOrCorruptFilesAreNamed) {
  const std::string vocab = tiny_vocab({"ab"}).dump();
  const std::string merges = "#version: 0.2\na b\n";
  auto f = tiny("missing_vocab", vocab, merges);
  fs::remove(f.vocab());
  EXPECT_EQ(error_of([&] { Gpt2Tokenizer::from_folder(f.dir); }),
            "gpt2 tokenizer: the vocabulary " + f.vocab().string() + " is missing");
  f = tiny("missing_merges", vocab, merges);
  fs::remove(f.merges());
  EXPECT_EQ(error_of([&] { Gpt2Tokenizer::from_folder(f.dir); }),
            "gpt2 tokenizer: the merge list " + f.merges().string() + " is missing");
  f = tiny("bad_json", "{\"a\": 1,", merges);
  EXPECT_EQ(error_of([&] { Gpt2Tokenizer::from_folder(f.dir); }),
            "gpt2 tokenizer: " + f.vocab().string() +
                " is not valid JSON: [json.exception.parse_error.101] parse error at line 1, column 9: syntax error "
                "while parsing object key - unexpected end of input; expected string literal");
  f = tiny("not_object", "[1, 2]", merges);
  EXPECT_EQ(error_of([&] { Gpt2Tokenizer::from_folder(f.dir); }),
            "gpt2 tokenizer: " + f.vocab().string() + " must be a JSON object {token: id}, got a array");
  nlohmann::json v = tiny_vocab();
  v["ab"] = "7";
  f = tiny("string_id", v.dump(), merges);
  EXPECT_EQ(error_of([&] { Gpt2Tokenizer::from_folder(f.dir); }),
            "gpt2 tokenizer: " + f.vocab().string() + ": the id of token 'ab' is not an integer: \"7\"");
  v = tiny_vocab();
  v["ab"] = 36;
  f = tiny("repeated_id", v.dump(), merges);
  EXPECT_EQ(error_of([&] { Gpt2Tokenizer::from_folder(f.dir); }),
            "gpt2 tokenizer: " + f.vocab().string() + ": the id 36 is given to both '$' and 'ab'");
  v = tiny_vocab();
  v["ab"] = -2;
  f = tiny("negative_id", v.dump(), merges);
  EXPECT_EQ(error_of([&] { Gpt2Tokenizer::from_folder(f.dir); }),
            "gpt2 tokenizer: " + f.vocab().string() + ": the id of token 'ab' is -2, outside 0..2147483647");
  v = tiny_vocab({"a b"});
  f = tiny("outside_alphabet", v.dump(), merges);
  EXPECT_EQ(error_of([&] { Gpt2Tokenizer::from_folder(f.dir); }),
            "gpt2 tokenizer: " + f.vocab().string() +
                ": token 'a b' (id 257) has U+0020, which is not in GPT-2's byte alphabet");
  v = tiny_vocab({"ab"});
  v.erase("\xC4\xA0");  // Ġ, the space
  f = tiny("missing_byte", v.dump(), merges);
  EXPECT_EQ(error_of([&] { Gpt2Tokenizer::from_folder(f.dir); }),
            "gpt2 tokenizer: " + f.vocab().string() +
                ": there is no token '\xC4\xA0' for byte 0x20 (a byte-level vocabulary has all 256)");
  v = tiny_vocab({"ab"});
  v.erase("<|endoftext|>");
  f = tiny("no_eos", v.dump(), merges);
  EXPECT_EQ(error_of([&] { Gpt2Tokenizer::from_folder(f.dir); }),
            "gpt2 tokenizer: " + f.vocab().string() + ": there is no '<|endoftext|>' token");
}

TEST(Gpt2TokenizerErrors, BadMergesLinesAreNamedByLine) {
  const std::string vocab = tiny_vocab({"ab", "bc"}).dump();
  auto f = tiny("merge_fields", vocab, "#version: 0.2\na b\nb c d\n");
  EXPECT_EQ(error_of([&] { Gpt2Tokenizer::from_folder(f.dir); }),
            "gpt2 tokenizer: " + f.merges().string() +
                " line 3: expected two symbols separated by one space, got 'b c d'");
  f = tiny("merge_one", vocab, "#version: 0.2\n\nab\n");
  EXPECT_EQ(error_of([&] { Gpt2Tokenizer::from_folder(f.dir); }),
            "gpt2 tokenizer: " + f.merges().string() + " line 3: expected two symbols separated by one space, got 'ab'");
  f = tiny("merge_unknown_first", vocab, "#version: 0.2\na b\nxy z\n");
  EXPECT_EQ(error_of([&] { Gpt2Tokenizer::from_folder(f.dir); }),
            "gpt2 tokenizer: " + f.merges().string() + " line 3: merge 'xy z' names 'xy', which is not in the vocabulary");
  f = tiny("merge_unknown_second", vocab, "a b\nb c\nab Ġzz\n");
  EXPECT_EQ(error_of([&] { Gpt2Tokenizer::from_folder(f.dir); }),
            "gpt2 tokenizer: " + f.merges().string() +
                " line 3: merge 'ab Ġzz' names 'Ġzz', which is not in the vocabulary");
  f = tiny("merge_unknown_result", vocab, "#version: 0.2\na c\n");
  EXPECT_EQ(error_of([&] { Gpt2Tokenizer::from_folder(f.dir); }),
            "gpt2 tokenizer: " + f.merges().string() + " line 2: merge 'a c' makes 'ac', which is not in the vocabulary");
  // In memory, a merge is named by its rank.
  EXPECT_EQ(error_of([&] {
              Gpt2Tokenizer(tiny_vocab().get<std::unordered_map<std::string, int64_t>>(), {{"a", "q"}});
            }),
            "gpt2 tokenizer: merges[0]: merge 'a q' makes 'aq', which is not in the vocabulary");
}
