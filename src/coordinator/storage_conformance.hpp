#pragma once
// The contract of coordinator::Storage (storage.hpp) as one GoogleTest suite, instantiated once per backend. A
// backend's test file links storage_conformance.cpp and instantiates the suite with a StorageBackend:
//
//   INSTANTIATE_TEST_SUITE_P(Sqlite, StorageConformance,
//                            ::testing::Values(SqliteFileBackend([](const std::string& uri) {
//                                bool exclusive = false;
//                                return OpenStorage(uri, &exclusive);
//                            })),
//                            StorageBackendName);

#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include <gtest/gtest.h>

#include "coordinator/storage.hpp"

namespace keel::coordinator::testing {

/// A backend under test.
struct StorageBackend {
    /// Names the instantiation's tests ("sqlite", "postgres"): letters, digits and '_' only.
    std::string name;
    /// A fresh, empty location for one test (a URI, say). Called once per test.
    std::function<std::string()> make_location;
    /// Opens (creating when missing) the storage at `location`; may be called again with the same location after
    /// the previous Storage was destroyed, and — when `shared` — while another is open.
    std::function<Result<std::unique_ptr<Storage>>(const std::string& location)> open;
    /// Removes what make_location made (called after the test; may be empty).
    std::function<void(const std::string& location)> remove_location;
    /// True when several Storage objects (several keeld processes) may use one location at once.
    bool shared = false;
};

/// Prints the backend's name in GoogleTest's messages.
inline void PrintTo(const StorageBackend& backend, std::ostream* os) {
    *os << backend.name;
}

/// For INSTANTIATE_TEST_SUITE_P's name generator.
std::string StorageBackendName(const ::testing::TestParamInfo<StorageBackend>& info);

/// A SQLite backend: each test gets `sqlite://<temp dir>/keel-coord-<pid>-<n>.db`, removed afterwards (with its
/// -wal, -shm and .keeld-lock files). `open` is OpenStorage or OpenSqliteStorage wrapped to take that URI.
StorageBackend SqliteFileBackend(std::function<Result<std::unique_ptr<Storage>>(const std::string& uri)> open);

class StorageConformance : public ::testing::TestWithParam<StorageBackend> {
protected:
    void SetUp() override;
    void TearDown() override;

    // Opens another Storage on this test's location (a second keeld process, or a restart after store_.reset()).
    std::unique_ptr<Storage> OpenAgain();

    std::string location_;
    std::unique_ptr<Storage> store_;
};

}  // namespace keel::coordinator::testing
