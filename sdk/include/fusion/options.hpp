#pragma once
// Options declared once: a binding from an options struct to its schema.
//
//   struct TaskArithmeticOptions {
//     double scaling_factor = 0.3;                        ///< the default is the initialiser
//     std::optional<std::vector<double>> scaling_factors;  ///< optional<>: may be absent, no default
//     static void bind(fusion::Options<TaskArithmeticOptions>& o) {
//       o("scaling_factor", &TaskArithmeticOptions::scaling_factor, "λ in θ₀ + λ Σ τₜ").min(0.0);
//       o("scaling_factors", &TaskArithmeticOptions::scaling_factors, "a λ sweep");
//     }
//   };
//
// From the binding come the schema (`fusion describe`), the checked reading of the TOML table
// (types, ranges, choices, finiteness and per-option checks, each error naming `section.key`) and
// the struct itself: read_options<T>(config). Registrar::add<C>() uses C::Options when C has one.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "fusion/config.hpp"
#include "fusion/error.hpp"

namespace fusion {

namespace detail {

/// How a C++ member type maps to an option ValueType and back.
template <class M, class = void>
struct OptionType;  // undefined: the member type cannot be an option

template <>
struct OptionType<bool> {
  static constexpr ValueType type = ValueType::Bool;
  static Value to(bool b) { return b; }
  static bool from(const Value& v) { return std::get<bool>(v); }
};
template <class I>
struct OptionType<I, std::enable_if_t<std::is_integral_v<I> && !std::is_same_v<I, bool>>> {
  static constexpr ValueType type = ValueType::Int;
  static Value to(I i) { return static_cast<int64_t>(i); }
  static I from(const Value& v) { return static_cast<I>(std::get<int64_t>(v)); }
};
template <>
struct OptionType<double> {
  static constexpr ValueType type = ValueType::Double;
  static Value to(double d) { return d; }
  static double from(const Value& v) {
    if (const auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
    return std::get<double>(v);
  }
};
template <class M, ValueType VT>
struct DirectOptionType {
  static constexpr ValueType type = VT;
  static Value to(const M& m) { return m; }
  static M from(const Value& v) { return std::get<M>(v); }
};
template <>
struct OptionType<std::string> : DirectOptionType<std::string, ValueType::String> {};
template <>
struct OptionType<std::vector<double>> : DirectOptionType<std::vector<double>, ValueType::DoubleList> {};
template <>
struct OptionType<std::vector<std::string>>
    : DirectOptionType<std::vector<std::string>, ValueType::StringList> {};
template <>
struct OptionType<std::vector<std::vector<double>>>
    : DirectOptionType<std::vector<std::vector<double>>, ValueType::DoubleMatrix> {};
template <>
struct OptionType<StringMap> : DirectOptionType<StringMap, ValueType::StringMap> {};

template <class M>
struct Unoptional {
  using type = M;
  static constexpr bool optional = false;
};
template <class M>
struct Unoptional<std::optional<M>> {
  using type = M;
  static constexpr bool optional = true;
};

}  // namespace detail

template <class T>
class Options;

/// A bound option, to refine: bounds, choices, a check of its own. Valid while the binding is
/// being built (inside T::bind).
template <class M>
class OptionRef {
 public:
  using Base = typename detail::Unoptional<M>::type;

  /// Inclusive bounds for a number or each entry of a list of numbers (nullopt: unbounded).
  OptionRef& range(std::optional<double> lo, std::optional<double> hi) {
    spec().range(lo, hi);
    return *this;
  }
  OptionRef& min(double lo) { return range(lo, spec().max); }
  OptionRef& max(double hi) { return range(spec().min, hi); }
  /// Restricts a string (or each entry of a list of strings) to `allowed`.
  OptionRef& one_of(std::vector<std::string> allowed) {
    spec().one_of(std::move(allowed));
    return *this;
  }
  /// The option must be given: the struct's initialiser is not a default.
  OptionRef& required() {
    spec().default_value.reset();
    spec().optional_no_default = false;
    return *this;
  }
  /// A non-finite number (inf, nan) is accepted (refused by default).
  OptionRef& allow_non_finite() {
    spec().finite = false;
    return *this;
  }
  /// A check no bound expresses. `fn(value)` returns "" when the value is fine, else what is
  /// wrong; the error reads "<section>.<key> <what is wrong>", e.g. "method.weights is empty"
  /// (no space when the text starts with ':', '.' or '[': "modelpool.pretrained: the path is empty").
  /// Runs on a value the config gives (a default is trusted).
  OptionRef& check(std::function<std::string(const Base&)> fn) {
    spec().check = [fn = std::move(fn)](const Value& v) {
      return fn(detail::OptionType<Base>::from(v));
    };
    return *this;
  }

