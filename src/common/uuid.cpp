#include "keel/uuid.hpp"

#include <chrono>
#include <random>

#include <unistd.h>

namespace keel {
namespace {

// A per-thread generator seeded from the OS. Reseeded after fork(): a child must not repeat its parent's ids.
std::mt19937_64& ThreadRng() {
    struct State {
        pid_t pid = -1;
        std::mt19937_64 rng;
    };
    thread_local State state;
    const pid_t pid = ::getpid();
    if (state.pid != pid) {
        std::random_device rd;
        std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
        state.rng.seed(seq);
        state.pid = pid;
    }
    return state.rng;
}

int HexValue(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

}  // namespace

Uuid Uuid::Generate() {
    // RFC 9562 version 7: unix_ts_ms (48) | ver (4) | rand_a (12) | var (2) | rand_b (62).
    const uint64_t ms = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count());
    auto& rng = ThreadRng();
    const uint64_t r1 = rng();
    const uint64_t r2 = rng();
    std::array<uint8_t, 16> b{};
    for (int i = 0; i < 6; ++i) b[i] = static_cast<uint8_t>(ms >> (40 - 8 * i));
    for (int i = 0; i < 8; ++i) b[6 + i] = static_cast<uint8_t>(r1 >> (8 * i));
    b[14] = static_cast<uint8_t>(r2);
    b[15] = static_cast<uint8_t>(r2 >> 8);
    b[6] = static_cast<uint8_t>(0x70 | (b[6] & 0x0F));
    b[8] = static_cast<uint8_t>(0x80 | (b[8] & 0x3F));
    return Uuid(b);
}

Result<Uuid> Uuid::Parse(std::string_view text) {
    std::string_view s = text;
    if (s.size() == 38 && s.front() == '{' && s.back() == '}') s = s.substr(1, 36);
    auto bad = [&](std::string_view why) {
        return Status::InvalidArgument("malformed UUID '" + std::string(text.substr(0, 64)) + "': " + std::string(why));
    };
    if (s.size() != 36) return bad("expected 36 characters in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx");
    std::array<uint8_t, 16> b{};
    size_t bi = 0;
    for (size_t i = 0; i < s.size();) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') return bad("expected '-' at offset " + std::to_string(i));
            ++i;
            continue;
        }
        const int hi = HexValue(s[i]);
        const int lo = HexValue(s[i + 1]);
        if (hi < 0 || lo < 0) return bad("non-hex character at offset " + std::to_string(hi < 0 ? i : i + 1));
        b[bi++] = static_cast<uint8_t>(hi << 4 | lo);
        i += 2;
    }
    return Uuid(b);
}

Result<Uuid> Uuid::FromBytes(std::string_view bytes) {
    if (bytes.size() != 16) {
        return Status::InvalidArgument("a UUID has 16 bytes, got " + std::to_string(bytes.size()));
    }
    std::array<uint8_t, 16> b{};
    for (size_t i = 0; i < 16; ++i) b[i] = static_cast<uint8_t>(bytes[i]);
    return Uuid(b);
}

bool Uuid::is_nil() const noexcept {
    for (uint8_t x : bytes_) {
        if (x != 0) return false;
    }
    return true;
}

std::string Uuid::ToString() const {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    out.reserve(36);
    for (size_t i = 0; i < 16; ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
        out.push_back(kHex[bytes_[i] >> 4]);
        out.push_back(kHex[bytes_[i] & 0x0F]);
    }
    return out;
}

}  // namespace keel
