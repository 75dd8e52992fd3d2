// prepare_data (language demo): turns Debian's fortune cookies and the synopses of Debian packages into
// the demo's three text-classification tasks and its language-model corpus.
//
//   fusion_demo_text_prepare_data --out .cache/fusion-demo-text/data
//       --fortunes /usr/share/games/fortunes --packages packages.txt
//       [--seed 0] [--max-per-class 500] [--test-fraction 0.2] [--max-chars 300]
//       [--lm-extra-packages 8000] [--placeholder-heads DIR --n-embd N]
//
// --packages is an apt `Packages` list, decompressed (run.sh takes Debian 12's main list through
// `apt-get indextargets` and `apt-helper cat-file`). Writes OUT/<task>/{train,test}.csv (header
// text,label; labels by name), OUT/lm_corpus.jsonl ({"text": ...} per line: the tasks' train texts and
// texts of the other fortune categories and package sections, never a test text) and OUT/info.json
// (the tasks, their labels and counts, the options) last. The same inputs and options give the same
// bytes on every machine.

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "text_sources.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace fusion::demo_text;

namespace {

/// One task: which source and which of its categories (fortune files or package sections) are the
/// classes, in label order.
struct TaskDef {
  std::string name;
  std::string source;  ///< "fortunes" or "packages"
  std::vector<std::string> classes;
  std::string what;    ///< for info.json
};

const std::vector<TaskDef>& task_defs() {
  static const std::vector<TaskDef> defs = {
      {"fortune", "fortunes", {"computers", "politics", "science", "songs-poems"},
       "the category (fortune file) of a fortune cookie"},
      {"section", "packages", {"games", "graphics", "net", "science", "sound"},
       "the Debian section of a package, from its one-line description"},
      {"language", "packages", {"haskell", "javascript", "perl", "python", "ruby"},
       "the language section of a Debian library package, from its one-line description"},
  };
  return defs;
}

struct Options {
  fs::path out, fortunes, packages, placeholder_heads;
  uint64_t seed = 0;
  int64_t max_per_class = 500;
  double test_fraction = 0.2;
  int64_t max_chars = 300;
  int64_t min_chars = 12;
  int64_t lm_extra_packages = 8000;
  int64_t n_embd = 0;
};

[[noreturn]] void usage(const std::string& error) {
  std::cerr << "prepare_data: " << error << "\n"
            << "usage: fusion_demo_text_prepare_data --out DIR --fortunes DIR --packages FILE\n"
               "           [--seed S] [--max-per-class N] [--test-fraction F] [--max-chars N]\n"
               "           [--lm-extra-packages N] [--placeholder-heads DIR --n-embd N]\n";
  std::exit(2);
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    auto number = [&](const std::string& v) -> long long {
      try {
        size_t used = 0;
        long long n = std::stoll(v, &used);
        if (used != v.size() || n < 0) throw std::invalid_argument(v);
        return n;
      } catch (const std::exception&) {
        usage(a + ": expected a non-negative integer, got '" + v + "'");
      }
    };
    if (a == "--out") o.out = value();
    else if (a == "--fortunes") o.fortunes = value();
    else if (a == "--packages") o.packages = value();
    else if (a == "--placeholder-heads") o.placeholder_heads = value();
    else if (a == "--seed") o.seed = static_cast<uint64_t>(number(value()));
    else if (a == "--max-per-class") o.max_per_class = number(value());
    else if (a == "--max-chars") o.max_chars = number(value());
    else if (a == "--lm-extra-packages") o.lm_extra_packages = number(value());
    else if (a == "--n-embd") o.n_embd = number(value());
    else if (a == "--test-fraction") {
      const std::string v = value();
      try {
        o.test_fraction = std::stod(v);
      } catch (const std::exception&) {
        usage("--test-fraction: expected a number, got '" + v + "'");
      }
      if (!(o.test_fraction > 0.0 && o.test_fraction < 1.0)) usage("--test-fraction must lie in (0, 1)");
    } else {
      usage("unknown option '" + a + "'");
    }
  }
  if (o.out.empty() || o.fortunes.empty() || o.packages.empty()) usage("--out, --fortunes and --packages are required");
  if (!o.placeholder_heads.empty() && o.n_embd < 1) usage("--placeholder-heads needs --n-embd");
  return o;
}

