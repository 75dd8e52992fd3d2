#include "text_sources.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <unistd.h>

#include <nlohmann/json.hpp>

namespace fs = std::filesystem;

namespace fusion::demo_text {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

}  // namespace

std::string normalize_whitespace(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  bool pending_space = false;
  for (char c : text) {
    if (is_space(c)) {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out += ' ';
    pending_space = false;
    out += c;
  }
  return out;
}

bool is_clean_utf8(const std::string& text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7f) return false;
      ++i;
      continue;
    }
    int len = 0;
    uint32_t cp = 0;
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;  // a continuation byte first, or 0xc0/0xc1/0xf5+ (overlong or out of range)
    }
    if (i + static_cast<size_t>(len) > n) return false;
    for (int k = 1; k < len; ++k) {
      const unsigned char d = s[i + static_cast<size_t>(k)];
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff))) return false;
    if (cp >= 0xd800 && cp <= 0xdfff) return false;
    if (cp >= 0x80 && cp < 0xa0) return false;  // C1 controls
    i += static_cast<size_t>(len);
  }
  return true;
}

std::vector<std::string> parse_fortunes(const std::string& content) {
  std::vector<std::string> out;
  std::string entry;
  auto flush = [&] {
    std::string t = normalize_whitespace(entry);
    if (!t.empty()) out.push_back(std::move(t));
    entry.clear();
  };
  size_t pos = 0;
  while (pos < content.size()) {
    size_t end = content.find('\n', pos);
    const bool last = end == std::string::npos;
    if (last) end = content.size();
    std::string line = content.substr(pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line == "%") {
      flush();
    } else {
      entry += line;
      entry += '\n';
    }
    pos = last ? content.size() : end + 1;
  }
  flush();
  return out;
}

std::vector<PackageEntry> parse_packages(const std::string& content) {
  std::vector<PackageEntry> out;
  PackageEntry cur;
  auto flush = [&] {
    if (!cur.package.empty() && !cur.section.empty() && !cur.description.empty()) out.push_back(cur);
    cur = PackageEntry();
  };
  size_t pos = 0;
  while (pos <= content.size()) {
    size_t end = content.find('\n', pos);
    if (end == std::string::npos) end = content.size();
    std::string line = content.substr(pos, end - pos);
    pos = end + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) {
      flush();
      if (end == content.size()) break;
      continue;
    }
    if (line[0] == ' ' || line[0] == '\t') continue;  // a continuation line
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string field = lower(line.substr(0, colon));
    const std::string value = normalize_whitespace(line.substr(colon + 1));
    if (field == "package") {
      cur.package = value;
    } else if (field == "section") {
      const size_t slash = value.rfind('/');
      cur.section = slash == std::string::npos ? value : value.substr(slash + 1);
    } else if (field == "description") {
      cur.description = value;
    }
    if (end == content.size()) {
      flush();
      break;
    }
  }
  return out;
}

TaskSplits make_task(const std::vector<std::vector<std::string>>& texts_by_class, int64_t max_per_class,
                     double test_fraction, uint64_t seed) {
  if (!(test_fraction > 0.0 && test_fraction < 1.0))
    throw std::runtime_error("make_task: test_fraction must lie in (0, 1)");
  const size_t C = texts_by_class.size();
  std::vector<std::set<std::string>> unique(C);
  std::map<std::string, int> classes_of;
  for (size_t c = 0; c < C; ++c) {
    unique[c] = std::set<std::string>(texts_by_class[c].begin(), texts_by_class[c].end());
    for (const auto& t : unique[c]) ++classes_of[t];
  }
  TaskSplits out;
  out.train_per_class.assign(C, 0);
  out.test_per_class.assign(C, 0);
  for (const auto& [t, n] : classes_of)
    if (n > 1) ++out.ambiguous;
  for (size_t c = 0; c < C; ++c) {
    std::vector<std::string> texts;
    for (const auto& t : unique[c])
      if (classes_of[t] == 1) texts.push_back(t);  // std::set: already sorted bytewise
    shuffle_in_place(texts, seed + c);
    if (max_per_class > 0 && static_cast<int64_t>(texts.size()) > max_per_class) texts.resize(static_cast<size_t>(max_per_class));
    if (texts.size() < 2) throw std::runtime_error("make_task: class " + std::to_string(c) + " has fewer than 2 texts");
    auto n_test = static_cast<size_t>(std::llround(static_cast<double>(texts.size()) * test_fraction));
    n_test = std::clamp<size_t>(n_test, 1, texts.size() - 1);
    for (size_t i = 0; i < texts.size(); ++i) {
      Example e{texts[i], static_cast<int64_t>(c)};
      if (i < n_test) {
        out.test.push_back(std::move(e));
        ++out.test_per_class[c];
      } else {
        out.train.push_back(std::move(e));
        ++out.train_per_class[c];
      }
    }
  }
  shuffle_in_place(out.train, seed ^ 0x7472616e5fULL);
  shuffle_in_place(out.test, seed ^ 0x746573745fULL);
  return out;
}

std::string csv_field(const std::string& s) {
  const bool quote = s.find_first_of(",\"\n\r") != std::string::npos ||
                     (!s.empty() && (s.front() == ' ' || s.back() == ' '));
  if (!quote) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

void write_file_atomic(const fs::path& path, const std::string& content) {
  if (!path.parent_path().empty()) fs::create_directories(path.parent_path());
  const fs::path tmp = path.string() + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary);
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    out.flush();
    if (!out) throw std::runtime_error("cannot write " + tmp.string());
  }
  fs::rename(tmp, path);
}

void write_task_csv(const fs::path& path, const std::vector<Example>& examples, const std::vector<std::string>& labels) {
  std::string s = "text,label\n";
  for (const Example& e : examples) {
    if (e.label < 0 || e.label >= static_cast<int64_t>(labels.size()))
      throw std::runtime_error("write_task_csv: label " + std::to_string(e.label) + " has no name");
    s += csv_field(e.text) + "," + csv_field(labels[static_cast<size_t>(e.label)]) + "\n";
  }
  write_file_atomic(path, s);
}

void write_text_jsonl(const fs::path& path, const std::vector<std::string>& texts) {
  std::string s;
  for (const auto& t : texts) s += nlohmann::json{{"text", t}}.dump() + "\n";
  write_file_atomic(path, s);
}

void write_placeholder_score_head(const fs::path& path, int64_t classes, int64_t n_embd) {
  if (classes < 1 || n_embd < 1) throw std::runtime_error("write_placeholder_score_head: sizes must be positive");
  const uint64_t bytes = static_cast<uint64_t>(classes) * static_cast<uint64_t>(n_embd) * 4;
  nlohmann::json header = {
      {"__metadata__", {{"format", "pt"}, {"placeholder", "true"}}},
      {"score.weight", {{"dtype", "F32"}, {"shape", {classes, n_embd}}, {"data_offsets", {0, bytes}}}}};
  std::string h = header.dump();
  while ((h.size() + 8) % 8 != 0) h += ' ';  // the data starts 8-byte aligned
  std::string out(8, '\0');
  const uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  out += h;
  out.append(static_cast<size_t>(bytes), '\0');
  write_file_atomic(path, out);
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace fusion::demo_text
