#include "output.hpp"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <optional>

#include <fmt/format.h>

#include "keel/projection.hpp"

namespace keel::cli {
namespace {

constexpr std::string_view kEllipsis = "...";
// Narrowest the data column of an event table gets, however narrow the terminal.
constexpr size_t kMinDataWidth = 16;
// Rows a buffered event table collects before it fixes its column widths and starts printing.
constexpr size_t kBufferedRows = 512;
// JSON nested deeper than this is shown as a string (nlohmann's dump recurses).
constexpr int kMaxEmbeddedDepth = 256;
// Widest key and error cells of the dead-letter table (the payload, last, takes the rest of the line).
constexpr size_t kMaxKeyWidth = 24;
constexpr size_t kMaxErrorWidth = 48;

bool IsContinuationByte(char c) {
    return (static_cast<unsigned char>(c) & 0xC0) == 0x80;
}

// Deepest nesting of arrays/objects in `text`, counting brackets outside strings only.
int JsonNestingDepth(std::string_view text) {
    int depth = 0;
    int deepest = 0;
    bool in_string = false;
    bool escaped = false;
    for (char c : text) {
        if (in_string) {
            if (escaped) {
                escaped = false;
            } else if (c == '\\') {
                escaped = true;
            } else if (c == '"') {
                in_string = false;
            }
            continue;
        }
        if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            deepest = std::max(deepest, ++depth);
        } else if (c == ']' || c == '}') {
            --depth;
        }
    }
    return deepest;
}

std::string PadTo(std::string_view text, size_t width, bool align_right) {
    size_t shown = DisplayWidth(text);
    if (shown >= width) return std::string(text);
    std::string padding(width - shown, ' ');
    return align_right ? padding + std::string(text) : std::string(text) + padding;
}

// "52.0 KiB" style.
std::string HumanBytes(int64_t bytes) {
    constexpr std::string_view kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    auto value = static_cast<double>(bytes);
    size_t unit = 0;
    while (value >= 1024.0 && unit + 1 < std::size(kUnits)) {
        value /= 1024.0;
        ++unit;
    }
    if (unit == 0) return fmt::format("{} B", bytes);
    return fmt::format("{:.1f} {}", value, kUnits[unit]);
}

// Seconds, without a fraction when whole.
std::string FormatSeconds(std::chrono::microseconds age) {
    int64_t micros = age.count();
    if (micros % 1'000'000 == 0) return fmt::format("{}", micros / 1'000'000);
    return fmt::format("{:.6f}", static_cast<double>(micros) / 1e6);
}

nlohmann::ordered_json OptionalToJson(const std::optional<int64_t>& value) {
    return value ? nlohmann::ordered_json(*value) : nlohmann::ordered_json(nullptr);
}

std::string OptionalToText(const std::optional<int64_t>& value) {
    return value ? fmt::format("{}", *value) : "-";
}

// Whole seconds as an integer, other ages as a fraction, null when unset.
nlohmann::ordered_json MaxAgeToJson(const std::optional<std::chrono::microseconds>& age) {
    if (!age) return nullptr;
    int64_t micros = age->count();
    if (micros % 1'000'000 == 0) return micros / 1'000'000;
    return static_cast<double>(micros) / 1e6;
}

nlohmann::ordered_json StreamInfoToJson(const StreamInfo& info) {
    const StreamMetadata& m = info.metadata;
    nlohmann::ordered_json metadata = {
        {"max_count", OptionalToJson(m.max_count)},
        {"max_age_seconds", MaxAgeToJson(m.max_age)},
        {"truncate_before", OptionalToJson(m.truncate_before)},
        {"custom", m.custom.empty() ? nlohmann::ordered_json::object() : JsonOrString(m.custom)},
    };
    return {
        {"stream_id", info.stream_id},          {"version", info.version},
        {"state", StreamStateName(info.state)}, {"updated_at", FormatTimestamp(info.updated_at)},
        {"metadata", std::move(metadata)},
    };
}

// "1 message", "3 messages".
std::string Plural(int64_t count, std::string_view noun) {
    return fmt::format("{} {}{}", count, noun, count == 1 ? "" : "s");
}

// A checkpoint's position for a table: "rebuild" for a projection waiting to rebuild, else the number.
std::string CheckpointPositionText(std::string_view checkpoint, int64_t position) {
    if (position == kProjectionRebuildMarker && IsProjectionCheckpoint(checkpoint)) return "rebuild";
    return fmt::format("{}", position);
}

void PrintKeyValues(std::FILE* out, const std::vector<std::pair<std::string, std::string>>& rows) {
    size_t key_width = 0;
    for (const auto& [key, value] : rows) key_width = std::max(key_width, key.size());
    for (const auto& [key, value] : rows) fmt::print(out, "{}  {}\n", PadTo(key, key_width, false), value);
}

std::vector<std::string> EventCells(const RecordedEvent& event) {
    return {fmt::format("{}", event.global_position), event.stream_id,
            fmt::format("{}", event.stream_version),  event.type,
            FormatTimestamp(event.recorded_at),       event.data};
}

std::vector<Table::Column> EventColumns(EventPrinter::Mode mode) {
    // Streaming tables cannot look at their rows first, so they start from widths that fit typical values.
    bool streaming = mode == EventPrinter::Mode::kStreaming;
    return {
        {"position", true, streaming ? size_t{8} : 0},
        {"stream", false, streaming ? size_t{16} : 0},
        {"version", true, 0},
        {"type", false, streaming ? size_t{16} : 0},
        {"recorded_at", false, streaming ? FormatTimestamp(0).size() : 0},
        {"data", false, 0},
    };
}

class JsonEventPrinter final : public EventPrinter {
public:
    JsonEventPrinter(std::FILE* out, bool flush_each) : out_(out), flush_each_(flush_each) {}
    void Begin() override {}
    void Add(const RecordedEvent& event) override {
        PrintJsonLine(out_, EventToJson(event));
        if (flush_each_) std::fflush(out_);
    }
    void Finish() override { std::fflush(out_); }

private:
    std::FILE* out_;
    bool flush_each_;
};

class TableEventPrinter final : public EventPrinter {
public:
    TableEventPrinter(const OutputOptions& options, Mode mode)
        : out_(options.out),
          width_(options.width),
          buffer_rows_(mode == Mode::kStreaming ? 0 : kBufferedRows),
          flush_each_(mode == Mode::kStreaming),
          table_(EventColumns(mode)) {}

