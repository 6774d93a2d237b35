#include "keel/event.hpp"

namespace keel {

std::string_view StreamCategory(std::string_view stream_id) noexcept {
    const size_t dash = stream_id.find('-');
    return dash == std::string_view::npos ? stream_id : stream_id.substr(0, dash);
}

std::string_view RecordedEvent::category() const noexcept { return StreamCategory(stream_id); }

std::string ExpectedVersion::ToString() const {
    switch (kind_) {
        case Kind::kAny: return "any";
        case Kind::kNoStream: return "no_stream";
        case Kind::kStreamExists: return "stream_exists";
        case Kind::kExact: return std::to_string(version_);
    }
    return "?";
}

}  // namespace keel
