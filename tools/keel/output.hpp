#pragma once
// Output formatting of the keel CLI: aligned tables for people (the default) and one JSON object per line for
// programs (--json). Nothing here touches a store; commands.cpp calls these with what it read.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "keel/broker.hpp"
#include "keel/event.hpp"
#include "keel/event_store.hpp"
#include "keel/outbox.hpp"

namespace keel::cli {

struct OutputOptions {
    bool json = false;        // one JSON object per line instead of a table
    size_t width = 120;       // columns available to a table; the data column is cut to fit
    std::FILE* out = stdout;  // where results go (errors always go to stderr)
};

// The position RequestProjectionRebuild (projection.hpp) stores in a projection's checkpoint until the projection has
// reset its read model; the projection then starts again from 0.
inline constexpr int64_t kProjectionRebuildMarker = -1;

// "2026-11-23T16:45:01.123456Z" for microseconds since the Unix epoch.
std::string FormatTimestamp(int64_t micros);

// "active", "soft_deleted", "tombstoned".
std::string_view StreamStateName(StreamState state);

// Output JSON keeps keys in the order written (the envelope's order, and the order of the user's own data).
// `text` as embedded JSON when it parses as JSON (and is not absurdly deep), else as a JSON string.
nlohmann::ordered_json JsonOrString(std::string_view text);

// The event envelope of DESIGN §3 under its field names: global_position, event_id, stream_id, stream_version,
// type, data, metadata ({} when empty), recorded_at (ISO-8601 UTC, microseconds).
nlohmann::ordered_json EventToJson(const RecordedEvent& event);

// Writes `value` on one line (invalid UTF-8 is replaced, never thrown on).
void PrintJsonLine(std::FILE* out, const nlohmann::ordered_json& value);

// Cell text: control characters become spaces; cut to `width` columns with "..." when longer.
std::string FitCell(std::string_view text, size_t width);

// Display columns of UTF-8 text (one per code point).
size_t DisplayWidth(std::string_view text);

// An aligned text table. Columns are as wide as their widest cell (or header); the last column is cut so a row fits
// the width given to Print.
class Table {
public:
    struct Column {
        std::string header;
        bool align_right = false;
        size_t min_width = 0;
    };

    explicit Table(std::vector<Column> columns);

    void AddRow(std::vector<std::string> cells);
    bool empty() const noexcept { return rows_.empty(); }

    // Freezes the column widths from the rows added so far; later rows are printed with these widths.
    void FreezeWidths(size_t total_width);
    void PrintHeader(std::FILE* out) const;
    void PrintRow(std::FILE* out, const std::vector<std::string>& cells) const;
    // FreezeWidths, header, every row added.
    void Print(std::FILE* out, size_t total_width);

private:
    std::vector<Column> columns_;
    std::vector<std::vector<std::string>> rows_;
    std::vector<size_t> widths_;
};

// Prints events as a table or as JSON lines.
class EventPrinter {
public:
    enum class Mode {
        kBuffered,   // reads: the table waits for a first batch of rows to size its columns
        kStreaming,  // tail: fixed column widths, every line flushed at once
    };
    static std::unique_ptr<EventPrinter> Make(const OutputOptions& options, Mode mode);

    virtual ~EventPrinter() = default;
    // Table: prints the header now if it was not printed yet. JSON: nothing.
    virtual void Begin() = 0;
    virtual void Add(const RecordedEvent& event) = 0;
    // Prints whatever is buffered; a table that received no event says so.
    virtual void Finish() = 0;
};

// `keel append`: the new stream version and global positions.
void PrintAppendResult(const OutputOptions& options, std::string_view stream, const AppendResult& result);

// `keel streams`: stream, version, state, updated.
void PrintStreams(const OutputOptions& options, const std::vector<StreamInfo>& streams);

// `keel metadata`: one stream's version, state and metadata.
void PrintStreamInfo(const OutputOptions& options, const StreamInfo& info);

// `keel delete`.
void PrintDeleted(const OutputOptions& options, std::string_view stream, DeleteMode mode);

// How far a checkpoint at `position` is behind `head`: head - position, where a position below 0 (a projection's
// rebuild marker) counts as 0, since the projection replays everything.
int64_t CheckpointLag(int64_t head, int64_t position);

// True for a checkpoint that belongs to a projection (ProjectionCheckpointName's "projection:" prefix).
bool IsProjectionCheckpoint(std::string_view checkpoint);

// `keel stats`: counts, head, size and checkpoints with their lag behind the head.
void PrintStats(const OutputOptions& options, const StoreStats& stats);

// `keel relay`: the start, each time messages were published, a change of the lease, and the final summary. JSON
// lines carry "event": "started" | "published" | "standby" | "leader" | "stopped".
void PrintRelayStarted(const OutputOptions& options, const RelayOptions& relay);
void PrintRelayPublished(const OutputOptions& options, int64_t count, int64_t total);
void PrintRelayLease(const OutputOptions& options, bool leader);
void PrintRelayStopped(const OutputOptions& options, const RelayStats& stats);

// `keel relay --once`: how many were published in the round, and how many are still pending.
void PrintRelayOnce(const OutputOptions& options, int64_t published, int64_t pending);

// `keel outbox`: pending, published kept, the oldest pending row and its age at `now_micros`, last position.
void PrintOutboxStats(const OutputOptions& options, const OutboxStats& stats, int64_t now_micros);

// `keel outbox republish`.
void PrintRepublished(const OutputOptions& options, int64_t from, int64_t count);

// `keel dlq list`: id, attempts, dead-lettered at, key, error, payload (cut to fit).
void PrintDeadLetters(const OutputOptions& options, std::string_view destination, std::string_view group,
                      const std::vector<DeadLetter>& letters);

// `keel dlq replay`.
void PrintReplayed(const OutputOptions& options, std::string_view destination, std::string_view group, size_t count);

// `keel projection rebuild`: `previous` is the checkpoint before the request (nullopt: the projection never ran).
void PrintRebuildRequested(const OutputOptions& options, std::string_view name, const std::optional<int64_t>& previous);

// `keel projection list`: the projection checkpoints of `stats` with position, lag and state.
void PrintProjections(const OutputOptions& options, const StoreStats& stats);

}  // namespace keel::cli
