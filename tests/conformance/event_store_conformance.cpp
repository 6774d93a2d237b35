// The event-store conformance suite. See event_store_conformance.hpp for how a backend instantiates it.
//
// Every test opens a fresh store (BackendFactory::setup + open). Nothing here depends on global positions being
// gap-free (PostgreSQL sequences leave gaps) or on the wall-clock resolution beyond microseconds.

#include "conformance/event_store_conformance.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "keel/event.hpp"
#include "keel/event_store.hpp"
#include "keel/status.hpp"
#include "keel/subscription.hpp"
#include "keel/uuid.hpp"

namespace keel::testing {

// ---------------------------------------------------------------------------------------------------------------
// Factory and fixture

BackendFactory MakeUriBackendFactory(std::string name, bool durable,
                                     std::function<std::string(const std::string& dir)> make_uri) {
    struct State {
        std::unique_ptr<TempDir> dir;
    };
    auto state = std::make_shared<State>();
    BackendFactory factory;
    factory.name = std::move(name);
    factory.durable = durable;
    factory.setup = [state](std::string_view test_name) {
        state->dir = std::make_unique<TempDir>("keel-" + std::string(test_name));
    };
    factory.teardown = [state] { state->dir.reset(); };
    factory.open_with =
        [state, make_uri = std::move(make_uri)](const StoreOptions& options) -> Result<std::unique_ptr<EventStore>> {
        if (!state->dir) state->dir = std::make_unique<TempDir>("keel-conformance");
        return OpenStore(make_uri(state->dir->path().string()), options);
    };
    factory.open = [open_with = factory.open_with] { return open_with(StoreOptions{}); };
    return factory;
}

void EventStoreFixture::SetUp() {
    const BackendFactory& factory = GetParam();
    if (factory.setup) {
        const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        factory.setup(std::string(info->test_suite_name()) + "." + info->name());
    }
    auto opened = factory.open();
    ASSERT_TRUE(opened.ok()) << "opening the " << factory.name << " store: " << opened.status().ToString();
    store_ = std::move(*opened);
}

void EventStoreFixture::TearDown() {
    store_.reset();
    if (GetParam().teardown) GetParam().teardown();
}

std::unique_ptr<EventStore> EventStoreFixture::OpenAnother() {
    auto opened = GetParam().open();
    if (!opened.ok()) throw StatusError(opened.status().WithContext("reopening the store"));
    return std::move(*opened);
}

std::unique_ptr<EventStore> EventStoreFixture::OpenWith(const StoreOptions& options) {
    auto opened = GetParam().open_with(options);
    if (!opened.ok()) throw StatusError(opened.status().WithContext("opening the store with options"));
    return std::move(*opened);
}

void EventStoreFixture::Reopen() {
    store_.reset();
    store_ = OpenAnother();
}

// Backends that are not durable (memory:) instantiate only EventStoreConformance.
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(DurableEventStoreConformance);

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Generous: the suite runs under sanitizers on shared machines. Waiting uses condition variables or polling, so a
// passing test never waits this long.
constexpr std::chrono::milliseconds kDeadline = 20s;

// ---------------------------------------------------------------------------------------------------------------
// Helpers

int64_t WallMicros() {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

::testing::AssertionResult IsCode(const Status& status, StatusCode code) {
    if (status.code() == code) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "expected " << StatusCodeName(code) << ", got " << status.ToString();
}
template <class T>
::testing::AssertionResult IsCode(const Result<T>& result, StatusCode code) {
    return IsCode(result.status(), code);
}
template <class T>
::testing::AssertionResult IsOk(const T& status_or_result) {
    return IsCode(status_or_result, StatusCode::kOk);
}

// A kInvalidArgument whose message mentions `word` (the field it is about), case-insensitively.
template <class T>
::testing::AssertionResult IsInvalidNaming(const T& status_or_result, std::string_view word) {
    Status status;
    if constexpr (std::is_same_v<T, Status>) {
        status = status_or_result;
    } else {
        status = status_or_result.status();
    }
    if (status.code() != StatusCode::kInvalidArgument) {
        return ::testing::AssertionFailure() << "expected invalid_argument, got " << status.ToString();
    }
    if (!ContainsNoCase(status.message(), word)) {
        return ::testing::AssertionFailure()
               << "the message \"" << status.message() << "\" does not name \"" << word << "\"";
    }
    return ::testing::AssertionSuccess();
}

EventData Ev(std::string type, std::string data = "{}", std::string metadata = "") {
    EventData e;
    e.event_id = Uuid::Generate();
    e.type = std::move(type);
    e.data = std::move(data);
    e.metadata = std::move(metadata);
    return e;
}

// `n` events of `type` with data {"n": i}.
std::vector<EventData> Events(size_t n, std::string_view type = "Tested") {
    std::vector<EventData> out;
    for (size_t i = 0; i < n; ++i) out.push_back(Ev(std::string(type), nlohmann::json{{"n", i}}.dump()));
    return out;
}

AppendResult MustAppend(EventStore& store, std::string_view stream, ExpectedVersion expected,
                        const std::vector<EventData>& events) {
    auto result = store.Append(stream, expected, std::span<const EventData>(events));
    if (!result.ok()) throw StatusError(result.status().WithContext("append to " + std::string(stream)));
    return *result;
}

std::vector<RecordedEvent> MustRead(EventStore& store, std::string_view stream, ReadStreamOptions options = {}) {
    auto result = store.ReadStream(stream, options);
    if (!result.ok()) throw StatusError(result.status().WithContext("read " + std::string(stream)));
    return std::move(*result);
}

ReadStreamOptions Backward(int64_t from, size_t limit) {
    ReadStreamOptions o;
    o.direction = ReadDirection::kBackward;
    o.from_version = from;
    o.limit = limit;
    return o;
}

ReadStreamOptions Forward(int64_t from, size_t limit) {
    ReadStreamOptions o;
    o.direction = ReadDirection::kForward;
    o.from_version = from;
    o.limit = limit;
    return o;
}

// Every event of $all matching `options` (filters, as-of), paging with `page` events per read.
std::vector<RecordedEvent> ReadAllEvents(EventStore& store, ReadAllOptions options = {}, size_t page = 100) {
    std::vector<RecordedEvent> out;
    options.limit = page;
    for (int reads = 0;; ++reads) {
        if (reads > 100000) throw std::runtime_error("ReadAll paging does not terminate");
        auto slice = store.ReadAll(options);
        if (!slice.ok()) throw StatusError(slice.status().WithContext("read $all"));
        for (auto& e : slice->events) out.push_back(std::move(e));
        if (slice->end_of_all) break;
        if (slice->next_position <= options.from_position) throw std::runtime_error("ReadAll paging does not advance");
        options.from_position = slice->next_position;
    }
    return out;
}

int64_t Head(EventStore& store) {
    return store.HeadPosition().value();
}

std::vector<int64_t> Versions(const std::vector<RecordedEvent>& events) {
    std::vector<int64_t> out;
    for (const auto& e : events) out.push_back(e.stream_version);
    return out;
}

std::vector<int64_t> Positions(const std::vector<RecordedEvent>& events) {
    std::vector<int64_t> out;
    for (const auto& e : events) out.push_back(e.global_position);
    return out;
}

std::vector<Uuid> Ids(const std::vector<RecordedEvent>& events) {
    std::vector<Uuid> out;
    for (const auto& e : events) out.push_back(e.event_id);
    return out;
}

std::vector<Uuid> Ids(const std::vector<EventData>& events) {
    std::vector<Uuid> out;
    for (const auto& e : events) out.push_back(e.event_id);
    return out;
}

std::vector<int64_t> Range(int64_t first, int64_t last) {  // inclusive, either direction
    std::vector<int64_t> out;
    if (first <= last) {
        for (int64_t v = first; v <= last; ++v) out.push_back(v);
    } else {
        for (int64_t v = first; v >= last; --v) out.push_back(v);
    }
    return out;
}

bool StrictlyIncreasing(const std::vector<int64_t>& values) {
    return std::adjacent_find(values.begin(), values.end(), [](int64_t a, int64_t b) { return a >= b; }) ==
           values.end();
}

nlohmann::json ParseJson(const std::string& text) {
    return text.empty() ? nlohmann::json() : nlohmann::json::parse(text);
}

void ExpectSameEnvelope(const RecordedEvent& a, const RecordedEvent& b) {
    EXPECT_EQ(a.global_position, b.global_position);
    EXPECT_EQ(a.event_id, b.event_id);
    EXPECT_EQ(a.stream_id, b.stream_id);
    EXPECT_EQ(a.stream_version, b.stream_version);
    EXPECT_EQ(a.type, b.type);
    EXPECT_EQ(a.data, b.data);
    EXPECT_EQ(ParseJson(a.metadata), ParseJson(b.metadata));
    EXPECT_EQ(a.recorded_at, b.recorded_at);
}

template <class Pred>
bool WaitUntil(Pred pred, std::chrono::milliseconds timeout = kDeadline) {
    const auto deadline = Clock::now() + timeout;
    while (!pred()) {
        if (Clock::now() > deadline) return false;
        std::this_thread::sleep_for(2ms);
    }
    return true;
}

// Collects what a subscription delivers; waits on a condition variable.
class Collector {
public:
    std::function<Status(const RecordedEvent&)> Handler() {
        return [this](const RecordedEvent& e) {
            Add(e);
            return Status::Ok();
        };
    }
    void Add(const RecordedEvent& e) {
        {
            std::lock_guard lock(mu_);
            events_.push_back(e);
        }
        cv_.notify_all();
    }
    // True when at least `n` events arrived before the deadline.
    bool WaitFor(size_t n, std::chrono::milliseconds timeout = kDeadline) {
        std::unique_lock lock(mu_);
        return cv_.wait_for(lock, timeout, [&] { return events_.size() >= n; });
    }
    std::vector<RecordedEvent> events() const {
        std::lock_guard lock(mu_);
        return events_;
    }
    size_t size() const {
        std::lock_guard lock(mu_);
        return events_.size();
    }

private:
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::vector<RecordedEvent> events_;
};

std::unique_ptr<Subscription> MustSubscribe(EventStore& store, SubscriptionOptions options,
                                            std::function<Status(const RecordedEvent&)> handler) {
    auto sub = store.Subscribe(std::move(options), std::move(handler));
    if (!sub.ok()) throw StatusError(sub.status().WithContext("subscribe"));
    return std::move(*sub);
}

SubscriptionOptions FastOptions() {
    SubscriptionOptions o;
    o.batch_size = 16;
    o.poll_interval = 20ms;
    o.checkpoint_interval = 0ms;
    o.retry_backoff = 1ms;
    return o;
}

// Makes `appends` appends of `per_append` events each, round-robin over the streams `prefix-0` … `prefix-<streams-1>`;
// returns the event ids in append order.
std::vector<Uuid> AppendSpread(EventStore& store, std::string_view prefix, int appends, int per_append, int streams) {
    std::vector<Uuid> ids;
    for (int i = 0; i < appends; ++i) {
        auto events = Events(static_cast<size_t>(per_append));
        MustAppend(store, std::string(prefix) + "-" + std::to_string(i % streams), ExpectedVersion::Any(), events);
        for (const auto& e : events) ids.push_back(e.event_id);
    }
    return ids;
}

// ---------------------------------------------------------------------------------------------------------------
// Append and expected versions

TEST_P(EventStoreConformance, AppendWithAnyCreatesAndExtendsStream) {
    auto first = MustAppend(store(), "Any-1", ExpectedVersion::Any(), Events(2));
    EXPECT_EQ(first.next_expected_version, 1);
    EXPECT_FALSE(first.already_present);
    EXPECT_GE(first.first_position, 1);
    EXPECT_LT(first.first_position, first.last_position);

    auto second = MustAppend(store(), "Any-1", ExpectedVersion::Any(), Events(1));
    EXPECT_EQ(second.next_expected_version, 2);
    EXPECT_FALSE(second.already_present);
    EXPECT_GT(second.first_position, first.last_position);
    EXPECT_EQ(second.first_position, second.last_position);

    auto events = MustRead(store(), "Any-1");
    EXPECT_EQ(Versions(events), Range(0, 2));
    EXPECT_EQ(Head(store()), second.last_position);
}

TEST_P(EventStoreConformance, AppendWithNoStreamSucceedsOnlyOnMissingStream) {
    auto created = MustAppend(store(), "NoStream-1", ExpectedVersion::NoStream(), Events(2));
    EXPECT_EQ(created.next_expected_version, 1);

    auto conflict = store().Append("NoStream-1", ExpectedVersion::NoStream(), Events(1));
    ASSERT_TRUE(IsCode(conflict, StatusCode::kWrongExpectedVersion));
    EXPECT_EQ(conflict.status().actual_version(), std::optional<int64_t>(1));

    // Exact(-1) means NoStream.
    auto conflict_exact = store().Append("NoStream-1", ExpectedVersion::Exact(-1), Events(1));
    ASSERT_TRUE(IsCode(conflict_exact, StatusCode::kWrongExpectedVersion));
    EXPECT_EQ(conflict_exact.status().actual_version(), std::optional<int64_t>(1));

    auto created_exact = MustAppend(store(), "NoStream-2", ExpectedVersion::Exact(-1), Events(1));
    EXPECT_EQ(created_exact.next_expected_version, 0);
    EXPECT_EQ(Versions(MustRead(store(), "NoStream-1")), Range(0, 1));
}

TEST_P(EventStoreConformance, AppendWithStreamExistsFailsOnMissingStream) {
    auto conflict = store().Append("Exists-1", ExpectedVersion::StreamExists(), Events(1));
    ASSERT_TRUE(IsCode(conflict, StatusCode::kWrongExpectedVersion));
    EXPECT_EQ(conflict.status().actual_version(), std::optional<int64_t>(-1));
    EXPECT_TRUE(IsCode(store().GetStream("Exists-1"), StatusCode::kNotFound));
    EXPECT_EQ(Head(store()), 0);

    MustAppend(store(), "Exists-1", ExpectedVersion::NoStream(), Events(1));
    auto appended = MustAppend(store(), "Exists-1", ExpectedVersion::StreamExists(), Events(2));
    EXPECT_EQ(appended.next_expected_version, 2);
    EXPECT_EQ(Versions(MustRead(store(), "Exists-1")), Range(0, 2));
}

TEST_P(EventStoreConformance, AppendWithExactVersionSucceedsAndConflicts) {
    auto missing = store().Append("Exact-1", ExpectedVersion::Exact(0), Events(1));
    ASSERT_TRUE(IsCode(missing, StatusCode::kWrongExpectedVersion));
    EXPECT_EQ(missing.status().actual_version(), std::optional<int64_t>(-1));

    auto r0 = MustAppend(store(), "Exact-1", ExpectedVersion::NoStream(), Events(2));
    EXPECT_EQ(r0.next_expected_version, 1);
    auto r1 = MustAppend(store(), "Exact-1", ExpectedVersion::Exact(1), Events(1));
    EXPECT_EQ(r1.next_expected_version, 2);

    for (int64_t wrong : {0, 1, 3, 5}) {
        auto conflict = store().Append("Exact-1", ExpectedVersion::Exact(wrong), Events(1));
        ASSERT_TRUE(IsCode(conflict, StatusCode::kWrongExpectedVersion)) << "Exact(" << wrong << ")";
        EXPECT_EQ(conflict.status().actual_version(), std::optional<int64_t>(2)) << "Exact(" << wrong << ")";
    }
    auto r2 = MustAppend(store(), "Exact-1", ExpectedVersion::Exact(2), Events(1));
    EXPECT_EQ(r2.next_expected_version, 3);
    EXPECT_EQ(Versions(MustRead(store(), "Exact-1")), Range(0, 3));
}

TEST_P(EventStoreConformance, FailedAppendWritesNothing) {
    MustAppend(store(), "Fail-1", ExpectedVersion::Any(), Events(3));
    MustAppend(store(), "Fail-2", ExpectedVersion::Any(), Events(1));
    const int64_t head = Head(store());
    const auto all_before = ReadAllEvents(store());

    auto bad_type = Events(3);
    bad_type[2].type.clear();
    const std::vector<std::pair<ExpectedVersion, std::vector<EventData>>> failing = {
        {ExpectedVersion::NoStream(), Events(2)},
        {ExpectedVersion::Exact(1), Events(2)},
        {ExpectedVersion::Exact(7), Events(1)},
        {ExpectedVersion::Any(), bad_type},
    };
    for (const auto& [expected, events] : failing) {
        auto r = store().Append("Fail-1", expected, events);
        EXPECT_FALSE(r.ok()) << "expected " << expected.ToString();
    }
    auto missing = store().Append("Fail-3", ExpectedVersion::StreamExists(), Events(2));
    EXPECT_TRUE(IsCode(missing, StatusCode::kWrongExpectedVersion));

    EXPECT_EQ(Head(store()), head);
    EXPECT_EQ(Ids(ReadAllEvents(store())), Ids(all_before));
    EXPECT_EQ(Versions(MustRead(store(), "Fail-1")), Range(0, 2));
    EXPECT_EQ(store().GetStream("Fail-1").value().version, 2);
    EXPECT_TRUE(IsCode(store().GetStream("Fail-3"), StatusCode::kNotFound));

    // Failed appends consumed no version: the next one continues at 3.
    auto next = MustAppend(store(), "Fail-1", ExpectedVersion::Exact(2), Events(1));
    EXPECT_EQ(next.next_expected_version, 3);
    EXPECT_GT(next.first_position, head);
}

TEST_P(EventStoreConformance, MultiEventAppendIsAtomicAndContiguous) {
    MustAppend(store(), "Multi-1", ExpectedVersion::Any(), Events(2));
    MustAppend(store(), "Other-1", ExpectedVersion::Any(), Events(1));
    auto batch = Events(5);
    auto r = MustAppend(store(), "Multi-1", ExpectedVersion::Exact(1), batch);
    MustAppend(store(), "Other-1", ExpectedVersion::Any(), Events(1));
    EXPECT_EQ(r.next_expected_version, 6);

    auto events = MustRead(store(), "Multi-1");
    ASSERT_EQ(events.size(), 7u);
    EXPECT_EQ(Versions(events), Range(0, 6));
    EXPECT_TRUE(StrictlyIncreasing(Positions(events)));
    std::vector<RecordedEvent> appended(events.begin() + 2, events.end());
    EXPECT_EQ(Ids(appended), Ids(batch));
    EXPECT_EQ(appended.front().global_position, r.first_position);
    EXPECT_EQ(appended.back().global_position, r.last_position);

    // Nothing of another stream sits between the events of one append in $all.
    ReadAllOptions range;
    range.from_position = r.first_position;
    range.as_of_position = r.last_position;
    EXPECT_EQ(Ids(ReadAllEvents(store(), range)), Ids(batch));

    // One bad event fails the whole append.
    const int64_t head = Head(store());
    auto mixed = Events(4);
    mixed[3].metadata = "[1, 2]";
    EXPECT_TRUE(IsCode(store().Append("Multi-1", ExpectedVersion::Exact(6), mixed), StatusCode::kInvalidArgument));
    EXPECT_EQ(Head(store()), head);
    EXPECT_EQ(MustRead(store(), "Multi-1").size(), 7u);
}

// ---------------------------------------------------------------------------------------------------------------
// Idempotent append

TEST_P(EventStoreConformance, IdempotentResendWithNoStream) {
    auto events = Events(3);
    auto first = MustAppend(store(), "Idem-1", ExpectedVersion::NoStream(), events);
    const int64_t head = Head(store());

    auto again = MustAppend(store(), "Idem-1", ExpectedVersion::NoStream(), events);
    EXPECT_TRUE(again.already_present);
    EXPECT_EQ(again.first_position, first.first_position);
    EXPECT_EQ(again.last_position, first.last_position);
    EXPECT_EQ(again.next_expected_version, first.next_expected_version);
    EXPECT_EQ(Head(store()), head);
    EXPECT_EQ(Ids(MustRead(store(), "Idem-1")), Ids(events));
}

TEST_P(EventStoreConformance, IdempotentResendWithExact) {
    MustAppend(store(), "Idem-2", ExpectedVersion::Any(), Events(2));
    auto events = Events(2);
    auto first = MustAppend(store(), "Idem-2", ExpectedVersion::Exact(1), events);
    EXPECT_FALSE(first.already_present);
    const int64_t head = Head(store());

    auto again = MustAppend(store(), "Idem-2", ExpectedVersion::Exact(1), events);
    EXPECT_TRUE(again.already_present);
    EXPECT_EQ(again.first_position, first.first_position);
    EXPECT_EQ(again.last_position, first.last_position);
    EXPECT_EQ(again.next_expected_version, 3);
    EXPECT_EQ(Head(store()), head);
    EXPECT_EQ(MustRead(store(), "Idem-2").size(), 4u);
}

TEST_P(EventStoreConformance, IdempotentResendWithAny) {
    MustAppend(store(), "Idem-3", ExpectedVersion::Any(), Events(1));
    auto events = Events(2);
    auto first = MustAppend(store(), "Idem-3", ExpectedVersion::Any(), events);
    const int64_t head = Head(store());

    auto again = MustAppend(store(), "Idem-3", ExpectedVersion::Any(), events);
    EXPECT_TRUE(again.already_present);
    EXPECT_EQ(again.first_position, first.first_position);
    EXPECT_EQ(again.last_position, first.last_position);
    EXPECT_EQ(again.next_expected_version, 2);
    EXPECT_EQ(Head(store()), head);
    EXPECT_EQ(MustRead(store(), "Idem-3").size(), 3u);
}

TEST_P(EventStoreConformance, IdempotentResendAfterStreamMovedOn) {
    auto a = Events(2);
    auto b = Events(2);
    auto c = Events(1);
    auto ra = MustAppend(store(), "Idem-4", ExpectedVersion::NoStream(), a);
    auto rb = MustAppend(store(), "Idem-4", ExpectedVersion::Exact(1), b);
    auto rc = MustAppend(store(), "Idem-4", ExpectedVersion::Any(), c);
    MustAppend(store(), "Idem-4", ExpectedVersion::Exact(4), Events(3));
    MustAppend(store(), "Idem-5", ExpectedVersion::Any(), Events(2));
    const int64_t head = Head(store());

    auto again_a = MustAppend(store(), "Idem-4", ExpectedVersion::NoStream(), a);
    auto again_b = MustAppend(store(), "Idem-4", ExpectedVersion::Exact(1), b);
    auto again_c = MustAppend(store(), "Idem-4", ExpectedVersion::Any(), c);
    for (const auto& [again, orig] : {std::pair{again_a, ra}, std::pair{again_b, rb}, std::pair{again_c, rc}}) {
        EXPECT_TRUE(again.already_present);
        EXPECT_EQ(again.first_position, orig.first_position);
        EXPECT_EQ(again.last_position, orig.last_position);
    }
    EXPECT_EQ(Head(store()), head);
    EXPECT_EQ(Versions(MustRead(store(), "Idem-4")), Range(0, 7));
}

TEST_P(EventStoreConformance, SameIdWithDifferentContentIsInvalidArgument) {
    auto original = Ev("Created", R"({"a":1})", R"({"tenant":"t1"})");
    MustAppend(store(), "Idem-6", ExpectedVersion::Any(), {original});
    const int64_t head = Head(store());
    const std::string id = original.event_id.ToString();

    auto other_data = original;
    other_data.data = R"({"a":2})";
    auto other_type = original;
    other_type.type = "Renamed";
    auto other_metadata = original;
    other_metadata.metadata = R"({"tenant":"t2"})";
    for (const auto& changed : {other_data, other_type, other_metadata}) {
        for (auto expected : {ExpectedVersion::Any(), ExpectedVersion::NoStream(), ExpectedVersion::Exact(0)}) {
            auto r = store().Append("Idem-6", expected, {changed});
            ASSERT_TRUE(IsCode(r, StatusCode::kInvalidArgument)) << "expected " << expected.ToString();
            EXPECT_TRUE(ContainsNoCase(r.status().message(), id)) << r.status().ToString();
        }
    }
    EXPECT_EQ(Head(store()), head);
    auto stored = MustRead(store(), "Idem-6");
    ASSERT_EQ(stored.size(), 1u);
    EXPECT_EQ(stored[0].data, original.data);
}

TEST_P(EventStoreConformance, SameIdOnAnotherStreamIsInvalidArgument) {
    auto e = Ev("Created");
    MustAppend(store(), "Idem-7", ExpectedVersion::Any(), {e});
    const int64_t head = Head(store());

    auto r = store().Append("Idem-8", ExpectedVersion::Any(), {e});
    ASSERT_TRUE(IsCode(r, StatusCode::kInvalidArgument));
    EXPECT_TRUE(ContainsNoCase(r.status().message(), e.event_id.ToString())) << r.status().ToString();
    EXPECT_TRUE(IsCode(store().GetStream("Idem-8"), StatusCode::kNotFound));
    EXPECT_EQ(Head(store()), head);
}

TEST_P(EventStoreConformance, PartiallyResentAppendIsInvalidArgument) {
    auto e1 = Ev("A");
    auto e2 = Ev("B");
    auto e3 = Ev("C");
    MustAppend(store(), "Idem-9", ExpectedVersion::NoStream(), {e1, e2});
    const int64_t head = Head(store());

    auto overlap = store().Append("Idem-9", ExpectedVersion::Any(), {e2, e3});
    EXPECT_TRUE(IsCode(overlap, StatusCode::kInvalidArgument));
    auto superset = store().Append("Idem-9", ExpectedVersion::NoStream(), {e1, e2, e3});
    EXPECT_TRUE(IsCode(superset, StatusCode::kInvalidArgument));
    auto subset_then_new = store().Append("Idem-9", ExpectedVersion::Exact(1), {e3, e2});
    EXPECT_TRUE(IsCode(subset_then_new, StatusCode::kInvalidArgument));

    EXPECT_EQ(Head(store()), head);
    EXPECT_EQ(Ids(MustRead(store(), "Idem-9")), (std::vector<Uuid>{e1.event_id, e2.event_id}));
    // e3 was never written, so it can still be appended.
    auto r = MustAppend(store(), "Idem-9", ExpectedVersion::Exact(1), {e3});
    EXPECT_FALSE(r.already_present);
    EXPECT_EQ(r.next_expected_version, 2);
}

TEST_P(EventStoreConformance, DuplicateIdInsideOneAppendIsInvalidArgument) {
    auto e = Ev("A");
    auto r = store().Append("Idem-10", ExpectedVersion::Any(), {e, Ev("B"), e});
    ASSERT_TRUE(IsCode(r, StatusCode::kInvalidArgument));
    EXPECT_TRUE(ContainsNoCase(r.status().message(), e.event_id.ToString())) << r.status().ToString();
    EXPECT_EQ(Head(store()), 0);
    EXPECT_TRUE(IsCode(store().ReadStream("Idem-10"), StatusCode::kNotFound));
}

TEST_P(EventStoreConformance, NilEventIdIsGenerated) {
    EventData a;
    a.type = "NoId";
    EventData b;
    b.type = "NoId";
    ASSERT_TRUE(a.event_id.is_nil());
    MustAppend(store(), "Gen-1", ExpectedVersion::Any(), {a, b});
    auto events = MustRead(store(), "Gen-1");
    ASSERT_EQ(events.size(), 2u);
    EXPECT_FALSE(events[0].event_id.is_nil());
    EXPECT_FALSE(events[1].event_id.is_nil());
    EXPECT_NE(events[0].event_id, events[1].event_id);
    EXPECT_EQ(Ids(ReadAllEvents(store())), Ids(events));
}

// ---------------------------------------------------------------------------------------------------------------
// Input validation: kInvalidArgument naming the field, nothing written

TEST_P(EventStoreConformance, EmptyStreamIdIsRejected) {
    EXPECT_TRUE(IsInvalidNaming(store().Append("", ExpectedVersion::Any(), Events(1)), "stream"));
    EXPECT_TRUE(IsInvalidNaming(store().ReadStream(""), "stream"));
    EXPECT_EQ(Head(store()), 0);
}

TEST_P(EventStoreConformance, StreamIdLongerThan256BytesIsRejected) {
    const std::string ok_id(256, 's');
    const std::string long_id(257, 's');
    auto r = store().Append(long_id, ExpectedVersion::Any(), Events(1));
    EXPECT_TRUE(IsInvalidNaming(r, "stream"));
    EXPECT_EQ(Head(store()), 0);

    MustAppend(store(), ok_id, ExpectedVersion::Any(), Events(1));
    auto events = MustRead(store(), ok_id);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].stream_id, ok_id);
}

