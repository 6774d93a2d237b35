#pragma once
// The one rule for broker destination and group names (broker.hpp): 1–200 bytes of [A-Za-z0-9._-].

#include <string_view>

#include "keel/status.hpp"

namespace keel::detail {

inline constexpr size_t kMaxBrokerNameBytes = 200;

// kInvalidArgument naming `what` ("destination", "group") and the offending byte, else OK.
Status ValidateBrokerName(std::string_view what, std::string_view name);

}  // namespace keel::detail
