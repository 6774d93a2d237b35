#pragma once
/// Events as keel stores them: EventData is what a caller appends, RecordedEvent is what a read returns (the
/// envelope of docs/event-format.md), ExpectedVersion is the optimistic-concurrency condition of an append.
///
/// Thread-safety: plain values.

#include <cstdint>
#include <string>
#include <string_view>

#include "keel/uuid.hpp"

namespace keel {

/// One event to append.
struct EventData {
    /// Unique in the store; re-appending the same id at the same position is an idempotent no-op.
    /// Default: nil, which makes Append generate a version-7 UUID.
    Uuid event_id;
    /// The event type, e.g. "UserCreated". 1–256 bytes, no control characters.
    std::string type;
    /// The payload: bytes, JSON by convention. Default: empty.
    std::string data;
    /// Empty or a JSON object (correlation_id, causation_id, tenant, …). Default: empty.
    std::string metadata;
};

/// One stored event: the envelope of docs/event-format.md.
struct RecordedEvent {
    int64_t global_position = 0;  ///< commit order in the whole store, starting at 1, strictly increasing
    Uuid event_id;
    std::string stream_id;
    int64_t stream_version = 0;  ///< 0-based, contiguous per stream
    std::string type;
    std::string data;
    std::string metadata;     ///< empty or a JSON object
    int64_t recorded_at = 0;  ///< microseconds since the Unix epoch, UTC; never decreases along global_position

    /// The stream's category: the part of stream_id before the first '-', or the whole id if it has none.
    std::string_view category() const noexcept;
};

/// The category of a stream id: the part before the first '-', or the whole id if it has none.
std::string_view StreamCategory(std::string_view stream_id) noexcept;

/// The condition an append (or delete) places on the stream's current version.
class ExpectedVersion {
public:
    enum class Kind : uint8_t { kAny, kNoStream, kStreamExists, kExact };

    /// No condition.
    static constexpr ExpectedVersion Any() noexcept { return ExpectedVersion(Kind::kAny, 0); }
    /// The stream must not exist (or must have been soft-deleted).
    static constexpr ExpectedVersion NoStream() noexcept { return ExpectedVersion(Kind::kNoStream, -1); }
    /// The stream must exist (hold at least one event and not be deleted).
    static constexpr ExpectedVersion StreamExists() noexcept { return ExpectedVersion(Kind::kStreamExists, 0); }
    /// The stream's last version must be exactly `version` (0-based; -1 means the same as NoStream()).
    static constexpr ExpectedVersion Exact(int64_t version) noexcept {
        return version < 0 ? NoStream() : ExpectedVersion(Kind::kExact, version);
    }

    constexpr Kind kind() const noexcept { return kind_; }
    /// For kExact: the version. -1 for kNoStream, 0 otherwise.
    constexpr int64_t version() const noexcept { return version_; }

    /// True when a stream whose current version is `current` (-1: absent or soft-deleted) satisfies this.
    constexpr bool Matches(int64_t current) const noexcept {
        switch (kind_) {
            case Kind::kAny: return true;
            case Kind::kNoStream: return current < 0;
            case Kind::kStreamExists: return current >= 0;
            case Kind::kExact: return current == version_;
        }
        return false;
    }

    /// "any", "no_stream", "stream_exists" or the number.
    std::string ToString() const;

    friend constexpr bool operator==(const ExpectedVersion&, const ExpectedVersion&) noexcept = default;

private:
    constexpr ExpectedVersion(Kind k, int64_t v) noexcept : kind_(k), version_(v) {}
    Kind kind_;
    int64_t version_;
};

}  // namespace keel
