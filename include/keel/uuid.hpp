#pragma once
/// keel::Uuid: a 16-byte RFC 9562 UUID, used as event ids and message ids.
///
/// Thread-safety: a Uuid is a plain value. Uuid::Generate() may be called from any thread.

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "keel/status.hpp"

namespace keel {

class Uuid {
public:
    /// The nil UUID (all zero bits). An event appended with a nil id gets a generated one.
    constexpr Uuid() noexcept = default;
    explicit constexpr Uuid(const std::array<uint8_t, 16>& bytes) noexcept : bytes_(bytes) {}

    /// A new version-7 UUID: 48 bits of Unix milliseconds then random bits, so ids created later sort later (which
    /// keeps the store's unique index compact). Never nil.
    static Uuid Generate();

    /// Parses the canonical 8-4-4-4-12 hex form (either case), optionally wrapped in braces.
    /// Returns kInvalidArgument naming the text and what is wrong with it.
    static Result<Uuid> Parse(std::string_view text);

    /// Builds a Uuid from exactly 16 bytes; kInvalidArgument for any other length.
    static Result<Uuid> FromBytes(std::string_view bytes);

    bool is_nil() const noexcept;
    const std::array<uint8_t, 16>& bytes() const noexcept { return bytes_; }
    std::string_view bytes_view() const noexcept {
        return {reinterpret_cast<const char*>(bytes_.data()), bytes_.size()};
    }
    /// Lower-case canonical form, 36 characters.
    std::string ToString() const;

    friend constexpr bool operator==(const Uuid&, const Uuid&) noexcept = default;
    friend constexpr auto operator<=>(const Uuid&, const Uuid&) noexcept = default;

private:
    std::array<uint8_t, 16> bytes_{};
};

}  // namespace keel

template <>
struct std::hash<keel::Uuid> {
    size_t operator()(const keel::Uuid& u) const noexcept {
        return std::hash<std::string_view>{}(u.bytes_view());
    }
};
