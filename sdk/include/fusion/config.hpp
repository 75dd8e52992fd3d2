#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "fusion/error.hpp"
#include "fusion/export.hpp"

namespace fusion {

/// An ordered list of (name, string) pairs: a TOML table of strings such as `[modelpool.models]`.
using StringMap = std::vector<std::pair<std::string, std::string>>;

/// The value types an option may have. A TOML integer is accepted where a double is expected.
using Value = std::variant<bool, int64_t, double, std::string, std::vector<double>,
                           std::vector<std::string>, std::vector<std::vector<double>>, StringMap>;

enum class ValueType { Bool, Int, Double, String, DoubleList, StringList, DoubleMatrix, StringMap };

/// "bool", "int", "float", "string", "list of float", ... as `fusion describe` prints them.
FUSION_SDK_API const char* type_name(ValueType type);
FUSION_SDK_API ValueType type_of(const Value& v);
/// The value as TOML would write it (for describe, the saved config and the report).
FUSION_SDK_API std::string to_toml_string(const Value& v);
/// A key as TOML writes it: bare when it can be (letters, digits, '_', '-'), quoted otherwise.
FUSION_SDK_API std::string toml_key(const std::string& key);

/// One option of a component: its name, type, default (absent when required), meaning and bounds.
struct FUSION_SDK_API OptionSpec {
  std::string name;
  ValueType type = ValueType::String;
  std::optional<Value> default_value;  ///< absent: the option is required
  std::string doc;
  std::optional<double> min;            ///< inclusive bound for numbers (and list entries)
  std::optional<double> max;            ///< inclusive bound for numbers (and list entries)
  std::vector<std::string> choices;     ///< allowed values for a string option (empty: any)
  bool optional_no_default = false;     ///< may be absent, with no default (Config::has tells)
  bool finite = true;                   ///< numbers must be finite (inf and nan are refused)
  /// A check of its own: "" when the value is fine, else what is wrong (after "section.key ").
  std::function<std::string(const Value&)> check;

  /// Sets inclusive bounds (std::nullopt: unbounded on that side); returns *this.
  OptionSpec& range(std::optional<double> lo, std::optional<double> hi);
  /// Restricts a string option to `allowed`; returns *this.
  OptionSpec& one_of(std::vector<std::string> allowed);
};

/// The options a component accepts, in the order `fusion describe` prints them.
///
///   Schema s;
///   s.add("scaling_factor", 0.3, "λ in θ₀ + λ Σ τₜ").range(0.0, std::nullopt);
class FUSION_SDK_API Schema {
 public:
  /// Adds an option with a default; the type is that of the default (a double for `0.3`,
  /// int64_t for `int64_t{3}`, ...). Returns the spec for bounds and choices.
  OptionSpec& add(const std::string& name, Value default_value, const std::string& doc);
  /// Adds a required option of `type`.
  OptionSpec& add_required(const std::string& name, ValueType type, const std::string& doc);
  /// Adds an option that may be absent and has no default.
  OptionSpec& add_optional(const std::string& name, ValueType type, const std::string& doc);

  const std::vector<OptionSpec>& options() const { return options_; }
  const OptionSpec* find(const std::string& name) const;
  bool empty() const { return options_.empty(); }

  /// Appends a complete spec (its name must be new); for bindings that compose schemas.
  OptionSpec& push(OptionSpec spec);
  /// The position of `spec` (a reference returned by add*) and the spec at a position.
  size_t index_of(const OptionSpec& spec) const { return static_cast<size_t>(&spec - options_.data()); }
  OptionSpec& spec_at(size_t index) { return options_.at(index); }

 private:
  std::vector<OptionSpec> options_;
};

/// A typed, checked view over one table of the run's configuration (`[method]`, `[modelpool]`,
/// `[run]`, ...). Built by `Config::validate`, which rejects unknown keys, wrong types and values out
/// of range with one line naming `section.key`, so a component that holds a Config can read its
/// options without further checks. Immutable and cheap to copy (shared storage); thread-safe to read.
class FUSION_SDK_API Config {
 public:
  Config();

  /// Checks `values` (from the TOML table `section`) against `schema` and fills in defaults.
  /// Keys in `ignore` (such as `name`) are skipped. Throws fusion::Error naming `section.key` for an
  /// unknown key, a missing required key, a wrong type or a value out of range.
  static Config validate(const std::string& section, const std::map<std::string, Value>& values,
                         const Schema& schema, const std::vector<std::string>& ignore = {"name"});

  /// The section this config came from ("method", "modelpool", ...).
  const std::string& section() const;
  /// Whether the option has a value (given or defaulted).
  bool has(const std::string& name) const;
  /// The raw value; throws fusion::Error when absent.
  const Value& value(const std::string& name) const;
  /// The value as T. T is bool, int64_t, double, std::string, std::vector<double>,
  /// std::vector<std::string>, std::vector<std::vector<double>> or StringMap. Throws fusion::Error
  /// when the option is absent or has another type (an int64_t option reads as double too).
  template <typename T>
  T get(const std::string& name) const;
  /// All values, in schema order.
  const std::vector<std::pair<std::string, Value>>& values() const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

/// A whole run configuration: the TOML document as nested tables, after overrides.
/// Sections are the top-level tables; a dotted key `method.lr` addresses `[method] lr`.
/// Top-level scalar keys (`device = "cuda"`) are shorthand for `[run]` keys.
class FUSION_SDK_API RunConfig {
 public:
  /// Parses a TOML file. Throws fusion::Error naming the file, line and column on a syntax error
  /// and the file when it cannot be read.
  static RunConfig from_file(const std::filesystem::path& path);
  /// Parses TOML text; `origin` names it in errors.
  static RunConfig from_string(const std::string& text, const std::string& origin);

  /// Applies `key=value` (value parsed as a TOML value; a bare word is a string). A key without a
  /// dot is a `[run]` key. Throws fusion::Error naming the override when it is malformed.
  void apply_override(const std::string& assignment);

  bool has_section(const std::string& section) const;
  /// Section names in document order.
  std::vector<std::string> sections() const;
  /// The section's keys and values (nested tables of strings become StringMap). Throws
  /// fusion::Error naming `section.key` for a value of a type no option can have.
  std::map<std::string, Value> section(const std::string& section) const;
  /// The `name` key of a section ("" when absent).
  std::string component_name(const std::string& section) const;

  /// The resolved document as TOML text (saved as run_dir/config.toml).
  std::string to_toml() const;

  RunConfig(const RunConfig&);
  RunConfig& operator=(const RunConfig&);
  RunConfig(RunConfig&&) noexcept;
  RunConfig& operator=(RunConfig&&) noexcept;
  ~RunConfig();

 private:
  RunConfig();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fusion
