#pragma once
/// Aggregates and the repository: event-sourced domain objects rebuilt by replaying their stream.
///
/// An aggregate is a plain C++ type (no base class) holding state and one handler per event type:
///
///     struct UserCreated { std::string id; };
///     NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(UserCreated, id)
///     struct UserNameUpdated { std::string name; };
///     NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(UserNameUpdated, name)
///
///     struct User {
///         std::string id, name;
///         void On(const UserCreated& e) { id = e.id; }
///         void On(const UserNameUpdated& e) { name = e.name; }
///     };
///
///     keel::Repository<User, UserCreated, UserNameUpdated> users(*store);
///
/// Events are plain structs made serializable through nlohmann/json's ADL hook (to_json/from_json, e.g. with
/// NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE); they are stored as JSON under the name EventTypeName<E>() (see there).
/// Loading replays the stream's events through `On`; saving appends the events raised since the load with an
/// optimistic-concurrency check on the loaded version. Guide: docs/aggregates.md.
///
/// Thread-safety: a Repository only holds a reference to the store, the publisher pointer and its options; it is
/// safe to share between threads (the store is thread-safe and publishers must accept concurrent Publish calls).
/// An Aggregate<T> is a plain value: one thread at a time.

#include <algorithm>
#include <array>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "keel/event.hpp"
#include "keel/event_store.hpp"
#include "keel/publisher.hpp"
#include "keel/status.hpp"
#include "keel/uuid.hpp"

