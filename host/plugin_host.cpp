#include "plugin_host.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <boost/dll/shared_library.hpp>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "fusion/checkpoint_pool.hpp"
#include "fusion/version.hpp"

namespace fusion::host {

namespace fs = std::filesystem;

namespace {

// Libraries are never unloaded: code of a plugin may be referenced by objects (vtables, deleters,
// std::function) until the very end of the process, and libraries linking torch stay mapped after
// dlclose anyway. The vector is deliberately leaked.
std::vector<boost::dll::shared_library>& libraries() {
  static auto* libs = new std::vector<boost::dll::shared_library>();
  return *libs;
}

std::string bounded(const char* s, size_t n) { return std::string(s, strnlen(s, n)); }

fs::path canonical_or_self(const fs::path& p) {
  std::error_code ec;
  fs::path c = fs::weakly_canonical(p, ec);
  return ec ? fs::absolute(p) : c;
}

// Whether this process's binary lives in the build tree's bin folder.
bool running_from_build_tree() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return false;
  fs::path build_bin = fs::weakly_canonical(FUSION_BUILD_BIN_DIR, ec);
  if (ec) return false;
  return fs::weakly_canonical(exe.parent_path(), ec) == build_bin;
}

fs::path install_plugin_dir() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  return (exe.parent_path() / FUSION_PLUGIN_DIR_FROM_BIN).lexically_normal();
}

bool is_shared_library_name(const fs::path& p) {
  return p.extension() == ".so";
}

}  // namespace

PluginHost::PluginHost(Logger& log, uint32_t api_level) : log_(log), api_level_(api_level) {}
PluginHost::~PluginHost() = default;

void PluginHost::add_builtins() {
  current_origin_ = "built-in";
  add<CheckpointModelPool>();
  current_origin_.clear();
}

std::vector<fs::path> PluginHost::default_search_path() {
  std::vector<fs::path> out;
  const char* no_default = std::getenv("FUSION_NO_DEFAULT_PLUGINS");
  bool defaults = !(no_default && std::strcmp(no_default, "") != 0 && std::strcmp(no_default, "0") != 0);
  if (defaults) {
    if (running_from_build_tree()) out.emplace_back(FUSION_PLUGIN_OUTPUT_DIR);
    fs::path installed = install_plugin_dir();
    if (!installed.empty()) out.push_back(installed);
  }
  if (const char* env = std::getenv("FUSION_PLUGIN_PATH")) {
    std::string s = env;
    size_t start = 0;
    while (start <= s.size()) {
      size_t colon = s.find(':', start);
      std::string part = s.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
      if (!part.empty()) out.emplace_back(part);
      if (colon == std::string::npos) break;
      start = colon + 1;
    }
  }
  return out;
}

void PluginHost::load_default() {
  const char* env = std::getenv("FUSION_PLUGIN_PATH");
  std::string env_path = env ? env : "";
  for (const auto& p : default_search_path()) {
    std::error_code ec;
    if (!fs::exists(p, ec)) {
      // The build and install folders may legitimately be absent; a FUSION_PLUGIN_PATH entry that
      // does not exist is worth a word.
      if (env_path.find(p.string()) != std::string::npos)
        log_.warn("FUSION_PLUGIN_PATH: '" + p.string() + "' does not exist");
      continue;
    }
    log_.debug("searching plugins in " + p.string());
    load_path(p);
  }
}

size_t PluginHost::load_path(const fs::path& path) {
  std::error_code ec;
  FUSION_ENSURE(fs::exists(path, ec), "plugin path '", path.string(), "' does not exist");
  size_t refused = 0;
  if (fs::is_directory(path, ec)) {
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(path, ec)) {
      if (is_shared_library_name(entry.path()) && !entry.is_directory()) files.push_back(entry.path());
    }
    FUSION_ENSURE(!ec, "cannot list plugin folder '", path.string(), "': ", ec.message());
    std::sort(files.begin(), files.end());
    for (const auto& f : files)
      if (!load_file(f)) ++refused;
  } else if (!load_file(path)) {
    ++refused;
  }
  return refused;
}

void PluginHost::refuse(const fs::path& file, const std::string& reason) {
  log_.warn("plugin " + file.string() + ": " + reason + " (skipped)");
  refused_.push_back({file, reason});
}

