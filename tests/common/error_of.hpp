#pragma once
// What every test binary uses to check an error message.
#include <gtest/gtest.h>

#include <exception>
#include <string>

#include "fusion/error.hpp"

namespace fusion::testing {

/// Runs `f` and returns the message of the fusion::Error it throws. Another exception, or none,
/// fails the calling test (and returns that exception's message, or "").
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const fusion::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected a fusion::Error, got another exception: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected a fusion::Error, nothing was thrown";
  return "";
}

}  // namespace fusion::testing