namespace keel {

namespace detail {

// The compiler's spelling of this function, which contains T's fully qualified name:
//   GCC:   "... RawTypeSignature() [with T = myapp::UserCreated; std::string_view = ...]"
//   Clang: "... RawTypeSignature() [T = myapp::UserCreated]"
template <class T>
constexpr std::string_view RawTypeSignature() {
#if defined(__GNUC__) || defined(__clang__)
    return __PRETTY_FUNCTION__;
#else
#error "keel derives event type names with __PRETTY_FUNCTION__ (GCC or Clang); give each event a kEventType"
#endif
}

// T's unqualified name: the text after "T = " up to the first ';' or ']' at nesting depth 0, then after the last
// "::" at depth 0 (which strips namespaces, "(anonymous namespace)::" and an enclosing function's "f()::").
template <class T>
constexpr std::string_view DerivedTypeName() {
    constexpr std::string_view sig = RawTypeSignature<T>();
    constexpr std::string_view marker = "T = ";
    static_assert(sig.find(marker) != std::string_view::npos, "unexpected __PRETTY_FUNCTION__ format");
    const size_t begin = sig.find(marker) + marker.size();
    size_t end = begin;
    int depth = 0;
    for (; end < sig.size(); ++end) {
        const char c = sig[end];
        if (c == '<' || c == '(' || c == '[') {
            ++depth;
        } else if (c == '>' || c == ')') {
            --depth;
        } else if (c == ']') {
            if (depth == 0) break;
            --depth;
        } else if (c == ';' && depth == 0) {
            break;
        }
    }
    std::string_view full = sig.substr(begin, end - begin);
    size_t name_begin = 0;
    depth = 0;
    for (size_t i = 0; i + 1 < full.size(); ++i) {
        const char c = full[i];
        if (c == '<' || c == '(' || c == '[') {
            ++depth;
        } else if (c == '>' || c == ')' || c == ']') {
            --depth;
        } else if (c == ':' && full[i + 1] == ':' && depth == 0) {
            name_begin = i + 2;
            ++i;
        }
    }
    return full.substr(name_begin);
}

template <class E>
concept HasEventTypeOverride = requires {
    { E::kEventType } -> std::convertible_to<std::string_view>;
};

template <class T>
concept HasSnapshotVersion = requires {
    { T::kSnapshotVersion } -> std::convertible_to<int>;
};

template <size_t N>
constexpr bool AllDistinct(const std::array<std::string_view, N>& names) {
    for (size_t i = 0; i < N; ++i) {
        for (size_t j = i + 1; j < N; ++j) {
            if (names[i] == names[j]) return false;
        }
    }
    return true;
}

template <class E, class... Es>
inline constexpr bool kIsOneOf = (std::is_same_v<E, Es> || ...);

}  // namespace detail

/// True when E converts to and from nlohmann::json through the ADL hook (to_json/from_json found for E, e.g. by
/// NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE) and is default-constructible (decoding fills a default-constructed E).
template <class E>
concept JsonSerializable = std::default_initializable<E> &&
    requires(nlohmann::json& j, const nlohmann::json& cj, const E& in, E& out) {
    nlohmann::adl_serializer<E>::to_json(j, in);
    nlohmann::adl_serializer<E>::from_json(cj, out);
};

/// True when aggregate type T has a handler `On(const E&)` for event type E.
template <class T, class E>
concept HandlesEvent = requires(T& state, const E& event) {
    state.On(event);
};

/// The type name stored with events of type E (EventData::type, RecordedEvent::type).
///
/// `E::kEventType` when E declares it (`static constexpr std::string_view kEventType = "user.created";`), otherwise
/// E's unqualified C++ name derived at compile time: `myapp::UserCreated` → "UserCreated" (namespaces, an anonymous
/// namespace and an enclosing function are stripped). The derived name follows the code: RENAMING A STRUCT THAT
/// HAS NO kEventType CHANGES THE NAME ITS NEW EVENTS ARE STORED UNDER, and the events already stored under the old
/// name no longer load (Load returns kNotSupported naming the type). Declare kEventType before renaming, or from
/// the start for events that other services read. Class-template specializations must declare kEventType (their
/// derived spelling differs between compilers), which a static_assert enforces.
template <class E>
constexpr std::string_view EventTypeName() {
    if constexpr (detail::HasEventTypeOverride<E>) {
        constexpr std::string_view name = E::kEventType;
        static_assert(!name.empty(), "kEventType must not be empty");
        return name;
    } else {
        constexpr std::string_view name = detail::DerivedTypeName<E>();
        static_assert(!name.empty(), "could not derive the event type name; declare kEventType");
        static_assert(name.find('<') == std::string_view::npos,
                      "an event that is a class-template specialization must declare "
                      "static constexpr std::string_view kEventType");
        return name;
    }
}

/// The snapshot type under which Repository<T, …> stores T's state: "snapshot:<T's unqualified name>", or
/// "snapshot:<name>/v<N>" when T declares `static constexpr int kSnapshotVersion = N;`. A snapshot whose type differs
/// is ignored by Load, so bumping kSnapshotVersion (after changing T's fields or its On handlers) retires every
/// stored snapshot of T at once: the next Load replays the full stream.
template <class T>
std::string SnapshotTypeName() {
    std::string name = "snapshot:";
    name += detail::DerivedTypeName<T>();
    if constexpr (detail::HasSnapshotVersion<T>) {
        name += "/v";
        name += std::to_string(static_cast<int>(T::kSnapshotVersion));
    }
    return name;
}

/// A point in the store's history for a temporal load: a global position, or a time (µs since the Unix epoch, UTC).
struct AsOf {
    /// State after every event with global_position <= `global_position`.
    static constexpr AsOf Position(int64_t global_position) noexcept { return AsOf{global_position, std::nullopt}; }
    /// State after every event recorded at or before `micros_since_epoch`.
    static constexpr AsOf Time(int64_t micros_since_epoch) noexcept { return AsOf{std::nullopt, micros_since_epoch}; }
    static AsOf Time(std::chrono::system_clock::time_point t) noexcept {
        return Time(std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count());
    }

    std::optional<int64_t> position;
    std::optional<int64_t> time_us;
};

template <class T, class... Events>
class Repository;

/// One aggregate instance: its stream id, its state T, the stream version it was loaded at and the events raised
/// since (pending, not yet saved). Obtain one from Repository::Load, or construct a new one with its stream id.
template <class T>
class Aggregate {
    static_assert(std::default_initializable<T>, "an aggregate's state type must be default-constructible");

public:
    /// A new aggregate (version -1, no events) for stream `id`, e.g. "User-123".
    explicit Aggregate(std::string id) : id_(std::move(id)) {}

    /// The stream id.
    const std::string& id() const noexcept { return id_; }
    /// The state: the loaded events and every pending event applied through T::On.
    const T& state() const noexcept { return state_; }
    const T* operator->() const noexcept { return &state_; }
    const T& operator*() const noexcept { return state_; }
    /// The stream version this state was loaded at (or last saved at): -1 for a new aggregate. Pending events do
    /// not count; Save appends them expecting exactly this version.
    int64_t version() const noexcept { return version_; }