bool PluginHost::load_file(const fs::path& file_in) {
  const fs::path file = canonical_or_self(file_in);
  if (std::find(seen_.begin(), seen_.end(), file) != seen_.end()) {
    for (const auto& r : refused_)
      if (r.file == file) return false;
    return true;
  }
  seen_.push_back(file);

  // 1. Load the library.
  boost::dll::shared_library lib;
  {
    boost::dll::fs::error_code ec;
    dlerror();
    lib.load(file, ec, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local);
    if (ec || !lib.is_loaded()) {
      const char* why = dlerror();
      std::string reason = why ? why : ec.message();
      // dlerror() repeats the path: keep only what follows it.
      std::string prefix = file.string() + ": ";
      if (reason.rfind(prefix, 0) == 0) reason = reason.substr(prefix.size());
      refuse(file, "not a loadable library: " + reason);
      return false;
    }
  }
  // 2. The entry symbol.
  if (!lib.has(FUSION_PLUGIN_ENTRY_NAME)) {
    refuse(file, std::string("no entry symbol '") + FUSION_PLUGIN_ENTRY_NAME +
                     "' (not a fusion plugin; build it with FUSION_PLUGIN)");
    libraries().push_back(std::move(lib));
    return false;
  }
  auto entry = lib.get<int(fusion_handshake*, void*, char*, size_t)>(FUSION_PLUGIN_ENTRY_NAME);
  libraries().push_back(lib);  // never unloaded, whatever happens below

  // 3. The handshake, checked field by field, ABI version first.
  fusion_handshake hs;
  std::memset(&hs, 0, sizeof(hs));
  char error[1024] = {0};
  int rc = 0;
  try {
    rc = entry(&hs, nullptr, error, sizeof(error));
  } catch (...) {
    rc = -1;
    std::snprintf(error, sizeof(error), "exception escaped the handshake");
  }
  if (hs.abi_version != FUSION_ABI_VERSION) {
    refuse(file, "built for ABI " + std::to_string(hs.abi_version) + ", host has ABI " +
                     std::to_string(FUSION_ABI_VERSION));
    return false;
  }
  if (rc != 0) {
    refuse(file, "handshake failed: " + bounded(error, sizeof(error)));
    return false;
  }
  std::string sdk = bounded(hs.sdk_version, sizeof(hs.sdk_version));
  std::string torch = bounded(hs.torch_version, sizeof(hs.torch_version));
  if (hs.sdk_major != FUSION_VERSION_MAJOR) {
    refuse(file, "built with fusion SDK " + sdk + " (major version " + std::to_string(hs.sdk_major) +
                     "), host has SDK " + FUSION_VERSION_STRING + " (major version " +
                     std::to_string(FUSION_VERSION_MAJOR) + ")");
    return false;
  }
  if (hs.api_level > api_level_) {
    refuse(file, "built with fusion SDK " + sdk + " (API level " + std::to_string(hs.api_level) +
                     "), newer than this host's SDK " + FUSION_VERSION_STRING + " (API level " +
                     std::to_string(api_level_) + "): update fusion");
    return false;
  }
  if (torch != TORCH_VERSION) {
    refuse(file, "built against LibTorch " + torch + ", host has LibTorch " + TORCH_VERSION);
    return false;
  }
  if (hs.cxx11_abi != _GLIBCXX_USE_CXX11_ABI) {
    refuse(file, "built with _GLIBCXX_USE_CXX11_ABI=" + std::to_string(hs.cxx11_abi) +
                     ", host has _GLIBCXX_USE_CXX11_ABI=" + std::to_string(_GLIBCXX_USE_CXX11_ABI));
    return false;
  }
  LoadedPlugin info;
  info.file = file;
  info.name = bounded(hs.plugin_name, sizeof(hs.plugin_name));
  info.version = bounded(hs.plugin_version, sizeof(hs.plugin_version));
  info.abi_version = hs.abi_version;
  info.api_level = hs.api_level;
  info.sdk_version = sdk;
  info.torch_version = torch;
  info.compiler = bounded(hs.compiler, sizeof(hs.compiler));
  for (const auto& other : loaded_) {
    if (other.name == info.name) {
      refuse(file, "a plugin named '" + info.name + "' is already loaded from " +
                       other.file.string());
      return false;
    }
  }

  // 4. Registration: staged, and committed only when init succeeds.
  staged_.clear();
  staging_ = true;
  current_origin_ = file.string();
  std::memset(error, 0, sizeof(error));
  try {
    rc = entry(&hs, static_cast<Registrar*>(this), error, sizeof(error));
  } catch (const std::exception& e) {
    rc = -1;
    std::snprintf(error, sizeof(error), "%s", e.what());
  } catch (...) {
    rc = -1;
    std::snprintf(error, sizeof(error), "unknown exception");
  }
  staging_ = false;
  current_origin_.clear();
  if (rc != 0) {
    std::string msg = bounded(error, sizeof(error));
    staged_.clear();
    refuse(file, "init failed: " + (msg.empty() ? std::string("no message") : msg));
    return false;
  }
  for (auto& c : staged_) {
    info.components.push_back(c.info.name);
    components_.push_back(std::move(c));
  }
  staged_.clear();
  log_.debug("loaded plugin " + info.name + " " + info.version + " from " + file.string());
  loaded_.push_back(std::move(info));
  return true;
}

