#pragma once

// Debian's abseil (20220623) ships neither RETURN_IF_ERROR nor ASSIGN_OR_RETURN;
// these are the small versions the project uses everywhere.

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define ADAPTERD_CONCAT_INNER_(a, b) a##b
#define ADAPTERD_CONCAT_(a, b) ADAPTERD_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` yields a non-OK status.
#define RETURN_IF_ERROR(expr)                                    \
  do {                                                           \
    ::absl::Status adapterd_status_ = (expr);                    \
    if (!adapterd_status_.ok()) return adapterd_status_;         \
  } while (0)

// `lhs` = value of the StatusOr `rexpr`, or returns its status from the
// enclosing function. `lhs` may be a declaration: ASSIGN_OR_RETURN(auto x, F());
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  ASSIGN_OR_RETURN_IMPL_(ADAPTERD_CONCAT_(adapterd_statusor_, __LINE__), lhs, rexpr)

#define ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                           \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()