    /// Applies `event` to the state (T::On) and queues it for the next Save as an EventData with a freshly
    /// generated event id, type EventTypeName<E>(), data = the event as JSON and the given metadata (empty or a
    /// JSON object such as {"correlation_id": "…"}). The event id is fixed now, so re-saving after a failed publish
    /// does not write the event twice.
    template <class E>
    void Raise(const E& event, std::string metadata = {}) {
        static_assert(HandlesEvent<T, E>, "Raise: the aggregate type has no On(const E&) for this event type");
        static_assert(JsonSerializable<E>,
                      "Raise: the event type needs to_json/from_json found by ADL and a default constructor");
        EventData data;
        data.event_id = Uuid::Generate();
        data.type = std::string(EventTypeName<E>());
        data.data = nlohmann::json(event).dump();
        data.metadata = std::move(metadata);
        state_.On(event);
        pending_.push_back(std::move(data));
    }

    /// The events raised since the last load or successful save, in order.
    const std::vector<EventData>& pending() const noexcept { return pending_; }

private:
    template <class U, class... Es>
    friend class Repository;

    std::string id_;
    T state_{};
    int64_t version_ = -1;
    std::vector<EventData> pending_;
};

/// Options of a Repository. Every field has a default; `RepositoryOptions{}` is a repository that never snapshots
/// and publishes nothing.
struct RepositoryOptions {
    /// How many times Execute reloads and re-runs the command after a kWrongExpectedVersion conflict, on top of the
    /// first attempt (so at most max_retries + 1 runs). Negative counts as 0. Default: 3.
    int max_retries = 3;
    /// Snapshot period in events. 0: never. N > 0: when a Save takes the stream across a multiple of N events
    /// (e.g. from 3 to 5 events with N = 4), the state after the Save is stored as the stream's snapshot
    /// (type SnapshotTypeName<T>(), data = T as JSON). Only aggregates whose state T is JsonSerializable are
    /// snapshotted; for the others this option is ignored. A failed snapshot write does not fail the Save (the
    /// events are committed; the snapshot is only a shortcut for Load). Default: 0.
    int64_t snapshot_every = 0;
    /// Receives every event the repository saved (Save, Append, Execute), after the commit, with its envelope.
    /// Not owned; must outlive the repository. At most once across a crash: see publisher.hpp. Default: nullptr
    /// (no publishing).
    EventPublisher* publisher = nullptr;
    /// Events read per ReadStream call while loading. Must be > 0 (0 counts as 1). Default: 1024.
    size_t read_page_size = 1024;
};

/// Loads and saves aggregates of type T whose streams hold the event types Events... .
///
/// Compile-time requirements (checked with static_asserts): T is default-constructible and has `On(const E&)` for
/// every E in Events; every E is JsonSerializable; the Events have distinct EventTypeName()s.
template <class T, class... Events>
class Repository {
    static_assert(sizeof...(Events) > 0, "Repository<T, Events...> needs at least one event type");
    static_assert(std::default_initializable<T>, "an aggregate's state type must be default-constructible");
    static_assert((HandlesEvent<T, Events> && ...), "the aggregate type lacks an On(const E&) for one of the Events");
    static_assert((JsonSerializable<Events> && ...),
                  "every event type needs to_json/from_json found by ADL (e.g. NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE) "
                  "and a default constructor");

    static constexpr std::array<std::string_view, sizeof...(Events)> kTypeNames{EventTypeName<Events>()...};
    static_assert(detail::AllDistinct(kTypeNames), "two event types of this Repository have the same EventTypeName()");

public:
    explicit Repository(EventStore& store, RepositoryOptions options = {}) : store_(store), options_(options) {
        if (options_.read_page_size == 0) options_.read_page_size = 1;
        if (options_.max_retries < 0) options_.max_retries = 0;
    }

    const RepositoryOptions& options() const noexcept { return options_; }
    /// The event type names this repository reads and writes, in the order of Events.
    static constexpr const std::array<std::string_view, sizeof...(Events)>& event_types() noexcept {
        return kTypeNames;
    }

