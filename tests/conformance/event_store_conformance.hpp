#pragma once
// The event-store conformance suite: the behaviour every keel::EventStore backend must show, written once as
// value-parameterized GoogleTest suites over a BackendFactory.
//
// A backend joins with one line per suite in its own test file, e.g.
//
//     KEEL_INSTANTIATE_EVENT_STORE_CONFORMANCE(Postgres, PostgresBackendFactory());
//     KEEL_INSTANTIATE_DURABLE_EVENT_STORE_CONFORMANCE(Postgres, PostgresBackendFactory());
//
// and links the `keel_conformance` object library. EventStoreConformance holds the tests every backend must pass;
// DurableEventStoreConformance holds the close-and-reopen tests and is instantiated only for durable backends.

#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <string_view>

#include <gtest/gtest.h>

#include "keel/event_store.hpp"
#include "keel/status.hpp"

#include "conformance/test_support.hpp"

namespace keel::testing {

// How the suite reaches one backend. Each test calls `setup` first (with a unique test name), then `open` /
// `open_with` any number of times, then `teardown`.
struct BackendFactory {
    // Used in test names: letters, digits and '_' only ("memory", "sqlite").
    std::string name;
    // True when `open` reopens the same store with everything written before (sqlite:, postgresql:, …).
    // False for memory:, where each `open` returns a new empty store.
    bool durable = false;
    // Opens the current test's store. Durable backends open the SAME store again on every call.
    std::function<Result<std::unique_ptr<EventStore>>()> open;
    // As `open`, with options (e.g. a small max_event_size).
    std::function<Result<std::unique_ptr<EventStore>>(const StoreOptions&)> open_with;
    // Optional: prepares a fresh, empty store for one test (e.g. a new temporary directory or database schema).
    std::function<void(std::string_view test_name)> setup;
    // Optional: removes what `setup` made.
    std::function<void()> teardown;
};

inline void PrintTo(const BackendFactory& factory, std::ostream* os) {
    *os << factory.name;
}

// Test-name suffix for INSTANTIATE_TEST_SUITE_P.
struct BackendFactoryName {
    std::string operator()(const ::testing::TestParamInfo<BackendFactory>& info) const { return info.param.name; }
};

// A backend for which `open` builds the store from a URI (the URI may depend on the per-test directory, which is
// passed in). `make_uri(dir)` is called on every open; `dir` is a fresh temporary directory for each test.
BackendFactory MakeUriBackendFactory(std::string name, bool durable,
                                     std::function<std::string(const std::string& dir)> make_uri);

// Fixture shared by both suites: opens the store of the test in SetUp and offers reopen helpers.
class EventStoreFixture : public ::testing::TestWithParam<BackendFactory> {
protected:
    void SetUp() override;
    void TearDown() override;

    // The store opened in SetUp (or by the last Reopen()).
    EventStore& store() { return *store_; }
    // Opens the test's store again as a second object (throws keel::StatusError on failure).
    std::unique_ptr<EventStore> OpenAnother();
    std::unique_ptr<EventStore> OpenWith(const StoreOptions& options);
    // Closes store() and opens it again.
    void Reopen();
    void CloseStore() { store_.reset(); }

    std::unique_ptr<EventStore> store_;
};

class EventStoreConformance : public EventStoreFixture {};
class DurableEventStoreConformance : public EventStoreFixture {};

}  // namespace keel::testing

// Use at namespace scope (outside any namespace), once per backend.
#define KEEL_INSTANTIATE_EVENT_STORE_CONFORMANCE(prefix, factory)                                              \
    namespace keel::testing {                                                                                  \
    INSTANTIATE_TEST_SUITE_P(prefix, EventStoreConformance, ::testing::Values(factory), BackendFactoryName()); \
    }                                                                                                          \
    static_assert(true, "")

// Use at namespace scope, once per durable backend (one whose `open` reopens the same store).
#define KEEL_INSTANTIATE_DURABLE_EVENT_STORE_CONFORMANCE(prefix, factory)                                             \
    namespace keel::testing {                                                                                         \
    INSTANTIATE_TEST_SUITE_P(prefix, DurableEventStoreConformance, ::testing::Values(factory), BackendFactoryName()); \
    }                                                                                                                 \
    static_assert(true, "")
