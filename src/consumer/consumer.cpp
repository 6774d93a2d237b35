// Consumer: inbox-deduplicated handling of broker deliveries in units of work, retries in place, dead letters.

#include "keel/consumer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "store/validate.hpp"

namespace keel {
namespace {

using SleepFn = std::function<bool(std::chrono::milliseconds)>;  // false: stopped while sleeping

// One attempt: a unit of work with the inbox row and the handler's effect. Returns the outcome, or the error that
// made the attempt fail (the handler's, or the database's).
Result<DeliveryOutcome> Attempt(EventStore& store, const Delivery& d, const MessageHandler& handler,
                                const ConsumerOptions& o) {
    auto uow = UnitOfWork::Begin(store, o.mediator);
    if (!uow.ok()) return uow.status();
    auto first = uow->MarkProcessed(o.name, d.message.message_id);
    if (!first.ok()) return first.status();
    if (!*first) return DeliveryOutcome::kDuplicate;  // rolled back by the destructor: nothing to keep
    Status s;
    try {
        s = handler(*uow, d);
    } catch (const std::exception& e) {
        s = Status::Internal(fmt::format("handler threw: {}", e.what()));
    }
    if (!s.ok()) return s;
    KEEL_RETURN_IF_ERROR(uow->Commit());
    return DeliveryOutcome::kHandled;
}

Result<DeliveryOutcome> Handle(EventStore& store, BrokerConsumer& consumer, const Delivery& d,
                               const MessageHandler& handler, const ConsumerOptions& o, const SleepFn& sleep,
                               ConsumerStats* stats) {
    auto backoff = o.initial_backoff;
    for (int attempt = std::max(d.attempt, 1);; ++attempt) {
        auto outcome = Attempt(store, d, handler, o);
        if (outcome.ok()) {
            Status acked = consumer.Ack(d);
            // kFailedPrecondition: the broker took the delivery back (its visibility timeout passed while the handler
            // ran) and will redeliver it; the effect is committed, so the inbox will skip the redelivery.
            if (!acked.ok() && acked.code() != StatusCode::kFailedPrecondition) return acked;
            return *outcome;
        }
        const std::string error = outcome.status().ToString();
        if (stats != nullptr) stats->last_error = error;
        if (attempt >= o.max_attempts) {
            KEEL_RETURN_IF_ERROR(consumer.DeadLetter(
                d, fmt::format("{} (after {} attempts, consumer '{}')", error, attempt, o.name)));
            return DeliveryOutcome::kDeadLettered;
        }
        if (stats != nullptr) ++stats->retries;
        if (!sleep(backoff)) return Status::Cancelled("consumer stopped while retrying; the message is redelivered");
        backoff = std::min(backoff * 2, o.max_backoff);
    }
}

Status ValidateOptions(const ConsumerOptions& o) {
    KEEL_RETURN_IF_ERROR(detail::ValidateName("consumer name", o.name, detail::kMaxCheckpointNameBytes));
    if (o.max_attempts < 1) return Status::InvalidArgument("consumer max_attempts must be at least 1");
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
            auto d = consumer_->Receive(options_.receive_timeout);
            if (!d.ok()) {
                Record(d.status());
                if (!Sleep(std::max(backoff, std::chrono::milliseconds(10)))) break;
                backoff = std::min(backoff * 2, options_.max_backoff);
                continue;
            }
            backoff = options_.initial_backoff;
            if (!d->has_value()) continue;
            ConsumerStats local;
            auto outcome = Handle(store_, *consumer_, **d, handler_, options_,
                                  [this](std::chrono::milliseconds t) { return Sleep(t); }, &local);
            std::lock_guard lock(mu_);
            stats_.retries += local.retries;
            if (!local.last_error.empty()) stats_.last_error = local.last_error;
            if (!outcome.ok()) {
                if (outcome.status().code() != StatusCode::kCancelled) stats_.last_error = outcome.status().ToString();
                continue;  // not acked: redelivered later
            }
            switch (*outcome) {
                case DeliveryOutcome::kHandled: ++stats_.handled; break;
                case DeliveryOutcome::kDuplicate: ++stats_.duplicates; break;
                case DeliveryOutcome::kDeadLettered: ++stats_.dead_lettered; break;
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
                                                  std::string group, MessageHandler handler,
                                                  ConsumerOptions options) {
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
    return Handle(store, consumer, delivery, handler, options,
                  [](std::chrono::milliseconds d) {
                      std::this_thread::sleep_for(d);
                      return true;
                  },
                  nullptr);
}

}  // namespace keel