    /// Rebuilds the aggregate of stream `id`: the latest snapshot if there is one of type SnapshotTypeName<T>()
    /// that decodes (an undecodable one is ignored and the whole stream is replayed), then every later event
    /// through T::On, reading the stream page by page to its end. The returned aggregate has no pending events and
    /// version() = the last event's version.
    /// Errors:
    /// - kNotFound: the stream does not exist (or is soft-deleted). Start a new Aggregate<T>(id) instead.
    /// - kNotSupported: the stream holds an event type that is not one of Events (the message names the type, the
    ///   stream and the version; e.g. an event struct was renamed without kEventType).
    /// - kCorruption: an event's data does not decode into its type (the message names stream, version and type).
    /// - any error of EventStore::ReadStream / LoadSnapshot (kStreamDeleted, kInvalidArgument, kUnavailable …).
    Result<Aggregate<T>> Load(std::string_view id) {
        Aggregate<T> aggregate{std::string(id)};
        int64_t next_version = 0;
        bool from_snapshot = false;
        if constexpr (JsonSerializable<T>) {
            Result<Snapshot> snapshot = store_.LoadSnapshot(id);
            if (snapshot.ok()) {
                const Snapshot& stored = snapshot.value();
                if (DecodeSnapshot(stored, aggregate.state_)) {
                    aggregate.version_ = stored.version;
                    next_version = stored.version + 1;
                    from_snapshot = true;
                }
            } else if (snapshot.status().code() != StatusCode::kNotFound &&
                       snapshot.status().code() != StatusCode::kNotSupported) {
                return snapshot.status();
            }
        }
        ReadStreamOptions read;
        read.from_version = next_version;
        Status status = Replay(aggregate, read, from_snapshot);
        if (!status.ok() && from_snapshot && status.code() == StatusCode::kFailedPrecondition) {
            // The snapshot does not join the visible events (e.g. the stream was soft-deleted and re-opened after
            // it was taken): ignore it and replay everything visible.
            aggregate = Aggregate<T>{std::string(id)};
            read.from_version = 0;
            from_snapshot = false;
            status = Replay(aggregate, read, false);
        }
        KEEL_RETURN_IF_ERROR(status);
        if (aggregate.version_ < 0) {
            // The stream exists but shows no event (stream metadata hides them all): take its real version so that
            // a Save checks against it instead of failing forever with NoStream.
            Result<StreamInfo> info = store_.GetStream(id);
            if (!info.ok()) return info.status();
            aggregate.version_ = info.value().version;
        }
        return aggregate;
    }

    /// The aggregate as it was at `as_of`: a full replay of the events with global_position <= as_of.position
    /// (or recorded at or before as_of.time_us), never from a snapshot. version() is the last such event's version.
    /// The result is meant for reading; saving it would conflict unless the stream has not moved since.
    /// Errors: kNotFound when the stream does not exist or had no event yet at that point; otherwise as Load.
    Result<Aggregate<T>> LoadAsOf(std::string_view id, AsOf as_of) {
        Aggregate<T> aggregate{std::string(id)};
        ReadStreamOptions read;
        read.from_version = 0;
        read.as_of_position = as_of.position;
        read.as_of_time = as_of.time_us;
        KEEL_RETURN_IF_ERROR(Replay(aggregate, read, false));
        if (aggregate.version_ < 0) {
            std::string when = as_of.position ? "global position " + std::to_string(*as_of.position)
                                              : "time " + std::to_string(as_of.time_us.value_or(0)) + " us";
            return Status::NotFound("stream '" + std::string(id) + "' had no event as of " + when);
        }
        return aggregate;
    }

