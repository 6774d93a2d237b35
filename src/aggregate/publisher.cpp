#include "keel/publisher.hpp"

#include <algorithm>
#include <utility>

namespace keel {

InProcessPublisher::InProcessPublisher() = default;
InProcessPublisher::~InProcessPublisher() = default;

InProcessPublisher::Token InProcessPublisher::Subscribe(std::string type, Handler handler) {
    std::lock_guard lock(mu_);
    const Token token = next_token_++;
    entries_.push_back(Entry{token, std::move(type), std::make_shared<const Handler>(std::move(handler))});
    return token;
}

bool InProcessPublisher::Unsubscribe(Token token) {
    std::lock_guard lock(mu_);
    auto it = std::find_if(entries_.begin(), entries_.end(), [token](const Entry& e) { return e.token == token; });
    if (it == entries_.end()) return false;
    entries_.erase(it);
    return true;
}

Status InProcessPublisher::Publish(const RecordedEvent& event) {
    // Copy the matching handlers so they run without the lock: a handler may subscribe, unsubscribe or publish.
    std::vector<std::shared_ptr<const Handler>> matching;
    {
        std::lock_guard lock(mu_);
        for (const Entry& e : entries_) {
            if ((e.type.empty() || e.type == event.type) && e.handler && *e.handler) matching.push_back(e.handler);
        }
    }
    Status first_error;
    for (const auto& handler : matching) {
        Status s = (*handler)(event);
        if (!s.ok() && first_error.ok()) first_error = std::move(s);
    }
    return first_error;
}

size_t InProcessPublisher::subscription_count() const {
    std::lock_guard lock(mu_);
    return entries_.size();
}

}  // namespace keel