TEST_P(EventStoreConformance, ControlCharactersInStreamIdOrTypeAreRejected) {
    for (const char control : {'\n', '\x01', '\x7f', '\t'}) {
        const std::string bad = std::string("a") + control + "b";
        EXPECT_TRUE(IsInvalidNaming(store().Append("Ctl-" + bad, ExpectedVersion::Any(), Events(1)), "stream"))
            << "stream id with byte " << static_cast<int>(bad[1]);
        EXPECT_TRUE(IsInvalidNaming(store().Append("Ctl-1", ExpectedVersion::Any(), {Ev(bad)}), "type"))
            << "type with byte " << static_cast<int>(bad[1]);
    }
    EXPECT_EQ(Head(store()), 0);
    EXPECT_TRUE(IsCode(store().GetStream("Ctl-1"), StatusCode::kNotFound));
}

TEST_P(EventStoreConformance, EmptyOrOverlongTypeIsRejected) {
    EXPECT_TRUE(IsInvalidNaming(store().Append("Type-1", ExpectedVersion::Any(), {Ev("")}), "type"));
    EXPECT_TRUE(IsInvalidNaming(store().Append("Type-1", ExpectedVersion::Any(), {Ev(std::string(257, 't'))}), "type"));
    EXPECT_EQ(Head(store()), 0);
    MustAppend(store(), "Type-1", ExpectedVersion::Any(), {Ev(std::string(256, 't'))});
    EXPECT_EQ(MustRead(store(), "Type-1").at(0).type, std::string(256, 't'));
}

