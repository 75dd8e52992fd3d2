#include "check_command.hpp"

#include <algorithm>
#include <map>
#include <ostream>

#include "fusion/error.hpp"
#include "fusion/testing/conformance.hpp"
#include "plugin_host.hpp"

namespace fusion::host {

namespace {

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : ", ") + s;
  return out.empty() ? "none" : out;
}

/// What is set for one algorithm.
struct Plan {
  const Component* component = nullptr;
  std::vector<std::string> settings;
  std::map<std::string, std::string> skip;
};

// Splits "NAME.rest" into the algorithm it is scoped to ("" for all; "method." means all too) and
// the rest; refuses a scope that is not an algorithm being checked.
std::pair<std::string, std::string> scoped(const std::string& text, const std::string& key, const std::string& flag,
                                           const std::vector<Plan>& plans) {
  const auto dot = key.find('.');
  if (dot == std::string::npos) return {"", text};
  const std::string scope = key.substr(0, dot);
  const std::string rest = text.substr(dot + 1);
  if (scope == "method") return {"", rest};
  std::vector<std::string> names;
  for (const auto& p : plans) {
    if (p.component->info.name == scope) return {scope, rest};
    names.push_back(p.component->info.name);
  }
  FUSION_FAIL("check: ", flag, " ", text, ": '", scope, "' is not an algorithm being checked (checking: ",
              join(names), ")");
}

}  // namespace

CheckRequest parse_check_arguments(const std::vector<std::string>& args) {
  CheckRequest r;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value_of = [&](const std::string& flag, std::vector<std::string>& into) {
      if (a == flag) {
        if (i + 1 >= args.size()) throw CheckUsageError(flag + " needs a value");
        into.push_back(args[++i]);
        return true;
      }
      if (a.rfind(flag + "=", 0) == 0) {
        into.push_back(a.substr(flag.size() + 1));
        return true;
      }
      return false;
    };
    if (a == "--all") {
      r.all = true;
    } else if (value_of("--set", r.settings) || value_of("--skip", r.skips)) {
    } else if (a.rfind("-", 0) == 0) {
      throw CheckUsageError("unknown option '" + a + "' (--all, --set KEY=VALUE, --skip CHECK)");
    } else {
      r.names.push_back(a);
    }
  }
  if (r.names.empty() && !r.all) throw CheckUsageError("missing algorithm NAME (or --all)");
  return r;
}

int check_command(const CheckRequest& request, const std::shared_ptr<Logger>& logger, std::ostream& out) {
  PluginHost host(*logger);
  host.add_builtins();
  host.load_default();

  // The algorithms, in the order asked (then every other one for --all).
  std::vector<std::string> known;
  for (const auto& c : host.components())
    if (c.kind == ComponentKind::Algorithm) known.push_back(c.info.name);
  std::string refused_note;
  for (size_t i = 0; i < host.refused().size(); ++i)
    refused_note += (i ? "; " : "; refused plugins: ") + host.refused()[i].file.filename().string() + " (" +
                    host.refused()[i].reason + ")";
  std::vector<Plan> plans;
  auto planned = [&](const std::string& name) {
    return std::any_of(plans.begin(), plans.end(), [&](const Plan& p) { return p.component->info.name == name; });
  };
  for (const auto& name : request.names) {
    const Component* c = host.find(name);
    FUSION_ENSURE(c && c->kind == ComponentKind::Algorithm, "check: unknown algorithm '", name,
                  "'; known algorithms: ", join(known), refused_note);
    if (!planned(name)) plans.push_back({c, {}, {}});
  }
  if (request.all)
    for (const auto& c : host.components())
      if (c.kind == ComponentKind::Algorithm && !planned(c.info.name)) plans.push_back({&c, {}, {}});
  FUSION_ENSURE(!plans.empty(), "check: no algorithm is registered", refused_note);

  // Settings and skips, each for every algorithm or for the one it names.
  for (const auto& s : request.settings) {
    const auto eq = s.find('=');
    FUSION_ENSURE(eq != std::string::npos, "check: --set ", s, ": expected KEY=VALUE (e.g. weights=[0.5,0.5])");
    const auto [scope, assignment] = scoped(s, s.substr(0, eq), "--set", plans);
    for (auto& p : plans)
      if (scope.empty() || p.component->info.name == scope) p.settings.push_back(assignment);
  }
  const auto& checks = testing::conformance_checks();
  std::vector<std::string> skips;  // "a,b" is "a" and "b"
  for (const auto& s : request.skips) {
    size_t start = 0;
    for (size_t comma; (comma = s.find(',', start)) != std::string::npos; start = comma + 1)
      skips.push_back(s.substr(start, comma - start));
    skips.push_back(s.substr(start));
  }
  for (const auto& s : skips) {
    const auto [scope, check] = scoped(s, s, "--skip", plans);
    FUSION_ENSURE(std::find(checks.begin(), checks.end(), check) != checks.end(), "check: --skip ", s,
                  ": unknown check '", check, "' (checks: ", join(checks), ")");
    for (auto& p : plans)
      if (scope.empty() || p.component->info.name == scope) p.skip[check] = "--skip " + s;
  }
  // Every option set checked before anything runs, so that a typo costs no time.
  for (const auto& p : plans) {
    std::vector<std::string> missing;
    testing::conformance_config(p.component->info, p.settings, missing);
  }

  int passed = 0, failed = 0, skipped = 0;
  for (const auto& p : plans) {
    const ComponentInfo& info = p.component->info;
    out << info.name << " (" << (p.component->origin == "built-in" ? "built-in" : "plugin " + p.component->origin)
        << "; needs " << info.requirements.describe() << ")\n"
        << std::flush;
    testing::ConformanceOptions options;
    options.options = p.settings;
    options.skip = p.skip;
    const testing::ConformanceReport report = testing::check_algorithm(info, p.component->algorithm, options);
    for (const auto& c : report.checks)
      out << testing::status_name(c.status) << ' ' << info.name << ' ' << c.check << ": " << c.message << '\n';
    out << std::flush;
    passed += report.count(testing::CheckStatus::Pass);
    failed += report.count(testing::CheckStatus::Fail);
    skipped += report.count(testing::CheckStatus::Skip);
  }
  out << "fusion check: " << plans.size() << (plans.size() == 1 ? " algorithm" : " algorithms") << ", " << passed
      << " passed, " << failed << " failed, " << skipped << " skipped\n"
      << std::flush;
  return failed == 0 ? 0 : 1;
}

}  // namespace fusion::host
