// The language demo's text sources (examples/demo_text/text_sources.hpp) on hand-made fixtures.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>
#include <stdexcept>
#include <string>

#include "fusion/safetensors.hpp"
#include "fusion/testing/fixtures.hpp"
#include "text_sources.hpp"

namespace fs = std::filesystem;
using namespace fusion::demo_text;

TEST(TextSources, NormalizeWhitespaceCollapsesRunsAndTrims) {
  EXPECT_EQ(normalize_whitespace("  a\tb\n\n  c \r\n"), "a b c");
  EXPECT_EQ(normalize_whitespace(""), "");
  EXPECT_EQ(normalize_whitespace(" \n\t "), "");
  EXPECT_EQ(normalize_whitespace("caf\xc3\xa9  ok"), "caf\xc3\xa9 ok");
}

TEST(TextSources, CleanUtf8) {
  EXPECT_TRUE(is_clean_utf8("plain text\twith tab\n"));
  EXPECT_TRUE(is_clean_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  EXPECT_FALSE(is_clean_utf8("\xc3"));              // cut sequence
  EXPECT_FALSE(is_clean_utf8("\xc0\xaf"));          // overlong
  EXPECT_FALSE(is_clean_utf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(is_clean_utf8("\xf4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_FALSE(is_clean_utf8("bell\x07"));          // control character
  EXPECT_FALSE(is_clean_utf8("\xc2\x85"));          // C1 control (NEL)
  EXPECT_FALSE(is_clean_utf8("latin-1 caf\xe9"));
}

TEST(TextSources, FortunesSplitAtPercentLines) {
  const std::string file =
      "First one,\n\tindented.\n%\n%\nSecond -- with 100% certainty\r\n%\r\n  \n%\nThird\n  -- Someone\n";
  const auto e = parse_fortunes(file);
  ASSERT_EQ(e.size(), 3u);
  EXPECT_EQ(e[0], "First one, indented.");
  EXPECT_EQ(e[1], "Second -- with 100% certainty");  // a % inside a line is text
  EXPECT_EQ(e[2], "Third -- Someone");
  EXPECT_TRUE(parse_fortunes("").empty());
  EXPECT_EQ(parse_fortunes("no separator").size(), 1u);
}

TEST(TextSources, PackagesStanzasGiveNameSectionAndSynopsis) {
  const std::string list =
      "Package: alpha\nVersion: 1\nSection: games\nDescription: A  game\n of\n .\n long text\nTag: x\n\n"
      "package: beta\nSECTION: contrib/sound\ndescription: Sound thing\n\n"
      "Package: gamma\nDescription: no section\n\n"
      "Package: delta\r\nSection: net\r\nDescription: last, no newline";
  const auto p = parse_packages(list);
  ASSERT_EQ(p.size(), 3u);
  EXPECT_EQ(p[0].package, "alpha");
  EXPECT_EQ(p[0].section, "games");
  EXPECT_EQ(p[0].description, "A game");  // the first line only; continuation lines are not the synopsis
  EXPECT_EQ(p[1].package, "beta");
  EXPECT_EQ(p[1].section, "sound");  // the component prefix cut
  EXPECT_EQ(p[1].description, "Sound thing");
  EXPECT_EQ(p[2].package, "delta");
  EXPECT_EQ(p[2].section, "net");
  EXPECT_EQ(p[2].description, "last, no newline");
}

TEST(TextSources, MakeTaskIsBalancedDeduplicatedAndDeterministic) {
  std::vector<std::vector<std::string>> by_class(3);
  for (int i = 0; i < 30; ++i) by_class[0].push_back("a" + std::to_string(i));
  for (int i = 0; i < 12; ++i) by_class[1].push_back("b" + std::to_string(i));
  for (int i = 0; i < 20; ++i) by_class[2].push_back("c" + std::to_string(i));
  by_class[0].push_back("a1");      // a repeat within a class counts once
  by_class[1].push_back("shared");  // under two classes: dropped from both
  by_class[2].push_back("shared");
  const TaskSplits s = make_task(by_class, 20, 0.25, 7);
  EXPECT_EQ(s.ambiguous, 1);
  EXPECT_EQ(s.test_per_class, (std::vector<int64_t>{5, 3, 5}));   // round(20/4), round(12/4), round(20/4)
  EXPECT_EQ(s.train_per_class, (std::vector<int64_t>{15, 9, 15}));
  EXPECT_EQ(s.train.size(), 39u);
  EXPECT_EQ(s.test.size(), 13u);
  std::set<std::string> seen;
  for (const auto* split : {&s.train, &s.test}) {
    for (const Example& e : *split) {
      EXPECT_TRUE(seen.insert(e.text).second) << e.text << " twice";
      EXPECT_NE(e.text, "shared");
      EXPECT_EQ(e.text[0], "abc"[e.label]);
    }
  }
  // The same inputs in another order give the same splits; another seed other ones.
  auto reordered = by_class;
  std::reverse(reordered[0].begin(), reordered[0].end());
  const TaskSplits again = make_task(reordered, 20, 0.25, 7);
  ASSERT_EQ(again.train.size(), s.train.size());
  for (size_t i = 0; i < s.train.size(); ++i) EXPECT_EQ(again.train[i].text, s.train[i].text);
  const TaskSplits other = make_task(by_class, 20, 0.25, 8);
  bool differs = false;
  for (size_t i = 0; i < s.test.size(); ++i) differs |= other.test[i].text != s.test[i].text;
  EXPECT_TRUE(differs);
  EXPECT_THROW(make_task(by_class, 20, 1.0, 7), std::runtime_error);
  EXPECT_THROW(make_task({{"x"}, {"y", "z"}}, 0, 0.5, 7), std::runtime_error);
}

TEST(TextSources, ShuffleIsFisherYatesOnMt19937) {
  std::vector<int> v = {0, 1, 2, 3, 4};
  shuffle_in_place(v, 3);
  // By hand: i = 5..2, j = mt19937_64(3)() % i, swap(v[i-1], v[j]).
  std::mt19937_64 rng(3);
  std::vector<int> w = {0, 1, 2, 3, 4};
  for (size_t i = 5; i > 1; --i) std::swap(w[i - 1], w[rng() % i]);
  EXPECT_EQ(v, w);
  std::sort(v.begin(), v.end());
  EXPECT_EQ(v, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(TextSources, CsvQuotesWhatNeedsQuoting) {
  EXPECT_EQ(csv_field("plain"), "plain");
  EXPECT_EQ(csv_field("a, b"), "\"a, b\"");
  EXPECT_EQ(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
  EXPECT_EQ(csv_field("two\nlines"), "\"two\nlines\"");
  EXPECT_EQ(csv_field(" padded"), "\" padded\"");
  fusion::testing::ScratchDir dir("fusion_text_sources");
  write_task_csv(dir.path() / "t.csv", {{"x, y", 1}, {"z", 0}}, {"neg", "pos"});
  EXPECT_EQ(read_file(dir.path() / "t.csv"), "text,label\n\"x, y\",pos\nz,neg\n");
  EXPECT_THROW(write_task_csv(dir.path() / "u.csv", {{"z", 2}}, {"neg", "pos"}), std::runtime_error);
  EXPECT_FALSE(fs::exists(dir.path() / "u.csv"));
  write_text_jsonl(dir.path() / "c.jsonl", {"a \"q\"", "b"});
  EXPECT_EQ(read_file(dir.path() / "c.jsonl"), "{\"text\":\"a \\\"q\\\"\"}\n{\"text\":\"b\"}\n");
}

TEST(TextSources, PlaceholderHeadIsAZeroScoreWeight) {
  fusion::testing::ScratchDir dir("fusion_text_sources");
  const fs::path file = dir.path() / "heads" / "t.safetensors";
  write_placeholder_score_head(file, 4, 6);
  fusion::SafetensorsFile f(file);
  ASSERT_NE(f.find("score.weight"), nullptr);
  at::Tensor w = f.tensor("score.weight");
  EXPECT_EQ(w.sizes().vec(), (std::vector<int64_t>{4, 6}));
  EXPECT_EQ(w.scalar_type(), at::kFloat);
  EXPECT_EQ(w.abs().sum().item<double>(), 0.0);
  EXPECT_THROW(write_placeholder_score_head(dir.path() / "bad.safetensors", 0, 6), std::runtime_error);
}
