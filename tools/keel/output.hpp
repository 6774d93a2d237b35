#pragma once
// Output formatting of the keel CLI: aligned tables for people (the default) and one JSON object per line for
// programs (--json). Nothing here touches a store; commands.cpp calls these with what it read.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "keel/event.hpp"
#include "keel/event_store.hpp"

namespace keel::cli {

struct OutputOptions {
    bool json = false;        // one JSON object per line instead of a table
    size_t width = 120;       // columns available to a table; the data column is cut to fit
    std::FILE* out = stdout;  // where results go (errors always go to stderr)
};

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

// `keel stats`: counts, head, size and checkpoints with their lag behind the head.
void PrintStats(const OutputOptions& options, const StoreStats& stats);

}  // namespace keel::cli