    void Begin() override { StartPrinting(); }

    void Add(const RecordedEvent& event) override {
        if (!started_ && pending_ < buffer_rows_) {
            table_.AddRow(EventCells(event));
            ++pending_;
            return;
        }
        StartPrinting();
        table_.PrintRow(out_, EventCells(event));
        if (flush_each_) std::fflush(out_);
    }

    void Finish() override {
        if (!started_ && pending_ == 0) {
            fmt::print(out_, "(no events)\n");
        } else {
            StartPrinting();
        }
        std::fflush(out_);
    }

private:
    // Fixes the widths from what is buffered, prints the header and the buffered rows.
    void StartPrinting() {
        if (started_) return;
        started_ = true;
        table_.Print(out_, width_);
        std::fflush(out_);
    }

    std::FILE* out_;
    size_t width_;
    size_t buffer_rows_;
    bool flush_each_;
    Table table_;
    bool started_ = false;
    size_t pending_ = 0;
};

}  // namespace

std::string FormatTimestamp(int64_t micros) {
    int64_t seconds = micros / 1'000'000;
    int64_t fraction = micros % 1'000'000;
    if (fraction < 0) {
        fraction += 1'000'000;
        seconds -= 1;
    }
    auto time = static_cast<std::time_t>(seconds);
    std::tm tm{};
    if (gmtime_r(&time, &tm) == nullptr) return fmt::format("{}us", micros);
    return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                       tm.tm_hour, tm.tm_min, tm.tm_sec, fraction);
}

std::string_view StreamStateName(StreamState state) {
    switch (state) {
        case StreamState::kActive: return "active";
        case StreamState::kSoftDeleted: return "soft_deleted";
        case StreamState::kTombstoned: return "tombstoned";
    }
    return "unknown";
}

nlohmann::ordered_json JsonOrString(std::string_view text) {
    if (JsonNestingDepth(text) <= kMaxEmbeddedDepth) {
        nlohmann::ordered_json parsed = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
        if (!parsed.is_discarded()) return parsed;
    }
    return nlohmann::ordered_json(std::string(text));
}

