// Schema, Config and RunConfig (config.hpp): the run's TOML document, checked per component.
#include "fusion/config.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace fusion {

// ---------------------------------------------------------------------------------------------
// Values

const char* type_name(ValueType type) {
  switch (type) {
    case ValueType::Bool: return "bool";
    case ValueType::Int: return "int";
    case ValueType::Double: return "float";
    case ValueType::String: return "string";
    case ValueType::DoubleList: return "list of float";
    case ValueType::StringList: return "list of string";
    case ValueType::DoubleMatrix: return "list of list of float";
    case ValueType::StringMap: return "table of string";
  }
  return "?";
}

ValueType type_of(const Value& v) { return static_cast<ValueType>(v.index()); }

namespace {

bool is_bare_key(const std::string& key) {
  if (key.empty()) return false;
  return std::all_of(key.begin(), key.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
  });
}

// Whether `s` is well-formed UTF-8 (no overlong forms, surrogates or values past U+10FFFF), as a
// TOML document must be.
bool is_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc >> 6) != 2) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) {
      return false;
    }
    i += len;
  }
  return true;
}

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  return out + "\"";
}


std::string format_double(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[40];
  if (d == std::floor(d) && std::fabs(d) < 1e15) {
    std::snprintf(buf, sizeof(buf), "%.1f", d);
    return buf;
  }
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof(buf), "%.*g", prec, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  std::string s = buf;
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

std::string format_number(double d) {  // bounds in messages: 0 rather than 0.0
  std::string s = format_double(d);
  if (s.size() > 2 && s.compare(s.size() - 2, 2, ".0") == 0) s.resize(s.size() - 2);
  return s;
}

}  // namespace

std::string toml_key(const std::string& key) { return is_bare_key(key) ? key : quote(key); }

std::string to_toml_string(const Value& v) {
  struct Visitor {
    std::string operator()(bool b) const { return b ? "true" : "false"; }
    std::string operator()(int64_t i) const { return std::to_string(i); }
    std::string operator()(double d) const { return format_double(d); }
    std::string operator()(const std::string& s) const { return quote(s); }
    std::string operator()(const std::vector<double>& l) const {
      std::string out = "[";
      for (size_t i = 0; i < l.size(); ++i) out += (i ? ", " : "") + format_double(l[i]);
      return out + "]";
    }
    std::string operator()(const std::vector<std::string>& l) const {
      std::string out = "[";
      for (size_t i = 0; i < l.size(); ++i) out += (i ? ", " : "") + quote(l[i]);
      return out + "]";
    }
    std::string operator()(const std::vector<std::vector<double>>& m) const {
      std::string out = "[";
      for (size_t i = 0; i < m.size(); ++i) out += (i ? ", " : "") + (*this)(m[i]);
      return out + "]";
    }
    std::string operator()(const StringMap& m) const {
      if (m.empty()) return "{}";
      std::string out = "{ ";
      for (size_t i = 0; i < m.size(); ++i)
        out += (i ? ", " : "") + toml_key(m[i].first) + " = " + quote(m[i].second);
      return out + " }";
    }
  };
  return std::visit(Visitor{}, v);
}

// ---------------------------------------------------------------------------------------------
// OptionSpec and Schema

OptionSpec& OptionSpec::range(std::optional<double> lo, std::optional<double> hi) {
  min = lo;
  max = hi;
  return *this;
}

OptionSpec& OptionSpec::one_of(std::vector<std::string> allowed) {
  choices = std::move(allowed);
  return *this;
}

namespace {
OptionSpec& add_spec(std::vector<OptionSpec>& options, OptionSpec spec) {
  FUSION_ENSURE(!spec.name.empty(), "Schema: an option needs a name");
  for (const auto& o : options)
    FUSION_ENSURE(o.name != spec.name, "Schema: option '", spec.name, "' declared twice");
  options.push_back(std::move(spec));
  return options.back();
}
}  // namespace

