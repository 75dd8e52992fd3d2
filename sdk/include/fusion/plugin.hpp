#pragma once
#include <torch/version.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "fusion/algorithm.hpp"
#include "fusion/component.hpp"
#include "fusion/config.hpp"
#include "fusion/context.hpp"
#include "fusion/export.hpp"
#include "fusion/model_pool.hpp"
#include "fusion/options.hpp"
#include "fusion/task_pool.hpp"
#include "fusion/version.hpp"

/// The plain handshake a plugin fills before anything else. Plain C data, fixed layout: its first
/// member never changes, so a host can read `abi_version` of any plugin and refuse it cleanly.
extern "C" struct fusion_handshake {
  uint32_t abi_version;       ///< FUSION_ABI_VERSION the plugin was built with (must match exactly)
  uint32_t sdk_major;         ///< FUSION_VERSION_MAJOR (must match exactly)
  uint32_t api_level;         ///< FUSION_API_LEVEL (at most the host's)
  char sdk_version[32];       ///< FUSION_VERSION_STRING (informational)
  char torch_version[32];     ///< TORCH_VERSION ("1.13.0")
  int32_t cxx11_abi;          ///< _GLIBCXX_USE_CXX11_ABI
  char compiler[64];          ///< __VERSION__ of the compiler
  char plugin_name[64];
  char plugin_version[32];
};

/// The one symbol a plugin exports. Called first with `registrar == nullptr`: fill `hs` and return 0.
/// Called again, after the host accepted the handshake, with a registrar: register components and
/// return 0, or write a message to `error` (at most `error_size` bytes, NUL-terminated) and return
/// non-zero. Never throws.
using fusion_plugin_init_fn = int (*)(fusion_handshake* hs, void* registrar, char* error,
                                      size_t error_size);

#define FUSION_PLUGIN_ENTRY_NAME "fusion_plugin_init"

namespace fusion {

using AlgorithmFactory = std::function<std::unique_ptr<Algorithm>(const Context&)>;
using ModelPoolFactory = std::function<std::unique_ptr<ModelPool>(const Context&)>;
using TaskPoolFactory = std::function<std::unique_ptr<TaskPool>(const Context&)>;

namespace detail {
template <class T, class = void>
struct HasOptions : std::false_type {};
template <class T>
struct HasOptions<T, std::void_t<typename T::Options>> : std::true_type {};

/// Makes component T from its context: T(Options, const Context&), T(Options), T(const Context&)
/// or T(), the first that exists; Options are read from ctx.config() through T::Options's binding.
template <class T, class Base>
std::unique_ptr<Base> construct(const Context& ctx) {
  if constexpr (HasOptions<T>::value) {
    using O = typename T::Options;
    if constexpr (std::is_constructible_v<T, O, const Context&>)
      return std::make_unique<T>(read_options<O>(ctx.config()), ctx);
    else if constexpr (std::is_constructible_v<T, O>)
      return std::make_unique<T>(read_options<O>(ctx.config()));
    else
      return std::make_unique<T>(ctx);  // reads its options itself (read_options<O>(ctx.config()))
  } else if constexpr (std::is_constructible_v<T, const Context&>) {
    return std::make_unique<T>(ctx);
  } else {
    return std::make_unique<T>();
  }
}
}  // namespace detail

/// Where a plugin registers its components; owned by the host. A name already registered (by any
/// plugin) is refused with fusion::Error. The factories receive a Context whose config() has been
/// checked against `info.schema`.
class FUSION_SDK_API Registrar {
 public:
  virtual ~Registrar();
  virtual void add_algorithm(ComponentInfo info, AlgorithmFactory factory) = 0;
  virtual void add_model_pool(ComponentInfo info, ModelPoolFactory factory) = 0;
  virtual void add_task_pool(ComponentInfo info, TaskPoolFactory factory) = 0;

  /// Registers component T, an Algorithm, ModelPool or TaskPool:
  /// - `static ComponentInfo T::info()` gives its name, summary, reference and requirements;
  /// - when T has `using Options = ...;`, the schema is that struct's binding (options.hpp) and the
  ///   options are read for the factory;
  /// - T is made by detail::construct (see there).
  template <class T>
  void add() {
    ComponentInfo info = T::info();
    if constexpr (detail::HasOptions<T>::value) info.schema = schema_of<typename T::Options>();
    if constexpr (std::is_base_of_v<Algorithm, T>) {
      add_algorithm(std::move(info), &detail::construct<T, Algorithm>);
    } else if constexpr (std::is_base_of_v<ModelPool, T>) {
      add_model_pool(std::move(info), &detail::construct<T, ModelPool>);
    } else {
      static_assert(std::is_base_of_v<TaskPool, T>, "add<T>: T is not an Algorithm, ModelPool or TaskPool");
      add_task_pool(std::move(info), &detail::construct<T, TaskPool>);
    }
  }
};

namespace detail {
/// Fills `hs` with the values of the translation unit that includes this header: the plugin's own.
inline void fill_handshake(fusion_handshake* hs, const char* name, const char* version) {
  std::memset(hs, 0, sizeof(*hs));
  hs->abi_version = FUSION_ABI_VERSION;
  hs->sdk_major = FUSION_VERSION_MAJOR;
  hs->api_level = FUSION_API_LEVEL;
  std::snprintf(hs->sdk_version, sizeof(hs->sdk_version), "%s", FUSION_VERSION_STRING);
  std::snprintf(hs->torch_version, sizeof(hs->torch_version), "%s", TORCH_VERSION);
  hs->cxx11_abi = _GLIBCXX_USE_CXX11_ABI;
  std::snprintf(hs->compiler, sizeof(hs->compiler), "%s", __VERSION__);
  std::snprintf(hs->plugin_name, sizeof(hs->plugin_name), "%s", name);
  std::snprintf(hs->plugin_version, sizeof(hs->plugin_version), "%s", version);
}
inline void copy_error(char* dst, size_t n, const char* msg) {
  if (dst && n > 0) std::snprintf(dst, n, "%s", msg);
}
}  // namespace detail
}  // namespace fusion

/// Defines a plugin's entry. The body registers components into `REG` (a fusion::Registrar&):
///
///   FUSION_PLUGIN("task_arithmetic", "1.0.0", reg) {
///     reg.add<TaskArithmetic>();
///   }
///
/// No exception leaves the entry: a throwing body is reported to the host as an error string.
#define FUSION_PLUGIN(NAME, VERSION, REG)                                                       \
  static void fusion_plugin_register_(::fusion::Registrar& REG);                               \
  extern "C" FUSION_PLUGIN_EXPORT int fusion_plugin_init(fusion_handshake* hs, void* registrar, \
                                                         char* error, size_t error_size) noexcept { \
    try {                                                                                       \
      ::fusion::detail::fill_handshake(hs, NAME, VERSION);                                      \
      if (registrar == nullptr) return 0;                                                       \
      fusion_plugin_register_(*static_cast<::fusion::Registrar*>(registrar));                   \
      return 0;                                                                                 \
    } catch (const std::exception& e) {                                                         \
      ::fusion::detail::copy_error(error, error_size, e.what());                                \
    } catch (...) {                                                                             \
      ::fusion::detail::copy_error(error, error_size, "unknown exception");                     \
    }                                                                                           \
    return 1;                                                                                   \
  }                                                                                             \
  static void fusion_plugin_register_(::fusion::Registrar& REG)
