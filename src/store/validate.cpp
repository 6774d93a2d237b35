#include "store/validate.hpp"

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <unordered_set>

namespace keel::detail {

namespace {
std::string Printable(std::string_view s) {
    std::string out;
    for (char c : s.substr(0, 64)) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7F) {
            out += fmt::format("\\x{:02x}", u);
        } else {
            out.push_back(c);
        }
    }
    if (s.size() > 64) out += "…";
    return out;
}
}  // namespace

Status ValidateName(std::string_view field, std::string_view value, size_t max_bytes) {
    if (value.empty()) return Status::InvalidArgument(fmt::format("{} is empty", field));
    if (value.size() > max_bytes) {
        return Status::InvalidArgument(
            fmt::format("{} '{}' is {} bytes, over the limit of {}", field, Printable(value), value.size(), max_bytes));
    }
    for (size_t i = 0; i < value.size(); ++i) {
        const auto u = static_cast<unsigned char>(value[i]);
        if (u < 0x20 || u == 0x7F) {
            return Status::InvalidArgument(fmt::format("{} '{}' contains a control character (0x{:02x}) at byte {}",
                                                       field, Printable(value), u, i));
        }
    }
    return Status::Ok();
}

Status ValidateJsonObject(std::string_view field, std::string_view text) {
    if (text.empty()) return Status::Ok();
    // accept() validates without building a tree (this runs for every appended event); a valid JSON text whose
    // first non-space character is '{' is an object.
    if (!nlohmann::json::accept(text.begin(), text.end())) {
        return Status::InvalidArgument(fmt::format("{} is not valid JSON", field));
    }
    const size_t first = text.find_first_not_of(" \t\r\n");
    if (first == std::string_view::npos || text[first] != '{') {
        return Status::InvalidArgument(fmt::format("{} must be a JSON object", field));
    }
    return Status::Ok();
}

Status ValidateEvents(std::span<const EventData> events, const StoreOptions& options) {
    if (events.empty()) return Status::InvalidArgument("events: an append needs at least one event");
    if (events.size() > options.max_events_per_append) {
        return Status::InvalidArgument(fmt::format("events: {} events in one append, over the limit of {}",
                                                   events.size(), options.max_events_per_append));
    }
    for (size_t i = 0; i < events.size(); ++i) {
        const EventData& e = events[i];
        if (Status s = ValidateName("event type", e.type, kMaxTypeBytes); !s.ok()) {
            return s.WithContext(fmt::format("event {}", i));
        }
        const size_t size = e.type.size() + e.data.size() + e.metadata.size();
        if (size > options.max_event_size) {
            return Status::InvalidArgument(fmt::format("event {} ({}) is {} bytes, over max_event_size {}", i, e.type,
                                                       size, options.max_event_size));
        }
        if (Status s = ValidateJsonObject("metadata", e.metadata); !s.ok()) {
            return s.WithContext(fmt::format("event {}", i));
        }
    }
    // Duplicate ids inside one append (nil ids are filled in later and never collide).
    auto dup = [&](size_t i) {
        return Status::InvalidArgument(
            fmt::format("event id {} appears twice in one append", events[i].event_id.ToString()));
    };
    if (events.size() <= 16) {
        for (size_t i = 0; i < events.size(); ++i) {
            if (events[i].event_id.is_nil()) continue;
            for (size_t j = 0; j < i; ++j) {
                if (events[j].event_id == events[i].event_id) return dup(i);
            }
        }
    } else {
        std::unordered_set<Uuid> seen;
        seen.reserve(events.size());
        for (size_t i = 0; i < events.size(); ++i) {
            if (!events[i].event_id.is_nil() && !seen.insert(events[i].event_id).second) return dup(i);
        }
    }
    return Status::Ok();
}

Status ValidateStreamMetadata(const StreamMetadata& m) {
    if (m.max_count && *m.max_count < 0) return Status::InvalidArgument("max_count must not be negative");
    if (m.max_age && m.max_age->count() < 0) return Status::InvalidArgument("max_age must not be negative");
    if (m.truncate_before && *m.truncate_before < 0) {
        return Status::InvalidArgument("truncate_before must not be negative");
    }
    return ValidateJsonObject("custom metadata", m.custom);
}

}  // namespace keel::detail