TEST_P(EventStoreConformance, EventOverMaxSizeIsRejected) {
    CloseStore();
    StoreOptions options;
    options.max_event_size = 1000;
    auto small = OpenWith(options);
    EXPECT_EQ(small->options().max_event_size, 1000u);

    auto big = Ev("Big", std::string(1100, 'x'));
    EXPECT_TRUE(IsInvalidNaming(small->Append("Size-1", ExpectedVersion::Any(), {big}), "size"));
    auto big_metadata = Ev("Big", "{}", R"({"pad":")" + std::string(1100, 'm') + R"("})");
    EXPECT_TRUE(IsInvalidNaming(small->Append("Size-1", ExpectedVersion::Any(), {big_metadata}), "size"));
    // The oversized event fails the whole append, even next to a small one.
    EXPECT_TRUE(
        IsCode(small->Append("Size-1", ExpectedVersion::Any(), {Ev("Small"), big}), StatusCode::kInvalidArgument));
    EXPECT_EQ(Head(*small), 0);

    MustAppend(*small, "Size-1", ExpectedVersion::Any(), {Ev("Fits", std::string(900, 'x'))});
    EXPECT_EQ(MustRead(*small, "Size-1").size(), 1u);
}

TEST_P(EventStoreConformance, MetadataThatIsNotAJsonObjectIsRejected) {
    for (const std::string bad : {"[1, 2]", "not json", "\"text\"", "42", "{\"open\": ", "null"}) {
        EXPECT_TRUE(IsInvalidNaming(store().Append("Meta-1", ExpectedVersion::Any(), {Ev("A", "{}", bad)}), "metadata"))
            << "metadata " << bad;
    }
    EXPECT_EQ(Head(store()), 0);
    MustAppend(store(), "Meta-1", ExpectedVersion::Any(), {Ev("A", "{}", R"({"correlation_id":"c-1"})"), Ev("B")});
    EXPECT_EQ(MustRead(store(), "Meta-1").size(), 2u);
}

TEST_P(EventStoreConformance, EmptyEventListIsRejected) {
    const std::vector<EventData> none;
    EXPECT_TRUE(IsInvalidNaming(store().Append("Empty-1", ExpectedVersion::Any(), none), "event"));
    EXPECT_TRUE(IsCode(store().Append("Empty-1", ExpectedVersion::NoStream(), none), StatusCode::kInvalidArgument));
    EXPECT_EQ(Head(store()), 0);
    EXPECT_TRUE(IsCode(store().GetStream("Empty-1"), StatusCode::kNotFound));
}

// ---------------------------------------------------------------------------------------------------------------
// Reading streams

TEST_P(EventStoreConformance, ReadStreamForwardFromVersionWithLimit) {
    MustAppend(store(), "Read-1", ExpectedVersion::Any(), Events(10));
    EXPECT_EQ(Versions(MustRead(store(), "Read-1")), Range(0, 9));
    EXPECT_EQ(Versions(MustRead(store(), "Read-1", Forward(3, 4))), Range(3, 6));
    EXPECT_EQ(Versions(MustRead(store(), "Read-1", Forward(8, 10))), Range(8, 9));
    EXPECT_EQ(Versions(MustRead(store(), "Read-1", Forward(0, 0))), Range(0, 9));
    EXPECT_TRUE(MustRead(store(), "Read-1", Forward(10, 5)).empty());
}

TEST_P(EventStoreConformance, ReadStreamBackwardFromVersionWithLimit) {
    MustAppend(store(), "Read-2", ExpectedVersion::Any(), Events(10));
    EXPECT_EQ(Versions(MustRead(store(), "Read-2", Backward(-1, 3))), Range(9, 7));
    EXPECT_EQ(Versions(MustRead(store(), "Read-2", Backward(5, 0))), Range(5, 0));
    EXPECT_EQ(Versions(MustRead(store(), "Read-2", Backward(5, 2))), Range(5, 4));
    EXPECT_EQ(Versions(MustRead(store(), "Read-2", Backward(-1, 0))), Range(9, 0));
    EXPECT_EQ(Versions(MustRead(store(), "Read-2", Backward(20, 2))), Range(9, 8));
}

TEST_P(EventStoreConformance, ReadMissingStreamIsNotFound) {
    EXPECT_TRUE(IsCode(store().ReadStream("Missing-1"), StatusCode::kNotFound));
    MustAppend(store(), "Missing-2", ExpectedVersion::Any(), Events(1));
    EXPECT_TRUE(IsCode(store().ReadStream("Missing-1"), StatusCode::kNotFound));
    EXPECT_TRUE(IsCode(store().ReadStream("Missing-1", Backward(-1, 1)), StatusCode::kNotFound));
}

