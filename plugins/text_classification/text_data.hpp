#pragma once
// Labelled text examples read from GLUE's own TSV files, CSV, TSV and JSON-lines files.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace fusion::text_classification {

/// How a split's file is laid out.
enum class TextFormat {
  Auto,   ///< by the task (a built-in GLUE task's .tsv has its GLUE layout) and the extension
  Csv,    ///< RFC 4180 CSV with a header naming `text`, optional `text_pair`, `label`
  Tsv,    ///< tab-separated, quotes literal, header naming `text`, optional `text_pair`, `label`
  Jsonl,  ///< one JSON object per line: "text", optional "text_pair", "label" (int or name)
  Cola,   ///< GLUE CoLA: no header; source, label, original mark, sentence
  Sst2,   ///< GLUE SST-2: header sentence, label
  Mrpc,   ///< GLUE MRPC: header Quality, #1 ID, #2 ID, #1 String, #2 String
  Qnli,   ///< GLUE QNLI: header index, question, sentence, label
  Qqp,    ///< GLUE QQP: header id, qid1, qid2, question1, question2, is_duplicate
  Rte,    ///< GLUE RTE: header index, sentence1, sentence2, label
  Mnli,   ///< GLUE MNLI: header with sentence1, sentence2, gold_label (and a dozen more columns)
};

/// "auto", "csv", "tsv", "jsonl", "cola", "sst2", ...
const char* format_name(TextFormat f);
/// The format named `name` (format_name's spellings). Throws fusion::Error "<where>: unknown format ...".
TextFormat parse_format(const std::string& name, const std::string& where);

/// One labelled example. `line` is the 1-based line of the file where its record starts.
struct TextExample {
  std::string text;
  std::optional<std::string> text_pair;
  int64_t label = 0;
  int64_t line = 0;
};

/// A built-in GLUE task: where its files sit under data_dir, its layout and its label names in the
/// order of Hugging Face's `glue` datasets (the heads of FusionBench's checkpoints use that order).
struct GlueTask {
  std::string name;       ///< "cola", "sst2", "mrpc", "qnli", "qqp", "rte", "mnli", "mnli_mismatched"
  std::string folder;     ///< "CoLA", "SST-2", "MRPC", "QNLI", "QQP", "RTE", "MNLI"
  std::string train_file; ///< "train.tsv"
  std::string test_file;  ///< "dev.tsv" ("dev_matched.tsv", "dev_mismatched.tsv" for MNLI)
  TextFormat layout;
  std::vector<std::string> labels;
};

/// The built-in task `name`, or nullptr.
const GlueTask* builtin_task(const std::string& name);
/// Every built-in task name, in GLUE's order.
std::vector<std::string> builtin_task_names();

/// What to do with a malformed row (wrong column count, unknown label, empty text).
enum class BadRow { Error, Skip };

/// The examples of a split.
struct TextSplit {
  std::vector<TextExample> examples;
  TextFormat format = TextFormat::Auto;  ///< the format that was read (never Auto)
  int64_t skipped_rows = 0;              ///< malformed rows left out (BadRow::Skip)
};

/// The format `path` is read with: `format` unless Auto; else a built-in GLUE task's layout for
/// a .tsv file of that task (`task`), else by extension: .csv → Csv, .tsv/.txt → Tsv,
/// .jsonl/.json/.ndjson → Jsonl. Throws fusion::Error "<where>: ..." when the extension says nothing.
TextFormat resolve_format(TextFormat format, const std::filesystem::path& path, const std::string& task,
                          const std::string& where);

/// Reads the split at `path` in `format` (resolve_format'ed) with the task's `labels`: a label field is
/// a label name (exactly as given) or, when no name matches, a decimal index in [0, labels.size()).
/// GLUE's and the generic TSV files are read as GLUE's own readers read them (Python's csv module
/// with delimiter "\t" and quoting=csv.QUOTE_NONE): a record is one line, fields are split at every
/// tab, quotes are literal characters; a UTF-8 byte order mark at the start is dropped, a trailing
/// "\r" is cut, blank lines are skipped; every row must have the header's column count (CoLA: 4).
/// CSV follows RFC 4180 (double quotes enclose fields that may hold commas, "" and newlines).
/// Every error is one fusion::Error line "<where>: <path>:<line>: <what>" (or "<where>: <path>: ..."
/// for the whole file): a missing or unreadable file, a missing header column, a wrong column count,
/// an unknown label, an empty text, invalid JSON, and a split without examples. With BadRow::Skip,
/// row errors are counted in skipped_rows instead.
TextSplit read_split(const std::filesystem::path& path, TextFormat format, const std::string& task,
                     const std::vector<std::string>& labels, BadRow bad_rows, const std::string& where);

/// Splits one record of a CSV text (RFC 4180) starting at `pos`; advances `pos` past the record's
/// line end and `line` by the newlines consumed. Exposed for tests. Throws fusion::Error
/// "unterminated quoted field" / "character after a closing quote" (without a location).
std::vector<std::string> split_csv_record(const std::string& text, size_t& pos, int64_t& line);

/// Label names from an option value: a JSON list of strings ("[\"a\", \"b\"]") or names separated by
/// commas ("a, b": spaces around each name trimmed). Throws fusion::Error "<where>: ..." for an empty
/// list, an empty or repeated name, or invalid JSON.
std::vector<std::string> parse_label_names(const std::string& value, const std::string& where);

/// The items with `sep` between them ("a, b, c"), for messages that list names.
std::string join(const std::vector<std::string>& v, const char* sep = ", ");

}  // namespace fusion::text_classification
