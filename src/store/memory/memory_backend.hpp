#pragma once
// `memory:` — the whole store in process memory, for unit tests and examples. Same semantics as every backend;
// nothing survives the object.

#include <memory>

#include "store/backend.hpp"
#include "store/registry.hpp"

namespace keel::detail {

Result<std::unique_ptr<StoreBackend>> OpenMemoryBackend(const ParsedUri& uri, const StoreOptions& options);

}  // namespace keel::detail
