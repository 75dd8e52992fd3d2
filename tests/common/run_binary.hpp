#pragma once
// What the tests that run a program (the `fusion` binary) share: quoting, reading its output files,
// and running a command line in a folder with stdout and stderr captured.
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace fusion::testing {

/// `s` quoted for sh: 'it'\''s'.
inline std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += (c == '\'') ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

/// The whole file ("" when it cannot be read).
inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

/// How a program ended and what it wrote.
struct Outcome {
  int code = -1;  ///< exit status (-1: killed by a signal)
  std::string out;
  std::string err;
  /// The lines of stderr that are an error line ("fusion: error: ..."; should be exactly one).
  std::vector<std::string> error_lines() const {
    std::vector<std::string> r;
    for (const auto& l : lines_of(err))
      if (l.rfind("fusion: error: ", 0) == 0) r.push_back(l);
    return r;
  }
};

/// Runs `command` (a shell command line) in folder `dir`, stdout and stderr captured through
/// stdout.txt and stderr.txt in `dir`.
inline Outcome run_in(const std::filesystem::path& dir, const std::string& command) {
  const std::string cmd = "cd " + shell_quote(dir.string()) + " && " + command + " > " +
                          shell_quote((dir / "stdout.txt").string()) + " 2> " +
                          shell_quote((dir / "stderr.txt").string());
  const int status = std::system(cmd.c_str());
  Outcome o;
  o.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  o.out = read_text(dir / "stdout.txt");
  o.err = read_text(dir / "stderr.txt");
  return o;
}

}  // namespace fusion::testing