nlohmann::ordered_json EventToJson(const RecordedEvent& event) {
    nlohmann::ordered_json metadata =
        event.metadata.empty() ? nlohmann::ordered_json::object() : JsonOrString(event.metadata);
    return {
        {"global_position", event.global_position},
        {"event_id", event.event_id.ToString()},
        {"stream_id", event.stream_id},
        {"stream_version", event.stream_version},
        {"type", event.type},
        {"data", JsonOrString(event.data)},
        {"metadata", std::move(metadata)},
        {"recorded_at", FormatTimestamp(event.recorded_at)},
    };
}

void PrintJsonLine(std::FILE* out, const nlohmann::ordered_json& value) {
    std::string line = value.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::ordered_json::error_handler_t::replace);
    line += '\n';
    std::fwrite(line.data(), 1, line.size(), out);
}

size_t DisplayWidth(std::string_view text) {
    return static_cast<size_t>(std::count_if(text.begin(), text.end(), [](char c) { return !IsContinuationByte(c); }));
}

std::string FitCell(std::string_view text, size_t width) {
    std::string clean(text);
    for (char& c : clean) {
        auto byte = static_cast<unsigned char>(c);
        if (byte < 0x20 || byte == 0x7F) c = ' ';
    }
    if (DisplayWidth(clean) <= width) return clean;
    size_t keep = width > kEllipsis.size() ? width - kEllipsis.size() : width;
    // Cut after `keep` code points, never inside one.
    size_t end = 0;
    for (size_t points = 0; end < clean.size(); ++end) {
        if (!IsContinuationByte(clean[end]) && points++ == keep) break;
    }
    clean.resize(end);
    if (width > kEllipsis.size()) clean += kEllipsis;
    return clean;
}

Table::Table(std::vector<Column> columns) : columns_(std::move(columns)) {}

void Table::AddRow(std::vector<std::string> cells) {
    cells.resize(columns_.size());
    rows_.push_back(std::move(cells));
}

void Table::FreezeWidths(size_t total_width) {
    widths_.assign(columns_.size(), 0);
    for (size_t i = 0; i < columns_.size(); ++i) {
        widths_[i] = std::max(columns_[i].min_width, DisplayWidth(columns_[i].header));
        for (const auto& row : rows_) widths_[i] = std::max(widths_[i], DisplayWidth(row[i]));
    }
    if (widths_.empty()) return;
    size_t used = 0;
    for (size_t i = 0; i + 1 < widths_.size(); ++i) used += widths_[i] + 2;
    size_t room = total_width > used ? total_width - used : 0;
    size_t last_min = std::max({kMinDataWidth, columns_.back().min_width, DisplayWidth(columns_.back().header)});
    // Without rows to measure (a streaming table), the last column takes all the room left.
    size_t wanted = rows_.empty() ? room : widths_.back();
    widths_.back() = std::max(last_min, std::min(wanted, room));
}

void Table::PrintHeader(std::FILE* out) const {
    std::vector<std::string> headers;
    headers.reserve(columns_.size());
    for (const auto& column : columns_) headers.push_back(column.header);
    PrintRow(out, headers);
}

