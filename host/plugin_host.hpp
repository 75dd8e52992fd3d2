#pragma once
// The host's plugin loader and component registry.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "fusion/context.hpp"
#include "fusion/plugin.hpp"
#include "fusion/version.hpp"

namespace fusion::host {

/// One registered component and where it came from.
struct Component {
  ComponentKind kind = ComponentKind::Algorithm;
  ComponentInfo info;
  AlgorithmFactory algorithm;   ///< set for kind == Algorithm
  ModelPoolFactory model_pool;  ///< set for kind == ModelPool
  TaskPoolFactory task_pool;    ///< set for kind == TaskPool
  std::string origin;           ///< the plugin file, or "built-in"
};

/// A plugin that passed the handshake and registered its components.
struct LoadedPlugin {
  std::filesystem::path file;
  std::string name;
  std::string version;
  uint32_t abi_version = 0;
  uint32_t api_level = 0;
  std::string sdk_version;
  std::string torch_version;
  std::string compiler;
  std::vector<std::string> components;  ///< in registration order
};

/// A library that was not loaded, and why.
struct RefusedPlugin {
  std::filesystem::path file;
  std::string reason;
};

/// Loads plugins and holds the registry of components. Plugins are loaded once, from one thread,
/// at start-up (RTLD_NOW | RTLD_LOCAL) and never unloaded: their libraries stay mapped for the rest
/// of the process, so every object whose code lives in a plugin may outlive this registry.
///
/// A plugin's handshake is checked field by field before it registers anything: the ABI version
/// (exact) first, then the SDK major version (exact), the API level (at most the host's), the
/// LibTorch version (exact) and _GLIBCXX_USE_CXX11_ABI (exact); a plugin that differs, a library
/// without the entry symbol, a file that is not a loadable library and a plugin whose init fails
/// (a duplicate component name included) are refused: logged as a warning naming the file and the
/// reason, recorded in refused(), and none of their components is registered.
class PluginHost final : public Registrar {
 public:
  /// `api_level`: the SDK API level this host offers (FUSION_API_LEVEL; tests pass a higher one to
  /// act as a newer 1.y host).
  explicit PluginHost(Logger& log, uint32_t api_level = FUSION_API_LEVEL);
  ~PluginHost() override;

  /// Registers the host's own components (the `safetensors` model pool).
  void add_builtins();

  /// The folders searched by default, in order: the build tree's plugin folder (only when this
  /// binary runs from the build tree), the install's (<prefix>/lib/fusion/plugins relative to the
  /// binary), then each entry of FUSION_PLUGIN_PATH (colon-separated; folders or files). With
  /// FUSION_NO_DEFAULT_PLUGINS=1 in the environment only FUSION_PLUGIN_PATH is searched.
  static std::vector<std::filesystem::path> default_search_path();

  /// Loads the folders of default_search_path(); an entry that does not exist is skipped (with a
  /// warning for FUSION_PLUGIN_PATH entries).
  void load_default();

  /// Loads every `*.so` in folder `path` (sorted by name), or the library `path` itself. Returns the
  /// number of plugins refused. A missing path throws fusion::Error naming it.
  size_t load_path(const std::filesystem::path& path);

  /// Loads one library. Returns true when it was loaded (or had been loaded already) and false
  /// when it was refused (logged and recorded).
  bool load_file(const std::filesystem::path& file);

  /// The component called `name`, or nullptr.
  const Component* find(const std::string& name) const;
  /// The component for section `section` called `name`, of kind `kind`; throws fusion::Error naming
  /// `section.name`, the components of that kind that exist, and any refused plugins otherwise.
  const Component& require(ComponentKind kind, const std::string& section,
                           const std::string& name) const;

  const std::vector<Component>& components() const { return components_; }
  const std::vector<LoadedPlugin>& loaded() const { return loaded_; }
  const std::vector<RefusedPlugin>& refused() const { return refused_; }

  // Registrar (called by plugins from their init, and by add_builtins).
  void add_algorithm(ComponentInfo info, AlgorithmFactory factory) override;
  void add_model_pool(ComponentInfo info, ModelPoolFactory factory) override;
  void add_task_pool(ComponentInfo info, TaskPoolFactory factory) override;

 private:
  void register_component(Component c);
  void refuse(const std::filesystem::path& file, const std::string& reason);

  Logger& log_;
  uint32_t api_level_;
  std::vector<Component> components_;
  std::vector<Component> staged_;  ///< registrations of the plugin being initialised
  bool staging_ = false;
  std::string current_origin_;
  std::vector<LoadedPlugin> loaded_;
  std::vector<RefusedPlugin> refused_;
  std::vector<std::filesystem::path> seen_;  ///< canonical paths already tried
};

}  // namespace fusion::host
