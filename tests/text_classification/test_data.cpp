// The readers of the text_classification task pool: GLUE's own TSV layouts (sample files in
// data/glue, written in GLUE's formats: CoLA without header, MRPC with its BOM, SST-2 with CRLF,
// literal quotes), CSV and JSON-lines, label names, and every error message in full.
#include <gtest/gtest.h>

#include "support.hpp"
#include "text_data.hpp"

namespace fusion::text_classification {
namespace {

using namespace testing;

TextSplit read(const fs::path& path, const std::string& task, TextFormat f = TextFormat::Auto,
               BadRow bad = BadRow::Error) {
  return read_split(path, f, task, builtin_task(task)->labels, bad, "task '" + task + "' test split");
}

TEST(GlueLayouts, CoLAHasNoHeaderAndLiteralQuotes) {
  TextSplit s = read(glue_dir() / "CoLA" / "dev.tsv", "cola");
  EXPECT_EQ(s.format, TextFormat::Cola);
  ASSERT_EQ(s.examples.size(), 3u);
  EXPECT_EQ(s.examples[0].text, "The sailors rode the breeze clear of the rocks.");
  EXPECT_EQ(s.examples[0].label, 1);
  EXPECT_FALSE(s.examples[0].text_pair);
  EXPECT_EQ(s.examples[1].text, "They drank the pub.");
  EXPECT_EQ(s.examples[1].label, 0);
  EXPECT_EQ(s.examples[2].text, "\"Tea,\" she said, \"is ready.");  // an unbalanced quote stays
  EXPECT_EQ(s.examples[2].line, 3);
}

TEST(GlueLayouts, Sst2WithCrlfLineEnds) {
  TextSplit s = read(glue_dir() / "SST-2" / "dev.tsv", "sst2");
  EXPECT_EQ(s.format, TextFormat::Sst2);
  ASSERT_EQ(s.examples.size(), 3u);
  EXPECT_EQ(s.examples[0].text, "it 's a charming and often affecting journey . ");
  EXPECT_EQ(s.examples[1].text, "\" unbearable \" ");
  EXPECT_EQ(s.examples[2].text, "the movie 's \"best\" moment , really ");
  EXPECT_EQ(s.examples[0].label, 1);
  EXPECT_EQ(s.examples[1].label, 0);
  EXPECT_EQ(s.examples[1].line, 3);
}

TEST(GlueLayouts, MrpcWithByteOrderMark) {
  TextSplit s = read(glue_dir() / "MRPC" / "dev.tsv", "mrpc");
  ASSERT_EQ(s.examples.size(), 2u);
  EXPECT_EQ(s.examples[0].text, "He said the foodservice pie business doesn 't fit the company 's long-term growth strategy .");
  EXPECT_EQ(*s.examples[0].text_pair, "\" The foodservice pie business does not fit our long-term growth strategy .");
  EXPECT_EQ(s.examples[0].label, 1);
  EXPECT_EQ(s.examples[1].label, 0);
  EXPECT_EQ(*s.examples[1].text_pair,
            "His wife said he was \" 100 percent behind George Bush \" and looked forward to using his years of "
            "training in the war .");
}

TEST(GlueLayouts, QnliQqpRte) {
  TextSplit q = read(glue_dir() / "QNLI" / "dev.tsv", "qnli");
  ASSERT_EQ(q.examples.size(), 2u);
  EXPECT_EQ(q.examples[0].text, "What came into force after the new constitution was herald?");
  EXPECT_EQ(q.examples[0].text_pair->substr(0, 12), "As of that d");
  EXPECT_EQ(q.examples[0].label, 0);  // entailment
  EXPECT_EQ(q.examples[1].label, 1);  // not_entailment

  TextSplit p = read(glue_dir() / "QQP" / "dev.tsv", "qqp");
  ASSERT_EQ(p.examples.size(), 2u);
  EXPECT_EQ(p.examples[0].text, "Why are African-Americans so beautiful?");
  EXPECT_EQ(*p.examples[0].text_pair, "Why are hispanics so beautiful?");
  EXPECT_EQ(p.examples[0].label, 0);
  EXPECT_EQ(p.examples[1].text, "How do I \"hack\" wifi?");
  EXPECT_EQ(p.examples[1].label, 1);

  TextSplit r = read(glue_dir() / "RTE" / "dev.tsv", "rte");
  ASSERT_EQ(r.examples.size(), 2u);
  EXPECT_EQ(*r.examples[0].text_pair, "Christopher Reeve had an accident.");
  EXPECT_EQ(r.examples[0].label, 1);  // not_entailment
  EXPECT_EQ(r.examples[1].label, 0);  // entailment
}

TEST(GlueLayouts, MnliReadsSentencesAndGoldLabelByHeader) {
  TextSplit m = read(glue_dir() / "MNLI" / "dev_matched.tsv", "mnli");
  EXPECT_EQ(m.format, TextFormat::Mnli);
  ASSERT_EQ(m.examples.size(), 3u);
  EXPECT_EQ(m.examples[0].text, "The new rights are nice enough");
  EXPECT_EQ(*m.examples[0].text_pair, "Everyone really likes the newest benefits ");
  // gold_label, not label1 (entailment there): HF's order entailment 0, neutral 1, contradiction 2.
  EXPECT_EQ(m.examples[0].label, 1);
  EXPECT_EQ(m.examples[1].label, 2);
  EXPECT_EQ(m.examples[2].label, 0);
  TextSplit mm = read(glue_dir() / "MNLI" / "dev_mismatched.tsv", "mnli_mismatched");
  ASSERT_EQ(mm.examples.size(), 1u);
  EXPECT_EQ(mm.examples[0].label, 2);
  TextSplit train = read(glue_dir() / "MNLI" / "train.tsv", "mnli");  // 12 columns, gold_label last
  ASSERT_EQ(train.examples.size(), 1u);
  EXPECT_EQ(train.examples[0].label, 1);
}

TEST(GlueLayouts, BuiltInLabelOrdersAreHuggingFacesGlue) {
  EXPECT_EQ(builtin_task("mnli")->labels, (std::vector<std::string>{"entailment", "neutral", "contradiction"}));
  EXPECT_EQ(builtin_task("rte")->labels, (std::vector<std::string>{"entailment", "not_entailment"}));
  EXPECT_EQ(builtin_task("qnli")->labels, (std::vector<std::string>{"entailment", "not_entailment"}));
  EXPECT_EQ(builtin_task("cola")->labels, (std::vector<std::string>{"unacceptable", "acceptable"}));
  EXPECT_EQ(builtin_task("mnli_mismatched")->test_file, "dev_mismatched.tsv");
  EXPECT_EQ(builtin_task("sst2")->folder, "SST-2");
  EXPECT_EQ(builtin_task("stsb"), nullptr);
}

TEST(GenericFormats, CsvWithQuotesCommasAndNewlines) {
  TextSplit s = read_split(data_dir() / "custom" / "test.csv", TextFormat::Auto, "custom", {"negative", "positive"},
                           BadRow::Error, "w");
  EXPECT_EQ(s.format, TextFormat::Csv);
  ASSERT_EQ(s.examples.size(), 3u);
  EXPECT_EQ(s.examples[0].text, "Hello, world");
  EXPECT_EQ(*s.examples[0].text_pair, "a \"quoted\" pair");
  EXPECT_EQ(s.examples[0].label, 1);
  EXPECT_EQ(s.examples[1].text, "two\nlines");
  EXPECT_EQ(*s.examples[1].text_pair, "");
  EXPECT_EQ(s.examples[1].label, 0);
  EXPECT_EQ(s.examples[1].line, 3);
  EXPECT_EQ(s.examples[2].text, "plain text");
  EXPECT_EQ(s.examples[2].line, 5);  // the record after the two-line one
  EXPECT_EQ(s.examples[2].label, 0);
}

TEST(GenericFormats, JsonLinesWithIndexAndNameLabelsAndOptionalPairs) {
  TextSplit s = read_split(data_dir() / "custom" / "test.jsonl", TextFormat::Auto, "custom",
                           {"negative", "positive"}, BadRow::Error, "w");
  EXPECT_EQ(s.format, TextFormat::Jsonl);
  ASSERT_EQ(s.examples.size(), 3u);
  EXPECT_EQ(s.examples[0].text, "first");
  EXPECT_FALSE(s.examples[0].text_pair);
  EXPECT_EQ(s.examples[0].label, 1);
  EXPECT_EQ(s.examples[1].line, 3);  // the blank line is skipped, not renumbered
  EXPECT_EQ(*s.examples[1].text_pair, "pair two");
  EXPECT_EQ(s.examples[1].label, 0);
  EXPECT_EQ(s.examples[2].text, "third\ttab");
  EXPECT_FALSE(s.examples[2].text_pair);
}

TEST(GenericFormats, TsvHeaderWithTextAndLabelAndNumericLabelNames) {
  TempDir tmp("tsv");
  write_text(tmp / "t.tsv", "label\ttext\n5\t\"five\n1\tone\n");
  // A field equal to a name is that name, before it is read as an index: "5" is the last class, "1" the first.
  TextSplit s = read_split(tmp / "t.tsv", TextFormat::Auto, "stars", {"1", "2", "3", "4", "5"}, BadRow::Error, "w");
  EXPECT_EQ(s.format, TextFormat::Tsv);
  ASSERT_EQ(s.examples.size(), 2u);
  EXPECT_EQ(s.examples[0].text, "\"five");
  EXPECT_EQ(s.examples[0].label, 4);
  EXPECT_EQ(s.examples[1].label, 0);
}

TEST(GenericFormats, CsvRecordSplitting) {
  const std::string text = "a,\"b,\"\"c\"\"\",\r\n\"x\ny\",z";
  size_t pos = 0;
  int64_t line = 1;
  EXPECT_EQ(split_csv_record(text, pos, line), (std::vector<std::string>{"a", "b,\"c\"", ""}));
  EXPECT_EQ(line, 2);
  EXPECT_EQ(split_csv_record(text, pos, line), (std::vector<std::string>{"x\ny", "z"}));
  EXPECT_EQ(line, 3);
  EXPECT_EQ(pos, text.size());
}

TEST(LabelNames, CommaListAndJsonList) {
  EXPECT_EQ(parse_label_names(" neg , pos ", "k"), (std::vector<std::string>{"neg", "pos"}));
  EXPECT_EQ(parse_label_names("[\"a, b\", \"c\"]", "k"), (std::vector<std::string>{"a, b", "c"}));
  EXPECT_EQ(error_of([] { parse_label_names("a,,b", "taskpool.label_names.t"); }),
            "taskpool.label_names.t: label name 1 is empty");
  EXPECT_EQ(error_of([] { parse_label_names("a, a", "taskpool.label_names.t"); }),
            "taskpool.label_names.t: label name 'a' is given twice");
  EXPECT_EQ(error_of([] { parse_label_names("[1, 2]", "taskpool.label_names.t"); }),
            "taskpool.label_names.t: not a JSON list of strings: [1, 2]");
}

class BadInput : public ::testing::Test {
 protected:
  TempDir tmp_{"bad"};
  std::string read_error(const std::string& file, const std::string& content, const std::string& task = "rte",
                         TextFormat f = TextFormat::Auto) {
    write_text(tmp_ / file, content);
    return error_of([&] { read(tmp_ / file, task, f); });
  }
  std::string path(const std::string& file) const { return (tmp_ / file).string(); }
};

TEST_F(BadInput, MissingFileAndFolder) {
  EXPECT_EQ(error_of([&] { read(tmp_ / "RTE" / "dev.tsv", "rte"); }),
            "task 'rte' test split: '" + path("RTE/dev.tsv") + "' does not exist");
  fs::create_directories(tmp_ / "d.tsv");
  EXPECT_EQ(error_of([&] { read(tmp_ / "d.tsv", "rte"); }),
            "task 'rte' test split: '" + path("d.tsv") + "' is a folder, not a file");
}

TEST_F(BadInput, WrongColumnCount) {
  EXPECT_EQ(read_error("dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb c\n"),
            "task 'rte' test split: " + path("dev.tsv") +
                ":3: 3 columns, expected 4 as the header (tab-separated, quotes are literal)");
  EXPECT_EQ(read_error("cola.tsv", "gj04\t1\t\tfine.\ngj04\t0\tbad\n", "cola"),
            "task 'cola' test split: " + path("cola.tsv") +
                ":2: 3 columns, expected 4 (CoLA: source, label, original mark, sentence; no header; tab-separated, "
                "quotes are literal)");
  // A quote does not protect a tab (QUOTE_NONE): this row has 5 fields.
  EXPECT_EQ(read_error("q.tsv", "index\tsentence1\tsentence2\tlabel\n0\t\"a\tb\"\tc\tentailment\n"),
            "task 'rte' test split: " + path("q.tsv") +
                ":2: 5 columns, expected 4 as the header (tab-separated, quotes are literal)");
}

TEST_F(BadInput, MissingHeaderColumn) {
  EXPECT_EQ(read_error("m.tsv", "index\tsentence1\tsentence2\tlabel1\n0\ta\tb\tneutral\n", "mnli"),
            "task 'mnli' test split: " + path("m.tsv") +
                ":1: the header has no column 'gold_label' (an MNLI file needs sentence1, sentence2, gold_label; "
                "header: index | sentence1 | sentence2 | label1)");
  EXPECT_EQ(read_error("c.csv", "sentence,label\nx,1\n", "rte"),
            "task 'rte' test split: " + path("c.csv") +
                ":1: the header has no column 'text' (the file needs text, label, optionally text_pair; header: "
                "sentence | label)");
}

TEST_F(BadInput, UnknownLabelEmptyTextAndEmptySplit) {
  EXPECT_EQ(read_error("u.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n"),
            "task 'rte' test split: " + path("u.tsv") +
                ":2: label 'maybe' is not one of entailment, not_entailment (nor an index 0..1)");
  EXPECT_EQ(read_error("i.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\t2\n"),
            "task 'rte' test split: " + path("i.tsv") +
                ":2: label '2' is not one of entailment, not_entailment (nor an index 0..1)");
  EXPECT_EQ(read_error("e.tsv", "index\tsentence1\tsentence2\tlabel\n0\t\tb\tentailment\n"),
            "task 'rte' test split: " + path("e.tsv") + ":2: empty text (column 'sentence1')");
  EXPECT_EQ(read_error("h.tsv", "index\tsentence1\tsentence2\tlabel\n\n"),
            "task 'rte' test split: " + path("h.tsv") + ": no examples");
  EXPECT_EQ(read_error("z.tsv", ""), "task 'rte' test split: " + path("z.tsv") + ": no examples (the file is empty)");
}

TEST_F(BadInput, CsvAndJsonLines) {
  EXPECT_EQ(read_error("q.csv", "text,label\n\"open,1\n"),
            "task 'rte' test split: " + path("q.csv") + ":2: unterminated quoted field");
  EXPECT_EQ(read_error("b.jsonl", "{\"text\": \"a\", \"label\": 0}\n{\"text\": \"a\" \"label\": 0}\n"),
            "task 'rte' test split: " + path("b.jsonl") +
                ":2: not valid JSON: parse error at line 1, column 20: syntax error while parsing object - unexpected "
                "string literal; expected '}'");
  EXPECT_EQ(read_error("l.jsonl", "{\"text\": \"a\", \"label\": 7}\n"),
            "task 'rte' test split: " + path("l.jsonl") + ":1: label 7 is outside 0..1 (entailment, not_entailment)");
  EXPECT_EQ(read_error("t.jsonl", "{\"label\": 0}\n"),
            "task 'rte' test split: " + path("t.jsonl") + ":1: \"text\" is missing or not a string");
  EXPECT_EQ(read_error("f.jsonl", "{\"text\": \"a\", \"label\": 0.5}\n"),
            "task 'rte' test split: " + path("f.jsonl") + ":1: \"label\" must be an integer or a label name, not 0.5");
  EXPECT_EQ(read_error("x.dat", "a\n"),
            "task 'rte' test split: cannot tell the format of '" + path("x.dat") +
                "' from its extension (.tsv, .csv, .jsonl): set taskpool.formats.rte");
}

TEST_F(BadInput, SkippedRowsAreCounted) {
  write_text(tmp_ / "s.tsv",
             "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tmaybe\n2\ta\tb\tmaybe\n3\tc\td\t1\n");
  TextSplit s = read(tmp_ / "s.tsv", "rte", TextFormat::Auto, BadRow::Skip);
  ASSERT_EQ(s.examples.size(), 2u);
  EXPECT_EQ(s.skipped_rows, 2);
  EXPECT_EQ(s.examples[1].line, 5);
  EXPECT_EQ(s.examples[1].label, 1);
  write_text(tmp_ / "all.tsv", "index\tsentence1\tsentence2\tlabel\n1\ta\tmaybe\n");
  EXPECT_EQ(error_of([&] { read(tmp_ / "all.tsv", "rte", TextFormat::Auto, BadRow::Skip); }),
            "task 'rte' test split: " + path("all.tsv") + ": no examples (all 1 rows malformed and skipped)");
}

TEST(Formats, NamesRoundTripAndExplicitLayoutOverridesExtension) {
  EXPECT_EQ(parse_format("mnli", "k"), TextFormat::Mnli);
  EXPECT_EQ(format_name(TextFormat::Jsonl), std::string("jsonl"));
  EXPECT_EQ(error_of([] { parse_format("xml", "taskpool.formats.t"); }),
            "taskpool.formats.t: unknown format 'xml' (one of auto, csv, tsv, jsonl, cola, sst2, mrpc, qnli, qqp, rte, "
            "mnli)");
  // A task that is not built in reads a GLUE file when told its layout.
  TextSplit s = read_split(glue_dir() / "RTE" / "dev.tsv", TextFormat::Rte, "my_rte", {"entailment", "not_entailment"},
                           BadRow::Error, "w");
  EXPECT_EQ(s.examples.size(), 2u);
  EXPECT_EQ(resolve_format(TextFormat::Auto, "x/dev.tsv", "my_rte", "w"), TextFormat::Tsv);
  EXPECT_EQ(resolve_format(TextFormat::Auto, "x/dev.tsv", "qqp", "w"), TextFormat::Qqp);
}

}  // namespace
}  // namespace fusion::text_classification
