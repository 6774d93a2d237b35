// Consumer: inbox-deduplicated handling of broker deliveries in units of work, retries in place, dead letters.

#include "keel/consumer.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "store/validate.hpp"

namespace keel {
namespace {

constexpr int kMaxBatch = 10'000;

using SleepFn = std::function<bool(std::chrono::milliseconds)>;  // false: stopped while sleeping

Status CallHandler(const MessageHandler& handler, UnitOfWork& uow, const Delivery& d) {
    try {
        return handler(uow, d);
    } catch (const std::exception& e) {
        return Status::Internal(fmt::format("handler threw: {}", e.what()));
    }
}

// One attempt: a unit of work with the inbox row and the handler's effect. Returns the outcome, or the error that
// made the attempt fail (the handler's, or the database's).
Result<DeliveryOutcome> Attempt(EventStore& store, const Delivery& d, const MessageHandler& handler,
                                const ConsumerOptions& o) {
    auto uow = UnitOfWork::Begin(store, o.mediator);
    if (!uow.ok()) return uow.status();
    auto first = uow->MarkProcessed(o.name, d.message.message_id);
    if (!first.ok()) return first.status();
    if (!*first) return DeliveryOutcome::kDuplicate;  // rolled back by the destructor: nothing to keep
    KEEL_RETURN_IF_ERROR(CallHandler(handler, *uow, d));
    KEEL_RETURN_IF_ERROR(uow->Commit());
    return DeliveryOutcome::kHandled;
}

// One message: attempts with backoff until it is handled, a duplicate, or dead-lettered. `prior_failure`: the error
// of an attempt already made (in a batch), which counts as the first one.
Result<DeliveryOutcome> Handle(EventStore& store, BrokerConsumer& consumer, const Delivery& d,
                               const MessageHandler& handler, const ConsumerOptions& o, const SleepFn& sleep,
                               ConsumerStats* stats, const Status* prior_failure = nullptr) {
    auto backoff = o.initial_backoff;
    int attempt = std::max(d.attempt, 1);
    // After a failed attempt: dead-letters the message (its last attempt), or waits and returns nullopt.
    auto failed = [&](const Status& error) -> std::optional<Result<DeliveryOutcome>> {
        const std::string text = error.ToString();
        if (stats != nullptr) stats->last_error = text;
        if (attempt >= o.max_attempts) {
            Status dead =
                consumer.DeadLetter(d, fmt::format("{} (after {} attempts, consumer '{}')", text, attempt, o.name));
            if (!dead.ok()) return Result<DeliveryOutcome>(dead);
            return Result<DeliveryOutcome>(DeliveryOutcome::kDeadLettered);
        }
        if (stats != nullptr) ++stats->retries;
        if (!sleep(backoff)) {
            return Result<DeliveryOutcome>(
                Status::Cancelled("consumer stopped while retrying; the message is redelivered"));
        }
        backoff = std::min(backoff * 2, o.max_backoff);
        ++attempt;
        return std::nullopt;
    };
    if (prior_failure != nullptr) {
        if (auto done = failed(*prior_failure)) return *done;
    }
    for (;;) {
        auto outcome = Attempt(store, d, handler, o);
        if (outcome.ok()) {
            Status acked = consumer.Ack(d);
            // kFailedPrecondition: the broker took the delivery back (its visibility timeout passed while the handler
            // ran) and will redeliver it; the effect is committed, so the inbox will skip the redelivery.
            if (!acked.ok() && acked.code() != StatusCode::kFailedPrecondition) return acked;
            return *outcome;
        }
        if (auto done = failed(outcome.status())) return *done;
    }
}

// What happened to a batch: the outcomes of the deliveries finished (all of them unless `error` is set), and the
// first error (deliveries it concerns are not acknowledged and come again).
struct BatchResult {
    std::vector<DeliveryOutcome> outcomes;
    Status error;
};

// A batch in one unit of work, acknowledged together; after a failure, one message at a time (see consumer.hpp).
BatchResult HandleBatch(EventStore& store, BrokerConsumer& consumer, std::span<const Delivery> batch,
                        const MessageHandler& handler, const ConsumerOptions& o, const SleepFn& sleep,
                        ConsumerStats* stats) {
    BatchResult result;
    std::optional<size_t> failed_at;  // the message whose handler failed, if one did
    Status failure;
    if (batch.size() > 1) {
        std::vector<DeliveryOutcome> outcomes(batch.size(), DeliveryOutcome::kHandled);
        {
            auto uow = UnitOfWork::Begin(store, o.mediator);
            if (!uow.ok()) failure = uow.status();
            for (size_t i = 0; failure.ok() && i < batch.size(); ++i) {
                auto first = uow->MarkProcessed(o.name, batch[i].message.message_id);
                if (!first.ok()) {
                    failure = first.status();
                } else if (!*first) {
                    outcomes[i] = DeliveryOutcome::kDuplicate;  // its inbox row is there: no effect, acked below
                } else if (Status s = CallHandler(handler, *uow, batch[i]); !s.ok()) {
                    failure = s;
                    failed_at = i;
                }
            }
            if (failure.ok()) failure = uow->Commit();
        }  // not committed: rolled back here, before the messages are tried one at a time
        if (failure.ok()) {
            const std::vector<Status> acks = consumer.AckBatch(batch);
            for (const Status& acked : acks) {
                // As in Handle: kFailedPrecondition means a redelivery is coming, which the inbox skips; any other
                // error leaves the delivery unacknowledged, to be redelivered and skipped the same way.
                if (!acked.ok() && acked.code() != StatusCode::kFailedPrecondition && result.error.ok()) {
                    result.error = acked;
                }
            }
            result.outcomes = std::move(outcomes);
            return result;
        }
        if (stats != nullptr) stats->last_error = failure.ToString();
    }
    for (size_t i = 0; i < batch.size(); ++i) {
        auto outcome = Handle(store, consumer, batch[i], handler, o, sleep, stats, failed_at == i ? &failure : nullptr);
        if (!outcome.ok()) {
            // Not acknowledged: redelivered later. When stopping, the rest are left for redelivery too.
            result.error = outcome.status();
            if (outcome.status().code() == StatusCode::kCancelled) break;
            continue;
        }
        result.outcomes.push_back(*outcome);
    }
    return result;
}

Status ValidateOptions(const ConsumerOptions& o) {
    KEEL_RETURN_IF_ERROR(detail::ValidateName("consumer name", o.name, detail::kMaxCheckpointNameBytes));
    if (o.max_attempts < 1) return Status::InvalidArgument("consumer max_attempts must be at least 1");
    if (o.max_batch < 1 || o.max_batch > kMaxBatch) {
        return Status::InvalidArgument(fmt::format("consumer max_batch must be 1..{}, got {}", kMaxBatch, o.max_batch));
    }
    if (o.initial_backoff.count() < 0 || o.max_backoff < o.initial_backoff) {
        return Status::InvalidArgument("consumer backoff must satisfy 0 <= initial_backoff <= max_backoff");
    }
    return Status::Ok();
}

class ConsumerImpl final : public Consumer {
public:
    ConsumerImpl(EventStore& store, std::unique_ptr<BrokerConsumer> consumer, MessageHandler handler,
                 ConsumerOptions options)
        : store_(store), consumer_(std::move(consumer)), handler_(std::move(handler)), options_(std::move(options)) {
        thread_ = std::thread([this] { Run(); });
    }
    ~ConsumerImpl() override { Stop(); }