void PluginHost::register_component(Component c) {
  if (c.origin.empty()) c.origin = current_origin_.empty() ? "built-in" : current_origin_;
  FUSION_ENSURE(!c.info.name.empty(), "a component without a name was registered by ", c.origin);
  auto clash = [&](const std::vector<Component>& list) -> const Component* {
    for (const auto& o : list)
      if (o.info.name == c.info.name) return &o;
    return nullptr;
  };
  if (const Component* o = clash(components_))
    FUSION_FAIL("component '", c.info.name, "' is already registered by ",
                o->origin == "built-in" ? std::string("the host (built-in)") : "plugin " + o->origin);
  if (const Component* o = clash(staged_))
    FUSION_FAIL("component '", c.info.name, "' is registered twice by plugin ", o->origin);
  if (staging_)
    staged_.push_back(std::move(c));
  else
    components_.push_back(std::move(c));
}

namespace {

// A component of `kind` whose factory sits in the Component member `slot`.
template <class Factory>
Component make_component(ComponentKind kind, const char* what, ComponentInfo info, Factory factory,
                         Factory Component::*slot) {
  FUSION_ENSURE(factory, what, " '", info.name, "' registered without a factory");
  Component c;
  c.kind = kind;
  c.info = std::move(info);
  c.*slot = std::move(factory);
  return c;
}

}  // namespace

void PluginHost::add_algorithm(ComponentInfo info, AlgorithmFactory factory) {
  register_component(make_component(ComponentKind::Algorithm, "algorithm", std::move(info),
                                    std::move(factory), &Component::algorithm));
}

void PluginHost::add_model_pool(ComponentInfo info, ModelPoolFactory factory) {
  register_component(make_component(ComponentKind::ModelPool, "model pool", std::move(info),
                                    std::move(factory), &Component::model_pool));
}

void PluginHost::add_task_pool(ComponentInfo info, TaskPoolFactory factory) {
  register_component(make_component(ComponentKind::TaskPool, "task pool", std::move(info),
                                    std::move(factory), &Component::task_pool));
}

const Component* PluginHost::find(const std::string& name) const {
  for (const auto& c : components_)
    if (c.info.name == name) return &c;
  return nullptr;
}

const Component& PluginHost::require(ComponentKind kind, const std::string& section,
                                     const std::string& name) const {
  std::string known;
  for (const auto& c : components_)
    if (c.kind == kind) known += (known.empty() ? "" : ", ") + c.info.name;
  if (known.empty()) known = "none";
  std::string refused_note;
  if (!refused_.empty()) {
    refused_note = "; refused plugins: ";
    for (size_t i = 0; i < refused_.size(); ++i)
      refused_note += (i ? "; " : "") + refused_[i].file.filename().string() + " (" +
                      refused_[i].reason + ")";
  }
  FUSION_ENSURE(!name.empty(), section, ".name: missing; set it to one of the registered ",
                kind_name(kind), "s: ", known, refused_note);
  const Component* c = find(name);
  FUSION_ENSURE(c, section, ".name: unknown ", kind_name(kind), " '", name, "'; known: ", known,
                refused_note);
  FUSION_ENSURE(c->kind == kind, section, ".name: '", name, "' is a ", kind_name(c->kind),
                ", not ", kind == ComponentKind::Algorithm ? "an " : "a ", kind_name(kind),
                "; known ", kind_name(kind), "s: ", known);
  return *c;
}

}  // namespace fusion::host
