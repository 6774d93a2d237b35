#pragma once
// How the keel CLI turns a failed Status into a process exit code and a default piece of advice. The mapping is one
// table, in exit_codes.cpp; docs/cli.md lists the same codes.

#include <string_view>

#include "keel/status.hpp"

namespace keel::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;   // anything not listed below
inline constexpr int kExitUsage = 2;     // bad flags or arguments (kInvalidArgument); nothing was written
inline constexpr int kExitConflict = 3;  // kWrongExpectedVersion
inline constexpr int kExitDeleted = 4;   // kStreamDeleted: the stream is tombstoned
inline constexpr int kExitNotFound = 5;  // kNotFound

// The exit code for a failure with `code` (kExitOk for kOk).
int ExitCodeFor(StatusCode code) noexcept;

// What to do about a failure with `code`, for commands that have no more precise advice.
std::string_view DefaultHint(StatusCode code) noexcept;

}  // namespace keel::cli
