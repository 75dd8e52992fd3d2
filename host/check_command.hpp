#pragma once
// `fusion check`: the conformance suite (fusion/testing/conformance.hpp) on registered algorithms.
#include <iosfwd>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "fusion/context.hpp"

namespace fusion::host {

/// What `fusion check` was asked to do.
struct CheckRequest {
  std::vector<std::string> names;     ///< algorithms to check, in order
  bool all = false;                   ///< every registered algorithm (after `names`)
  /// Method options, `key=value` (every algorithm checked) or `NAME.key=value` (algorithm NAME
  /// only); values are TOML (`weights=[0.5,0.5]`, `task=task0`).
  std::vector<std::string> settings;
  /// Checks to skip, `CHECK` or `NAME.CHECK`, several joined by commas (reported as SKIP,
  /// "skipped on request: --skip ...").
  std::vector<std::string> skips;
};

/// A malformed `fusion check` command line (a usage error: exit status 2).
struct CheckUsageError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

/// The arguments after `check`: NAME..., --all, --set KEY=VALUE (or --set=KEY=VALUE), --skip CHECK
/// (or --skip=CHECK), in any order. Throws CheckUsageError for an unknown option, an option
/// without its value, or neither a NAME nor --all; its message does not name the command (the
/// caller prefixes "check: ").
CheckRequest parse_check_arguments(const std::vector<std::string>& args);

/// Loads plugins as `fusion run` does (the built-in components, the default search path and
/// FUSION_PLUGIN_PATH), runs the conformance suite on each requested algorithm and prints one line
/// per check to `out`:
///   PASS task_arithmetic identity: 1 model from experts equal to the pretrained model equals it ...
/// then one summary line. Returns 0 when no check failed, 1 otherwise. Throws fusion::Error
/// (exit 1 with one error line) for an unknown algorithm, a setting for an algorithm not checked,
/// an unknown option or check, or a bad value — before any check runs. Plugin loading logs to
/// `logger`; the methods log to a quiet logger of their own (warnings and errors).
int check_command(const CheckRequest& request, const std::shared_ptr<Logger>& logger, std::ostream& out);

}  // namespace fusion::host
