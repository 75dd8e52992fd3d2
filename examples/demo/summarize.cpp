// summarize: the demo's comparison table, from the report.json files of its runs.
//
//   fusion_demo_summarize --output summary.md \
//       --suite "2 tasks" RUN_DIR... [--suite "3 tasks" RUN_DIR...]
//
// Each RUN_DIR holds a fusion run's report.json. Per suite it prints a markdown table — a row per
// run (the best model by average accuracy for runs that return several: a λ sweep, a Pareto set;
// a row per expert for `individual`), accuracy per task, average, the run's hypervolume (all of
// its models, reference point 0) and its time — then the findings: whether each expert beats the
// pretrained model on its own task and whether PWEMoE-LS's hypervolume exceeds task arithmetic's
// λ sweep. The same text goes to stdout and to --output.

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct Row {
  std::string run;     ///< run folder name
  std::string method;  ///< report["method"]
  std::string label;   ///< the model shown
  int models = 0;      ///< models in the run
  std::map<std::string, double> acc;
  double average = NAN;
  double hypervolume = NAN;
  double seconds = NAN;       ///< the whole run
  double train_seconds = NAN; ///< method's own training, when it reports it
};

struct Suite {
  std::string name;
  std::vector<std::string> tasks;
  std::vector<Row> rows;
  std::vector<std::string> missing;
};

std::string fmt(double v, int digits = 2, double scale = 100.0) {
  if (std::isnan(v)) return "–";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v * scale);
  return buf;
}

double acc_of(const json& report, const std::string& task) {
  if (report.is_object() && report.contains(task) && report[task].is_object() && report[task].contains("accuracy"))
    return report[task]["accuracy"].get<double>();
  return NAN;
}

double avg_of(const json& report, const std::vector<std::string>& tasks) {
  double s = 0;
  for (const auto& t : tasks) s += acc_of(report, t);
  return s / static_cast<double>(tasks.size());
}

std::vector<Row> rows_of(const fs::path& dir, Suite& suite) {
  std::ifstream in(dir / "report.json");
  if (!in) {
    suite.missing.push_back(dir.string());
    return {};
  }
  json r = json::parse(in);
  if (suite.tasks.empty()) suite.tasks = r["tasks"].get<std::vector<std::string>>();
  const std::string method = r.value("method", dir.filename().string());
  const double seconds = r["timings"].value("total_s", NAN);
  double train_s = NAN;
  if (r.contains("info") && r["info"].is_object()) {
    const json& info = r["info"];
    for (const char* k : {"train_seconds", "train_s", "training_seconds"})
      if (info.contains(k) && info[k].is_number()) train_s = info[k].get<double>();
  }
  const double hv = r.contains("hypervolume") ? r["hypervolume"].get<double>() : NAN;
  const json& models = r["models"];
  auto make = [&](const json& m) {
    Row row;
    row.run = dir.filename().string();
    row.method = method;
    row.label = m.value("label", "");
    row.models = static_cast<int>(models.size());
    for (const auto& t : suite.tasks) row.acc[t] = acc_of(m["report"], t);
    row.average = avg_of(m["report"], suite.tasks);
    row.hypervolume = hv;
    row.seconds = seconds;
    row.train_seconds = train_s;
    return row;
  };
  std::vector<Row> out;
  if (method == "individual") {
    for (const auto& m : models) out.push_back(make(m));
    return out;
  }
  const json* best = nullptr;
  double best_avg = -1;
  for (const auto& m : models) {
    double a = avg_of(m["report"], suite.tasks);
    if (!std::isnan(a) && a > best_avg) {
      best_avg = a;
      best = &m;
    }
  }
  if (best) out.push_back(make(*best));
  return out;
}

const Row* find_row(const Suite& s, const std::string& method, const std::string& label = "") {
  for (const auto& r : s.rows)
    if (r.method == method && (label.empty() || r.label == label)) return &r;
  return nullptr;
}