OptionSpec& Schema::add(const std::string& name, Value default_value, const std::string& doc) {
  OptionSpec spec;
  spec.name = name;
  spec.type = type_of(default_value);
  spec.default_value = std::move(default_value);
  spec.doc = doc;
  return add_spec(options_, std::move(spec));
}

OptionSpec& Schema::add_required(const std::string& name, ValueType type, const std::string& doc) {
  OptionSpec spec;
  spec.name = name;
  spec.type = type;
  spec.doc = doc;
  return add_spec(options_, std::move(spec));
}

OptionSpec& Schema::add_optional(const std::string& name, ValueType type, const std::string& doc) {
  OptionSpec spec;
  spec.name = name;
  spec.type = type;
  spec.doc = doc;
  spec.optional_no_default = true;
  return add_spec(options_, std::move(spec));
}

OptionSpec& Schema::push(OptionSpec spec) { return add_spec(options_, std::move(spec)); }

const OptionSpec* Schema::find(const std::string& name) const {
  for (const auto& o : options_)
    if (o.name == name) return &o;
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// Config

struct Config::Impl {
  std::string section;
  std::vector<std::pair<std::string, Value>> values;
};

Config::Config() : impl_(std::make_shared<const Impl>()) {}

namespace {

bool is_list(ValueType t) {
  return t == ValueType::DoubleList || t == ValueType::StringList || t == ValueType::DoubleMatrix ||
         t == ValueType::StringMap;
}

bool is_empty_list(const Value& v) {
  if (auto* a = std::get_if<std::vector<double>>(&v)) return a->empty();
  if (auto* b = std::get_if<std::vector<std::string>>(&v)) return b->empty();
  if (auto* c = std::get_if<std::vector<std::vector<double>>>(&v)) return c->empty();
  if (auto* d = std::get_if<StringMap>(&v)) return d->empty();
  return false;
}

Value empty_of(ValueType t) {
  switch (t) {
    case ValueType::DoubleList: return std::vector<double>{};
    case ValueType::StringList: return std::vector<std::string>{};
    case ValueType::DoubleMatrix: return std::vector<std::vector<double>>{};
    default: return StringMap{};
  }
}

std::string describe_value(const Value& v) {
  return std::string(type_name(type_of(v))) + " " + to_toml_string(v);
}

// Converts `v` to `type` where the conversion is lossless (int -> float, an empty list to any list
// type); throws naming `where` otherwise.
Value coerce(const std::string& where, const Value& v, ValueType type) {
  ValueType have = type_of(v);
  if (have == type) return v;
  if (type == ValueType::Double && have == ValueType::Int)
    return static_cast<double>(std::get<int64_t>(v));
  if (is_list(type) && is_empty_list(v)) return empty_of(type);
  FUSION_FAIL(where, ": expected ", type_name(type), ", got ", describe_value(v));
}

std::string bounds_text(const OptionSpec& spec) {
  std::string lo = spec.min ? format_number(*spec.min) : "-inf";
  std::string hi = spec.max ? format_number(*spec.max) : "inf";
  return "[" + lo + ", " + hi + "]";
}

void check_number(const std::string& where, const OptionSpec& spec, double x,
                  const std::string& shown) {
  FUSION_ENSURE(!spec.finite || std::isfinite(x), where, ": expected a finite number, got ", shown);
  bool ok = !std::isnan(x) && (!spec.min || x >= *spec.min) && (!spec.max || x <= *spec.max);
  FUSION_ENSURE(ok, where, ": expected a value in ", bounds_text(spec), ", got ", shown);
}

void check_choice(const std::string& where, const OptionSpec& spec, const std::string& s) {
  if (spec.choices.empty()) return;
  if (std::find(spec.choices.begin(), spec.choices.end(), s) != spec.choices.end()) return;
  std::string allowed;
  for (size_t i = 0; i < spec.choices.size(); ++i)
    allowed += (i ? ", " : "") + quote(spec.choices[i]);
  FUSION_FAIL(where, ": expected one of ", allowed, ", got ", quote(s));
}

void check_bounds(const std::string& where, const OptionSpec& spec, const Value& v) {
  switch (type_of(v)) {
    case ValueType::Int: {
      int64_t i = std::get<int64_t>(v);
      check_number(where, spec, static_cast<double>(i), std::to_string(i));
      break;
    }
    case ValueType::Double: {
      double d = std::get<double>(v);
      check_number(where, spec, d, format_double(d));
      break;
    }
    case ValueType::DoubleList: {
      const auto& l = std::get<std::vector<double>>(v);
      for (size_t i = 0; i < l.size(); ++i)
        check_number(where + "[" + std::to_string(i) + "]", spec, l[i], format_double(l[i]));
      break;
    }
    case ValueType::DoubleMatrix: {
      const auto& m = std::get<std::vector<std::vector<double>>>(v);
      for (size_t i = 0; i < m.size(); ++i)
        for (size_t j = 0; j < m[i].size(); ++j)
          check_number(where + "[" + std::to_string(i) + "][" + std::to_string(j) + "]", spec,
                       m[i][j], format_double(m[i][j]));
      break;
    }
    case ValueType::String: check_choice(where, spec, std::get<std::string>(v)); break;
    case ValueType::StringList: {
      const auto& l = std::get<std::vector<std::string>>(v);
      for (size_t i = 0; i < l.size(); ++i)
        check_choice(where + "[" + std::to_string(i) + "]", spec, l[i]);
      break;
    }
    default: break;
  }
}

}  // namespace

Config Config::validate(const std::string& section, const std::map<std::string, Value>& values,
                        const Schema& schema, const std::vector<std::string>& ignore) {
  auto ignored = [&](const std::string& k) {
    return std::find(ignore.begin(), ignore.end(), k) != ignore.end();
  };
  for (const auto& [key, value] : values) {
    if (ignored(key) || schema.find(key)) continue;
    std::string known;
    for (const auto& o : schema.options())
      if (!ignored(o.name)) known += (known.empty() ? "" : ", ") + o.name;
    if (known.empty())
      FUSION_FAIL(section, ".", key, ": unknown option (this component takes no options)");
    FUSION_FAIL(section, ".", key, ": unknown option; known options: ", known);
  }
  auto impl = std::make_shared<Impl>();
  impl->section = section;
  for (const auto& spec : schema.options()) {
    std::string where = section + "." + spec.name;
    auto it = values.find(spec.name);
    if (it == values.end()) {
      if (spec.default_value) {
        impl->values.emplace_back(spec.name, *spec.default_value);
      } else if (!spec.optional_no_default) {
        FUSION_FAIL(where, ": required option missing (", type_name(spec.type),
                    spec.doc.empty() ? "" : ": ", spec.doc, ")");
      }
      continue;
    }
    Value v = coerce(where, it->second, spec.type);
    check_bounds(where, spec, v);
    if (spec.check) {
      const std::string problem = spec.check(v);
      const bool joined = !problem.empty() && (problem[0] == ':' || problem[0] == '.' || problem[0] == '[');
      FUSION_ENSURE(problem.empty(), where, joined ? "" : " ", problem);
    }
    impl->values.emplace_back(spec.name, std::move(v));
  }
  Config config;
  config.impl_ = std::move(impl);
  return config;
}

const std::string& Config::section() const { return impl_->section; }

bool Config::has(const std::string& name) const {
  for (const auto& kv : impl_->values)
    if (kv.first == name) return true;
  return false;
}

const Value& Config::value(const std::string& name) const {
  for (const auto& kv : impl_->values)
    if (kv.first == name) return kv.second;
  FUSION_FAIL(impl_->section, ".", name, ": option has no value");
}

const std::vector<std::pair<std::string, Value>>& Config::values() const { return impl_->values; }

template <typename T>
T Config::get(const std::string& name) const {
  const Value& v = value(name);
  if (auto* p = std::get_if<T>(&v)) return *p;
  if constexpr (std::is_same_v<T, double>) {
    if (auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
  }
  FUSION_FAIL(impl_->section, ".", name, ": option is ", type_name(type_of(v)),
              ", read as another type");
}

template FUSION_SDK_API bool Config::get<bool>(const std::string&) const;
template FUSION_SDK_API int64_t Config::get<int64_t>(const std::string&) const;
template FUSION_SDK_API double Config::get<double>(const std::string&) const;
template FUSION_SDK_API std::string Config::get<std::string>(const std::string&) const;
template FUSION_SDK_API std::vector<double> Config::get<std::vector<double>>(
    const std::string&) const;
template FUSION_SDK_API std::vector<std::string> Config::get<std::vector<std::string>>(
    const std::string&) const;
template FUSION_SDK_API std::vector<std::vector<double>>
Config::get<std::vector<std::vector<double>>>(const std::string&) const;
template FUSION_SDK_API StringMap Config::get<StringMap>(const std::string&) const;

// ---------------------------------------------------------------------------------------------
// RunConfig

struct RunConfig::Impl {
  std::string origin;
  toml::table doc;
};

RunConfig::RunConfig() : impl_(std::make_unique<Impl>()) {}
RunConfig::RunConfig(const RunConfig& other) : impl_(std::make_unique<Impl>(*other.impl_)) {}
RunConfig& RunConfig::operator=(const RunConfig& other) {
  if (this != &other) impl_ = std::make_unique<Impl>(*other.impl_);
  return *this;
}
RunConfig::RunConfig(RunConfig&&) noexcept = default;
RunConfig& RunConfig::operator=(RunConfig&&) noexcept = default;
RunConfig::~RunConfig() = default;

namespace {

const char* node_kind(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::table: return "table";
    case toml::node_type::array: return "array";
    case toml::node_type::string: return "string";
    case toml::node_type::integer: return "integer";
    case toml::node_type::floating_point: return "float";
    case toml::node_type::boolean: return "bool";
    case toml::node_type::date: return "date";
    case toml::node_type::time: return "time";
    case toml::node_type::date_time: return "date-time";
    default: return "nothing";
  }
}

// Keys of a table in document order (nodes without a source position, i.e. added by overrides,
// come last, in key order).
std::vector<std::string> ordered_keys(const toml::table& t) {
  std::vector<std::pair<std::pair<uint64_t, uint64_t>, std::string>> keyed;
  for (auto&& [k, v] : t) {
    const auto& b = v.source().begin;
    uint64_t line = b.line ? b.line : UINT64_MAX;
    keyed.push_back({{line, b.column}, std::string(k.str())});
  }
  std::stable_sort(keyed.begin(), keyed.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::string> out;
  for (auto& k : keyed) out.push_back(std::move(k.second));
  return out;
}

std::string location(const toml::node& n, const std::string& fallback) {
  const auto& src = n.source();
  if (!src.begin.line) return fallback;
  std::string file = src.path ? *src.path : fallback;
  return file + ":" + std::to_string(src.begin.line) + ":" + std::to_string(src.begin.column);
}

Value node_to_value(const toml::node& n, const std::string& where) {
  switch (n.type()) {
    case toml::node_type::boolean: return *n.value<bool>();
    case toml::node_type::integer: return *n.value<int64_t>();
    case toml::node_type::floating_point: return *n.value<double>();
    case toml::node_type::string: return *n.value<std::string>();
    case toml::node_type::array: {
      const auto& a = *n.as_array();
      if (a.empty()) return std::vector<double>{};
      if (a.is_homogeneous(toml::node_type::string)) {
        std::vector<std::string> out;
        for (const auto& e : a) out.push_back(*e.value<std::string>());
        return out;
      }
      auto numbers = [&](const toml::array& arr, const std::string& w) {
        std::vector<double> out;
        for (const auto& e : arr) {
          FUSION_ENSURE(e.is_number(), w,
                        ": expected a list of numbers, strings or lists of numbers, found a ",
                        node_kind(e), " in the list");
          // toml++'s value<double>() of an integer past ±2^53 is empty (found by fuzz/fuzz_config):
          // such an integer is rounded to the nearest double, as a scalar int option read as a float is.
          out.push_back(e.is_integer() ? static_cast<double>(*e.value<int64_t>()) : *e.value<double>());
        }
        return out;
      };
      if (a.is_homogeneous(toml::node_type::array)) {
        std::vector<std::vector<double>> out;
        for (const auto& e : a) out.push_back(numbers(*e.as_array(), where));
        return out;
      }
      return numbers(a, where);
    }
    case toml::node_type::table: {
      StringMap out;
      const auto& t = *n.as_table();
      for (const auto& k : ordered_keys(t)) {
        const toml::node& e = *t.get(k);
        FUSION_ENSURE(e.is_string(), where, ".", k, ": expected string, got ", node_kind(e));
        out.emplace_back(k, *e.value<std::string>());
      }
      return out;
    }
    default:
      FUSION_FAIL(where, ": a ", node_kind(n), " is not a value any option can have");
  }
}

// Moves top-level non-table keys into [run]: `device = "cuda"` is `[run] device = "cuda"`.
void hoist_run_keys(toml::table& doc, const std::string& origin) {
  std::vector<std::string> loose;
  for (auto&& [k, v] : doc)
    if (!v.is_table()) loose.emplace_back(k.str());
  if (loose.empty()) return;
  if (auto* run = doc.get("run"); run && !run->is_table())
    FUSION_FAIL(location(*run, origin), ": 'run' must be a table ([run])");
  if (!doc.contains("run")) doc.insert("run", toml::table{});
  toml::table& run = *doc.get_as<toml::table>("run");
  for (const auto& k : loose) {
    if (k == "run") continue;
    toml::node& n = *doc.get(k);
    FUSION_ENSURE(!run.contains(k), location(n, origin), ": run.", k,
                  " given both at the top level and in [run]");
    n.visit([&](auto& concrete) { run.insert(k, concrete); });
    doc.erase(k);
  }
}

}  // namespace

RunConfig RunConfig::from_file(const std::filesystem::path& path) {
  std::error_code ec;
  FUSION_ENSURE(std::filesystem::exists(path, ec), path.string(),
                ": config file not found");
  FUSION_ENSURE(!std::filesystem::is_directory(path, ec), path.string(),
                ": is a directory, not a config file");
  std::ifstream in(path, std::ios::binary);
  FUSION_ENSURE(in.is_open(), path.string(), ": cannot read config file (", std::strerror(errno),
                ")");
  std::ostringstream buf;
  buf << in.rdbuf();
  FUSION_ENSURE(!in.bad(), path.string(), ": error while reading config file");
  return from_string(buf.str(), path.string());
}

RunConfig RunConfig::from_string(const std::string& text, const std::string& origin) {
  RunConfig rc;
  rc.impl_->origin = origin;
  try {
    rc.impl_->doc = toml::parse(std::string_view(text), std::string_view(origin));
  } catch (const toml::parse_error& e) {
    const auto& b = e.source().begin;
    FUSION_FAIL(origin, ":", b.line, ":", b.column, ": TOML syntax error: ", e.description());
  }
  hoist_run_keys(rc.impl_->doc, origin);
  return rc;
}

void RunConfig::apply_override(const std::string& assignment) {
  auto eq = assignment.find('=');
  FUSION_ENSURE(eq != std::string::npos, "override '", assignment,
                "': expected key=value (e.g. method.scaling_factor=0.3)");
  auto trim = [](std::string s) {
    auto b = s.find_first_not_of(" \t");
    auto e = s.find_last_not_of(" \t");
    return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
  };
  std::string key = trim(assignment.substr(0, eq));
  std::string text = trim(assignment.substr(eq + 1));
  FUSION_ENSURE(!key.empty(), "override '", assignment, "': missing key before '='");
  std::vector<std::string> path;
  {
    size_t start = 0;
    while (true) {
      auto dot = key.find('.', start);
      std::string part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      FUSION_ENSURE(is_bare_key(part), "override '", assignment, "': '", key,
                    "' is not a key like section.option (letters, digits, '_' and '-' "
                    "separated by dots)");
      path.push_back(part);
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
  }
  if (path.size() == 1) path.insert(path.begin(), "run");
  FUSION_ENSURE(!text.empty(), "override '", assignment,
                "': missing value after '=' (write ", key, "=\"\" for an empty string)");
  // A bare word becomes a TOML string, which must be UTF-8, or config.toml would not read again
  // (found by fuzz/fuzz_config).
  FUSION_ENSURE(is_utf8(text), "override of ", key, ": the value is not valid UTF-8");

  // The value: a TOML value when it parses as one, otherwise the text as a bare string.
  toml::table parsed;
  bool is_toml = true;
  try {
    std::string src = "v = " + text;
    parsed = toml::parse(std::string_view(src), std::string_view("override"));
  } catch (const toml::parse_error&) {
    is_toml = false;
  }
  if (is_toml && (parsed.size() != 1 || !parsed.contains("v"))) is_toml = false;

  toml::table* t = &impl_->doc;
  std::string where;
  for (size_t i = 0; i + 1 < path.size(); ++i) {
    where += (i ? "." : "") + path[i];
    toml::node* n = t->get(path[i]);
    if (!n) {
      t->insert(path[i], toml::table{});
      n = t->get(path[i]);
    }
    FUSION_ENSURE(n->is_table(), "override '", assignment, "': ", where, " is a ", node_kind(*n),
                  ", not a table");
    t = n->as_table();
  }
  const std::string& leaf = path.back();
  if (is_toml) {
    parsed.get("v")->visit([&](auto& concrete) { t->insert_or_assign(leaf, concrete); });
  } else {
    t->insert_or_assign(leaf, text);
  }
}

bool RunConfig::has_section(const std::string& section) const {
  const toml::node* n = impl_->doc.get(section);
  return n && n->is_table();
}

std::vector<std::string> RunConfig::sections() const {
  std::vector<std::string> out;
  for (const auto& k : ordered_keys(impl_->doc))
    if (impl_->doc.get(k)->is_table()) out.push_back(k);
  return out;
}

std::map<std::string, Value> RunConfig::section(const std::string& section) const {
  std::map<std::string, Value> out;
  const toml::table* t = impl_->doc.get_as<toml::table>(section);
  if (!t) return out;
  for (auto&& [k, v] : *t) {
    std::string key(k.str());
    out.emplace(key, node_to_value(v, section + "." + key));
  }
  return out;
}

std::string RunConfig::component_name(const std::string& section) const {
  const toml::table* t = impl_->doc.get_as<toml::table>(section);
  if (!t) return "";
  if (auto name = t->get_as<std::string>("name")) return name->get();
  return "";
}

namespace {
void write_table(std::ostringstream& out, const toml::table& t, const std::string& prefix) {
  std::vector<std::string> sub;
  bool header = !prefix.empty();
  if (header) out << "[" << prefix << "]\n";
  for (const auto& k : ordered_keys(t)) {
    const toml::node& n = *t.get(k);
    if (n.is_table()) {
      sub.push_back(k);
      continue;
    }
    out << toml_key(k) << " = ";
    if (auto* a = n.as_array()) {
      // Arrays are written through toml++ so that any array (of tables too) round-trips.
      out << *a;
    } else if (n.is_floating_point()) {
      out << format_double(*n.value<double>());
    } else if (n.is_string()) {
      out << quote(*n.value<std::string>());
    } else {
      n.visit([&](const auto& concrete) { out << concrete; });
    }
    out << '\n';
  }
  for (const auto& k : sub) {
    out << '\n';
    write_table(out, *t.get_as<toml::table>(k), prefix.empty() ? toml_key(k)
                                                               : prefix + "." + toml_key(k));
  }
}
}  // namespace

std::string RunConfig::to_toml() const {
  std::ostringstream out;
  // [run] first, then the other sections in document order.
  std::vector<std::string> order = sections();
  std::stable_partition(order.begin(), order.end(), [](const std::string& s) { return s == "run"; });
  bool first = true;
  for (const auto& s : order) {
    if (!first) out << '\n';
    first = false;
    write_table(out, *impl_->doc.get_as<toml::table>(s), toml_key(s));
  }
  return out.str();
}

}  // namespace fusion