TEST_P(EventStoreConformance, EnvelopeFieldsRoundTrip) {
    std::string binary = "bin";
    binary.push_back('\0');
    binary.push_back(static_cast<char>(0xff));
    binary.push_back(static_cast<char>(0x01));
    binary += "end";
    ASSERT_EQ(binary.size(), 9u);
    auto first = Ev("Created", R"({"name":"Ada","n":1})", R"({"correlation_id":"corr-1","tenant":"t1"})");
    auto second = Ev("Binary", binary);
    auto third = Ev("Other");

    const int64_t before = WallMicros();
    MustAppend(store(), "Order-42", ExpectedVersion::Any(), {first, second});
    MustAppend(store(), "Plain", ExpectedVersion::Any(), {third});
    const int64_t after = WallMicros();

    auto events = MustRead(store(), "Order-42");
    ASSERT_EQ(events.size(), 2u);
    EXPECT_EQ(events[0].event_id, first.event_id);
    EXPECT_EQ(events[0].stream_id, "Order-42");
    EXPECT_EQ(events[0].stream_version, 0);
    EXPECT_EQ(events[0].type, "Created");
    EXPECT_EQ(events[0].data, first.data);
    EXPECT_EQ(ParseJson(events[0].metadata), ParseJson(first.metadata));
    EXPECT_EQ(events[0].category(), "Order");
    EXPECT_EQ(events[1].event_id, second.event_id);
    EXPECT_EQ(events[1].stream_version, 1);
    EXPECT_EQ(events[1].type, "Binary");
    EXPECT_EQ(events[1].data, binary);
    EXPECT_TRUE(events[1].metadata.empty()) << events[1].metadata;

    auto all = ReadAllEvents(store());
    ASSERT_EQ(all.size(), 3u);
    EXPECT_EQ(all[2].event_id, third.event_id);
    EXPECT_EQ(all[2].stream_id, "Plain");
    EXPECT_EQ(all[2].category(), "Plain");
    EXPECT_GE(all[0].global_position, 1);
    EXPECT_TRUE(StrictlyIncreasing(Positions(all)));
    for (size_t i = 0; i < all.size(); ++i) {
        EXPECT_GE(all[i].recorded_at, before) << "event " << i;
        EXPECT_LE(all[i].recorded_at, after) << "event " << i;
        if (i > 0) {
            EXPECT_LE(all[i - 1].recorded_at, all[i].recorded_at) << "event " << i;
        }
    }
    // Stream reads and $all return the same envelopes.
    ExpectSameEnvelope(events[0], all[0]);
    ExpectSameEnvelope(events[1], all[1]);
}

// ---------------------------------------------------------------------------------------------------------------
// Reading $all

TEST_P(EventStoreConformance, ReadAllFromPositionWithLimit) {
    for (int i = 0; i < 10; ++i) MustAppend(store(), "All-" + std::to_string(i % 3), ExpectedVersion::Any(), Events(1));
    auto all = ReadAllEvents(store());
    ASSERT_EQ(all.size(), 10u);
    EXPECT_TRUE(StrictlyIncreasing(Positions(all)));

    ReadAllOptions o;
    o.from_position = all[4].global_position;
    o.limit = 3;
    auto slice = store().ReadAll(o).value();
    EXPECT_EQ(Ids(slice.events), (std::vector<Uuid>{all[4].event_id, all[5].event_id, all[6].event_id}));
    EXPECT_FALSE(slice.end_of_all);
    EXPECT_GT(slice.next_position, all[6].global_position);
    EXPECT_LE(slice.next_position, all[7].global_position);

    o.from_position = all[8].global_position;
    o.limit = 5;
    slice = store().ReadAll(o).value();
    EXPECT_EQ(Ids(slice.events), (std::vector<Uuid>{all[8].event_id, all[9].event_id}));
    EXPECT_TRUE(slice.end_of_all);
    EXPECT_GT(slice.next_position, all[9].global_position);

    o.from_position = all[9].global_position + 1;
    slice = store().ReadAll(o).value();
    EXPECT_TRUE(slice.events.empty());
    EXPECT_TRUE(slice.end_of_all);

    // "kInvalidArgument for a from_position below 1" (event_store.hpp).
    o.from_position = -1;
    EXPECT_TRUE(IsCode(store().ReadAll(o), StatusCode::kInvalidArgument)) << "from_position -1";
    o.from_position = 0;
    EXPECT_TRUE(IsCode(store().ReadAll(o), StatusCode::kInvalidArgument)) << "from_position 0";
}

TEST_P(EventStoreConformance, ReadAllPagingVisitsEveryEventOnce) {
    std::vector<Uuid> appended;
    for (int i = 0; i < 12; ++i) {
        auto events = Events(2);
        MustAppend(store(), "Page-" + std::to_string(i % 5), ExpectedVersion::Any(), events);
        for (const auto& e : events) appended.push_back(e.event_id);
    }
    ASSERT_EQ(appended.size(), 24u);
    for (size_t page : {1u, 4u, 5u, 24u, 100u}) {
        std::vector<RecordedEvent> seen;
        ReadAllOptions o;
        o.limit = page;
        int reads = 0;
        for (;; ++reads) {
            ASSERT_LT(reads, 100) << "paging does not terminate with page " << page;
            auto slice = store().ReadAll(o).value();
            EXPECT_LE(slice.events.size(), page);
            for (const auto& e : slice.events) {
                EXPECT_GE(e.global_position, o.from_position);
                EXPECT_LT(e.global_position, slice.next_position);
                seen.push_back(e);
            }
            if (slice.end_of_all) break;
            EXPECT_EQ(slice.events.size(), page) << "a short page must be the end";
            ASSERT_GT(slice.next_position, o.from_position);
            o.from_position = slice.next_position;
        }
        EXPECT_EQ(Ids(seen), appended) << "page " << page;
        EXPECT_TRUE(StrictlyIncreasing(Positions(seen))) << "page " << page;
    }
}

TEST_P(EventStoreConformance, ReadAllFiltersByCategory) {
    MustAppend(store(), "User-1", ExpectedVersion::Any(), {Ev("Created")});
    MustAppend(store(), "Order-1", ExpectedVersion::Any(), {Ev("Created")});
    MustAppend(store(), "User-2", ExpectedVersion::Any(), {Ev("Created"), Ev("Renamed")});
    MustAppend(store(), "Users-1", ExpectedVersion::Any(), {Ev("Created")});
    MustAppend(store(), "User", ExpectedVersion::Any(), {Ev("Created")});
    MustAppend(store(), "Plain", ExpectedVersion::Any(), {Ev("Created")});
    MustAppend(store(), "User-1-sub", ExpectedVersion::Any(), {Ev("Renamed")});
    MustAppend(store(), "User-1", ExpectedVersion::Any(), {Ev("Renamed")});

    auto streams_of = [](const std::vector<RecordedEvent>& events) {
        std::vector<std::string> out;
        for (const auto& e : events) out.push_back(e.stream_id);
        return out;
    };
    ReadAllOptions users;
    users.categories = {"User"};
    EXPECT_EQ(streams_of(ReadAllEvents(store(), users)),
              (std::vector<std::string>{"User-1", "User-2", "User-2", "User", "User-1-sub", "User-1"}));
    // Small pages with a filter still find every match.
    EXPECT_EQ(Ids(ReadAllEvents(store(), users, 1)), Ids(ReadAllEvents(store(), users)));

    ReadAllOptions plain;
    plain.categories = {"Plain"};
    EXPECT_EQ(streams_of(ReadAllEvents(store(), plain)), (std::vector<std::string>{"Plain"}));

    ReadAllOptions two;
    two.categories = {"Order", "Users"};
    EXPECT_EQ(streams_of(ReadAllEvents(store(), two)), (std::vector<std::string>{"Order-1", "Users-1"}));

    ReadAllOptions none;
    none.categories = {"Nothing"};
    EXPECT_TRUE(ReadAllEvents(store(), none).empty());
}

TEST_P(EventStoreConformance, ReadAllFiltersByTypeAndCategoryCombined) {
    MustAppend(store(), "User-1", ExpectedVersion::Any(), {Ev("Created"), Ev("Renamed")});
    MustAppend(store(), "Order-1", ExpectedVersion::Any(), {Ev("Created"), Ev("Shipped")});
    MustAppend(store(), "User-2", ExpectedVersion::Any(), {Ev("Created"), Ev("Deleted")});
    MustAppend(store(), "Order-2", ExpectedVersion::Any(), {Ev("Renamed")});

    auto labels = [](const std::vector<RecordedEvent>& events) {
        std::vector<std::string> out;
        for (const auto& e : events) out.push_back(e.stream_id + "/" + e.type);
        return out;
    };
    ReadAllOptions created;
    created.types = {"Created"};
    EXPECT_EQ(labels(ReadAllEvents(store(), created)),
              (std::vector<std::string>{"User-1/Created", "Order-1/Created", "User-2/Created"}));

    ReadAllOptions two_types;
    two_types.types = {"Renamed", "Shipped"};
    EXPECT_EQ(labels(ReadAllEvents(store(), two_types)),
              (std::vector<std::string>{"User-1/Renamed", "Order-1/Shipped", "Order-2/Renamed"}));

    ReadAllOptions both;
    both.categories = {"User"};
    both.types = {"Created", "Renamed"};
    EXPECT_EQ(labels(ReadAllEvents(store(), both)),
              (std::vector<std::string>{"User-1/Created", "User-1/Renamed", "User-2/Created"}));
    EXPECT_EQ(labels(ReadAllEvents(store(), both, 1)), labels(ReadAllEvents(store(), both)));
}

TEST_P(EventStoreConformance, TemporalReadsAsOfPositionAndTime) {
    auto early_stream = Events(3);
    auto early_other = Events(1);
    MustAppend(store(), "Temporal-1", ExpectedVersion::Any(), early_stream);
    MustAppend(store(), "Temporal-2", ExpectedVersion::Any(), early_other);
    const int64_t position = Head(store());
    const int64_t time = WallMicros();
    std::this_thread::sleep_for(5ms);
    MustAppend(store(), "Temporal-1", ExpectedVersion::Any(), Events(2));
    MustAppend(store(), "Temporal-3", ExpectedVersion::Any(), Events(2));

    std::vector<Uuid> early_ids = Ids(early_stream);
    early_ids.push_back(early_other[0].event_id);
    ASSERT_EQ(ReadAllEvents(store()).size(), 8u);

    ReadAllOptions at_position;
    at_position.as_of_position = position;
    EXPECT_EQ(Ids(ReadAllEvents(store(), at_position)), early_ids);
    EXPECT_EQ(Ids(ReadAllEvents(store(), at_position, 1)), early_ids);
    ReadAllOptions at_time;
    at_time.as_of_time = time;
    EXPECT_EQ(Ids(ReadAllEvents(store(), at_time)), early_ids);

    ReadStreamOptions stream_at_position;
    stream_at_position.as_of_position = position;
    EXPECT_EQ(Ids(MustRead(store(), "Temporal-1", stream_at_position)), Ids(early_stream));
    ReadStreamOptions stream_at_time;
    stream_at_time.as_of_time = time;
    EXPECT_EQ(Ids(MustRead(store(), "Temporal-1", stream_at_time)), Ids(early_stream));
    stream_at_time.direction = ReadDirection::kBackward;
    EXPECT_EQ(Versions(MustRead(store(), "Temporal-1", stream_at_time)), Range(2, 0));
    EXPECT_EQ(MustRead(store(), "Temporal-1").size(), 5u);
}

// ---------------------------------------------------------------------------------------------------------------
// Stream metadata

