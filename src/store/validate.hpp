#pragma once
// Input checks shared by the event-store front and the backends. Each returns kInvalidArgument naming the field.

#include <string_view>

#include "keel/event_store.hpp"

namespace keel::detail {

inline constexpr size_t kMaxStreamIdBytes = 256;
inline constexpr size_t kMaxTypeBytes = 256;
inline constexpr size_t kMaxCheckpointNameBytes = 256;

// 1–`max_bytes` bytes, no ASCII control characters (0x00–0x1F, 0x7F). `field` names it in the message.
Status ValidateName(std::string_view field, std::string_view value, size_t max_bytes);
inline Status ValidateStreamId(std::string_view stream) { return ValidateName("stream id", stream, kMaxStreamIdBytes); }
// Empty, or text that parses as a JSON object.
Status ValidateJsonObject(std::string_view field, std::string_view text);
Status ValidateEvents(std::span<const EventData> events, const StoreOptions& options);
Status ValidateStreamMetadata(const StreamMetadata& metadata);

}  // namespace keel::detail
