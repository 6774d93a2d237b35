// keeld's SQLite storage: the Storage conformance suite (storage_conformance.hpp), opened through OpenStorage.

#include <unistd.h>

#include "coordinator/storage_conformance.hpp"

namespace keel::coordinator::testing {
namespace {

INSTANTIATE_TEST_SUITE_P(Sqlite, StorageConformance,
                         ::testing::Values(SqliteFileBackend([](const std::string& uri) {
                             bool exclusive = false;
                             return OpenStorage(uri, &exclusive);
                         })),
                         StorageBackendName);

TEST(SqliteStorage, OneKeeldPerFile) {
    const std::string path = ::testing::TempDir() + "keel-coord-lock-" + std::to_string(::getpid()) + ".db";
    bool exclusive = false;
    auto first = OpenStorage("sqlite://" + path, &exclusive);
    ASSERT_TRUE(first.ok()) << first.status().ToString();
    EXPECT_TRUE(exclusive);
    auto second = OpenStorage("sqlite://" + path, &exclusive);
    EXPECT_EQ(second.status().code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(second.status().message().find(".keeld-lock"), std::string::npos) << second.status().ToString();
    first->reset();
    EXPECT_TRUE(OpenStorage("sqlite://" + path, &exclusive).ok());
    EXPECT_EQ(OpenStorage("mongodb://x", &exclusive).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace keel::coordinator::testing
