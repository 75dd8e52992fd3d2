#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace fusion::image_classification {

/// A task's class names (in label order) and zero-shot prompt templates (each with one "{}" for the
/// class name), as FusionBench's fusion_bench/tasks/clip_classification/<task>.py define them.
struct TaskInfo {
  std::vector<std::string> classnames;
  std::vector<std::string> templates;
  std::string source;  ///< the file it was read from
};

/// Reads a task info file: a JSON object with "classnames" and/or "templates" (lists of strings;
/// the built-in files' format), a JSON list of class names, or a text file with one class name per
/// line (blank lines ignored). Throws fusion::Error naming the file and the problem (a template
/// without exactly one "{}", an empty list, ...).
TaskInfo read_task_info(const std::filesystem::path& path);

/// The folders searched for built-in task files (`<task>.json`), in order: $FUSION_TASK_DATA_DIR,
/// `image_classification/` beside the shared object holding this code (the plugin, in the build
/// and the install tree), and the source tree's data folder.
std::vector<std::filesystem::path> builtin_data_dirs();

/// The built-in info of `task` (sun397, stanford_cars, resisc45, eurosat, svhn, gtsrb, mnist, dtd,
/// fashion_mnist; '-' may stand for '_'), or std::nullopt.
std::optional<TaskInfo> builtin_task_info(const std::string& task);

/// Names of the built-in tasks found, sorted.
std::vector<std::string> builtin_task_names();

/// CLIP's generic template, used for tasks with no templates of their own: "a photo of a {}.".
const std::vector<std::string>& default_templates();

}  // namespace fusion::image_classification