TEST_P(EventStoreConformance, MaxCountShowsOnlyTheLastEvents) {
    MustAppend(store(), "Max-1", ExpectedVersion::Any(), Events(10));
    StreamMetadata m;
    m.max_count = 3;
    ASSERT_TRUE(IsOk(store().SetStreamMetadata("Max-1", m)));
    EXPECT_EQ(Versions(MustRead(store(), "Max-1")), Range(7, 9));
    EXPECT_EQ(Versions(MustRead(store(), "Max-1", Backward(-1, 0))), Range(9, 7));
    EXPECT_EQ(Versions(MustRead(store(), "Max-1", Forward(8, 0))), Range(8, 9));

    // The window moves with new events.
    MustAppend(store(), "Max-1", ExpectedVersion::Exact(9), Events(2));
    EXPECT_EQ(Versions(MustRead(store(), "Max-1")), Range(9, 11));
    EXPECT_EQ(store().GetStream("Max-1").value().version, 11);

    // Replacing the metadata lifts the limit.
    ASSERT_TRUE(IsOk(store().SetStreamMetadata("Max-1", StreamMetadata{})));
    EXPECT_EQ(Versions(MustRead(store(), "Max-1")), Range(0, 11));
}

TEST_P(EventStoreConformance, MaxAgeHidesOlderEvents) {
    constexpr auto kAge = 100ms;
    MustAppend(store(), "Age-1", ExpectedVersion::Any(), Events(3));
    std::this_thread::sleep_for(kAge + 30ms);
    const auto fresh_start = Clock::now();
    auto fresh = Events(2);
    MustAppend(store(), "Age-1", ExpectedVersion::Any(), fresh);
    StreamMetadata m;
    m.max_age = std::chrono::duration_cast<std::chrono::microseconds>(kAge);
    ASSERT_TRUE(IsOk(store().SetStreamMetadata("Age-1", m)));
    auto visible = MustRead(store(), "Age-1");
    const auto elapsed = Clock::now() - fresh_start;
    // The old events are older than the age in any case; the fresh ones are younger unless this thread stalled.
    for (const auto& e : visible) {
        EXPECT_GE(e.stream_version, 3);
    }
    if (elapsed < kAge) {
        EXPECT_EQ(Ids(visible), Ids(fresh));
    }

    std::this_thread::sleep_for(kAge + 30ms);
    EXPECT_TRUE(MustRead(store(), "Age-1").empty());
    EXPECT_EQ(store().GetStream("Age-1").value().version, 4);
    EXPECT_EQ(ReadAllEvents(store()).size(), 5u);
}

TEST_P(EventStoreConformance, TruncateBeforeHidesLowerVersions) {
    MustAppend(store(), "Trunc-1", ExpectedVersion::Any(), Events(10));
    StreamMetadata m;
    m.truncate_before = 4;
    ASSERT_TRUE(IsOk(store().SetStreamMetadata("Trunc-1", m)));
    EXPECT_EQ(Versions(MustRead(store(), "Trunc-1")), Range(4, 9));
    EXPECT_EQ(Versions(MustRead(store(), "Trunc-1", Forward(2, 3))), Range(4, 6));
    EXPECT_EQ(Versions(MustRead(store(), "Trunc-1", Backward(-1, 0))), Range(9, 4));
    EXPECT_TRUE(MustRead(store(), "Trunc-1", Backward(3, 0)).empty());
    auto info = store().GetStream("Trunc-1").value();
    EXPECT_EQ(info.version, 9);
    EXPECT_EQ(info.metadata.truncate_before, std::optional<int64_t>(4));
}

