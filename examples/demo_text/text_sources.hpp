#pragma once
// The language demo's text sources (examples/demo_text/README.md): Debian's fortune cookies and the
// descriptions of Debian packages, turned into deterministic text-classification tasks (CSV files the
// `text_classification` task pool reads) and a language-model corpus (JSON lines). No torch here.
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace fusion::demo_text {

/// Whitespace runs (spaces, tabs, newlines, carriage returns, form feeds) become one space; leading
/// and trailing whitespace is cut. Other bytes are kept as they are.
std::string normalize_whitespace(const std::string& text);

/// True when `text` is well-formed UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF)
/// and holds no control character other than tab, newline and carriage return.
bool is_clean_utf8(const std::string& text);

/// The entries of a fortune file as `fortune` reads it: entries are separated by lines holding only
/// "%" (a trailing "\r" is ignored). Each entry is normalize_whitespace'd; empty entries are dropped.
std::vector<std::string> parse_fortunes(const std::string& content);

/// One binary package of an apt `Packages` list: its name, section (the component prefix cut:
/// "contrib/games" → "games") and the first line of its Description (the synopsis).
struct PackageEntry {
  std::string package;
  std::string section;
  std::string description;
};

/// The stanzas of an apt `Packages` list (RFC 822-style paragraphs separated by blank lines; field
/// names matched without regard to case; continuation lines start with a space or tab and are not
/// part of the synopsis). Stanzas without Package, Section or Description are left out.
std::vector<PackageEntry> parse_packages(const std::string& content);

/// One labelled text.
struct Example {
  std::string text;
  int64_t label = 0;
};

/// A task's two splits.
struct TaskSplits {
  std::vector<Example> train, test;
  std::vector<int64_t> train_per_class, test_per_class;  ///< by label index
  int64_t ambiguous = 0;  ///< distinct texts dropped because they occur under more than one class
};

/// Builds a balanced task from the texts of each class (`texts_by_class[c]`, label c), the same
/// on every machine for the same inputs: texts are deduplicated; a text found under more than one
/// class is dropped from all of them; each class's texts are sorted (bytewise) and shuffled with
/// shuffle_in_place(seed + c), the first `max_per_class` kept (0: all), and the first
/// round(n · test_fraction) of those form the test split. Each split is then shuffled with
/// shuffle_in_place (seed ^ a constant per split). Throws std::runtime_error for a class with fewer
/// than 2 texts left or a test_fraction outside (0, 1).
TaskSplits make_task(const std::vector<std::vector<std::string>>& texts_by_class, int64_t max_per_class,
                     double test_fraction, uint64_t seed);

/// Fisher–Yates with std::mt19937_64(seed), index j = rng() % (i + 1): portable (std::shuffle's
/// algorithm is the library's choice).
template <class T>
void shuffle_in_place(std::vector<T>& v, uint64_t seed);

/// One CSV field as RFC 4180 writes it: quoted (with "" for ") when it holds a comma, a quote, a
/// newline or a carriage return, or starts or ends with a space; as it is otherwise.
std::string csv_field(const std::string& s);

/// Writes `examples` as CSV with the header `text,label`, the label as its name (`labels[label]`),
/// atomically (a temporary name, then renamed).
void write_task_csv(const std::filesystem::path& path, const std::vector<Example>& examples,
                    const std::vector<std::string>& labels);

/// Writes one JSON object {"text": t} per line, atomically.
void write_text_jsonl(const std::filesystem::path& path, const std::vector<std::string>& texts);

/// Writes `content` to `path` through a temporary name and a rename.
void write_file_atomic(const std::filesystem::path& path, const std::string& content);

/// Writes a placeholder GPT2ForSequenceClassification head: a safetensors file holding
/// `score.weight`, F32 zeros [classes, n_embd], metadata {"placeholder": "true"}. The
/// text_classification task pool checks a head's shape when it opens and reads it when first used;
/// the fine-tuning run overwrites the placeholder with the trained head before the host evaluates.
void write_placeholder_score_head(const std::filesystem::path& path, int64_t classes, int64_t n_embd);

/// The whole file as bytes. Throws std::runtime_error naming it when it cannot be read.
std::string read_file(const std::filesystem::path& path);

// ---- implementation of the template -------------------------------------------------------------
}  // namespace fusion::demo_text

#include <random>
#include <utility>

template <class T>
void fusion::demo_text::shuffle_in_place(std::vector<T>& v, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (size_t i = v.size(); i > 1; --i) {
    const size_t j = static_cast<size_t>(rng() % i);
    std::swap(v[i - 1], v[j]);
  }
}