    void Stop() override {
        {
            std::lock_guard lock(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        std::lock_guard join(join_mu_);
        if (thread_.joinable()) thread_.join();
    }

    ConsumerStats stats() const override {
        std::lock_guard lock(mu_);
        return stats_;
    }

private:
    bool Sleep(std::chrono::milliseconds d) {
        std::unique_lock lock(mu_);
        return !cv_.wait_for(lock, d, [this] { return stop_; });
    }
    bool Stopping() {
        std::lock_guard lock(mu_);
        return stop_;
    }

    void Run() {
        auto backoff = options_.initial_backoff;
        while (!Stopping()) {
            auto batch = consumer_->ReceiveBatch(static_cast<size_t>(options_.max_batch), options_.receive_timeout);
            if (!batch.ok()) {
                Record(batch.status());
                if (!Sleep(std::max(backoff, std::chrono::milliseconds(10)))) break;
                backoff = std::min(backoff * 2, options_.max_backoff);
                continue;
            }
            backoff = options_.initial_backoff;
            if (batch->empty()) continue;
            ConsumerStats local;
            BatchResult result = HandleBatch(
                store_, *consumer_, *batch, handler_, options_,
                [this](std::chrono::milliseconds t) { return Sleep(t); }, &local);
            std::lock_guard lock(mu_);
            stats_.retries += local.retries;
            if (!local.last_error.empty()) stats_.last_error = local.last_error;
            // An error: those deliveries were not acknowledged and are redelivered later.
            if (!result.error.ok() && result.error.code() != StatusCode::kCancelled) {
                stats_.last_error = result.error.ToString();
            }
            for (DeliveryOutcome outcome : result.outcomes) {
                switch (outcome) {
                    case DeliveryOutcome::kHandled: ++stats_.handled; break;
                    case DeliveryOutcome::kDuplicate: ++stats_.duplicates; break;
                    case DeliveryOutcome::kDeadLettered: ++stats_.dead_lettered; break;
                }
            }
        }
    }

    void Record(const Status& s) {
        std::lock_guard lock(mu_);
        stats_.last_error = s.ToString();
    }

    EventStore& store_;
    std::unique_ptr<BrokerConsumer> consumer_;
    MessageHandler handler_;
    const ConsumerOptions options_;
    mutable std::mutex mu_;
    std::mutex join_mu_;
    std::condition_variable cv_;
    bool stop_ = false;
    ConsumerStats stats_;
    std::thread thread_;
};

}  // namespace

Result<std::unique_ptr<Consumer>> Consumer::Start(EventStore& store, Broker& broker, std::string destination,
                                                  std::string group, MessageHandler handler, ConsumerOptions options) {
    KEEL_RETURN_IF_ERROR(ValidateOptions(options));
    if (!handler) return Status::InvalidArgument("consumer handler is empty");
    {
        auto probe = UnitOfWork::Begin(store);  // kNotSupported for stores without transactions
        if (!probe.ok()) return probe.status();
    }
    KEEL_RETURN_IF_ERROR(broker.Declare(destination, group));
    auto consumer = broker.Consume(destination, group, options.consume);
    if (!consumer.ok()) return consumer.status();
    return std::unique_ptr<Consumer>(
        std::make_unique<ConsumerImpl>(store, std::move(*consumer), std::move(handler), std::move(options)));
}

Result<DeliveryOutcome> HandleDelivery(EventStore& store, BrokerConsumer& consumer, const Delivery& delivery,
                                       const MessageHandler& handler, const ConsumerOptions& options) {
    KEEL_RETURN_IF_ERROR(ValidateOptions(options));
    return Handle(
        store, consumer, delivery, handler, options,
        [](std::chrono::milliseconds d) {
            std::this_thread::sleep_for(d);
            return true;
        },
        nullptr);
}

Result<std::vector<DeliveryOutcome>> HandleDeliveries(EventStore& store, BrokerConsumer& consumer,
                                                      std::span<const Delivery> deliveries,
                                                      const MessageHandler& handler, const ConsumerOptions& options) {
    KEEL_RETURN_IF_ERROR(ValidateOptions(options));
    BatchResult result = HandleBatch(
        store, consumer, deliveries, handler, options,
        [](std::chrono::milliseconds d) {
            std::this_thread::sleep_for(d);
            return true;
        },
        nullptr);
    if (!result.error.ok()) return result.error;
    return std::move(result.outcomes);
}

}  // namespace keel
