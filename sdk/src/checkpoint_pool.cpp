// The generic checkpoint model pool, `safetensors` (checkpoint_pool.hpp).
#include "fusion/checkpoint_pool.hpp"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>
#include <optional>
#include <sstream>
#include <typeinfo>
#include <unordered_map>

#include "checkpoint_layout.hpp"
#include "fusion/dtype.hpp"
#include "fusion/error.hpp"
#include "fusion/files.hpp"
#include "fusion/safetensors.hpp"

namespace fusion {

namespace fs = std::filesystem;

namespace {

/// The config.json that belongs to a checkpoint: in the folder, or beside a single file.
fs::path config_json_of(const fs::path& checkpoint) {
  std::error_code ec;
  return fs::is_directory(checkpoint, ec) ? checkpoint / "config.json"
                                          : checkpoint.parent_path() / "config.json";
}

/// The pool's config table, as messages name it: the context's section, `modelpool` when empty.
std::string table_of(const Context& ctx) {
  return ctx.config().section().empty() ? "modelpool" : ctx.config().section();
}

/// The folder a model is saved to: `dir_in` normalised, refused (the message starting with
/// `prefix`) when it names no folder.
fs::path folder_to_save(const fs::path& dir_in, const std::string& prefix) {
  fs::path dir = dir_in.lexically_normal();
  if (!dir.has_filename()) dir = dir.parent_path();
  FUSION_ENSURE(!dir.empty() && dir != "." && dir != "..", prefix, "cannot save a model to '", dir_in.string(),
                "': not a folder name");
  return dir;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  FUSION_ENSURE(in.good(), path.string(), ": cannot read: ", std::strerror(errno));
  std::ostringstream buf;
  buf << in.rdbuf();
  FUSION_ENSURE(!in.bad(), path.string(), ": cannot read");
  return buf.str();
}

}  // namespace

void CheckpointPoolOptions::bind(Options<CheckpointPoolOptions>& o) {
  o("pretrained", &CheckpointPoolOptions::pretrained,
    "the pretrained model: a Hugging Face model folder (config.json + model.safetensors "
    "or sharded model.safetensors.index.json) or a single .safetensors file")
      .required();  // an empty path is refused with the experts' paths, when the pool is made
  o("models", &CheckpointPoolOptions::models,
    "the experts fine-tuned from it, as a table name = \"path\" (same forms as pretrained); "
    "may be left out for methods that start from the pretrained model alone (pretrained, "
    "finetune, multitask_pretrain): every method that needs experts says so when there are none")
      .check([](const StringMap& m) {
        for (const auto& [name, path] : m)
          if (name == "pretrained")
            return std::string(".pretrained: 'pretrained' is reserved for the pretrained model; name the "
                               "expert otherwise");
        return std::string();
      });
}

CheckpointModelPool::CheckpointModelPool(const Context& ctx)
    : CheckpointModelPool(read_options<CheckpointPoolOptions>(ctx.config()), ctx) {}

CheckpointModelPool::CheckpointModelPool(const CheckpointPoolOptions& options, const Context& ctx) : ctx_(ctx) {
  pretrained_path_ = options.pretrained;
  for (const auto& [name, path] : options.models) experts_.emplace_back(name, fs::path(path));
  // Fail before any work when a path is wrong; nothing is read here (loading stays lazy).
  auto check = [&](const std::string& option, const fs::path& path) {
    std::error_code ec;
    FUSION_ENSURE(!path.empty(), option, ": the path is empty");
    FUSION_ENSURE(fs::exists(path, ec), option, ": ", path.string(), " does not exist");
  };
  check(option_of("pretrained"), pretrained_path_);
  for (const auto& [name, path] : experts_) check(option_of(name), path);
}

CheckpointModelPool::~CheckpointModelPool() = default;

ComponentInfo CheckpointModelPool::info() {
  ComponentInfo info;
  info.name = "safetensors";
  info.summary = "a pretrained checkpoint and named experts in safetensors files or Hugging Face "
                 "folders, loaded lazily; merged models saved as Hugging Face folders";
  info.reference = "https://huggingface.co/docs/safetensors";
  return info;
}

std::vector<std::string> CheckpointModelPool::expert_names() const {
  std::vector<std::string> out;
  out.reserve(experts_.size());
  for (const auto& [name, path] : experts_) out.push_back(name);
  return out;
}

bool CheckpointModelPool::has_pretrained() const { return true; }

const fs::path& CheckpointModelPool::path_of(const std::string& name) const {
  if (name == "pretrained") return pretrained_path_;
  for (const auto& [n, path] : experts_) {
    if (n == name) return path;
  }
  std::string known;
  for (const auto& [n, path] : experts_) known += (known.empty() ? "" : ", ") + n;
  const std::string section = table_of(ctx_);
  if (known.empty()) FUSION_FAIL(section, ": unknown expert '", name, "'; the pool has no experts (", section, ".models)");
  FUSION_FAIL(section, ": unknown expert '", name, "'; known experts: ", known);
}

ConstModelPtr CheckpointModelPool::pretrained() {
  if (!pretrained_) pretrained_ = load_path(pretrained_path_);
  return pretrained_;
}

namespace {
void check_expert_layout(const std::string& option, const fs::path& path, const std::string& expert,
                         const fs::path& pretrained_path);
}  // namespace

ModelPtr CheckpointModelPool::load(const std::string& name) {
  const fs::path& path = path_of(name);
  check_expert_layout(table_of(ctx_) + ".models." + name, path, "expert '" + name + "'", pretrained_path_);
  return load_path(path);
}

namespace {

// Compares an expert's layout with the pretrained model's from the files' headers alone: nothing of
// the expert is read when they differ, and the pretrained model's tensors are not needed. (Headers,
// not the loaded pretrained model: a derived pool's make_model may keep only part of a checkpoint.)
void check_expert_layout(const std::string& option, const fs::path& path, const std::string& expert,
                         const fs::path& pretrained_path) {
  const std::vector<TensorInfo> layout = detail::read_checkpoint_layout(path);
  const std::vector<TensorInfo> reference = detail::read_checkpoint_layout(pretrained_path);
  std::unordered_map<std::string, const TensorInfo*> by_name;
  for (const auto& t : layout) by_name.emplace(t.name, &t);
  for (const auto& ref : reference) {
    auto it = by_name.find(ref.name);
    FUSION_ENSURE(it != by_name.end(), option, " (", path.string(), "): ", expert, " lacks key '", ref.name,
                  "' that pretrained has");
    FUSION_ENSURE(it->second->shape == ref.shape, option, " (", path.string(), "): key '", ref.name,
                  "': pretrained has shape ", detail::shape_string(ref.shape), " but ", expert,
                  " has shape ", detail::shape_string(it->second->shape));
  }
  if (layout.size() != reference.size()) {
    std::unordered_map<std::string, bool> reference_keys;
    for (const auto& t : reference) reference_keys.emplace(t.name, true);
    for (const auto& t : layout) {
      FUSION_ENSURE(reference_keys.count(t.name), option, " (", path.string(), "): ", expert, " has key '",
                    t.name, "' that pretrained lacks");
    }
  }
}

// The pool's context and option_of, for detail::stream_sources (a member pointer taken in a derived class
// reaches the protected members of any CheckpointModelPool).
struct PoolAccess : CheckpointModelPool {
  static const Context& context(const CheckpointModelPool& pool) { return pool.*(&PoolAccess::ctx_); }
  static std::string option(const CheckpointModelPool& pool, const std::string& name) {
    return (pool.*(&PoolAccess::option_of))(name);
  }
};

}  // namespace

namespace detail {
std::optional<std::vector<StreamSource>> stream_sources(ModelPool& pool, const std::vector<std::string>& models) {
  auto* cp = dynamic_cast<CheckpointModelPool*>(&pool);
  if (cp == nullptr || typeid(*cp) != typeid(CheckpointModelPool)) return std::nullopt;
  const Context& ctx = PoolAccess::context(*cp);
  if (!ctx.device().is_cpu() || ctx.dtype() != at::kFloat) return std::nullopt;
  std::vector<StreamSource> out;
  for (const std::string& name : models) {
    if (name == "pretrained") {
      out.push_back({cp->path_of(name), PoolAccess::option(*cp, name)});
      continue;
    }
    const fs::path& path = cp->path_of(name);
    const std::string option = PoolAccess::option(*cp, name);
    check_expert_layout(option, path, "expert '" + name + "'", cp->path_of("pretrained"));
    out.push_back({path, option});
  }
  return out;
}
}  // namespace detail

ModelPtr CheckpointModelPool::make_model(StateDict params, nlohmann::json config) const {
  return std::make_shared<Model>("checkpoint", std::move(params), std::move(config));
}

ModelPtr CheckpointModelPool::load_path(const fs::path& path) const {
  // Every model's weights are checked for NaN and ±Inf as they are read, always: a non-finite
  // weight would otherwise surface much later as a NaN loss or metric, naming neither file nor
  // tensor, and the check, fused into the copy out of the file, costs ~30 ms of CPU per GB read
  // (within the noise of bench/merge's wall times). The message names the option that gave `path`.
  std::string label;
  if (path == pretrained_path_) {
    label = option_of("pretrained");
  } else {
    for (const auto& [name, p] : experts_) {
      if (p == path) {
        label = option_of(name);
        break;
      }
    }
  }
  StateDict params = detail::load_weights(path, ctx_.device(), ctx_.dtype(), label);
  nlohmann::json config = nlohmann::json::object();
  const fs::path config_path = config_json_of(path);
  std::error_code ec;
  if (fs::is_regular_file(config_path, ec)) {
    try {
      config = nlohmann::json::parse(read_text(config_path));
    } catch (const nlohmann::json::exception& e) {
      FUSION_FAIL(config_path.string(), ": not valid JSON: ", e.what());
    }
    FUSION_ENSURE(config.is_object(), config_path.string(), ": must hold a JSON object");
  }
  return make_model(std::move(params), std::move(config));
}

std::string CheckpointModelPool::option_of(const std::string& name) const {
  return table_of(ctx_) + (name == "pretrained" ? ".pretrained" : ".models." + name);
}

void save_model_folder(const fs::path& dir_in, const StateDict& params, nlohmann::json config,
                       const std::string& family) {
  const fs::path dir = folder_to_save(dir_in, family + ": ");
  for (const auto& [key, t] : params) {
    if (t.is_floating_point()) {
      config["torch_dtype"] = dtype_name(t.scalar_type());
      break;
    }
  }
  try {
    write_directory_atomic(dir, [&](const fs::path& tmp) {
      save_safetensors(tmp / "model.safetensors", params);
      write_file_atomic(tmp / "config.json", config.dump(2) + "\n");
    });
  } catch (const fs::filesystem_error& e) {
    FUSION_FAIL(family, ": cannot write the model folder ", dir.string(), ": ", e.code().message());
  }
}

void CheckpointModelPool::save(const Model& model, const fs::path& dir_in) const {
  const fs::path dir = folder_to_save(dir_in, "");
  write_directory_atomic(dir, [&](const fs::path& tmp) {
    std::error_code ec;
    save_safetensors(tmp / "model.safetensors", model.parameters(), {{"format", "pt"}});
    const fs::path pretrained_config = config_json_of(pretrained_path_);
    if (fs::is_regular_file(pretrained_config, ec)) {
      write_file_atomic(tmp / "config.json", read_text(pretrained_config));
    } else if (model.config().is_object() && !model.config().empty()) {
      write_file_atomic(tmp / "config.json", model.config().dump(2) + "\n");
    }
  });
}

}  // namespace fusion
