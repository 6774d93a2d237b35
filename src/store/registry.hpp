#pragma once
// Backends are found by URI scheme. Each backend folder provides an Open function; registry.cpp lists them.

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "store/backend.hpp"

namespace keel::detail {

Result<std::unique_ptr<StoreBackend>> OpenBackend(std::string_view uri, const StoreOptions& options);
std::vector<std::string> BackendSchemes();

// A parsed `scheme:rest?key=value&…` URI. `rest` keeps everything between the scheme's ':' and the '?'.
struct ParsedUri {
    std::string scheme;
    std::string rest;
    std::vector<std::pair<std::string, std::string>> query;
    const std::string* Find(std::string_view key) const;
};
Result<ParsedUri> ParseUri(std::string_view uri);

}  // namespace keel::detail
