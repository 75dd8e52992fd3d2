#include "text_data.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "fusion/error.hpp"

namespace fusion::text_classification {
namespace fs = std::filesystem;

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
  return s;
}

namespace {

const std::vector<std::pair<TextFormat, const char*>>& format_names() {
  static const std::vector<std::pair<TextFormat, const char*>> names{
      {TextFormat::Auto, "auto"}, {TextFormat::Csv, "csv"},   {TextFormat::Tsv, "tsv"},   {TextFormat::Jsonl, "jsonl"},
      {TextFormat::Cola, "cola"}, {TextFormat::Sst2, "sst2"}, {TextFormat::Mrpc, "mrpc"}, {TextFormat::Qnli, "qnli"},
      {TextFormat::Qqp, "qqp"},   {TextFormat::Rte, "rte"},   {TextFormat::Mnli, "mnli"}};
  return names;
}

// The built-in tasks. Label orders are those of Hugging Face's `glue` datasets (datasets' glue.py):
// the order of the score rows of FusionBench's GPT-2 checkpoints.
const std::vector<GlueTask>& builtin_tasks() {
  static const std::vector<GlueTask> tasks{
      {"cola", "CoLA", "train.tsv", "dev.tsv", TextFormat::Cola, {"unacceptable", "acceptable"}},
      {"sst2", "SST-2", "train.tsv", "dev.tsv", TextFormat::Sst2, {"negative", "positive"}},
      {"mrpc", "MRPC", "train.tsv", "dev.tsv", TextFormat::Mrpc, {"not_equivalent", "equivalent"}},
      {"qqp", "QQP", "train.tsv", "dev.tsv", TextFormat::Qqp, {"not_duplicate", "duplicate"}},
      {"mnli", "MNLI", "train.tsv", "dev_matched.tsv", TextFormat::Mnli, {"entailment", "neutral", "contradiction"}},
      {"mnli_mismatched", "MNLI", "train.tsv", "dev_mismatched.tsv", TextFormat::Mnli,
       {"entailment", "neutral", "contradiction"}},
      {"qnli", "QNLI", "train.tsv", "dev.tsv", TextFormat::Qnli, {"entailment", "not_entailment"}},
      {"rte", "RTE", "train.tsv", "dev.tsv", TextFormat::Rte, {"entailment", "not_entailment"}},
  };
  return tasks;
}

// Where a layout keeps its columns. Header layouts name them; CoLA has none (fixed positions).
struct Columns {
  std::string text, pair, label;  // header names; pair empty: single texts
  bool pair_optional = false;     // generic layouts: text_pair may be absent from the header
  const char* what = "";          // "an MNLI file", for messages
};

Columns columns_of(TextFormat f) {
  switch (f) {
    case TextFormat::Sst2: return {"sentence", "", "label", false, "an SST-2 file"};
    case TextFormat::Mrpc: return {"#1 String", "#2 String", "Quality", false, "an MRPC file"};
    case TextFormat::Qnli: return {"question", "sentence", "label", false, "a QNLI file"};
    case TextFormat::Qqp: return {"question1", "question2", "is_duplicate", false, "a QQP file"};
    case TextFormat::Rte: return {"sentence1", "sentence2", "label", false, "an RTE file"};
    case TextFormat::Mnli: return {"sentence1", "sentence2", "gold_label", false, "an MNLI file"};
    default: return {"text", "text_pair", "label", true, "the file"};
  }
}

// A field quoted in a message, cut to 60 bytes.
std::string quoted(const std::string& s) {
  if (s.size() <= 60) return "'" + s + "'";
  return "'" + s.substr(0, 57) + "...'";
}

std::string read_file(const fs::path& path, const std::string& where) {
  std::error_code ec;
  const auto st = fs::status(path, ec);
  FUSION_ENSURE(fs::exists(st), where, ": '", path.string(), "' does not exist");
  FUSION_ENSURE(!fs::is_directory(st), where, ": '", path.string(), "' is a folder, not a file");
  std::ifstream in(path, std::ios::binary);
  FUSION_ENSURE(in, where, ": cannot open '", path.string(), "': ", std::strerror(errno));
  std::ostringstream s;
  s << in.rdbuf();
  FUSION_ENSURE(!in.bad(), where, ": cannot read '", path.string(), "'");
  std::string text = s.str();
  if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);  // MRPC's files begin with a BOM
  return text;
}

