#include "fusion/error.hpp"

namespace fusion {
Error::Error(const std::string& message) : std::runtime_error(message) {}
Error::~Error() = default;
}  // namespace fusion
