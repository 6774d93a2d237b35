#include "broker/rabbitmq/rabbit_message.hpp"

#include <chrono>
#include <string_view>

#include <fmt/format.h>

namespace keel::detail::rabbit {
namespace {

constexpr size_t kMaxRoutingKey = 255;

amqp_field_value_t LongString(std::string_view s) {
    amqp_field_value_t v{};
    v.kind = AMQP_FIELD_KIND_UTF8;
    v.value.bytes = Bytes(s);
    return v;
}

amqp_field_value_t Long(int64_t n) {
    amqp_field_value_t v{};
    v.kind = AMQP_FIELD_KIND_I64;
    v.value.i64 = n;
    return v;
}

amqp_table_entry_t Entry(std::string_view key, amqp_field_value_t value) {
    amqp_table_entry_t e{};
    e.key = Bytes(key);
    e.value = value;
    return e;
}

bool IsString(const amqp_field_value_t& v) {
    return v.kind == AMQP_FIELD_KIND_UTF8 || v.kind == AMQP_FIELD_KIND_BYTES;
}

std::optional<int64_t> AsInteger(const amqp_field_value_t& v) {
    switch (v.kind) {
        case AMQP_FIELD_KIND_I8: return v.value.i8;
        case AMQP_FIELD_KIND_U8: return v.value.u8;
        case AMQP_FIELD_KIND_I16: return v.value.i16;
        case AMQP_FIELD_KIND_U16: return v.value.u16;
        case AMQP_FIELD_KIND_I32: return v.value.i32;
        case AMQP_FIELD_KIND_U32: return v.value.u32;
        case AMQP_FIELD_KIND_I64: return v.value.i64;
        case AMQP_FIELD_KIND_U64:
        case AMQP_FIELD_KIND_TIMESTAMP: return static_cast<int64_t>(v.value.u64);
        default: return std::nullopt;
    }
}

}  // namespace

amqp_bytes_t Bytes(std::string_view s) {
    amqp_bytes_t b;
    b.len = s.size();
    b.bytes = const_cast<char*>(s.data());
    return b;
}

std::string_view View(amqp_bytes_t b) {
    return b.len == 0 ? std::string_view() : std::string_view(static_cast<const char*>(b.bytes), b.len);
}

OutgoingProps::OutgoingProps(const Message& message, const DeadLetterInfo* dead_letter)
    : message_id_(message.message_id.ToString()) {
    pair_items_.reserve(2 * message.headers.size());
    pairs_.reserve(message.headers.size());
    for (const auto& [name, value] : message.headers) {
        pair_items_.push_back(LongString(name));
        pair_items_.push_back(LongString(value));
        amqp_field_value_t pair{};
        pair.kind = AMQP_FIELD_KIND_ARRAY;
        pair.value.array.num_entries = 2;
        pair.value.array.entries = &pair_items_[pair_items_.size() - 2];
        pairs_.push_back(pair);
    }
    entries_.push_back(Entry(kKeyHeader, LongString(message.key)));
    if (!pairs_.empty()) {
        amqp_field_value_t all{};
        all.kind = AMQP_FIELD_KIND_ARRAY;
        all.value.array.num_entries = static_cast<int>(pairs_.size());
        all.value.array.entries = pairs_.data();
        entries_.push_back(Entry(kHeadersHeader, all));
    }
    if (dead_letter != nullptr) {
        error_ = dead_letter->error;
        dead_letter_id_ = dead_letter->id;
        entries_.push_back(Entry(kErrorHeader, LongString(error_)));
        entries_.push_back(Entry(kAttemptsHeader, Long(dead_letter->attempts)));
        entries_.push_back(Entry(kDeadLetteredAtHeader, Long(dead_letter->dead_lettered_at)));
        entries_.push_back(Entry(kDeadLetterIdHeader, LongString(dead_letter_id_)));
    }
    props_._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG |
                    AMQP_BASIC_HEADERS_FLAG;
    props_.delivery_mode = 2;  // persistent
    props_.message_id = Bytes(message_id_);
    props_.timestamp = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
    props_.headers.num_entries = static_cast<int>(entries_.size());
    props_.headers.entries = entries_.data();
}

std::string_view RoutingKeyFor(const Message& message) {
    return message.key.size() <= kMaxRoutingKey ? std::string_view(message.key) : std::string_view();
}

Result<Decoded> DecodeMessage(const amqp_basic_properties_t& props, amqp_bytes_t body, amqp_bytes_t routing_key,
                              bool redelivered) {
    Decoded out;
    if ((props._flags & AMQP_BASIC_MESSAGE_ID_FLAG) == 0) {
        return Status::Corruption("an AMQP message without a message_id property (not published by keel)");
    }
    auto id = Uuid::Parse(View(props.message_id));
    if (!id.ok()) {
        return Status::Corruption(
            fmt::format("an AMQP message whose message_id '{}' is not a UUID (not published by "
                        "keel)",
                        View(props.message_id).substr(0, 64)));
    }
    out.message.message_id = *id;
    out.message.payload = std::string(View(body));
    out.message.key = std::string(View(routing_key));
    std::optional<int64_t> delivery_count;
    DeadLetterInfo dl;
    bool is_dead_letter = false;
    if ((props._flags & AMQP_BASIC_HEADERS_FLAG) != 0) {
        for (int i = 0; i < props.headers.num_entries; ++i) {
            const amqp_table_entry_t& e = props.headers.entries[i];
            const std::string_view key = View(e.key);
            if (key == kKeyHeader && IsString(e.value)) {
                out.message.key = std::string(View(e.value.value.bytes));
            } else if (key == kHeadersHeader) {
                if (e.value.kind != AMQP_FIELD_KIND_ARRAY) {
                    return Status::Corruption(
                        fmt::format("message {}: header {} is not an array", id->ToString(), key));
                }
                const amqp_array_t& all = e.value.value.array;
                for (int j = 0; j < all.num_entries; ++j) {
                    const amqp_field_value_t& pair = all.entries[j];
                    if (pair.kind != AMQP_FIELD_KIND_ARRAY || pair.value.array.num_entries != 2 ||
                        !IsString(pair.value.array.entries[0]) || !IsString(pair.value.array.entries[1])) {
                        return Status::Corruption(
                            fmt::format("message {}: entry {} of header {} is not a [name, value] pair of strings",
                                        id->ToString(), j, key));
                    }
                    out.message.headers.emplace_back(std::string(View(pair.value.array.entries[0].value.bytes)),
                                                     std::string(View(pair.value.array.entries[1].value.bytes)));
                }
            } else if (key == "x-delivery-count") {
                delivery_count = AsInteger(e.value);
            } else if (key == kErrorHeader && IsString(e.value)) {
                is_dead_letter = true;
                dl.error = std::string(View(e.value.value.bytes));
            } else if (key == kAttemptsHeader) {
                dl.attempts = static_cast<int>(AsInteger(e.value).value_or(0));
            } else if (key == kDeadLetteredAtHeader) {
                dl.dead_lettered_at = AsInteger(e.value).value_or(0);
            } else if (key == kDeadLetterIdHeader && IsString(e.value)) {
                dl.id = std::string(View(e.value.value.bytes));
            }
        }
    }
    if (delivery_count.has_value() && *delivery_count >= 0) {
        out.attempt = static_cast<int>(std::min<int64_t>(*delivery_count, 1'000'000'000)) + 1;
        out.counted = true;
    } else {
        out.attempt = redelivered ? 2 : 1;
    }
    if (is_dead_letter) out.dead_letter = std::move(dl);
    return out;
}

}  // namespace keel::detail::rabbit
