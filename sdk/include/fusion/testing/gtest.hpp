#pragma once
// GoogleTest glue for the conformance suite (header-only; the fusion::testing library itself does
// not depend on GoogleTest):
//
//   #include <fusion/testing/gtest.hpp>
//   TEST(MyMethod, Conforms) {
//     fusion::testing::ConformanceOptions o;
//     o.options = {"alpha=0.5"};
//     FUSION_EXPECT_CONFORMS(fusion::testing::check_algorithm<my::MyMethod>(o));
//   }
//
// Each failed check is one test failure naming the check; skipped checks are printed.
#include <gtest/gtest.h>

#include <iostream>

#include "fusion/testing/conformance.hpp"

namespace fusion::testing {

/// Success when no check failed; the failure lists the failed checks. Skipped checks are printed
/// to stdout with their reasons.
inline ::testing::AssertionResult conforms(const ConformanceReport& report) {
  for (const auto& c : report.checks)
    if (c.status == CheckStatus::Skip)
      std::cout << "[ SKIPPED  ] " << report.algorithm << ' ' << c.check << ": " << c.message << '\n';
  if (report.passed()) return ::testing::AssertionSuccess();
  auto failure = ::testing::AssertionFailure();
  failure << report.algorithm << " does not conform:";
  for (const auto& c : report.checks)
    if (c.status == CheckStatus::Fail) failure << "\n  FAIL " << c.check << ": " << c.message;
  return failure;
}

}  // namespace fusion::testing

/// EXPECT_TRUE(conforms(report)), evaluated once.
#define FUSION_EXPECT_CONFORMS(report_expr) EXPECT_TRUE(::fusion::testing::conforms(report_expr))
