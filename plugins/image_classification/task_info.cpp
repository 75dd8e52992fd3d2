#include "task_info.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "fusion/error.hpp"

namespace fusion::image_classification {
namespace fs = std::filesystem;

namespace {

std::vector<std::string> string_list(const nlohmann::json& j, const std::string& where) {
  FUSION_ENSURE(j.is_array(), where, ": expected a list of strings");
  std::vector<std::string> out;
  for (size_t i = 0; i < j.size(); ++i) {
    FUSION_ENSURE(j[i].is_string(), where, "[", i, "]: expected a string, got ", j[i].type_name());
    out.push_back(j[i].get<std::string>());
  }
  FUSION_ENSURE(!out.empty(), where, ": the list is empty");
  return out;
}

void check_templates(const std::vector<std::string>& templates, const std::string& where) {
  for (size_t i = 0; i < templates.size(); ++i) {
    const std::string& t = templates[i];
    const size_t at = t.find("{}");
    FUSION_ENSURE(at != std::string::npos && t.find("{}", at + 2) == std::string::npos, where, "[", i,
                  "]: template '", t, "' must hold exactly one {} for the class name");
  }
}

// Anchors dladdr in this library.
void anchor() {}

}  // namespace

TaskInfo read_task_info(const fs::path& path) {
  std::ifstream in(path);
  FUSION_ENSURE(in, "cannot open task info file '", path.string(), "'");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  TaskInfo info;
  info.source = path.string();
  const std::string where = path.string();
  if (path.extension() == ".json") {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const std::exception& e) {
      FUSION_FAIL(where, ": invalid JSON: ", e.what());
    }
    if (j.is_array()) {
      info.classnames = string_list(j, where);
    } else {
      FUSION_ENSURE(j.is_object(), where, ": expected an object with \"classnames\" and/or \"templates\", "
                    "or a list of class names");
      FUSION_ENSURE(j.contains("classnames") || j.contains("templates"), where,
                    ": neither \"classnames\" nor \"templates\" is given");
      if (j.contains("classnames")) info.classnames = string_list(j["classnames"], where + ": classnames");
      if (j.contains("templates")) info.templates = string_list(j["templates"], where + ": templates");
    }
  } else {
    std::istringstream lines(text);
    std::string line;
    while (std::getline(lines, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      info.classnames.push_back(line);
    }
    FUSION_ENSURE(!info.classnames.empty(), where, ": no class names (expected one per line)");
  }
  check_templates(info.templates, where + ": templates");
  return info;
}

std::vector<fs::path> builtin_data_dirs() {
  std::vector<fs::path> dirs;
  if (const char* env = std::getenv("FUSION_TASK_DATA_DIR"); env && *env) dirs.emplace_back(env);
  Dl_info dl{};
  if (dladdr(reinterpret_cast<void*>(&anchor), &dl) && dl.dli_fname) {
    std::error_code ec;
    fs::path self = fs::weakly_canonical(dl.dli_fname, ec);
    if (!ec) dirs.push_back(self.parent_path() / "image_classification");
  }
#ifdef FUSION_IMAGE_CLASSIFICATION_SOURCE_DATA
  dirs.emplace_back(FUSION_IMAGE_CLASSIFICATION_SOURCE_DATA);
#endif
  return dirs;
}

std::optional<TaskInfo> builtin_task_info(const std::string& task) {
  std::string name = task;
  std::replace(name.begin(), name.end(), '-', '_');
  if (name.empty() || name.find('/') != std::string::npos || name[0] == '.') return std::nullopt;
  for (const fs::path& dir : builtin_data_dirs()) {
    const fs::path file = dir / (name + ".json");
    std::error_code ec;
    if (fs::is_regular_file(file, ec)) {
      TaskInfo info = read_task_info(file);
      FUSION_ENSURE(!info.classnames.empty() && !info.templates.empty(), "built-in task file '",
                    file.string(), "' lacks classnames or templates");
      return info;
    }
  }
  return std::nullopt;
}

std::vector<std::string> builtin_task_names() {
  std::vector<std::string> names;
  for (const fs::path& dir : builtin_data_dirs()) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) continue;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      if (e.path().extension() == ".json") names.push_back(e.path().stem().string());
    }
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

const std::vector<std::string>& default_templates() {
  static const std::vector<std::string> t{"a photo of a {}."};
  return t;
}

}  // namespace fusion::image_classification