bool keep_text(const std::string& t, const Options& o) {
  return is_clean_utf8(t) && static_cast<int64_t>(t.size()) >= o.min_chars &&
         static_cast<int64_t>(t.size()) <= o.max_chars;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse_args(argc, argv);

  // Fortunes: every category file of the folder (plain files without an extension: `fortune`'s .dat
  // indexes and .u8 links are left out), sorted by name.
  std::map<std::string, std::vector<std::string>> fortunes;
  if (!fs::is_directory(o.fortunes)) usage("--fortunes: '" + o.fortunes.string() + "' is not a folder (apt-get install fortunes)");
  for (const auto& e : fs::directory_iterator(o.fortunes)) {
    const std::string name = e.path().filename().string();
    if (!e.is_regular_file() || e.is_symlink() || name.find('.') != std::string::npos) continue;
    for (auto& t : parse_fortunes(read_file(e.path())))
      if (keep_text(t, o)) fortunes[name].push_back(std::move(t));
  }
  // Package synopses by section; a synopsis shared by several packages counts once per section.
  std::map<std::string, std::vector<std::string>> sections;
  for (const PackageEntry& p : parse_packages(read_file(o.packages)))
    if (keep_text(p.description, o)) sections[p.section].push_back(p.description);
  if (sections.empty()) usage("--packages: '" + o.packages.string() + "' holds no package stanza");

  json info = {{"seed", o.seed},
               {"max_per_class", o.max_per_class},
               {"test_fraction", o.test_fraction},
               {"chars", {o.min_chars, o.max_chars}},
               {"tasks", json::object()}};
  std::set<std::string> test_texts, used_fortunes, used_sections;
  std::vector<std::string> lm;
  for (const TaskDef& d : task_defs()) {
    auto& source = d.source == "fortunes" ? fortunes : sections;
    std::vector<std::vector<std::string>> by_class;
    for (const auto& c : d.classes) {
      auto it = source.find(c);
      if (it == source.end() || it->second.empty())
        usage("task " + d.name + ": no texts for '" + c + "' in " + (d.source == "fortunes" ? o.fortunes : o.packages).string());
      by_class.push_back(it->second);
      (d.source == "fortunes" ? used_fortunes : used_sections).insert(c);
    }
    // One seed per task, so adding a task leaves the others as they were.
    uint64_t task_seed = o.seed;
    for (char ch : d.name) task_seed = task_seed * 131 + static_cast<unsigned char>(ch);
    const TaskSplits s = make_task(by_class, o.max_per_class, o.test_fraction, task_seed);
    write_task_csv(o.out / d.name / "train.csv", s.train, d.classes);
    write_task_csv(o.out / d.name / "test.csv", s.test, d.classes);
    for (const auto& e : s.test) test_texts.insert(e.text);
    for (const auto& e : s.train) lm.push_back(e.text);
    info["tasks"][d.name] = {{"what", d.what},
                             {"source", d.source},
                             {"labels", d.classes},
                             {"train", s.train.size()},
                             {"test", s.test.size()},
                             {"train_per_class", s.train_per_class},
                             {"test_per_class", s.test_per_class},
                             {"ambiguous_dropped", s.ambiguous}};
    if (!o.placeholder_heads.empty()) {
      const fs::path head = o.placeholder_heads / (d.name + ".safetensors");
      if (!fs::exists(head)) write_placeholder_score_head(head, static_cast<int64_t>(d.classes.size()), o.n_embd);
    }
    std::cout << "prepare_data: " << d.name << ": " << d.classes.size() << " classes, train " << s.train.size()
              << ", test " << s.test.size() << " (" << s.ambiguous << " texts under several classes dropped)\n";
  }

  // The language-model corpus: the tasks' train texts, every fortune of the other categories, and up to
  // lm_extra_packages synopses of the other sections; never a test text; deduplicated, sorted, shuffled.
  int64_t extra_fortunes = 0, extra_packages = 0;
  for (const auto& [cat, texts] : fortunes) {
    if (used_fortunes.count(cat)) continue;
    for (const auto& t : texts) {
      lm.push_back(t);
      ++extra_fortunes;
    }
  }
  std::set<std::string> other_synopses;
  for (const auto& [sec, texts] : sections)
    if (!used_sections.count(sec)) other_synopses.insert(texts.begin(), texts.end());
  std::vector<std::string> others(other_synopses.begin(), other_synopses.end());
  shuffle_in_place(others, o.seed ^ 0x6c6d5fULL);
  if (static_cast<int64_t>(others.size()) > o.lm_extra_packages) others.resize(static_cast<size_t>(o.lm_extra_packages));
  extra_packages = static_cast<int64_t>(others.size());
  lm.insert(lm.end(), others.begin(), others.end());
  std::set<std::string> lm_set;
  for (auto& t : lm)
    if (!test_texts.count(t)) lm_set.insert(std::move(t));
  std::vector<std::string> corpus(lm_set.begin(), lm_set.end());
  shuffle_in_place(corpus, o.seed ^ 0x636f72ULL);
  write_text_jsonl(o.out / "lm_corpus.jsonl", corpus);
  int64_t chars = 0;
  for (const auto& t : corpus) chars += static_cast<int64_t>(t.size());
  info["lm_corpus"] = {{"texts", corpus.size()},
                       {"characters", chars},
                       {"other_fortunes", extra_fortunes},
                       {"other_package_synopses", extra_packages}};
  std::cout << "prepare_data: lm_corpus.jsonl: " << corpus.size() << " texts, " << chars << " characters\n";
  write_file_atomic(o.out / "info.json", info.dump(2) + "\n");
  return 0;
} catch (const std::exception& e) {
  std::cerr << "prepare_data: " << e.what() << "\n";
  return 1;
}