void write_suite(std::ostream& out, const Suite& s) {
  out << "### " << s.name << "\n\n";
  out << "| run | model shown | ";
  for (const auto& t : s.tasks) out << t << " | ";
  out << "average | hypervolume | models | time (s) |\n|---|---|";
  for (size_t i = 0; i < s.tasks.size() + 4; ++i) out << "---:|";
  out << "\n";
  for (const auto& r : s.rows) {
    out << "| " << r.run << " | " << r.label << " | ";
    for (const auto& t : s.tasks) out << fmt(r.acc.at(t)) << " | ";
    out << fmt(r.average) << " | " << fmt(r.hypervolume, 4, 1.0) << " | " << r.models << " | "
        << fmt(r.seconds, 1, 1.0) << " |\n";
  }
  for (const auto& m : s.missing) out << "\n(missing: " << m << "/report.json)\n";
  out << "\nAccuracies in %, on each task's test subset. Runs that return several models (a λ sweep, a "
         "Pareto set) show the one with the best average; their hypervolume covers all of them "
         "(reference point 0, accuracies in [0, 1]).\n\n";

  // The findings.
  const Row* pre = find_row(s, "pretrained");
  std::vector<std::string> findings;
  if (pre) {
    for (const auto& t : s.tasks) {
      const Row* e = find_row(s, "individual", t);
      if (!e) continue;
      const double a = e->acc.at(t), b = pre->acc.at(t);
      findings.push_back("expert `" + t + "` on " + t + ": " + fmt(a) + " % vs pretrained " + fmt(b) + " % — " +
                         (a > b ? "**beats** the pretrained model (+" + fmt(a - b) + " points)"
                                : "does **not** beat the pretrained model (" + fmt(a - b) + " points)"));
    }
  }
  const Row* ls = find_row(s, "pwe_moe_ls");
  const Row* ta = find_row(s, "task_arithmetic");
  const Row* epo = find_row(s, "pwe_moe_epo");
  if (ls && ta) {
    findings.push_back("hypervolume: PWEMoE-LS " + fmt(ls->hypervolume, 4, 1.0) + " (" + std::to_string(ls->models) +
                       " models) vs task arithmetic's λ sweep " + fmt(ta->hypervolume, 4, 1.0) + " (" +
                       std::to_string(ta->models) + " models) — PWEMoE-LS " +
                       (ls->hypervolume > ta->hypervolume ? "**exceeds** it" : "does **not** exceed it"));
  }
  if (epo && ta) {
    findings.push_back("hypervolume: PWEMoE-EPO " + fmt(epo->hypervolume, 4, 1.0) + " vs task arithmetic " +
                       fmt(ta->hypervolume, 4, 1.0) + " — " +
                       (epo->hypervolume > ta->hypervolume ? "exceeds it" : "does not exceed it"));
  }
  if (!findings.empty()) {
    out << "Findings (" << s.name << "):\n\n";
    for (const auto& f : findings) out << "- " << f << "\n";
    out << "\n";
  }
}

[[noreturn]] void usage(const std::string& e) {
  std::cerr << "summarize: " << e << "\nusage: fusion_demo_summarize [--output FILE] [--title TEXT] "
               "--suite NAME RUN_DIR... [--suite NAME RUN_DIR...]\n";
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string output, title = "fusion demo: comparison";
  std::vector<std::pair<std::string, std::vector<fs::path>>> suites;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--output" || a == "--title" || a == "--suite") {
      if (i + 1 >= argc) usage(a + " needs a value");
      std::string v = argv[++i];
      if (a == "--output") output = v;
      else if (a == "--title") title = v;
      else suites.push_back({v, {}});
    } else {
      if (suites.empty()) usage("a run folder before any --suite");
      suites.back().second.push_back(a);
    }
  }
  if (suites.empty()) usage("no --suite");
  std::ostringstream out;
  out << "## " << title << "\n\n";
  try {
    for (const auto& [name, dirs] : suites) {
      Suite s;
      s.name = name;
      for (const auto& d : dirs) {
        auto rows = rows_of(d, s);
        s.rows.insert(s.rows.end(), rows.begin(), rows.end());
      }
      write_suite(out, s);
    }
  } catch (const std::exception& e) {
    std::cerr << "summarize: error: " << e.what() << "\n";
    return 1;
  }
  std::cout << out.str();
  if (!output.empty()) {
    std::ofstream f(output + ".tmp");
    f << out.str();
    f.close();
    fs::rename(output + ".tmp", output);
  }
  return 0;
}
