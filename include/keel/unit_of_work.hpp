#pragma once
/// keel::UnitOfWork: one local transaction on the service's own database holding the service's SQL, event appends,
/// outbox messages and inbox marks — all committed together or not at all.
///
/// The service's tables live in the same database as the event store (the `sqlite:`, `postgresql:` or `mysql:`
/// store the unit of work is begun on). Domain events raised with Raise() are dispatched to the in-process handlers
/// of a Mediator *before* commit, on the same transaction and connection (the MediatR pattern); a handler that fails
/// rolls back everything: the first aggregate's rows, the handlers' rows, the events, the outbox.
///
/// RAII: a unit of work that is destroyed without a successful Commit() rolls back. After a failed statement the
/// unit of work still works (the failed statement left no trace); after a failed Commit() it is finished.
///
/// Storage that cannot do transactions is refused: Begin() on `memory:` is kNotSupported; on MariaDB the store
/// refuses non-InnoDB tables at open, and Exec() refuses to write a table whose engine is not transactional.
///
/// Thread-safety: a UnitOfWork is used by one thread. On `sqlite:` it holds the database's write lock from Begin()
/// to Commit()/rollback, so other writers (appends through the same store included) wait: keep units of work short.

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <typeindex>
#include <unordered_map>
#include <variant>
#include <vector>

#include "keel/broker.hpp"
#include "keel/event_store.hpp"
#include "keel/status.hpp"

namespace keel {

namespace detail {
class TransactionBackend;
}

/// Bytes bound as a BLOB / bytea, as opposed to text.
struct Blob {
    std::string bytes;
    friend bool operator==(const Blob&, const Blob&) = default;
};

/// A value bound to a `?` placeholder or read from a column: NULL, integer, real, text or bytes.
using SqlValue = std::variant<std::monostate, int64_t, double, std::string, Blob>;

/// The rows a Query returned; values in column order.
struct Rows {
    std::vector<std::string> columns;
    std::vector<std::vector<SqlValue>> rows;

    size_t size() const noexcept { return rows.size(); }
    bool empty() const noexcept { return rows.empty(); }
    /// Typed access; kInvalidArgument when the row or column does not exist or the value has another type
    /// (an integer column read as text is converted, NULL is an error — use IsNull first).
    Result<int64_t> Int(size_t row, size_t col) const;
    Result<double> Real(size_t row, size_t col) const;
    Result<std::string> Text(size_t row, size_t col) const;
    bool IsNull(size_t row, size_t col) const;
};

/// A message to publish through the transactional outbox. The relay (outbox.hpp) publishes it after commit.
struct OutboxMessage {
    /// The broker destination (see broker.hpp for the name rule).
    std::string destination;
    /// Ordering key; the relay keeps order per key. Usually the stream id.
    std::string key;
    /// Default: nil, which generates one. Consumers deduplicate by it.
    Uuid message_id;
    std::string payload;
    Headers headers;
};

class UnitOfWork;

/// In-process dispatch of domain events to handlers by event type (the MediatR pattern of seed 002).
/// Handlers run inside the unit of work that raised the event, before its commit.
///
/// Thread-safety: register handlers before use; after that a Mediator may be shared by concurrent units of work.
class Mediator {
public:
    using Handler = std::function<Status(UnitOfWork&, const void*)>;

    /// Registers a handler for domain events of type E. Several handlers of one type run in registration order.
    template <class E, class F>
    void On(F handler) {
        handlers_[std::type_index(typeid(E))].push_back(
            [h = std::move(handler)](UnitOfWork& uow, const void* event) -> Status {
                return h(uow, *static_cast<const E*>(event));
            });
    }

    /// Runs the handlers of the event's type; the first error stops and is returned.
    Status Dispatch(UnitOfWork& uow, std::type_index type, const void* event) const;

private:
    std::unordered_map<std::type_index, std::vector<Handler>> handlers_;
};

class UnitOfWork {
public:
    /// Begins a unit of work on the store's database. `mediator` (may be null) receives the events Raise()d.
    /// Errors: kNotSupported for a store without transactions (`memory:`); kUnavailable when the database is busy
    /// past the store's busy timeout or unreachable; kFailedPrecondition for a store that refuses writes.
    static Result<UnitOfWork> Begin(EventStore& store, const Mediator* mediator = nullptr);

    UnitOfWork(UnitOfWork&&) noexcept;
    UnitOfWork& operator=(UnitOfWork&&) noexcept;
    ~UnitOfWork();  // rolls back unless committed

    /// Runs one SQL statement of the service's own with `?` placeholders; returns the number of rows changed.
    /// Errors: kInvalidArgument for SQL the database rejects (syntax, constraint), with the database's message;
    /// kAlreadyExists for a unique-constraint violation; kFailedPrecondition after Commit or a failed commit.
    Result<int64_t> Exec(std::string_view sql, std::initializer_list<SqlValue> params = {});
    Result<int64_t> Exec(std::string_view sql, std::span<const SqlValue> params);
    /// Runs a query; returns its rows. Errors as Exec.
    Result<Rows> Query(std::string_view sql, std::initializer_list<SqlValue> params = {});
    Result<Rows> Query(std::string_view sql, std::span<const SqlValue> params);

    /// Appends events in this transaction (same semantics and errors as EventStore::Append, including the
    /// idempotent re-send). Nothing is visible to readers before Commit().
    Result<AppendResult> Append(std::string_view stream, ExpectedVersion expected, std::span<const EventData> events);
    Result<AppendResult> Append(std::string_view stream, ExpectedVersion expected,
                                std::initializer_list<EventData> events) {
        return Append(stream, expected, std::span<const EventData>(events.begin(), events.size()));
    }

    /// Writes a message to the outbox in this transaction; the relay publishes it after commit (at least once).
    /// Returns the message id (generated when nil). kInvalidArgument for a bad destination.
    Result<Uuid> Enqueue(OutboxMessage message);

    /// Records that `consumer` has processed `message_id`, in this transaction. Returns true the first time and
    /// false when it was recorded before (a duplicate delivery: skip the effect, then commit or roll back).
    Result<bool> MarkProcessed(std::string_view consumer, const Uuid& message_id);

    /// Queues a domain event for the mediator's handlers, which run before commit. Events raised by handlers are
    /// dispatched too (breadth first, at most 1,000 per unit of work).
    template <class E>
    void Raise(E event) {
        auto holder = std::make_shared<E>(std::move(event));
        raised_.push_back(RaisedEvent{std::type_index(typeid(E)), holder});
    }

    /// Dispatches the raised domain events, then commits. On any handler error or commit error everything is rolled
    /// back and the error returned (a handler's status unchanged).
    Status Commit();

    /// True until Commit() succeeded or the unit of work was rolled back.
    bool active() const noexcept;

private:
    struct RaisedEvent {
        std::type_index type;
        std::shared_ptr<const void> event;
    };
    UnitOfWork(EventStore* store, std::unique_ptr<detail::TransactionBackend> tx, const Mediator* mediator);
    Status Usable() const;

    EventStore* store_ = nullptr;
    std::unique_ptr<detail::TransactionBackend> tx_;
    const Mediator* mediator_ = nullptr;
    std::vector<RaisedEvent> raised_;
    bool committed_ = false;
};

}  // namespace keel
