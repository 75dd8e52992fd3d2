#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

#include "fusion/export.hpp"

namespace fusion {

/// The one error type that crosses the SDK's C++ interfaces. Its message is a single line that names
/// what is wrong and where (file, key, option), written for the user: control characters in the
/// text given (a newline in a quoted key or an override) are kept as escapes (\n, \t, \x01).
/// Defined in libfusion_sdk so that its typeinfo is shared by the host and every plugin.
class FUSION_SDK_API Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message);
  ~Error() override;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}
}  // namespace detail
}  // namespace fusion

/// Throws fusion::Error with the streamed arguments as its message when `cond` is false.
#define FUSION_ENSURE(cond, ...)                                 \
  do {                                                           \
    if (!(cond)) {                                               \
      throw ::fusion::Error(::fusion::detail::concat(__VA_ARGS__)); \
    }                                                            \
  } while (false)

/// Throws fusion::Error with the streamed arguments as its message.
#define FUSION_FAIL(...) throw ::fusion::Error(::fusion::detail::concat(__VA_ARGS__))