// The lines of `text` ("\n" separated, a trailing "\r" cut), with their 1-based numbers; blank lines
// are left out.
std::vector<std::pair<int64_t, std::string>> lines_of(const std::string& text) {
  std::vector<std::pair<int64_t, std::string>> out;
  size_t pos = 0;
  int64_t n = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) out.emplace_back(n, std::move(line));
    pos = end + 1;
  }
  return out;
}

std::vector<std::string> split_tabs(const std::string& line) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (true) {
    const size_t tab = line.find('\t', pos);
    if (tab == std::string::npos) {
      out.push_back(line.substr(pos));
      return out;
    }
    out.push_back(line.substr(pos, tab - pos));
    pos = tab + 1;
  }
}

std::optional<int64_t> label_index(const std::string& field, const std::vector<std::string>& labels) {
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i] == field) return static_cast<int64_t>(i);
  if (field.empty() || field.size() > 18 || !std::all_of(field.begin(), field.end(), [](char c) {
        return c >= '0' && c <= '9';
      }))
    return std::nullopt;
  const int64_t v = std::stoll(field);
  if (v < static_cast<int64_t>(labels.size())) return v;
  return std::nullopt;
}

std::string unknown_label(const std::string& field, const std::vector<std::string>& labels) {
  return "label " + quoted(field) + " is not one of " + join(labels) + " (nor an index 0.." +
         std::to_string(labels.size() - 1) + ")";
}

// Collects the examples of one file; a row error is thrown or counted.
class Reader {
 public:
  Reader(const fs::path& path, const std::vector<std::string>& labels, BadRow bad, std::string where)
      : path_(path), labels_(labels), bad_(bad), where_(std::move(where)) {}

  // Throws the row error at `line` unless rows are skipped.
  void row_error(int64_t line, const std::string& what) {
    if (bad_ == BadRow::Skip) {
      ++split_.skipped_rows;
      return;
    }
    FUSION_FAIL(where_, ": ", path_.string(), ":", line, ": ", what);
  }
  [[noreturn]] void file_error(int64_t line, const std::string& what) const {
    if (line > 0) FUSION_FAIL(where_, ": ", path_.string(), ":", line, ": ", what);
    FUSION_FAIL(where_, ": ", path_.string(), ": ", what);
  }

  // Adds the example unless its text is empty or its label unknown (row errors).
  void add(int64_t line, std::string text, std::optional<std::string> pair, const std::string& label,
           const std::string& text_column) {
    if (text.empty()) return row_error(line, "empty text (column '" + text_column + "')");
    const auto idx = label_index(label, labels_);
    if (!idx) return row_error(line, unknown_label(label, labels_));
    add_indexed(line, std::move(text), std::move(pair), *idx);
  }
  void add_indexed(int64_t line, std::string text, std::optional<std::string> pair, int64_t label) {
    split_.examples.push_back({std::move(text), std::move(pair), label, line});
  }

  TextSplit finish(TextFormat format) {
    split_.format = format;
    if (split_.examples.empty()) {
      file_error(0, split_.skipped_rows > 0
                        ? "no examples (all " + std::to_string(split_.skipped_rows) + " rows malformed and skipped)"
                        : std::string("no examples"));
    }
    return std::move(split_);
  }

 private:
  fs::path path_;
  const std::vector<std::string>& labels_;
  BadRow bad_;
  std::string where_;
  TextSplit split_;
};

// A table (header + rows of fields, each with its line) with the columns of `format`.
void read_table(Reader& r, const std::vector<std::pair<int64_t, std::vector<std::string>>>& rows, TextFormat format,
                const char* how) {
  if (format == TextFormat::Cola) {
    for (const auto& [line, f] : rows) {
      if (f.size() != 4) {
        r.row_error(line, std::to_string(f.size()) + " columns, expected 4 (CoLA: source, label, original mark, "
                                                     "sentence; no header; " + how + ")");
        continue;
      }
      r.add(line, f[3], std::nullopt, f[1], "sentence");
    }
    return;
  }
  const Columns c = columns_of(format);
  if (rows.empty()) r.file_error(0, "no examples (the file is empty)");
  const int64_t header_line = rows.front().first;
  const std::vector<std::string>& header = rows.front().second;
  auto find = [&](const std::string& name) -> std::optional<size_t> {
    for (size_t i = 0; i < header.size(); ++i)
      if (header[i] == name) return i;
    return std::nullopt;
  };
  const auto text = find(c.text), label = find(c.label);
  const auto pair = c.pair.empty() ? std::nullopt : find(c.pair);
  std::vector<std::string> needed{c.text};
  if (!c.pair.empty() && !c.pair_optional) needed.push_back(c.pair);
  needed.push_back(c.label);
  for (const std::string& name : needed) {
    if (!find(name)) {
      r.file_error(header_line, "the header has no column '" + name + "' (" + c.what + " needs " + join(needed) +
                                    (c.pair_optional ? ", optionally " + c.pair : std::string()) + "; header: " +
                                    join(header, " | ") + ")");
    }
  }
  for (size_t i = 1; i < rows.size(); ++i) {
    const auto& [line, f] = rows[i];
    if (f.size() != header.size()) {
      r.row_error(line, std::to_string(f.size()) + " columns, expected " + std::to_string(header.size()) +
                            " as the header (" + how + ")");
      continue;
    }
    r.add(line, f[*text], pair ? std::optional<std::string>(f[*pair]) : std::nullopt, f[*label], c.text);
  }
}

}  // namespace

