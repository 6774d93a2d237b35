#include "keel/status.hpp"

namespace keel {

std::string_view StatusCodeName(StatusCode code) noexcept {
    switch (code) {
        case StatusCode::kOk: return "ok";
        case StatusCode::kNotFound: return "not_found";
        case StatusCode::kWrongExpectedVersion: return "wrong_expected_version";
        case StatusCode::kInvalidArgument: return "invalid_argument";
        case StatusCode::kUnavailable: return "unavailable";
        case StatusCode::kDeadlineExceeded: return "deadline_exceeded";
        case StatusCode::kCorruption: return "corruption";
        case StatusCode::kNotSupported: return "not_supported";
        case StatusCode::kStreamDeleted: return "stream_deleted";
        case StatusCode::kAlreadyExists: return "already_exists";
        case StatusCode::kFailedPrecondition: return "failed_precondition";
        case StatusCode::kInternal: return "internal";
        case StatusCode::kCancelled: return "cancelled";
    }
    return "unknown";
}

std::string Status::ToString() const {
    if (ok()) return "ok";
    std::string out(StatusCodeName(code_));
    out += ": ";
    out += message_;
    return out;
}

Status Status::WithContext(std::string_view context) const {
    if (ok()) return *this;
    Status s = *this;
    s.message_ = std::string(context) + ": " + message_;
    return s;
}

}  // namespace keel
