// The unit of work front: validation, id generation and domain-event dispatch; the transaction itself is the
// backend's (TransactionBackend).

#include "keel/unit_of_work.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "broker/names.hpp"
#include "store/backend.hpp"
#include "store/subscription_impl.hpp"
#include "store/validate.hpp"

namespace keel {

namespace {

constexpr size_t kMaxRaisedEvents = 1000;

const SqlValue* Cell(const Rows& rows, size_t row, size_t col, Status& error) {
    if (row >= rows.rows.size() || col >= rows.rows[row].size()) {
        error = Status::InvalidArgument(fmt::format("no cell at row {} column {}", row, col));
        return nullptr;
    }
    return &rows.rows[row][col];
}

}  // namespace

Result<int64_t> Rows::Int(size_t row, size_t col) const {
    Status error;
    const SqlValue* v = Cell(*this, row, col, error);
    if (v == nullptr) return error;
    if (const auto* i = std::get_if<int64_t>(v)) return *i;
    if (const auto* d = std::get_if<double>(v)) return static_cast<int64_t>(*d);
    return Status::InvalidArgument(fmt::format("column {} ({}) is not an integer", col, columns[col]));
}

Result<double> Rows::Real(size_t row, size_t col) const {
    Status error;
    const SqlValue* v = Cell(*this, row, col, error);
    if (v == nullptr) return error;
    if (const auto* d = std::get_if<double>(v)) return *d;
    if (const auto* i = std::get_if<int64_t>(v)) return static_cast<double>(*i);
    return Status::InvalidArgument(fmt::format("column {} ({}) is not a number", col, columns[col]));
}

Result<std::string> Rows::Text(size_t row, size_t col) const {
    Status error;
    const SqlValue* v = Cell(*this, row, col, error);
    if (v == nullptr) return error;
    if (const auto* s = std::get_if<std::string>(v)) return *s;
    if (const auto* b = std::get_if<Blob>(v)) return b->bytes;
    if (const auto* i = std::get_if<int64_t>(v)) return std::to_string(*i);
    if (const auto* d = std::get_if<double>(v)) return fmt::format("{}", *d);
    return Status::InvalidArgument(fmt::format("column {} ({}) is NULL", col, columns[col]));
}

bool Rows::IsNull(size_t row, size_t col) const {
    return row < rows.size() && col < rows[row].size() && std::holds_alternative<std::monostate>(rows[row][col]);
}

Status Mediator::Dispatch(UnitOfWork& uow, std::type_index type, const void* event) const {
    auto it = handlers_.find(type);
    if (it == handlers_.end()) return Status::Ok();
    for (const Handler& h : it->second) KEEL_RETURN_IF_ERROR(h(uow, event));
    return Status::Ok();
}

UnitOfWork::UnitOfWork(EventStore* store, std::unique_ptr<detail::TransactionBackend> tx, const Mediator* mediator)
    : store_(store), tx_(std::move(tx)), mediator_(mediator) {}

UnitOfWork::UnitOfWork(UnitOfWork&&) noexcept = default;
UnitOfWork& UnitOfWork::operator=(UnitOfWork&&) noexcept = default;
UnitOfWork::~UnitOfWork() = default;  // the backend transaction rolls back when destroyed open

Result<UnitOfWork> UnitOfWork::Begin(EventStore& store, const Mediator* mediator) {
    auto tx = store.backend().BeginTransaction();
    if (!tx.ok()) return tx.status();
    return UnitOfWork(&store, std::move(*tx), mediator);
}

bool UnitOfWork::active() const noexcept { return tx_ != nullptr; }

Status UnitOfWork::Usable() const {
    if (tx_ == nullptr) {
        return Status::FailedPrecondition(committed_ ? "the unit of work is committed"
                                                     : "the unit of work is finished (rolled back)");
    }
    return Status::Ok();
}

Result<int64_t> UnitOfWork::Exec(std::string_view sql, std::initializer_list<SqlValue> params) {
    return Exec(sql, std::span<const SqlValue>(params.begin(), params.size()));
}

Result<int64_t> UnitOfWork::Exec(std::string_view sql, std::span<const SqlValue> params) {
    KEEL_RETURN_IF_ERROR(Usable());
    return tx_->Exec(sql, params);
}

Result<Rows> UnitOfWork::Query(std::string_view sql, std::initializer_list<SqlValue> params) {
    return Query(sql, std::span<const SqlValue>(params.begin(), params.size()));
}

Result<Rows> UnitOfWork::Query(std::string_view sql, std::span<const SqlValue> params) {
    KEEL_RETURN_IF_ERROR(Usable());
    return tx_->Query(sql, params);
}

Result<AppendResult> UnitOfWork::Append(std::string_view stream, ExpectedVersion expected,
                                        std::span<const EventData> events) {
    KEEL_RETURN_IF_ERROR(Usable());
    KEEL_RETURN_IF_ERROR(detail::ValidateStreamId(stream));
    KEEL_RETURN_IF_ERROR(detail::ValidateEvents(events, store_->options()));
    std::vector<EventData> owned;
    if (std::any_of(events.begin(), events.end(), [](const EventData& e) { return e.event_id.is_nil(); })) {
        owned.assign(events.begin(), events.end());
        for (EventData& e : owned) {
            if (e.event_id.is_nil()) e.event_id = Uuid::Generate();
        }
        events = owned;
    }
    detail::AppendRequest request;
    request.stream = stream;
    request.expected = expected;
    request.events = events;
    return tx_->Append(request);
}

Result<Uuid> UnitOfWork::Enqueue(OutboxMessage message) {
    KEEL_RETURN_IF_ERROR(Usable());
    KEEL_RETURN_IF_ERROR(detail::ValidateBrokerName("destination", message.destination));
    if (message.key.size() > detail::kMaxStreamIdBytes) {
        return Status::InvalidArgument(fmt::format("outbox key is {} bytes, over the limit of {}", message.key.size(),
                                                   detail::kMaxStreamIdBytes));
    }
    if (message.payload.size() > store_->options().max_event_size) {
        return Status::InvalidArgument(fmt::format("outbox payload is {} bytes, over max_event_size {}",
                                                   message.payload.size(), store_->options().max_event_size));
    }
    if (message.message_id.is_nil()) message.message_id = Uuid::Generate();
    KEEL_RETURN_IF_ERROR(tx_->InsertOutbox(message));
    enqueued_ = true;
    return message.message_id;
}

Result<bool> UnitOfWork::MarkProcessed(std::string_view consumer, const Uuid& message_id) {
    KEEL_RETURN_IF_ERROR(Usable());
    KEEL_RETURN_IF_ERROR(detail::ValidateName("consumer name", consumer, detail::kMaxCheckpointNameBytes));
    if (message_id.is_nil()) return Status::InvalidArgument("message id is nil");
    return tx_->InsertInbox(consumer, message_id);
}

Result<std::optional<int64_t>> UnitOfWork::LoadCheckpoint(std::string_view name) {
    KEEL_RETURN_IF_ERROR(Usable());
    KEEL_RETURN_IF_ERROR(detail::ValidateName("checkpoint name", name, detail::kMaxCheckpointNameBytes));
    return tx_->LoadCheckpoint(name);
}

Status UnitOfWork::SaveCheckpoint(std::string_view name, int64_t position) {
    KEEL_RETURN_IF_ERROR(Usable());
    KEEL_RETURN_IF_ERROR(detail::ValidateName("checkpoint name", name, detail::kMaxCheckpointNameBytes));
    return tx_->SaveCheckpoint(name, position);
}

Status UnitOfWork::Commit() {
    KEEL_RETURN_IF_ERROR(Usable());
    // Domain events first, on this transaction; handlers may raise more (dispatched breadth first).
    for (size_t i = 0; i < raised_.size(); ++i) {
        if (i >= kMaxRaisedEvents) {
            tx_.reset();
            return Status::FailedPrecondition(
                fmt::format("more than {} domain events raised in one unit of work (a handler loop?); rolled back",
                            kMaxRaisedEvents));
        }
        if (mediator_ == nullptr) break;
        const RaisedEvent current = raised_[i];  // handlers may grow raised_
        if (Status s = mediator_->Dispatch(*this, current.type, current.event.get()); !s.ok()) {
            tx_.reset();  // rolls back everything: the caller's rows, the handlers' rows, events, outbox
            return s;
        }
    }
    raised_.clear();
    auto committed = tx_->Commit();
    tx_.reset();
    if (!committed.ok()) return committed.status();
    committed_ = true;
    if (*committed > 0) detail::StoreInternals::NotifyAppended(*store_, *committed);
    if (enqueued_) detail::StoreInternals::NotifyOutboxCommit(*store_);
    return Status::Ok();
}

}  // namespace keel