TEST_P(EventStoreConformance, StreamMetadataRoundTrips) {
    MustAppend(store(), "Meta-2", ExpectedVersion::Any(), Events(2));
    StreamMetadata m;
    m.max_count = 50;
    m.max_age = std::chrono::microseconds(3'600'000'000LL);
    m.truncate_before = 1;
    m.custom = R"({"owner":"team-a","tags":["x","y"],"n":3})";
    ASSERT_TRUE(IsOk(store().SetStreamMetadata("Meta-2", m)));

    auto info = store().GetStream("Meta-2").value();
    EXPECT_EQ(info.stream_id, "Meta-2");
    EXPECT_EQ(info.version, 1);
    EXPECT_EQ(info.state, StreamState::kActive);
    EXPECT_EQ(info.metadata.max_count, m.max_count);
    EXPECT_EQ(info.metadata.max_age, m.max_age);
    EXPECT_EQ(info.metadata.truncate_before, m.truncate_before);
    EXPECT_EQ(ParseJson(info.metadata.custom), ParseJson(m.custom));
    EXPECT_GT(info.updated_at, 0);

    // Metadata may be set before the stream has events.
    StreamMetadata only_custom;
    only_custom.custom = R"({"k":"v"})";
    ASSERT_TRUE(IsOk(store().SetStreamMetadata("Meta-3", only_custom)));
    auto configured = store().GetStream("Meta-3").value();
    EXPECT_EQ(configured.version, -1);
    EXPECT_EQ(configured.state, StreamState::kActive);
    EXPECT_FALSE(configured.metadata.max_count.has_value());
    EXPECT_EQ(ParseJson(configured.metadata.custom), ParseJson(only_custom.custom));
    auto first = MustAppend(store(), "Meta-3", ExpectedVersion::NoStream(), Events(1));
    EXPECT_EQ(first.next_expected_version, 0);
}

TEST_P(EventStoreConformance, InvalidStreamMetadataIsRejected) {
    MustAppend(store(), "Meta-4", ExpectedVersion::Any(), Events(1));
    StreamMetadata good;
    good.max_count = 5;
    good.custom = R"({"a":1})";
    ASSERT_TRUE(IsOk(store().SetStreamMetadata("Meta-4", good)));

    for (const std::string bad : {"[1]", "nope", "7", "\"s\""}) {
        StreamMetadata m;
        m.custom = bad;
        EXPECT_TRUE(IsInvalidNaming(store().SetStreamMetadata("Meta-4", m), "metadata")) << bad;
    }
    StreamMetadata negative_count;
    negative_count.max_count = -1;
    EXPECT_TRUE(IsCode(store().SetStreamMetadata("Meta-4", negative_count), StatusCode::kInvalidArgument));
    StreamMetadata negative_age;
    negative_age.max_age = std::chrono::microseconds(-5);
    EXPECT_TRUE(IsCode(store().SetStreamMetadata("Meta-4", negative_age), StatusCode::kInvalidArgument));
    EXPECT_TRUE(IsCode(store().SetStreamMetadata("", good), StatusCode::kInvalidArgument));

    auto info = store().GetStream("Meta-4").value();
    EXPECT_EQ(info.metadata.max_count, std::optional<int64_t>(5));
    EXPECT_EQ(ParseJson(info.metadata.custom), ParseJson(good.custom));
}

TEST_P(EventStoreConformance, GetStreamReportsVersionStateAndMetadata) {
    EXPECT_TRUE(IsCode(store().GetStream("Info-1"), StatusCode::kNotFound));
    const int64_t before = WallMicros();
    MustAppend(store(), "Info-1", ExpectedVersion::Any(), Events(4));
    auto info = store().GetStream("Info-1").value();
    EXPECT_EQ(info.stream_id, "Info-1");
    EXPECT_EQ(info.version, 3);
    EXPECT_EQ(info.state, StreamState::kActive);
    EXPECT_EQ(info.metadata, StreamMetadata{});
    EXPECT_GE(info.updated_at, before);
    EXPECT_LE(info.updated_at, WallMicros());
}

TEST_P(EventStoreConformance, ReadAllIsNotAffectedByStreamMetadata) {
    auto events = Events(6);
    MustAppend(store(), "Hidden-1", ExpectedVersion::Any(), events);
    StreamMetadata m;
    m.max_count = 1;
    m.truncate_before = 3;
    m.max_age = std::chrono::microseconds(1);
    ASSERT_TRUE(IsOk(store().SetStreamMetadata("Hidden-1", m)));
    std::this_thread::sleep_for(2ms);
    EXPECT_TRUE(MustRead(store(), "Hidden-1").empty());
    EXPECT_EQ(Ids(ReadAllEvents(store())), Ids(events));
    ReadAllOptions category;
    category.categories = {"Hidden"};
    EXPECT_EQ(Ids(ReadAllEvents(store(), category)), Ids(events));
}

// ---------------------------------------------------------------------------------------------------------------
// Deletion

TEST_P(EventStoreConformance, SoftDeleteHidesTheStream) {
    MustAppend(store(), "Soft-1", ExpectedVersion::Any(), Events(3));
    ASSERT_TRUE(IsOk(store().DeleteStream("Soft-1", ExpectedVersion::Exact(2), DeleteMode::kSoft)));
    EXPECT_TRUE(IsCode(store().ReadStream("Soft-1"), StatusCode::kNotFound));
    EXPECT_TRUE(IsCode(store().ReadStream("Soft-1", Backward(-1, 1)), StatusCode::kNotFound));
    auto info = store().GetStream("Soft-1").value();
    EXPECT_EQ(info.state, StreamState::kSoftDeleted);
    EXPECT_EQ(info.version, 2);
    EXPECT_TRUE(
        IsCode(store().DeleteStream("Soft-9", ExpectedVersion::Any(), DeleteMode::kSoft), StatusCode::kNotFound));
}

TEST_P(EventStoreConformance, AppendReopensSoftDeletedStream) {
    MustAppend(store(), "Soft-2", ExpectedVersion::Any(), Events(3));
    ASSERT_TRUE(IsOk(store().DeleteStream("Soft-2", ExpectedVersion::Any(), DeleteMode::kSoft)));

    auto exists = store().Append("Soft-2", ExpectedVersion::StreamExists(), Events(1));
    ASSERT_TRUE(IsCode(exists, StatusCode::kWrongExpectedVersion));
    EXPECT_EQ(exists.status().actual_version(), std::optional<int64_t>(-1));
    auto old_exact = store().Append("Soft-2", ExpectedVersion::Exact(2), Events(1));
    ASSERT_TRUE(IsCode(old_exact, StatusCode::kWrongExpectedVersion));
    EXPECT_EQ(old_exact.status().actual_version(), std::optional<int64_t>(-1));

    auto fresh = Events(2);
    auto r = MustAppend(store(), "Soft-2", ExpectedVersion::NoStream(), fresh);
    EXPECT_EQ(r.next_expected_version, 4);
    auto events = MustRead(store(), "Soft-2");
    EXPECT_EQ(Versions(events), Range(3, 4));
    EXPECT_EQ(Ids(events), Ids(fresh));
    auto info = store().GetStream("Soft-2").value();
    EXPECT_EQ(info.state, StreamState::kActive);
    EXPECT_EQ(info.version, 4);
    auto more = MustAppend(store(), "Soft-2", ExpectedVersion::Exact(4), Events(1));
    EXPECT_EQ(more.next_expected_version, 5);
}

TEST_P(EventStoreConformance, HardDeleteTombstonesTheStream) {
    MustAppend(store(), "Hard-1", ExpectedVersion::Any(), Events(2));
    ASSERT_TRUE(IsOk(store().DeleteStream("Hard-1", ExpectedVersion::Exact(1), DeleteMode::kHard)));
    const int64_t head = Head(store());

    EXPECT_TRUE(IsCode(store().ReadStream("Hard-1"), StatusCode::kStreamDeleted));
    EXPECT_TRUE(IsCode(store().Append("Hard-1", ExpectedVersion::Any(), Events(1)), StatusCode::kStreamDeleted));
    EXPECT_TRUE(IsCode(store().Append("Hard-1", ExpectedVersion::NoStream(), Events(1)), StatusCode::kStreamDeleted));
    EXPECT_TRUE(IsCode(store().SetStreamMetadata("Hard-1", StreamMetadata{}), StatusCode::kStreamDeleted));
    EXPECT_TRUE(
        IsCode(store().DeleteStream("Hard-1", ExpectedVersion::Any(), DeleteMode::kHard), StatusCode::kStreamDeleted));
    EXPECT_TRUE(
        IsCode(store().DeleteStream("Hard-1", ExpectedVersion::Any(), DeleteMode::kSoft), StatusCode::kStreamDeleted));
    auto info = store().GetStream("Hard-1").value();
    EXPECT_EQ(info.state, StreamState::kTombstoned);
    EXPECT_EQ(Head(store()), head);

    // A never-used id can be tombstoned too.
    ASSERT_TRUE(IsOk(store().DeleteStream("Hard-2", ExpectedVersion::NoStream(), DeleteMode::kHard)));
    auto unused = store().GetStream("Hard-2").value();
    EXPECT_EQ(unused.state, StreamState::kTombstoned);
    EXPECT_EQ(unused.version, -1);
    EXPECT_TRUE(IsCode(store().Append("Hard-2", ExpectedVersion::Any(), Events(1)), StatusCode::kStreamDeleted));
}

TEST_P(EventStoreConformance, DeleteWithWrongExpectedVersionFails) {
    MustAppend(store(), "Del-1", ExpectedVersion::Any(), Events(2));
    for (auto mode : {DeleteMode::kSoft, DeleteMode::kHard}) {
        for (auto expected : {ExpectedVersion::Exact(5), ExpectedVersion::Exact(0), ExpectedVersion::NoStream()}) {
            Status s = store().DeleteStream("Del-1", expected, mode);
            ASSERT_TRUE(IsCode(s, StatusCode::kWrongExpectedVersion)) << expected.ToString();
            EXPECT_EQ(s.actual_version(), std::optional<int64_t>(1));
        }
    }
    EXPECT_EQ(store().GetStream("Del-1").value().state, StreamState::kActive);
    EXPECT_EQ(Versions(MustRead(store(), "Del-1")), Range(0, 1));
}

// ---------------------------------------------------------------------------------------------------------------
// Snapshots and checkpoints

TEST_P(EventStoreConformance, SnapshotsRoundTripAndNewerReplacesOlder) {
    MustAppend(store(), "Snap-1", ExpectedVersion::Any(), Events(10));
    EXPECT_TRUE(IsCode(store().LoadSnapshot("Snap-1"), StatusCode::kNotFound));

    Snapshot s;
    s.stream_id = "Snap-1";
    s.version = 4;
    s.type = "snapshot:User";
    s.data = std::string("state\0with\xff", 11);
    ASSERT_TRUE(IsOk(store().SaveSnapshot(s)));
    auto loaded = store().LoadSnapshot("Snap-1").value();
    EXPECT_EQ(loaded.stream_id, "Snap-1");
    EXPECT_EQ(loaded.version, 4);
    EXPECT_EQ(loaded.type, "snapshot:User");
    EXPECT_EQ(loaded.data, s.data);

    Snapshot newer = s;
    newer.version = 9;
    newer.data = R"({"name":"Ada"})";
    ASSERT_TRUE(IsOk(store().SaveSnapshot(newer)));
    loaded = store().LoadSnapshot("Snap-1").value();
    EXPECT_EQ(loaded.version, 9);
    EXPECT_EQ(loaded.data, newer.data);

    EXPECT_TRUE(IsCode(store().LoadSnapshot("Snap-2"), StatusCode::kNotFound));
    Snapshot negative = s;
    negative.version = -1;
    EXPECT_TRUE(IsCode(store().SaveSnapshot(negative), StatusCode::kInvalidArgument));
    Snapshot no_stream = s;
    no_stream.stream_id.clear();
    EXPECT_TRUE(IsCode(store().SaveSnapshot(no_stream), StatusCode::kInvalidArgument));
    EXPECT_EQ(store().LoadSnapshot("Snap-1").value().version, 9);
}

TEST_P(EventStoreConformance, CheckpointsSaveLoadAndAppearInStats) {
    EXPECT_TRUE(IsCode(store().LoadCheckpoint("projection-a"), StatusCode::kNotFound));
    ASSERT_TRUE(IsOk(store().SaveCheckpoint("projection-a", 17)));
    ASSERT_TRUE(IsOk(store().SaveCheckpoint("projection-b", 3)));
    EXPECT_EQ(store().LoadCheckpoint("projection-a").value(), 17);
    ASSERT_TRUE(IsOk(store().SaveCheckpoint("projection-a", 42)));
    EXPECT_EQ(store().LoadCheckpoint("projection-a").value(), 42);
    EXPECT_EQ(store().LoadCheckpoint("projection-b").value(), 3);

    auto stats = store().Stats().value();
    std::map<std::string, int64_t> listed;
    for (const auto& c : stats.checkpoints) listed[c.name] = c.position;
    EXPECT_EQ(listed, (std::map<std::string, int64_t>{{"projection-a", 42}, {"projection-b", 3}}));
}

// ---------------------------------------------------------------------------------------------------------------
// Listing and statistics

TEST_P(EventStoreConformance, ListStreamsIsOrderedAndPaged) {
    EXPECT_TRUE(store().ListStreams().value().empty());
    MustAppend(store(), "b-1", ExpectedVersion::Any(), Events(2));
    MustAppend(store(), "a-2", ExpectedVersion::Any(), Events(1));
    MustAppend(store(), "c-3", ExpectedVersion::Any(), Events(3));
    MustAppend(store(), "a-1", ExpectedVersion::Any(), Events(1));

    auto ids = [](const std::vector<StreamInfo>& infos) {
        std::vector<std::string> out;
        for (const auto& i : infos) out.push_back(i.stream_id);
        return out;
    };
    auto all = store().ListStreams().value();
    EXPECT_EQ(ids(all), (std::vector<std::string>{"a-1", "a-2", "b-1", "c-3"}));
    std::map<std::string, int64_t> versions;
    for (const auto& i : all) versions[i.stream_id] = i.version;
    EXPECT_EQ(versions, (std::map<std::string, int64_t>{{"a-1", 0}, {"a-2", 0}, {"b-1", 1}, {"c-3", 2}}));

    EXPECT_EQ(ids(store().ListStreams("", 2).value()), (std::vector<std::string>{"a-1", "a-2"}));
    EXPECT_EQ(ids(store().ListStreams("a-2").value()), (std::vector<std::string>{"b-1", "c-3"}));
    EXPECT_EQ(ids(store().ListStreams("a-2", 1).value()), (std::vector<std::string>{"b-1"}));
    EXPECT_EQ(ids(store().ListStreams("a-10").value()), (std::vector<std::string>{"a-2", "b-1", "c-3"}));
    EXPECT_TRUE(store().ListStreams("c-3").value().empty());

    // Paging with limit 1 visits each stream once.
    std::vector<std::string> paged;
    std::string after;
    for (int i = 0; i < 10; ++i) {
        auto page = store().ListStreams(after, 1).value();
        if (page.empty()) break;
        ASSERT_EQ(page.size(), 1u);
        paged.push_back(page[0].stream_id);
        after = page[0].stream_id;
    }
    EXPECT_EQ(paged, ids(all));
}

TEST_P(EventStoreConformance, StatsCountEventsStreamsAndHead) {
    auto empty = store().Stats().value();
    EXPECT_EQ(empty.events, 0);
    EXPECT_EQ(empty.streams, 0);
    EXPECT_EQ(empty.head_position, 0);
    EXPECT_FALSE(empty.backend.empty());
    EXPECT_EQ(Head(store()), 0);

    MustAppend(store(), "Stat-1", ExpectedVersion::Any(), Events(3));
    MustAppend(store(), "Stat-2", ExpectedVersion::Any(), Events(2));
    auto last = MustAppend(store(), "Stat-3", ExpectedVersion::Any(), Events(2));
    auto stats = store().Stats().value();
    EXPECT_EQ(stats.events, 7);
    EXPECT_EQ(stats.streams, 3);
    EXPECT_EQ(stats.head_position, last.last_position);
    EXPECT_EQ(Head(store()), last.last_position);
    EXPECT_EQ(ReadAllEvents(store()).back().global_position, last.last_position);
}

// ---------------------------------------------------------------------------------------------------------------
// Group commit: concurrent appenders

TEST_P(EventStoreConformance, ConcurrentExactAppendsToSharedStreamsStayConsistent) {
    constexpr int kThreads = 16;
    constexpr int kAppendsPerThread = 12;
    constexpr int kStreams = 3;
    struct Success {
        std::string stream;
        int64_t version;
        Uuid id;
        int64_t position;
    };
    std::mutex mu;
    std::vector<Success> successes;
    std::vector<std::string> errors;
    std::atomic<int> conflicts{0};
    std::atomic<int> ready{0};

    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            ready.fetch_add(1);
            while (ready.load() < kThreads) std::this_thread::yield();
            for (int i = 0; i < kAppendsPerThread; ++i) {
                const std::string stream = "Shared-" + std::to_string((t + i) % kStreams);
                for (int attempt = 0;; ++attempt) {
                    auto info = store().GetStream(stream);
                    if (!info.ok() && info.status().code() != StatusCode::kNotFound) {
                        std::lock_guard lock(mu);
                        errors.push_back("GetStream: " + info.status().ToString());
                        return;
                    }
                    const int64_t version = info.ok() ? info->version : -1;
                    std::this_thread::yield();  // widen the race window
                    auto e = Ev("Counted", nlohmann::json{{"t", t}, {"i", i}, {"attempt", attempt}}.dump());
                    auto r = store().Append(stream, ExpectedVersion::Exact(version), {e});
                    if (r.ok()) {
                        std::lock_guard lock(mu);
                        successes.push_back({stream, r->next_expected_version, e.event_id, r->first_position});
                        if (r->next_expected_version != version + 1 || r->already_present) {
                            errors.push_back("append at Exact(" + std::to_string(version) + ") returned version " +
                                             std::to_string(r->next_expected_version));
                        }
                        break;
                    }
                    if (r.status().code() != StatusCode::kWrongExpectedVersion || attempt > 100000) {
                        std::lock_guard lock(mu);
                        errors.push_back("Append: " + r.status().ToString());
                        return;
                    }
                    if (r.status().actual_version().value_or(-2) == version) {
                        std::lock_guard lock(mu);
                        errors.push_back("conflict reported the expected version as actual");
                    }
                    conflicts.fetch_add(1);
                }
            }
        });
    }
    for (auto& th : threads) th.join();

    ASSERT_TRUE(errors.empty()) << errors.front();
    ASSERT_EQ(successes.size(), static_cast<size_t>(kThreads * kAppendsPerThread));
    EXPECT_GT(conflicts.load(), 0) << "16 writers on 3 streams never conflicted";

    std::map<std::pair<std::string, int64_t>, Success> by_key;
    std::set<int64_t> positions;
    for (const auto& s : successes) {
        EXPECT_TRUE(by_key.emplace(std::pair{s.stream, s.version}, s).second)
            << s.stream << " version " << s.version << " acknowledged twice";
        EXPECT_TRUE(positions.insert(s.position).second) << "position " << s.position << " acknowledged twice";
    }
    size_t stored = 0;
    for (int k = 0; k < kStreams; ++k) {
        const std::string stream = "Shared-" + std::to_string(k);
        auto events = MustRead(store(), stream, Forward(0, 0));
        stored += events.size();
        EXPECT_EQ(Versions(events), Range(0, static_cast<int64_t>(events.size()) - 1)) << stream;
        for (const auto& e : events) {
            auto it = by_key.find({stream, e.stream_version});
            ASSERT_NE(it, by_key.end()) << stream << " version " << e.stream_version << " was never acknowledged";
            EXPECT_EQ(e.event_id, it->second.id);
            EXPECT_EQ(e.global_position, it->second.position);
        }
    }
    EXPECT_EQ(stored, successes.size());
    auto all = ReadAllEvents(store());
    EXPECT_EQ(all.size(), successes.size());
    EXPECT_TRUE(StrictlyIncreasing(Positions(all)));
}