void Table::PrintRow(std::FILE* out, const std::vector<std::string>& cells) const {
    std::string line;
    for (size_t i = 0; i < columns_.size(); ++i) {
        bool last = i + 1 == columns_.size();
        std::string_view cell = i < cells.size() ? std::string_view(cells[i]) : std::string_view();
        std::string text = FitCell(cell, last ? widths_[i] : SIZE_MAX);
        if (last) {
            line += columns_[i].align_right ? PadTo(text, widths_[i], true) : text;
        } else {
            line += PadTo(text, widths_[i], columns_[i].align_right);
            line += "  ";
        }
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    line += '\n';
    std::fwrite(line.data(), 1, line.size(), out);
}

void Table::Print(std::FILE* out, size_t total_width) {
    FreezeWidths(total_width);
    PrintHeader(out);
    for (const auto& row : rows_) PrintRow(out, row);
    rows_.clear();
}

std::unique_ptr<EventPrinter> EventPrinter::Make(const OutputOptions& options, Mode mode) {
    if (options.json) return std::make_unique<JsonEventPrinter>(options.out, mode == Mode::kStreaming);
    return std::make_unique<TableEventPrinter>(options, mode);
}

void PrintAppendResult(const OutputOptions& options, std::string_view stream, const AppendResult& result) {
    if (options.json) {
        PrintJsonLine(options.out, {
                                       {"stream_id", stream},
                                       {"next_expected_version", result.next_expected_version},
                                       {"first_position", result.first_position},
                                       {"last_position", result.last_position},
                                       {"already_present", result.already_present},
                                   });
        return;
    }
    fmt::print(options.out, "{} {}: stream version {}, global position {}{}\n",
               result.already_present ? "already present in" : "appended to", stream, result.next_expected_version,
               result.last_position, result.already_present ? " (nothing written)" : "");
}

void PrintStreams(const OutputOptions& options, const std::vector<StreamInfo>& streams) {
    if (options.json) {
        for (const auto& info : streams) PrintJsonLine(options.out, StreamInfoToJson(info));
        return;
    }
    if (streams.empty()) {
        fmt::print(options.out, "(no streams)\n");
        return;
    }
    Table table({{"stream"}, {"version", true}, {"state"}, {"updated"}});
    for (const auto& info : streams) {
        table.AddRow({info.stream_id, fmt::format("{}", info.version), std::string(StreamStateName(info.state)),
                      FormatTimestamp(info.updated_at)});
    }
    table.Print(options.out, options.width);
}

void PrintStreamInfo(const OutputOptions& options, const StreamInfo& info) {
    if (options.json) {
        PrintJsonLine(options.out, StreamInfoToJson(info));
        return;
    }
    const StreamMetadata& m = info.metadata;
    PrintKeyValues(options.out, {
                                    {"stream", info.stream_id},
                                    {"version", fmt::format("{}", info.version)},
                                    {"state", std::string(StreamStateName(info.state))},
                                    {"updated", FormatTimestamp(info.updated_at)},
                                    {"max_count", OptionalToText(m.max_count)},
                                    {"max_age", m.max_age ? FormatSeconds(*m.max_age) + " s" : "-"},
                                    {"truncate_before", OptionalToText(m.truncate_before)},
                                    {"custom", m.custom.empty() ? "-" : FitCell(m.custom, options.width)},
                                });
}

void PrintDeleted(const OutputOptions& options, std::string_view stream, DeleteMode mode) {
    bool hard = mode == DeleteMode::kHard;
    if (options.json) {
        PrintJsonLine(options.out, {{"stream_id", stream}, {"deleted", hard ? "hard" : "soft"}});
        return;
    }
    if (hard) {
        fmt::print(options.out, "hard-deleted {}: the stream is tombstoned and can never be written again\n", stream);
    } else {
        fmt::print(options.out, "soft-deleted {}: hidden until the next append re-opens it\n", stream);
    }
}

int64_t CheckpointLag(int64_t head, int64_t position) {
    return head - std::max<int64_t>(position, 0);
}

bool IsProjectionCheckpoint(std::string_view checkpoint) {
    return checkpoint.starts_with(ProjectionCheckpointName(""));
}

void PrintStats(const OutputOptions& options, const StoreStats& stats) {
    if (options.json) {
        nlohmann::ordered_json checkpoints = nlohmann::ordered_json::array();
        for (const auto& cp : stats.checkpoints) {
            checkpoints.push_back({{"name", cp.name},
                                   {"position", cp.position},
                                   {"lag", CheckpointLag(stats.head_position, cp.position)},
                                   {"updated_at", FormatTimestamp(cp.updated_at)}});
        }
        PrintJsonLine(options.out, {
                                       {"backend", stats.backend},
                                       {"location", stats.location},
                                       {"events", stats.events},
                                       {"streams", stats.streams},
                                       {"head_position", stats.head_position},
                                       {"size_bytes", stats.size_bytes},
                                       {"checkpoints", std::move(checkpoints)},
                                   });
        return;
    }
    PrintKeyValues(
        options.out,
        {
            {"backend", stats.backend},
            {"location", stats.location.empty() ? "-" : stats.location},
            {"events", fmt::format("{}", stats.events)},
            {"streams", fmt::format("{}", stats.streams)},
            {"head", fmt::format("{}", stats.head_position)},
            {"size", fmt::format("{} ({} bytes)", HumanBytes(stats.size_bytes), stats.size_bytes)},
            {"checkpoints", stats.checkpoints.empty() ? "none" : fmt::format("{}", stats.checkpoints.size())},
        });
    if (stats.checkpoints.empty()) return;
    fmt::print(options.out, "\n");
    Table table({{"checkpoint"}, {"position", true}, {"lag", true}, {"updated"}});
    for (const auto& cp : stats.checkpoints) {
        table.AddRow({cp.name, CheckpointPositionText(cp.name, cp.position),
                      fmt::format("{}", CheckpointLag(stats.head_position, cp.position)),
                      FormatTimestamp(cp.updated_at)});
    }
    table.Print(options.out, options.width);
}

void PrintRelayStarted(const OutputOptions& options, const RelayOptions& relay) {
    if (options.json) {
        PrintJsonLine(options.out, {{"event", "started"}, {"batch", relay.batch}, {"window", relay.window}});
    } else {
        fmt::print(options.out, "relay running (batch {}, window {}); SIGINT or SIGTERM stops it\n", relay.batch,
                   relay.window);
    }
    std::fflush(options.out);
}

void PrintRelayPublished(const OutputOptions& options, int64_t count, int64_t total) {
    if (options.json) {
        PrintJsonLine(options.out, {{"event", "published"}, {"count", count}, {"total", total}});
    } else {
        fmt::print(options.out, "published {} (total {})\n", Plural(count, "message"), total);
    }
    std::fflush(options.out);
}

void PrintRelayLease(const OutputOptions& options, bool leader) {
    if (options.json) {
        PrintJsonLine(options.out, {{"event", leader ? "leader" : "standby"}});
    } else if (leader) {
        fmt::print(options.out, "holding the outbox lease: this relay publishes\n");
    } else {
        fmt::print(options.out, "standby: another relay holds the outbox lease; taking over if it expires\n");
    }
    std::fflush(options.out);
}

void PrintRelayStopped(const OutputOptions& options, const RelayStats& stats) {
    if (options.json) {
        PrintJsonLine(options.out, {{"event", "stopped"},
                                    {"published", stats.published},
                                    {"rounds", stats.rounds},
                                    {"failures", stats.failures}});
    } else {
        fmt::print(options.out, "relay stopped: published {} in {}, {}\n", Plural(stats.published, "message"),
                   Plural(stats.rounds, "round"), Plural(stats.failures, "failed round"));
    }
    std::fflush(options.out);
}

void PrintRelayOnce(const OutputOptions& options, int64_t published, int64_t pending) {
    if (options.json) {
        PrintJsonLine(options.out, {{"published", published}, {"pending", pending}});
        return;
    }
    fmt::print(options.out, "published {}; {} still pending\n", Plural(published, "outbox message"), pending);
}

void PrintOutboxStats(const OutputOptions& options, const OutboxStats& stats, int64_t now_micros) {
    const bool any_pending = stats.pending > 0 && stats.oldest_pending_at > 0;
    const auto age = std::chrono::microseconds(std::max<int64_t>(now_micros - stats.oldest_pending_at, 0));
    if (options.json) {
        nlohmann::ordered_json oldest = nullptr;
        nlohmann::ordered_json age_seconds = nullptr;
        if (any_pending) {
            oldest = FormatTimestamp(stats.oldest_pending_at);
            age_seconds = static_cast<double>(age.count()) / 1e6;
        }
        PrintJsonLine(options.out, {
                                       {"pending", stats.pending},
                                       {"published", stats.published},
                                       {"oldest_pending_at", std::move(oldest)},
                                       {"oldest_pending_age_seconds", std::move(age_seconds)},
                                       {"last_position", stats.last_position},
                                   });
        return;
    }
    std::string oldest = "-";
    if (any_pending) {
        oldest = fmt::format("{} ({:.1f} s ago)", FormatTimestamp(stats.oldest_pending_at),
                             static_cast<double>(age.count()) / 1e6);
    }
    PrintKeyValues(options.out, {
                                    {"pending", fmt::format("{}", stats.pending)},
                                    {"published kept", fmt::format("{}", stats.published)},
                                    {"oldest pending", oldest},
                                    {"last position", fmt::format("{}", stats.last_position)},
                                });
}

void PrintRepublished(const OutputOptions& options, int64_t from, int64_t count) {
    if (options.json) {
        PrintJsonLine(options.out, {{"from", from}, {"republished", count}});
        return;
    }
    if (count == 0) {
        fmt::print(options.out,
                   "no outbox rows at or after position {} (rows purged after the relay's retention cannot come "
                   "back)\n",
                   from);
        return;
    }
    fmt::print(options.out,
               "marked {} from position {} for re-publishing; the running relay (or 'keel relay --once') publishes "
               "them again\n",
               Plural(count, "outbox row"), from);
}

void PrintDeadLetters(const OutputOptions& options, std::string_view destination, std::string_view group,
                      const std::vector<DeadLetter>& letters) {
    if (options.json) {
        for (const auto& dl : letters) {
            nlohmann::ordered_json headers = nlohmann::ordered_json::object();
            for (const auto& [name, value] : dl.message.headers) headers[name] = value;
            PrintJsonLine(options.out, {
                                           {"id", dl.id},
                                           {"destination", destination},
                                           {"group", group},
                                           {"message_id", dl.message.message_id.ToString()},
                                           {"key", dl.message.key},
                                           {"attempts", dl.attempts},
                                           {"dead_lettered_at", FormatTimestamp(dl.dead_lettered_at)},
                                           {"error", dl.error},
                                           {"payload", JsonOrString(dl.message.payload)},
                                           {"headers", std::move(headers)},
                                       });
        }
        return;
    }
    if (letters.empty()) {
        fmt::print(options.out, "(no dead letters in {}/{})\n", destination, group);
        return;
    }
    Table table({{"id", true}, {"attempts", true}, {"dead_lettered_at"}, {"key"}, {"error"}, {"payload"}});
    for (const auto& dl : letters) {
        table.AddRow({dl.id, fmt::format("{}", dl.attempts), FormatTimestamp(dl.dead_lettered_at),
                      FitCell(dl.message.key, kMaxKeyWidth), FitCell(dl.error, kMaxErrorWidth), dl.message.payload});
    }
    table.Print(options.out, options.width);
}

void PrintReplayed(const OutputOptions& options, std::string_view destination, std::string_view group, size_t count) {
    if (options.json) {
        PrintJsonLine(options.out, {{"destination", destination}, {"group", group}, {"replayed", count}});
        return;
    }
    fmt::print(options.out, "replayed {} of {}/{}: the group receives {} again\n",
               Plural(static_cast<int64_t>(count), "dead letter"), destination, group, count == 1 ? "it" : "them");
}

void PrintRebuildRequested(const OutputOptions& options, std::string_view name,
                           const std::optional<int64_t>& previous) {
    const std::string checkpoint = ProjectionCheckpointName(name);
    if (options.json) {
        PrintJsonLine(options.out, {{"projection", name},
                                    {"checkpoint", checkpoint},
                                    {"previous_position", OptionalToJson(previous)},
                                    {"rebuild_requested", true}});
        return;
    }
    std::string was =
        previous ? fmt::format("checkpoint {} was at {}", checkpoint, CheckpointPositionText(checkpoint, *previous))
                 : fmt::format("checkpoint {} did not exist yet", checkpoint);
    fmt::print(options.out,
               "rebuild of projection {} requested ({}): the running projection, or the next one started, resets its "
               "read model and replays $all from position 0\n",
               name, was);
}

void PrintProjections(const OutputOptions& options, const StoreStats& stats) {
    const size_t prefix = ProjectionCheckpointName("").size();
    if (options.json) {
        for (const auto& cp : stats.checkpoints) {
            if (!IsProjectionCheckpoint(cp.name)) continue;
            PrintJsonLine(options.out, {{"name", cp.name.substr(prefix)},
                                        {"checkpoint", cp.name},
                                        {"position", cp.position},
                                        {"lag", CheckpointLag(stats.head_position, cp.position)},
                                        {"rebuild_requested", cp.position == kProjectionRebuildMarker},
                                        {"updated_at", FormatTimestamp(cp.updated_at)}});
        }
        return;
    }
    Table table({{"projection"}, {"position", true}, {"lag", true}, {"state"}, {"updated"}});
    for (const auto& cp : stats.checkpoints) {
        if (!IsProjectionCheckpoint(cp.name)) continue;
        const int64_t lag = CheckpointLag(stats.head_position, cp.position);
        std::string state = cp.position == kProjectionRebuildMarker ? "rebuild requested"
                            : lag <= 0                              ? "caught up"
                                                                    : "behind";
        table.AddRow({cp.name.substr(prefix), CheckpointPositionText(cp.name, cp.position), fmt::format("{}", lag),
                      std::move(state), FormatTimestamp(cp.updated_at)});
    }
    if (table.empty()) {
        fmt::print(options.out, "(no projections; head {})\n", stats.head_position);
        return;
    }
    table.Print(options.out, options.width);
}

}  // namespace keel::cli
