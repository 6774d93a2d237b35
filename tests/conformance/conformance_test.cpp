// Instantiates the event-store conformance suite for the backends built into this configuration.

#include <algorithm>
#include <string>

#include <gtest/gtest.h>

#include "keel/event_store.hpp"

#include "conformance/event_store_conformance.hpp"

namespace {

keel::testing::BackendFactory MemoryBackendFactory() {
    return keel::testing::MakeUriBackendFactory("memory", /*durable=*/false,
                                                [](const std::string&) { return std::string("memory:"); });
}

#ifdef KEEL_TEST_SQLITE
keel::testing::BackendFactory SqliteBackendFactory() {
    return keel::testing::MakeUriBackendFactory("sqlite", /*durable=*/true, [](const std::string& dir) {
        return "sqlite://" + dir + "/store.db";  // dir is absolute: sqlite:///tmp/…/store.db
    });
}
#endif

TEST(OpenStoreTest, UnknownSchemeIsInvalidArgumentListingKnownSchemes) {
    auto store = keel::OpenStore("nosuchdb://somewhere");
    ASSERT_EQ(store.status().code(), keel::StatusCode::kInvalidArgument) << store.status().ToString();
    EXPECT_NE(store.status().message().find("memory"), std::string::npos) << store.status().ToString();
#ifdef KEEL_TEST_SQLITE
    EXPECT_NE(store.status().message().find("sqlite"), std::string::npos) << store.status().ToString();
#endif
}

TEST(OpenStoreTest, StoreSchemesListsTheBuiltBackends) {
    auto schemes = keel::StoreSchemes();
    EXPECT_NE(std::find(schemes.begin(), schemes.end(), "memory"), schemes.end());
#ifdef KEEL_TEST_SQLITE
    EXPECT_NE(std::find(schemes.begin(), schemes.end(), "sqlite"), schemes.end());
#endif
}

}  // namespace

KEEL_INSTANTIATE_EVENT_STORE_CONFORMANCE(Memory, MemoryBackendFactory());
#ifdef KEEL_TEST_SQLITE
KEEL_INSTANTIATE_EVENT_STORE_CONFORMANCE(Sqlite, SqliteBackendFactory());
KEEL_INSTANTIATE_DURABLE_EVENT_STORE_CONFORMANCE(Sqlite, SqliteBackendFactory());
#endif
