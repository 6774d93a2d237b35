#pragma once
// Relay wake-ups on PostgreSQL: a unit of work that wrote outbox rows sends `NOTIFY keel_outbox, '<schema>'` in its
// transaction (PostgreSQL delivers it at commit, and only then); a relay's watch LISTENs on a connection of its own
// and wakes the relay for every notification of its schema. docs/postgres.md ("Outbox notifications").

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "store/backend.hpp"

namespace keel::pg {

// The notification channel. The payload is the store's schema (empty for the connection's default search_path),
// so that stores in other schemas of the same database do not wake each other's relays.
inline constexpr std::string_view kOutboxChannel = "keel_outbox";

// The statement a unit of work runs before COMMIT when it wrote outbox rows (the schema as a string literal).
std::string OutboxNotifySql(std::string_view schema);

// Starts a watch: a thread with its own connection (`conninfo`) that LISTENs on kOutboxChannel and calls
// `on_commit` for each notification whose payload is `schema`; it also calls it once after every (re)connect,
// because notifications sent while it was not listening are lost. A lost connection is re-opened with backoff
// (100 ms doubling to 5 s). Never fails: while it cannot connect, the relay still polls.
std::unique_ptr<detail::OutboxWatch> StartOutboxWatch(std::string conninfo, std::string schema,
                                                      std::function<void()> on_commit);

}  // namespace keel::pg
