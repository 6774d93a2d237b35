#pragma once
/// keel::EventPublisher: where a Repository hands the events it has just saved (publish on save), and
/// keel::InProcessPublisher, which calls handlers subscribed in the same process.
///
/// Delivery guarantee: publish-on-save is AT MOST ONCE across a process crash. A Repository publishes only after the
/// append committed; if the process dies between the commit and the publish, those events are stored but never
/// published, and nothing re-publishes them after a restart. Within one process, a failed publish is reported by
/// Save (kUnavailable) and re-saving the same aggregate publishes the events again (so a handler may see an event
/// twice; deduplicate by RecordedEvent::event_id). Use it for in-process reactions that may be lost, e.g. cache
/// invalidation or notifications. When delivery must be durable (at least once, surviving crashes), subscribe to
/// the store instead (EventStore::Subscribe with a durable name, see subscription.hpp) or, later, use the outbox:
/// both resume from a stored checkpoint.
///
/// Thread-safety: implementations must accept Publish from any number of threads at once (a Repository shared by
/// threads calls it concurrently). InProcessPublisher is thread-safe; see its comments for handler calls.

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "keel/event.hpp"
#include "keel/status.hpp"

namespace keel {

class EventPublisher {
public:
    virtual ~EventPublisher() = default;

    /// Publishes one stored event (with its full envelope: global position, stream version, recorded_at …).
    /// Returns OK when the event was handed over; any error makes Repository::Save return kUnavailable (the events
    /// stay committed and pending in the aggregate, so saving it again re-publishes them).
    virtual Status Publish(const RecordedEvent& event) = 0;
};

/// Calls, in the publishing thread, every handler subscribed to the event's type and every handler subscribed to
/// all types. Handlers run in subscription order, all of them even when one fails; Publish returns the first
/// error (OK when every handler returned OK, including when none matched).
///
/// Thread-safety: every method may be called from any thread, including from inside a handler (Publish runs the
/// handlers without holding the publisher's lock, on a copy of the subscription list taken when it starts). So a
/// handler removed by Unsubscribe may still be called once by a Publish that had already started on another thread.
class InProcessPublisher final : public EventPublisher {
public:
    using Handler = std::function<Status(const RecordedEvent&)>;
    /// Identifies one subscription. Never 0.
    using Token = uint64_t;

    InProcessPublisher();
    ~InProcessPublisher() override;
    InProcessPublisher(const InProcessPublisher&) = delete;
    InProcessPublisher& operator=(const InProcessPublisher&) = delete;

    /// Subscribes `handler` to events whose type is `type`, or to every event when `type` is empty.
    /// Returns the token to pass to Unsubscribe. An empty `handler` is ignored and gets a token all the same.
    Token Subscribe(std::string type, Handler handler);

    /// Removes the subscription. Returns false when the token is unknown (never issued or already removed).
    bool Unsubscribe(Token token);

    /// Calls the matching handlers (see the class comment). Returns the first handler error, or OK.
    Status Publish(const RecordedEvent& event) override;

    /// The number of current subscriptions.
    size_t subscription_count() const;

private:
    struct Entry {
        Token token = 0;
        std::string type;  // empty: all types
        std::shared_ptr<const Handler> handler;
    };
    mutable std::mutex mu_;
    Token next_token_ = 1;
    std::vector<Entry> entries_;
};

}  // namespace keel