const char* format_name(TextFormat f) {
  for (const auto& [k, n] : format_names())
    if (k == f) return n;
  return "?";
}

TextFormat parse_format(const std::string& name, const std::string& where) {
  std::vector<std::string> all;
  for (const auto& [k, n] : format_names()) {
    if (name == n) return k;
    all.emplace_back(n);
  }
  FUSION_FAIL(where, ": unknown format '", name, "' (one of ", join(all), ")");
}

const GlueTask* builtin_task(const std::string& name) {
  for (const GlueTask& t : builtin_tasks())
    if (t.name == name) return &t;
  return nullptr;
}

std::vector<std::string> builtin_task_names() {
  std::vector<std::string> out;
  for (const GlueTask& t : builtin_tasks()) out.push_back(t.name);
  return out;
}

TextFormat resolve_format(TextFormat format, const fs::path& path, const std::string& task, const std::string& where) {
  if (format != TextFormat::Auto) return format;
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return std::tolower(ch); });
  if (ext == ".tsv") {
    if (const GlueTask* t = builtin_task(task)) return t->layout;
    return TextFormat::Tsv;
  }
  if (ext == ".txt") return TextFormat::Tsv;
  if (ext == ".csv") return TextFormat::Csv;
  if (ext == ".jsonl" || ext == ".json" || ext == ".ndjson") return TextFormat::Jsonl;
  FUSION_FAIL(where, ": cannot tell the format of '", path.string(),
              "' from its extension (.tsv, .csv, .jsonl): set taskpool.formats.", task);
}

std::vector<std::string> split_csv_record(const std::string& text, size_t& pos, int64_t& line) {
  std::vector<std::string> fields;
  std::string field;
  bool quoted_field = false, after_quote = false;
  while (pos < text.size()) {
    const char ch = text[pos];
    if (quoted_field) {
      if (ch == '"') {
        if (pos + 1 < text.size() && text[pos + 1] == '"') {
          field += '"';
          pos += 2;
          continue;
        }
        quoted_field = false;
        after_quote = true;
        ++pos;
        continue;
      }
      if (ch == '\n') ++line;
      field += ch;
      ++pos;
      continue;
    }
    if (ch == ',') {
      fields.push_back(std::move(field));
      field.clear();
      after_quote = false;
      ++pos;
      continue;
    }
    if (ch == '\n' || (ch == '\r' && pos + 1 < text.size() && text[pos + 1] == '\n')) {
      pos += ch == '\r' ? 2 : 1;
      ++line;
      fields.push_back(std::move(field));
      return fields;
    }
    FUSION_ENSURE(!after_quote, "character after a closing quote (a quote inside a quoted field is written \"\")");
    if (ch == '"' && field.empty()) {
      quoted_field = true;
      ++pos;
      continue;
    }
    field += ch;  // a quote inside an unquoted field is literal (as Python's csv module reads it)
    ++pos;
  }
  FUSION_ENSURE(!quoted_field, "unterminated quoted field");
  fields.push_back(std::move(field));
  return fields;
}

