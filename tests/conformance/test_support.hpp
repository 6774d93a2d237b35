#pragma once
// Small helpers shared by the conformance suite, the SQLite tests and the crash test: a self-removing temporary
// directory, gtest printers for keel's value types, and a case-insensitive substring matcher for messages.

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>

#include <gtest/gtest.h>
#include <stdlib.h>

#include "keel/event_store.hpp"
#include "keel/status.hpp"
#include "keel/uuid.hpp"

namespace keel {

// gtest looks these up by ADL, so failures print readable values instead of byte dumps.
inline void PrintTo(const Uuid& id, std::ostream* os) {
    *os << id.ToString();
}
inline void PrintTo(StatusCode code, std::ostream* os) {
    *os << StatusCodeName(code);
}
inline void PrintTo(const Status& status, std::ostream* os) {
    *os << status.ToString();
}
inline void PrintTo(StreamState state, std::ostream* os) {
    switch (state) {
        case StreamState::kActive: *os << "active"; return;
        case StreamState::kSoftDeleted: *os << "soft_deleted"; return;
        case StreamState::kTombstoned: *os << "tombstoned"; return;
    }
    *os << "state(" << static_cast<int>(state) << ")";
}

}  // namespace keel

namespace keel::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
public:
    explicit TempDir(std::string_view tag = "keel-test") {
        std::string prefix;
        for (char c : tag) prefix += std::isalnum(static_cast<unsigned char>(c)) != 0 ? c : '_';
        if (prefix.size() > 80) prefix.resize(80);
        std::string pattern = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
        if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + pattern);
        path_ = pattern;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    const std::filesystem::path& path() const noexcept { return path_; }
    std::filesystem::path operator/(std::string_view name) const { return path_ / name; }

private:
    std::filesystem::path path_;
};

inline std::string ToLower(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

// True when `haystack` contains `needle`, ignoring ASCII case.
inline bool ContainsNoCase(std::string_view haystack, std::string_view needle) {
    return ToLower(haystack).find(ToLower(needle)) != std::string::npos;
}

inline std::string ReadFileBytes(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

inline void WriteFileBytes(const std::filesystem::path& path, std::string_view bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace keel::testing
