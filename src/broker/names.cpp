#include "broker/names.hpp"

#include <fmt/format.h>

namespace keel::detail {
namespace {

std::string Shorten(std::string_view s) {
    return s.size() <= 64 ? std::string(s) : fmt::format("{}…", s.substr(0, 64));
}

bool IsNameChar(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
}

}  // namespace

Status ValidateBrokerName(std::string_view what, std::string_view name) {
    if (name.empty()) {
        return Status::InvalidArgument(fmt::format("the {} name is empty; use 1-200 bytes of [A-Za-z0-9._-]", what));
    }
    if (name.size() > kMaxBrokerNameBytes) {
        return Status::InvalidArgument(fmt::format("the {} name '{}' is {} bytes long; the limit is {}", what,
                                                   Shorten(name), name.size(), kMaxBrokerNameBytes));
    }
    for (char c : name) {
        if (!IsNameChar(c)) {
            return Status::InvalidArgument(
                fmt::format("the {} name '{}' contains the byte 0x{:02x}; only [A-Za-z0-9._-] is allowed", what,
                            Shorten(name), static_cast<unsigned char>(c)));
        }
    }
    return Status::Ok();
}

}  // namespace keel::detail