    /// Appends the aggregate's pending events with ExpectedVersion::Exact(aggregate.version()) (NoStream for a new
    /// aggregate). On success: version() advances to the stream's new version and pending() is cleared; a snapshot
    /// is written when the options ask for one; then the saved events, read back from the store so that they carry
    /// their envelopes, are published to options().publisher. With no pending events it writes nothing and returns
    /// an AppendResult with next_expected_version = version() and positions 0.
    /// Errors:
    /// - any error of EventStore::Append, notably kWrongExpectedVersion (someone else saved the stream since this
    ///   aggregate was loaded; Status::actual_version() says where it is: reload and retry, or use Execute). The
    ///   aggregate is unchanged.
    /// - kInvalidArgument: a pending event's type is not one of Events (Raise accepts any event T handles; this
    ///   repository could not load it back). Nothing is written.
    /// - kUnavailable with a message saying the events ARE COMMITTED: publishing (or reading them back for it)
    ///   failed. The aggregate keeps its pending events and its old version, so saving it again re-publishes them;
    ///   that re-save writes nothing twice because the append is idempotent by event id
    ///   (AppendResult::already_present).
    Result<AppendResult> Save(Aggregate<T>& aggregate) { return SaveImpl(aggregate, /*from_execute=*/false); }

    /// Appends `events` to stream `id` under `expected` in one atomic append (each gets a generated event id),
    /// then publishes them like Save. Does not snapshot (no aggregate state is at hand).
    /// Errors: any error of EventStore::Append (nothing written); kUnavailable with a message saying the events are
    /// committed when only publishing failed. In that case DO NOT re-send the same Append: it would generate new
    /// event ids and store the events twice (use Aggregate + Save when publishing must be retried).
    template <class... E>
    Result<AppendResult> Append(std::string_view id, ExpectedVersion expected, const E&... events) {
        static_assert(sizeof...(E) > 0, "Append needs at least one event");
        static_assert((detail::kIsOneOf<E, Events...> && ...), "Append takes only this repository's event types");
        std::vector<EventData> data;
        data.reserve(sizeof...(E));
        (data.push_back(ToEventData(events)), ...);
        Result<AppendResult> result = store_.Append(id, expected, std::span<const EventData>(data));
        if (!result.ok()) return result;
        const AppendResult appended = result.value();
        Status published = PublishAppended(id, data, appended);
        if (!published.ok()) {
            return Status::Unavailable("the events are committed to stream '" + std::string(id) + "' (" +
                                       PositionsText(appended) +
                                       ") but publishing them failed: " + published.ToString() +
                                       "; they will not be re-published, and re-sending this Append would store "
                                       "them twice");
        }
        return appended;
    }

    /// Runs a command against the current state and saves what it raised, retrying on concurrency conflicts.
    /// `command` is callable as `Status(Aggregate<T>&)` (or returns void, meaning OK); it inspects the state and
    /// calls Raise. Each attempt: Load (a missing stream gives a new Aggregate<T>(id)), run the command, Save. On
    /// kWrongExpectedVersion from Save the command runs again on a fresh load, up to options().max_retries more
    /// times; so a command may run several times and must not have side effects besides Raise.
    /// Returns Save's AppendResult; when the command raised nothing, OK with next_expected_version = the loaded
    /// version and positions 0 (nothing is written).
    /// Errors: the command's own error, unchanged (nothing is saved); kWrongExpectedVersion after the last retry;
    /// any Load or Save error; kUnavailable when the events were committed but publishing failed (they are not
    /// re-published: Execute does not re-run a command that succeeded).
    template <class F>
    Result<AppendResult> Execute(std::string_view id, F&& command) {
        using Returned = std::invoke_result_t<F&, Aggregate<T>&>;
        static_assert(std::is_void_v<Returned> || std::is_convertible_v<Returned, Status>,
                      "an Execute command is callable as Status(Aggregate<T>&) or void(Aggregate<T>&)");
        const int attempts = options_.max_retries + 1;
        for (int attempt = 1;; ++attempt) {
            Result<Aggregate<T>> loaded = Load(id);
            if (!loaded.ok() && loaded.status().code() != StatusCode::kNotFound) return loaded.status();
            Aggregate<T> aggregate = loaded.ok() ? std::move(loaded).value() : Aggregate<T>{std::string(id)};
            if constexpr (std::is_void_v<Returned>) {
                std::invoke(command, aggregate);
            } else {
                Status status = std::invoke(command, aggregate);
                if (!status.ok()) return status;
            }
            Result<AppendResult> saved = SaveImpl(aggregate, /*from_execute=*/true);
            if (saved.ok() || saved.status().code() != StatusCode::kWrongExpectedVersion) return saved;
            if (attempt >= attempts) {
                const Status& conflict = saved.status();
                return Status::WrongExpectedVersion(
                    "Execute on stream '" + std::string(id) + "' gave up after " + std::to_string(attempts) +
                        " attempt(s), each conflicting with a concurrent writer; last: " + conflict.message(),
                    conflict.actual_version().value_or(-1));
            }
        }
    }

private:
    Result<AppendResult> SaveImpl(Aggregate<T>& aggregate, bool from_execute) {
        if (aggregate.pending_.empty()) {
            AppendResult nothing;
            nothing.next_expected_version = aggregate.version_;
            return nothing;
        }
        for (const EventData& event : aggregate.pending_) {
            if (!IsKnownType(event.type)) {
                return Status::InvalidArgument("cannot save event type '" + event.type + "' to stream '" +
                                               aggregate.id_ + "': it is not one of this repository's events (" +
                                               KnownTypesList() + "), so Load could not read it back");
            }
        }
        Result<AppendResult> result = store_.Append(aggregate.id_, ExpectedVersion::Exact(aggregate.version_),
                                                    std::span<const EventData>(aggregate.pending_));
        if (!result.ok()) return result;
        const AppendResult appended = result.value();
        MaybeSnapshot(aggregate, appended.next_expected_version);
        Status published = PublishAppended(aggregate.id_, aggregate.pending_, appended);
        if (!published.ok()) {
            const std::string what = "the events are committed to stream '" + aggregate.id_ + "' (" +
                                     PositionsText(appended) + ") but publishing them failed: " + published.ToString();
            if (from_execute) {
                return Status::Unavailable(what +
                                           "; Execute does not re-publish them (running the command again would "
                                           "apply it twice): use a store subscription for durable delivery");
            }
            return Status::Unavailable(what +
                                       "; the aggregate keeps them pending: saving it again re-publishes them and "
                                       "writes nothing twice (the append is idempotent by event id)");
        }
        aggregate.version_ = appended.next_expected_version;
        aggregate.pending_.clear();
        return appended;
    }

