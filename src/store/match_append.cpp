#include <chrono>

#include "store/backend.hpp"

namespace keel::detail {

int64_t NowMicros() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

Status CheckExpected(std::string_view stream, ExpectedVersion expected, const StreamInfo* info) {
    if (info != nullptr && info->state == StreamState::kTombstoned) {
        return Status::StreamDeleted("stream '" + std::string(stream) + "' was hard-deleted (tombstoned)");
    }
    const int64_t actual = EffectiveVersion(info);
    if (expected.Matches(actual)) return Status::Ok();
    std::string where = actual < 0 ? std::string("the stream does not exist") : "the stream is at " + std::to_string(actual);
    if (info != nullptr && info->state == StreamState::kSoftDeleted) where = "the stream was deleted (soft)";
    return Status::WrongExpectedVersion(
        "stream '" + std::string(stream) + "': expected version " + expected.ToString() + " but " + where, actual);
}

Result<std::optional<AppendResult>> MatchStoredAppend(
    std::string_view stream, ExpectedVersion expected, std::span<const EventData> events,
    const std::function<Result<std::optional<StoredEventRef>>(const Uuid&)>& lookup) {
    std::vector<std::optional<StoredEventRef>> stored;
    stored.reserve(events.size());
    size_t found = 0;
    for (const EventData& e : events) {
        auto r = lookup(e.event_id);
        if (!r.ok()) return r.status();
        if (r->has_value()) ++found;
        stored.push_back(std::move(*r));
    }
    if (found == 0) return std::optional<AppendResult>();

    auto where = [](const StoredEventRef& s) {
        return "stream '" + s.stream_id + "' version " + std::to_string(s.stream_version);
    };
    if (found != events.size()) {
        for (size_t i = 0; i < events.size(); ++i) {
            if (stored[i]) {
                return Status::InvalidArgument("event id " + events[i].event_id.ToString() + " is already stored at " +
                                               where(*stored[i]) +
                                               " but other events of this append are not: re-send an append whole, "
                                               "with the same event ids, or use new ids");
            }
        }
    }
    const StoredEventRef& first = *stored[0];
    for (size_t i = 0; i < events.size(); ++i) {
        const StoredEventRef& s = *stored[i];
        const EventData& e = events[i];
        const int64_t want_version = first.stream_version + static_cast<int64_t>(i);
        if (s.stream_id != stream || s.stream_version != want_version) {
            return Status::InvalidArgument("event id " + e.event_id.ToString() + " is already stored at " + where(s) +
                                           ", not at stream '" + std::string(stream) + "' version " +
                                           std::to_string(want_version) + "; use a new event id");
        }
        if (s.type != e.type || s.data != e.data || s.metadata != e.metadata) {
            return Status::InvalidArgument("event id " + e.event_id.ToString() + " is already stored at " + where(s) +
                                           " with different content (type, data or metadata); use a new event id");
        }
    }
    if (expected.kind() == ExpectedVersion::Kind::kExact && first.stream_version != expected.version() + 1) {
        return Status::InvalidArgument("event id " + events[0].event_id.ToString() + " is already stored at " +
                                       where(first) + ", which does not follow expected version " +
                                       expected.ToString() + "; use a new event id");
    }
    AppendResult result;
    result.next_expected_version = first.stream_version + static_cast<int64_t>(events.size()) - 1;
    result.first_position = first.global_position;
    result.last_position = stored.back()->global_position;
    result.already_present = true;
    return std::optional<AppendResult>(result);
}

}  // namespace keel::detail