TEST_P(EventStoreConformance, ConcurrentAppendsToOwnStreamsAllSucceed) {
    constexpr int kThreads = 16;
    constexpr int kAppendsPerThread = 15;
    std::mutex mu;
    std::vector<std::string> errors;
    std::vector<int64_t> positions;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            const std::string stream = "Own-" + std::to_string(t);
            int64_t version = -1;
            for (int i = 0; i < kAppendsPerThread; ++i) {
                auto r = store().Append(stream, ExpectedVersion::Exact(version), Events(2));
                std::lock_guard lock(mu);
                if (!r.ok()) {
                    errors.push_back(stream + ": " + r.status().ToString());
                    return;
                }
                if (r->next_expected_version != version + 2) errors.push_back(stream + ": wrong next version");
                version = r->next_expected_version;
                positions.push_back(r->first_position);
                positions.push_back(r->last_position);
            }
        });
    }
    for (auto& th : threads) th.join();
    ASSERT_TRUE(errors.empty()) << errors.front();
    std::set<int64_t> unique(positions.begin(), positions.end());
    EXPECT_EQ(unique.size(), positions.size());
    for (int t = 0; t < kThreads; ++t) {
        EXPECT_EQ(Versions(MustRead(store(), "Own-" + std::to_string(t))), Range(0, 2 * kAppendsPerThread - 1));
    }
    auto all = ReadAllEvents(store());
    EXPECT_EQ(all.size(), static_cast<size_t>(kThreads * kAppendsPerThread * 2));
    EXPECT_TRUE(StrictlyIncreasing(Positions(all)));
}

// ---------------------------------------------------------------------------------------------------------------
// Subscriptions

TEST_P(EventStoreConformance, SubscriptionCatchesUpThenGoesLive) {
    auto first_ids = AppendSpread(store(), "Sub", 25, 4, 5);
    ASSERT_EQ(first_ids.size(), 100u);
    Collector collected;
    auto sub = MustSubscribe(store(), FastOptions(), collected.Handler());
    // Appended while the subscription catches up and after it went live.
    auto second_ids = AppendSpread(store(), "Sub", 25, 4, 5);
    ASSERT_TRUE(collected.WaitFor(200)) << "received " << collected.size() << " of 200";
    ASSERT_TRUE(WaitUntil([&] { return sub->caught_up(); }));
    EXPECT_TRUE(IsOk(sub->Stop()));

    auto events = collected.events();
    EXPECT_EQ(events.size(), 200u);
    auto all = ReadAllEvents(store());
    EXPECT_EQ(Positions(events), Positions(all));
    EXPECT_EQ(Ids(events), Ids(all));
    std::vector<Uuid> expected = first_ids;
    expected.insert(expected.end(), second_ids.begin(), second_ids.end());
    EXPECT_EQ(Ids(events), expected);
    EXPECT_EQ(sub->position(), all.back().global_position);
}

TEST_P(EventStoreConformance, StreamSubscriptionDeliversOneStreamInVersionOrder) {
    for (int i = 0; i < 30; ++i) {
        MustAppend(store(), "Acct-1", ExpectedVersion::Any(), Events(1));
        MustAppend(store(), "Acct-2", ExpectedVersion::Any(), Events(1));
    }
    Collector collected;
    auto options = FastOptions();
    options.stream = "Acct-1";
    auto sub = MustSubscribe(store(), options, collected.Handler());
    ASSERT_TRUE(collected.WaitFor(30)) << "received " << collected.size();
    for (int i = 0; i < 5; ++i) {
        MustAppend(store(), "Acct-2", ExpectedVersion::Any(), Events(1));
        MustAppend(store(), "Acct-1", ExpectedVersion::Any(), Events(2));
    }
    ASSERT_TRUE(collected.WaitFor(40)) << "received " << collected.size();
    ASSERT_TRUE(WaitUntil([&] { return sub->caught_up(); }));
    EXPECT_TRUE(IsOk(sub->Stop()));
    auto events = collected.events();
    EXPECT_EQ(Versions(events), Range(0, 39));
    for (const auto& e : events) {
        EXPECT_EQ(e.stream_id, "Acct-1");
    }
    EXPECT_EQ(Ids(events), Ids(MustRead(store(), "Acct-1", Forward(0, 0))));
    EXPECT_EQ(sub->position(), 39);
}

TEST_P(EventStoreConformance, StreamSubscriptionStartsAtVersion) {
    MustAppend(store(), "Acct-3", ExpectedVersion::Any(), Events(10));
    Collector collected;
    auto options = FastOptions();
    options.stream = "Acct-3";
    options.start = 6;
    auto sub = MustSubscribe(store(), options, collected.Handler());
    ASSERT_TRUE(collected.WaitFor(4));
    ASSERT_TRUE(WaitUntil([&] { return sub->caught_up(); }));
    EXPECT_TRUE(IsOk(sub->Stop()));
    EXPECT_EQ(Versions(collected.events()), Range(6, 9));
}

TEST_P(EventStoreConformance, SubscriptionFiltersByCategoryAndType) {
    MustAppend(store(), "User-1", ExpectedVersion::Any(), {Ev("Created"), Ev("Renamed")});
    MustAppend(store(), "Order-1", ExpectedVersion::Any(), {Ev("Created"), Ev("Shipped")});
    MustAppend(store(), "Users-1", ExpectedVersion::Any(), {Ev("Created")});
    MustAppend(store(), "User-2", ExpectedVersion::Any(), {Ev("Created"), Ev("Renamed")});
    MustAppend(store(), "Order-2", ExpectedVersion::Any(), {Ev("Shipped")});
    auto all = ReadAllEvents(store());

    struct Case {
        std::vector<std::string> categories;
        std::vector<std::string> types;
    };
    for (const Case& c : {Case{{"User"}, {}}, Case{{}, {"Created"}}, Case{{"User"}, {"Renamed"}},
                          Case{{"Order", "Users"}, {"Created", "Shipped"}}}) {
        std::vector<Uuid> expected;
        for (const auto& e : all) {
            bool category_ok = c.categories.empty() ||
                               std::find(c.categories.begin(), c.categories.end(), e.category()) != c.categories.end();
            bool type_ok = c.types.empty() || std::find(c.types.begin(), c.types.end(), e.type) != c.types.end();
            if (category_ok && type_ok) expected.push_back(e.event_id);
        }
        Collector collected;
        auto options = FastOptions();
        options.categories = c.categories;
        options.types = c.types;
        options.batch_size = 2;
        auto sub = MustSubscribe(store(), options, collected.Handler());
        ASSERT_TRUE(collected.WaitFor(expected.size()));
        ASSERT_TRUE(WaitUntil([&] { return sub->caught_up(); }));
        EXPECT_TRUE(IsOk(sub->Stop()));
        EXPECT_EQ(Ids(collected.events()), expected) << "categories " << ::testing::PrintToString(c.categories)
                                                     << " types " << ::testing::PrintToString(c.types);
    }
}

TEST_P(EventStoreConformance, DurableSubscriptionResumesAfterItsCheckpoint) {
    AppendSpread(store(), "Ckpt", 20, 3, 3);
    auto options = FastOptions();
    options.name = "projection-resume";
    options.batch_size = 8;

    std::vector<RecordedEvent> first;
    {
        Collector collected;
        auto sub = MustSubscribe(store(), options, collected.Handler());
        ASSERT_TRUE(collected.WaitFor(20));
        EXPECT_TRUE(IsOk(sub->Stop()));
        first = collected.events();
    }
    ASSERT_GE(first.size(), 20u);
    const int64_t checkpoint = store().LoadCheckpoint("projection-resume").value();
    EXPECT_EQ(checkpoint, first.back().global_position) << "Stop() must checkpoint the last handled event";

    AppendSpread(store(), "Ckpt", 10, 3, 3);
    ReadAllOptions after;
    after.from_position = checkpoint + 1;
    auto expected = ReadAllEvents(store(), after);
    ASSERT_FALSE(expected.empty());

    Collector resumed;
    options.start = 1;  // a stored checkpoint wins over `start`
    auto sub = MustSubscribe(store(), options, resumed.Handler());
    ASSERT_TRUE(resumed.WaitFor(expected.size())) << "received " << resumed.size() << " of " << expected.size();
    ASSERT_TRUE(WaitUntil([&] { return sub->caught_up(); }));
    EXPECT_TRUE(IsOk(sub->Stop()));
    auto second = resumed.events();
    EXPECT_EQ(Positions(second), Positions(expected));

    // Together the two runs saw everything, the second one nothing at or before the checkpoint.
    std::set<int64_t> seen;
    for (const auto& e : first) seen.insert(e.global_position);
    for (const auto& e : second) {
        EXPECT_GT(e.global_position, checkpoint);
        seen.insert(e.global_position);
    }
    auto all = Positions(ReadAllEvents(store()));
    EXPECT_EQ(std::vector<int64_t>(seen.begin(), seen.end()), all);
    EXPECT_EQ(store().LoadCheckpoint("projection-resume").value(), all.back());
}

TEST_P(EventStoreConformance, SubscriptionStartAtHeadDeliversOnlyNewEvents) {
    AppendSpread(store(), "Head", 5, 2, 2);
    Collector collected;
    auto options = FastOptions();
    options.start_at_head = true;
    auto sub = MustSubscribe(store(), options, collected.Handler());
    ASSERT_TRUE(WaitUntil([&] { return sub->caught_up(); }));
    auto fresh = AppendSpread(store(), "Head", 3, 2, 2);
    ASSERT_TRUE(collected.WaitFor(fresh.size()));
    ASSERT_TRUE(WaitUntil([&] { return sub->caught_up(); }));
    EXPECT_TRUE(IsOk(sub->Stop()));
    EXPECT_EQ(Ids(collected.events()), fresh);
}

TEST_P(EventStoreConformance, SubscriptionStartsAtGivenPosition) {
    AppendSpread(store(), "Start", 10, 1, 2);
    auto all = ReadAllEvents(store());
    Collector collected;
    auto options = FastOptions();
    options.start = all[4].global_position;
    auto sub = MustSubscribe(store(), options, collected.Handler());
    ASSERT_TRUE(collected.WaitFor(6));
    ASSERT_TRUE(WaitUntil([&] { return sub->caught_up(); }));
    EXPECT_TRUE(IsOk(sub->Stop()));
    EXPECT_EQ(Ids(collected.events()), Ids(std::vector<RecordedEvent>(all.begin() + 4, all.end())));
}

TEST_P(EventStoreConformance, SubscriptionNeverSkipsUnderConcurrentWriters) {
    Collector collected;
    auto options = FastOptions();
    options.batch_size = 7;
    auto sub = MustSubscribe(store(), options, collected.Handler());

    constexpr int kWriters = 4;
    constexpr int kAppends = 60;
    std::atomic<int> failures{0};
    std::vector<std::thread> writers;
    for (int w = 0; w < kWriters; ++w) {
        writers.emplace_back([&, w] {
            std::mt19937 rng(static_cast<unsigned>(w));
            for (int i = 0; i < kAppends; ++i) {
                auto r = store().Append("Writer-" + std::to_string(w), ExpectedVersion::Any(), Events(1 + rng() % 3));
                if (!r.ok()) failures.fetch_add(1);
            }
        });
    }
    for (auto& th : writers) th.join();
    ASSERT_EQ(failures.load(), 0);

    auto all = ReadAllEvents(store());
    ASSERT_TRUE(collected.WaitFor(all.size())) << "received " << collected.size() << " of " << all.size();
    ASSERT_TRUE(WaitUntil([&] { return sub->caught_up(); }));
    EXPECT_TRUE(IsOk(sub->Stop()));
    auto events = collected.events();
    EXPECT_EQ(Positions(events), Positions(all));
    EXPECT_EQ(Ids(events), Ids(all));
}