TextSplit read_split(const fs::path& path, TextFormat format_in, const std::string& task,
                     const std::vector<std::string>& labels, BadRow bad_rows, const std::string& where) {
  FUSION_ENSURE(!labels.empty(), where, ": no label names");
  const TextFormat format = resolve_format(format_in, path, task, where);
  const std::string text = read_file(path, where);
  Reader r(path, labels, bad_rows, where);

  if (format == TextFormat::Jsonl) {
    for (const auto& [line, s] : lines_of(text)) {
      if (s.find_first_not_of(" \t") == std::string::npos) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(s);
      } catch (const nlohmann::json::exception& e) {
        std::string msg = e.what();
        if (const size_t at = msg.find("] "); msg.rfind("[json.exception", 0) == 0 && at != std::string::npos)
          msg = msg.substr(at + 2);
        r.row_error(line, "not valid JSON: " + msg);
        continue;
      }
      if (!j.is_object()) {
        r.row_error(line, "not a JSON object");
        continue;
      }
      auto t = j.find("text");
      if (t == j.end() || !t->is_string()) {
        r.row_error(line, "\"text\" is missing or not a string");
        continue;
      }
      std::optional<std::string> pair;
      if (auto p = j.find("text_pair"); p != j.end() && !p->is_null()) {
        if (!p->is_string()) {
          r.row_error(line, "\"text_pair\" is not a string");
          continue;
        }
        pair = p->get<std::string>();
      }
      auto l = j.find("label");
      if (l == j.end()) {
        r.row_error(line, "\"label\" is missing");
        continue;
      }
      if (l->is_number_integer()) {
        const auto v = l->get<int64_t>();
        if (v < 0 || v >= static_cast<int64_t>(labels.size())) {
          r.row_error(line, "label " + std::to_string(v) + " is outside 0.." + std::to_string(labels.size() - 1) +
                                " (" + join(labels) + ")");
          continue;
        }
        if (t->get_ref<const std::string&>().empty()) {
          r.row_error(line, "empty text (\"text\")");
          continue;
        }
        r.add_indexed(line, t->get<std::string>(), std::move(pair), v);
      } else if (l->is_string()) {
        r.add(line, t->get<std::string>(), std::move(pair), l->get<std::string>(), "text");
      } else {
        r.row_error(line, "\"label\" must be an integer or a label name, not " + l->dump());
      }
    }
    return r.finish(format);
  }

  std::vector<std::pair<int64_t, std::vector<std::string>>> rows;
  if (format == TextFormat::Csv) {
    size_t pos = 0;
    int64_t line = 1;
    while (pos < text.size()) {
      const int64_t start = line;
      const size_t begin = pos;
      std::vector<std::string> fields;
      try {
        fields = split_csv_record(text, pos, line);
      } catch (const Error& e) {
        r.file_error(start, e.what());
      }
      const bool blank = fields.size() == 1 && fields[0].empty() && text[begin] != '"';
      if (!blank) rows.emplace_back(start, std::move(fields));
    }
    read_table(r, rows, format, "comma-separated, RFC 4180 quoting");
  } else {
    for (auto& [line, s] : lines_of(text)) rows.emplace_back(line, split_tabs(s));
    read_table(r, rows, format, "tab-separated, quotes are literal");
  }
  return r.finish(format);
}

std::vector<std::string> parse_label_names(const std::string& value, const std::string& where) {
  std::vector<std::string> names;
  const size_t first = value.find_first_not_of(" \t");
  if (first != std::string::npos && value[first] == '[') {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(value);
    } catch (const nlohmann::json::exception&) {
      FUSION_FAIL(where, ": not a JSON list of strings: ", value);
    }
    FUSION_ENSURE(j.is_array(), where, ": not a JSON list of strings: ", value);
    for (const auto& e : j) {
      FUSION_ENSURE(e.is_string(), where, ": not a JSON list of strings: ", value);
      names.push_back(e.get<std::string>());
    }
  } else {
    std::stringstream s(value);
    std::string name;
    while (std::getline(s, name, ',')) {
      const size_t b = name.find_first_not_of(" \t"), e = name.find_last_not_of(" \t");
      names.push_back(b == std::string::npos ? std::string() : name.substr(b, e - b + 1));
    }
    if (!value.empty() && value.back() == ',') names.emplace_back();
  }
  FUSION_ENSURE(!names.empty(), where, ": no label names");
  std::set<std::string> seen;
  for (size_t i = 0; i < names.size(); ++i) {
    FUSION_ENSURE(!names[i].empty(), where, ": label name ", i, " is empty");
    FUSION_ENSURE(seen.insert(names[i]).second, where, ": label name '", names[i], "' is given twice");
  }
  return names;
}

}  // namespace fusion::text_classification