    static bool IsKnownType(std::string_view type) {
        return std::find(kTypeNames.begin(), kTypeNames.end(), type) != kTypeNames.end();
    }

    static std::string KnownTypesList() {
        std::string list;
        for (std::string_view name : kTypeNames) {
            if (!list.empty()) list += ", ";
            list += name;
        }
        return list;
    }

    static std::string PositionsText(const AppendResult& r) {
        return "global positions " + std::to_string(r.first_position) + ".." + std::to_string(r.last_position) +
               ", stream version now " + std::to_string(r.next_expected_version);
    }

    template <class E>
    static EventData ToEventData(const E& event) {
        EventData data;
        data.event_id = Uuid::Generate();
        data.type = std::string(EventTypeName<E>());
        data.data = nlohmann::json(event).dump();
        return data;
    }

    static bool DecodeSnapshot(const Snapshot& snapshot, T& state) {
        if (snapshot.type != SnapshotTypeName<T>() || snapshot.version < 0) return false;
        try {
            T decoded{};
            nlohmann::json::parse(snapshot.data).get_to(decoded);
            state = std::move(decoded);
            return true;
        } catch (const nlohmann::json::exception&) {
            return false;
        }
    }

    // Decodes one event into its type and applies it. Returns false when the type is not E.
    template <class E>
    static bool TryApply(T& state, const RecordedEvent& event, Status& status) {
        if (event.type != EventTypeName<E>()) return false;
        E decoded{};
        try {
            nlohmann::json::parse(event.data).get_to(decoded);
        } catch (const nlohmann::json::exception& e) {
            status =
                Status::Corruption("stream '" + event.stream_id + "' version " + std::to_string(event.stream_version) +
                                   ": the data of event type '" + event.type + "' does not decode: " + e.what());
            return true;
        }
        state.On(decoded);
        return true;
    }

    static Status Apply(T& state, const RecordedEvent& event) {
        Status status;
        const bool known = (TryApply<Events>(state, event, status) || ...);
        if (!known) {
            return Status::NotSupported("stream '" + event.stream_id + "' holds an event of unknown type '" +
                                        event.type + "' at version " + std::to_string(event.stream_version) +
                                        "; this repository knows: " + KnownTypesList() +
                                        " (was an event struct renamed without kEventType?)");
        }
        return status;
    }