// Regression: a read that filled its batch exactly up to the head cleared caught_up(), and the empty read after it,
// the one that found the end, did not set it again (nor call on_caught_up), so a live subscription looked behind.
TEST_P(EventStoreConformance, CaughtUpAgainAfterAFullBatchThatEndsAtTheHead) {
    std::mutex mu;
    std::vector<int64_t> announced;
    Collector collected;
    auto options = FastOptions();
    options.batch_size = 8;
    options.on_caught_up = [&](int64_t position) {
        std::lock_guard lock(mu);
        announced.push_back(position);
    };
    auto sub = MustSubscribe(store(), options, collected.Handler());
    ASSERT_TRUE(WaitUntil([&] { return sub->caught_up(); }));
    ASSERT_TRUE(IsOk(store().Append("Full-1", ExpectedVersion::NoStream(), Events(8)).status()));
    ASSERT_TRUE(collected.WaitFor(8));
    const int64_t last = collected.events().back().global_position;
    EXPECT_TRUE(WaitUntil([&] {
        std::lock_guard lock(mu);
        return !announced.empty() && announced.back() == last;
    })) << "on_caught_up was not called at the head after a full batch";
    EXPECT_TRUE(sub->caught_up());
    EXPECT_TRUE(IsOk(sub->Stop()));
}

TEST_P(EventStoreConformance, FailingHandlerIsRetriedThenStopsTheSubscription) {
    AppendSpread(store(), "Fail", 10, 1, 2);
    auto all = ReadAllEvents(store());
    const RecordedEvent failing = all[5];

    std::atomic<int> attempts{0};
    Collector handled;
    auto options = FastOptions();
    options.name = "failing-projection";
    options.max_retries = 2;
    auto sub = MustSubscribe(store(), options, [&](const RecordedEvent& e) {
        if (e.event_id == failing.event_id) {
            attempts.fetch_add(1);
            return Status(StatusCode::kFailedPrecondition, "boom on " + e.event_id.ToString());
        }
        handled.Add(e);
        return Status::Ok();
    });

    auto waited = std::async(std::launch::async, [&] { return sub->Wait(); });
    if (waited.wait_for(kDeadline) != std::future_status::ready) {
        (void)sub->Stop();
        FAIL() << "Wait() did not return after the handler kept failing";
    }
    Status final_status = waited.get();
    EXPECT_EQ(final_status.code(), StatusCode::kFailedPrecondition) << final_status.ToString();
    EXPECT_TRUE(ContainsNoCase(final_status.message(), "boom")) << final_status.ToString();
    EXPECT_EQ(attempts.load(), 1 + options.max_retries);
    EXPECT_EQ(Ids(handled.events()), Ids(std::vector<RecordedEvent>(all.begin(), all.begin() + 5)));
    EXPECT_EQ(sub->position(), all[4].global_position);
    auto checkpoint = store().LoadCheckpoint("failing-projection");
    if (checkpoint.ok()) {
        EXPECT_LT(*checkpoint, failing.global_position);
    } else {
        EXPECT_TRUE(IsCode(checkpoint, StatusCode::kNotFound));
    }
    sub.reset();

    // A restarted subscription redelivers the failing event first.
    const int64_t resume_after = checkpoint.ok() ? *checkpoint : 0;
    ReadAllOptions rest;
    rest.from_position = resume_after + 1;
    auto expected = ReadAllEvents(store(), rest);
    Collector resumed;
    auto again = MustSubscribe(store(), options, resumed.Handler());
    ASSERT_TRUE(resumed.WaitFor(expected.size()));
    ASSERT_TRUE(WaitUntil([&] { return again->caught_up(); }));
    EXPECT_TRUE(IsOk(again->Stop()));
    EXPECT_EQ(Positions(resumed.events()), Positions(expected));
}

TEST_P(EventStoreConformance, SlowHandlerDoesNotBlockAppends) {
    MustAppend(store(), "Slow-1", ExpectedVersion::Any(), Events(1));
    std::promise<void> release;
    std::shared_future<void> released = release.get_future().share();
    std::atomic<bool> entered{false};
    Collector collected;
    auto sub = MustSubscribe(store(), FastOptions(), [&](const RecordedEvent& e) {
        entered.store(true);
        (void)released.wait_for(60s);
        collected.Add(e);
        return Status::Ok();
    });
    ASSERT_TRUE(WaitUntil([&] { return entered.load(); }));

    auto appends = std::async(std::launch::async, [&] {
        for (int i = 0; i < 50; ++i) MustAppend(store(), "Slow-2", ExpectedVersion::Any(), Events(1));
    });
    const bool completed = appends.wait_for(kDeadline) == std::future_status::ready;
    const size_t handled_meanwhile = collected.size();
    release.set_value();
    appends.get();
    EXPECT_TRUE(completed) << "appends did not complete while the handler was blocked";
    EXPECT_EQ(handled_meanwhile, 0u);

    ASSERT_TRUE(collected.WaitFor(51));
    EXPECT_TRUE(IsOk(sub->Stop()));
    EXPECT_EQ(Positions(collected.events()), Positions(ReadAllEvents(store())));
}

// ---------------------------------------------------------------------------------------------------------------
// Durable backends: everything acknowledged survives close and reopen

TEST_P(DurableEventStoreConformance, EverythingSurvivesReopen) {
    MustAppend(store(), "Keep-1", ExpectedVersion::Any(), {Ev("Created", R"({"a":1})", R"({"tenant":"t"})")});
    MustAppend(store(), "Keep-1", ExpectedVersion::Exact(0), Events(4));
    MustAppend(store(), "Keep-2", ExpectedVersion::Any(), Events(3));
    StreamMetadata m;
    m.max_count = 2;
    m.custom = R"({"owner":"x"})";
    ASSERT_TRUE(IsOk(store().SetStreamMetadata("Keep-2", m)));
    MustAppend(store(), "Soft-1", ExpectedVersion::Any(), Events(2));
    ASSERT_TRUE(IsOk(store().DeleteStream("Soft-1", ExpectedVersion::Any(), DeleteMode::kSoft)));
    MustAppend(store(), "Tomb-1", ExpectedVersion::Any(), Events(1));
    ASSERT_TRUE(IsOk(store().DeleteStream("Tomb-1", ExpectedVersion::Any(), DeleteMode::kHard)));
    Snapshot snap;
    snap.stream_id = "Keep-1";
    snap.version = 4;
    snap.type = "snapshot:Keep";
    snap.data = std::string("s\0nap", 5);
    ASSERT_TRUE(IsOk(store().SaveSnapshot(snap)));
    ASSERT_TRUE(IsOk(store().SaveCheckpoint("proj", 7)));

    const auto all_before = ReadAllEvents(store());
    const int64_t head = Head(store());
    const auto streams_before = store().ListStreams().value();

    Reopen();

    auto all_after = ReadAllEvents(store());
    ASSERT_EQ(all_after.size(), all_before.size());
    for (size_t i = 0; i < all_after.size(); ++i) ExpectSameEnvelope(all_after[i], all_before[i]);
    EXPECT_EQ(Head(store()), head);
    auto streams_after = store().ListStreams().value();
    ASSERT_EQ(streams_after.size(), streams_before.size());
    for (size_t i = 0; i < streams_after.size(); ++i) {
        EXPECT_EQ(streams_after[i].stream_id, streams_before[i].stream_id);
        EXPECT_EQ(streams_after[i].version, streams_before[i].version);
        EXPECT_EQ(streams_after[i].state, streams_before[i].state);
        EXPECT_EQ(streams_after[i].metadata.max_count, streams_before[i].metadata.max_count);
        EXPECT_EQ(ParseJson(streams_after[i].metadata.custom), ParseJson(streams_before[i].metadata.custom));
    }

    EXPECT_EQ(Versions(MustRead(store(), "Keep-1")), Range(0, 4));
    EXPECT_EQ(Versions(MustRead(store(), "Keep-2")), Range(1, 2));
    EXPECT_TRUE(IsCode(store().ReadStream("Soft-1"), StatusCode::kNotFound));
    EXPECT_EQ(store().GetStream("Soft-1").value().state, StreamState::kSoftDeleted);
    EXPECT_TRUE(IsCode(store().ReadStream("Tomb-1"), StatusCode::kStreamDeleted));
    EXPECT_TRUE(IsCode(store().Append("Tomb-1", ExpectedVersion::Any(), Events(1)), StatusCode::kStreamDeleted));
    auto loaded = store().LoadSnapshot("Keep-1").value();
    EXPECT_EQ(loaded.version, 4);
    EXPECT_EQ(loaded.type, snap.type);
    EXPECT_EQ(loaded.data, snap.data);
    EXPECT_EQ(store().LoadCheckpoint("proj").value(), 7);

    // Writing continues where it stopped.
    auto next = MustAppend(store(), "Keep-1", ExpectedVersion::Exact(4), Events(1));
    EXPECT_EQ(next.next_expected_version, 5);
    EXPECT_GT(next.first_position, head);
    auto reopened = MustAppend(store(), "Soft-1", ExpectedVersion::NoStream(), Events(1));
    EXPECT_EQ(reopened.next_expected_version, 2);
}

TEST_P(DurableEventStoreConformance, IdempotentResendIsRecognizedAfterReopen) {
    auto events = Events(3);
    auto first = MustAppend(store(), "Idem-1", ExpectedVersion::NoStream(), events);
    Reopen();
    auto again = MustAppend(store(), "Idem-1", ExpectedVersion::NoStream(), events);
    EXPECT_TRUE(again.already_present);
    EXPECT_EQ(again.first_position, first.first_position);
    EXPECT_EQ(again.last_position, first.last_position);
    EXPECT_EQ(MustRead(store(), "Idem-1").size(), 3u);

    auto changed = events[1];
    changed.data = R"({"changed":true})";
    EXPECT_TRUE(IsCode(store().Append("Idem-2", ExpectedVersion::Any(), {changed}), StatusCode::kInvalidArgument));
}

TEST_P(DurableEventStoreConformance, SubscriptionResumesAtCheckpointAfterReopen) {
    AppendSpread(store(), "Resume", 15, 2, 3);
    auto options = FastOptions();
    options.name = "projection-reopen";
    {
        Collector collected;
        auto sub = MustSubscribe(store(), options, collected.Handler());
        ASSERT_TRUE(collected.WaitFor(30));
        ASSERT_TRUE(WaitUntil([&] { return sub->caught_up(); }));
        EXPECT_TRUE(IsOk(sub->Stop()));
        EXPECT_EQ(collected.size(), 30u);
    }
    const int64_t checkpoint = store().LoadCheckpoint("projection-reopen").value();
    EXPECT_EQ(checkpoint, Head(store()));

    Reopen();
    EXPECT_EQ(store().LoadCheckpoint("projection-reopen").value(), checkpoint);
    auto fresh = AppendSpread(store(), "Resume", 5, 2, 3);
    Collector resumed;
    auto sub = MustSubscribe(store(), options, resumed.Handler());
    ASSERT_TRUE(resumed.WaitFor(fresh.size()));
    ASSERT_TRUE(WaitUntil([&] { return sub->caught_up(); }));
    EXPECT_TRUE(IsOk(sub->Stop()));
    EXPECT_EQ(Ids(resumed.events()), fresh);
}

}  // namespace
}  // namespace keel::testing
