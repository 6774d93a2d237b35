#pragma once
/// keel::Projection: keeps a read model (CQRS) current from the event store. Each batch of `$all` events is applied
/// in one unit of work together with the projection's checkpoint, so a crash never applies an event twice nor skips
/// one: after a restart the projection continues exactly after the last committed batch.
///
/// Rebuild: RequestRebuild (also `keel projection rebuild NAME`, from any process) marks the checkpoint; the running
/// projection then calls its `reset` (clear the read model) and replays from position 1, all in order. Lag is
/// visible in `keel stats` (the checkpoint `projection:NAME` against the head).
///
/// Thread-safety: a Projection runs one thread; its methods may be called from any thread.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "keel/event_store.hpp"
#include "keel/unit_of_work.hpp"

namespace keel {

/// Applies one event to the read model inside the batch's unit of work.
using ProjectionHandler = std::function<Status(UnitOfWork&, const RecordedEvent&)>;

struct ProjectionOptions {
    /// Required: 1–200 bytes, no control characters. The checkpoint is stored as "projection:<name>".
    std::string name;
    /// Only events of these categories / types reach the handler (the checkpoint passes the rest).
    std::vector<std::string> categories;
    std::vector<std::string> types;
    /// Events applied per unit of work. Default: 256.
    size_t batch_size = 256;
    /// How often to look for events appended by other processes while idle. Default: 100 ms.
    std::chrono::milliseconds poll_interval{100};
    /// Clears the read model for a rebuild (in the rebuild's unit of work). Default: none (a rebuild request then
    /// stops the projection with kFailedPrecondition).
    std::function<Status(UnitOfWork&)> reset;
    /// Attempts for a failing batch before the projection stops with the error. Default: 5.
    int max_attempts = 5;
};

class Projection {
public:
    /// Starts the projection thread. Errors: kInvalidArgument for bad options; kNotSupported for a store without
    /// transactions (memory:).
    static Result<std::unique_ptr<Projection>> Start(EventStore& store, ProjectionOptions options,
                                                     ProjectionHandler handler);
    virtual ~Projection() = default;

    /// Stops after the batch in hand (a batch is committed whole or not at all). Idempotent.
    virtual void Stop() = 0;
    /// The last global position whose batch is committed (0 before any).
    virtual int64_t position() const = 0;
    /// Blocks until the projection has committed everything up to `position`, or `timeout`; OK when reached.
    /// kDeadlineExceeded on timeout; the projection's error if it stopped.
    virtual Status WaitFor(int64_t position, std::chrono::milliseconds timeout) = 0;
};

/// Asks the projection `name` (running now or started later, in any process) to reset and replay from the start.
Status RequestProjectionRebuild(EventStore& store, std::string_view name);

/// The checkpoint name under which projection `name` stores its position.
std::string ProjectionCheckpointName(std::string_view name);

}  // namespace keel