    // Reads the stream from read.from_version to its end, page by page, applying every event. With
    // `must_join` (after a snapshot), the first event must be exactly read.from_version, else
    // kFailedPrecondition (the caller then drops the snapshot).
    Status Replay(Aggregate<T>& aggregate, ReadStreamOptions read, bool must_join) {
        read.direction = ReadDirection::kForward;
        read.limit = options_.read_page_size;
        bool first = true;
        for (;;) {
            Result<std::vector<RecordedEvent>> read_result = store_.ReadStream(aggregate.id_, read);
            if (!read_result.ok()) return read_result.status();
            const std::vector<RecordedEvent> page = std::move(read_result).value();
            for (const RecordedEvent& event : page) {
                if (first && must_join && event.stream_version != read.from_version) {
                    return Status::FailedPrecondition("the snapshot does not join the stream's events");
                }
                first = false;
                KEEL_RETURN_IF_ERROR(Apply(aggregate.state_, event));
                aggregate.version_ = event.stream_version;
            }
            if (page.size() < read.limit) return Status::Ok();
            read.from_version = page.back().stream_version + 1;
        }
    }

    void MaybeSnapshot(const Aggregate<T>& aggregate, int64_t new_version) {
        if constexpr (JsonSerializable<T>) {
            const int64_t every = options_.snapshot_every;
            if (every <= 0) return;
            const int64_t events_before = aggregate.version_ + 1;
            const int64_t events_after = new_version + 1;
            if (events_after / every <= events_before / every) return;
            Snapshot snapshot;
            snapshot.stream_id = aggregate.id_;
            snapshot.version = new_version;
            snapshot.type = SnapshotTypeName<T>();
            try {
                snapshot.data = nlohmann::json(aggregate.state_).dump();
            } catch (const nlohmann::json::exception&) {
                return;  // e.g. a string that is not UTF-8: no snapshot, Load replays
            }
            (void)store_.SaveSnapshot(snapshot);  // best effort, documented in RepositoryOptions::snapshot_every
        } else {
            (void)aggregate;
            (void)new_version;
        }
    }

    // Reads the just-appended events back (so they carry their envelopes) and publishes them in order.
    Status PublishAppended(std::string_view id, const std::vector<EventData>& sent, const AppendResult& appended) {
        EventPublisher* publisher = options_.publisher;
        if (publisher == nullptr || sent.empty()) return Status::Ok();
        const auto count = static_cast<int64_t>(sent.size());
        ReadStreamOptions read;
        read.direction = ReadDirection::kForward;
        read.from_version = appended.next_expected_version - count + 1;
        read.limit = sent.size();
        Result<std::vector<RecordedEvent>> read_back = store_.ReadStream(id, read);
        std::vector<RecordedEvent> events;
        if (read_back.ok()) events = std::move(read_back).value();
        if (!read_back.ok() || !SameIds(events, sent)) {
            // Stream metadata (max count, max age, truncate-before) may hide them from a stream read; $all shows
            // every event, and an append's events all lie between its first and last global position.
            ReadAllOptions all;
            all.from_position = appended.first_position;
            all.as_of_position = appended.last_position;
            all.limit = 0;
            Result<ReadAllSlice> slice = store_.ReadAll(all);
            if (!slice.ok()) return slice.status().WithContext("reading the saved events back to publish them");
            events.clear();
            for (RecordedEvent& e : slice.value().events) {
                if (e.stream_id == id) events.push_back(std::move(e));
            }
            if (!SameIds(events, sent)) {
                return Status::Internal("the saved events of stream '" + std::string(id) +
                                        "' could not be read back to publish them");
            }
        }
        for (const RecordedEvent& event : events) {
            KEEL_RETURN_IF_ERROR(publisher->Publish(event));
        }
        return Status::Ok();
    }

    static bool SameIds(const std::vector<RecordedEvent>& read, const std::vector<EventData>& sent) {
        if (read.size() != sent.size()) return false;
        for (size_t i = 0; i < read.size(); ++i) {
            if (read[i].event_id != sent[i].event_id) return false;
        }
        return true;
    }

    EventStore& store_;
    RepositoryOptions options_;
};

}  // namespace keel
