#include "fusion/error.hpp"

#include <cstdio>

namespace fusion {
namespace {

// The message kept on one line: control characters (a newline in a key, an override or a file
// name quoted in the message) written as escapes. Found by the fuzz/ targets.
std::string one_line(const std::string& message) {
  std::string out;
  out.reserve(message.size());
  for (char ch : message) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out;
}

}  // namespace

Error::Error(const std::string& message) : std::runtime_error(one_line(message)) {}
Error::~Error() = default;
}  // namespace fusion