 private:
  template <class T>
  friend class Options;
  OptionRef(Schema* schema, size_t index) : schema_(schema), index_(index) {}
  OptionSpec& spec() { return schema_->spec_at(index_); }
  Schema* schema_;
  size_t index_;
};

/// The binding of options struct T: built once from T::bind(Options<T>&), then read-only.
/// Defaults are the initialisers of a value-initialised T; a std::optional<X> member is an option
/// that may be absent and has no default. Thread-safe once built (binding() is a magic static).
template <class T>
class Options {
 public:
  /// Binds `member` as option `name` with meaning `doc`.
  template <class M>
  OptionRef<M> operator()(const std::string& name, M T::*member, const std::string& doc) {
    using U = detail::Unoptional<M>;
    using Base = typename U::type;
    const T& probe = default_instance();
    size_t index;
    if constexpr (U::optional) {
      index = schema_.index_of(schema_.add_optional(name, detail::OptionType<Base>::type, doc));
    } else {
      index = schema_.index_of(schema_.add(name, detail::OptionType<Base>::to(probe.*member), doc));
      schema_.spec_at(index).type = detail::OptionType<Base>::type;  // an empty list keeps its type
    }
    entries_.push_back({name, offset_of(member),
                        [member](const Value& v, T& t) {
                          t.*member = detail::OptionType<Base>::from(v);
                        }});
    return OptionRef<M>(&schema_, index);
  }

  /// Binds the options of the sub-struct `member` (N::bind) as options of T, in place.
  template <class N>
  void include(N T::*member) {
    const Options<N>& sub = Options<N>::binding();
    const std::ptrdiff_t base = offset_of(member);
    for (const auto& spec : sub.schema().options()) {
      schema_.push(spec);
    }
    for (const auto& e : sub.entries_) {
      auto assign = e.assign;
      entries_.push_back({e.name, base + e.offset,
                          [member, assign](const Value& v, T& t) { assign(v, t.*member); }});
    }
  }

  /// The options, in binding order, for `fusion describe` and Config::validate.
  const Schema& schema() const { return schema_; }

  /// T from a config checked against schema() (the host's Context::config()): every bound member
  /// that has a value is set; the others keep their initialisers.
  T read(const Config& config) const {
    T out{};
    for (const auto& e : entries_)
      if (config.has(e.name)) e.assign(config.value(e.name), out);
    return out;
  }

  /// The option name bound to `member` (found by its offset in T).
  template <class M>
  std::string name_of(M T::*member) const {
    const std::ptrdiff_t off = offset_of(member);
    for (const auto& e : entries_)
      if (e.offset == off) return e.name;
    FUSION_FAIL("options: member not bound to an option");
  }

  /// The binding of T, built on first use.
  static const Options& binding() {
    static const Options b = [] {
      Options o;
      T::bind(o);
      return o;
    }();
    return b;
  }

 private:
  template <class U>
  friend class Options;
  struct Entry {
    std::string name;
    std::ptrdiff_t offset;
    std::function<void(const Value&, T&)> assign;
  };

  static const T& default_instance() {
    static const T probe{};
    return probe;
  }
  template <class M>
  static std::ptrdiff_t offset_of(M T::*member) {
    const T& probe = default_instance();
    return reinterpret_cast<const char*>(&(probe.*member)) - reinterpret_cast<const char*>(&probe);
  }
  Schema schema_;
  std::vector<Entry> entries_;
};

/// The schema of options struct T (its binding's).
template <class T>
const Schema& schema_of() {
  return Options<T>::binding().schema();
}

/// T read from `config`, which was checked against schema_of<T>() (Context::config()).
template <class T>
T read_options(const Config& config) {
  return Options<T>::binding().read(config);
}

/// The option name of `member` of options struct T, for messages that cannot be per-option checks
/// (a value compared with the model pool): "method." + option_name(&WeightedAverageOptions::weights).
template <class T, class M>
std::string option_name(M T::*member) {
  return Options<T>::binding().name_of(member);
}

}  // namespace fusion
