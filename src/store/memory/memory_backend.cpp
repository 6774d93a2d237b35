#include "store/memory/memory_backend.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

namespace keel::detail {
namespace {

bool InFilter(const std::vector<std::string>& allowed, std::string_view value) {
    return allowed.empty() || std::find(allowed.begin(), allowed.end(), value) != allowed.end();
}

class MemoryBackend final : public StoreBackend {
public:
    void AppendBatch(std::span<AppendRequest* const> batch) override {
        std::unique_lock lock(mu_);
        for (AppendRequest* r : batch) r->result = AppendOne(*r);
    }

    Result<std::vector<RecordedEvent>> ReadStreamRange(std::string_view stream, const StreamRange& range) override {
        std::shared_lock lock(mu_);
        std::vector<RecordedEvent> out;
        auto it = streams_.find(stream);
        if (it == streams_.end()) return out;
        const std::vector<size_t>& idx = it->second.indices;
        auto visible = [&](const RecordedEvent& e) {
            return (!range.min_recorded_at || e.recorded_at >= *range.min_recorded_at) &&
                   (!range.max_position || e.global_position <= *range.max_position) &&
                   (!range.max_recorded_at || e.recorded_at <= *range.max_recorded_at);
        };
        auto full = [&] { return range.limit != 0 && out.size() >= range.limit; };
        const auto n = static_cast<int64_t>(idx.size());
        if (range.direction == ReadDirection::kForward) {
            for (int64_t v = std::max(range.from_version, range.min_version); v < n && !full(); ++v) {
                const RecordedEvent& e = events_[idx[static_cast<size_t>(v)]];
                if (visible(e)) out.push_back(e);
            }
        } else {
            for (int64_t v = std::min(range.from_version, n - 1); v >= range.min_version && !full(); --v) {
                const RecordedEvent& e = events_[idx[static_cast<size_t>(v)]];
                if (visible(e)) out.push_back(e);
            }
        }
        return out;
    }

    Result<ReadAllSlice> ReadAll(const ReadAllOptions& o) override {
        std::shared_lock lock(mu_);
        ReadAllSlice slice;
        size_t i = static_cast<size_t>(std::max<int64_t>(o.from_position, 1) - 1);
        for (; i < events_.size(); ++i) {
            if (o.limit != 0 && slice.events.size() >= o.limit) break;
            const RecordedEvent& e = events_[i];
            if (o.as_of_position && e.global_position > *o.as_of_position) {
                i = events_.size();
                break;
            }
            if (o.as_of_time && e.recorded_at > *o.as_of_time) {
                i = events_.size();
                break;
            }
            if (InFilter(o.categories, e.category()) && InFilter(o.types, e.type)) slice.events.push_back(e);
        }
        slice.end_of_all = i >= events_.size();
        slice.next_position = static_cast<int64_t>(i) + 1;
        return slice;
    }

    Result<int64_t> HeadPosition() override {
        std::shared_lock lock(mu_);
        return static_cast<int64_t>(events_.size());
    }

    Result<std::optional<StreamInfo>> GetStream(std::string_view stream) override {
        std::shared_lock lock(mu_);
        auto it = streams_.find(stream);
        if (it == streams_.end()) return std::optional<StreamInfo>();
        return std::optional<StreamInfo>(it->second.info);
    }

    Result<std::vector<StreamInfo>> ListStreams(std::string_view after, size_t limit) override {
        std::shared_lock lock(mu_);
        std::vector<StreamInfo> out;
        auto it = after.empty() ? streams_.begin() : streams_.upper_bound(after);
        for (; it != streams_.end() && (limit == 0 || out.size() < limit); ++it) out.push_back(it->second.info);
        return out;
    }

    Status SetStreamMetadata(std::string_view stream, const StreamMetadata& metadata) override {
        std::unique_lock lock(mu_);
        Stream& s = Touch(stream);
        if (s.info.state == StreamState::kTombstoned) return Tombstoned(stream);
        s.info.metadata = metadata;
        s.info.updated_at = NowMicros();
        return Status::Ok();
    }

    Status DeleteStream(std::string_view stream, ExpectedVersion expected, DeleteMode mode) override {
        std::unique_lock lock(mu_);
        auto it = streams_.find(stream);
        const StreamInfo* info = it == streams_.end() ? nullptr : &it->second.info;
        KEEL_RETURN_IF_ERROR(CheckExpected(stream, expected, info));
        if (mode == DeleteMode::kSoft) {
            if (EffectiveVersion(info) < 0) {
                return Status::NotFound(fmt::format("stream '{}' does not exist; nothing to delete", stream));
            }
            it->second.info.state = StreamState::kSoftDeleted;
            it->second.info.metadata.truncate_before = it->second.info.version + 1;
        } else {
            Stream& s = Touch(stream);
            s.info.state = StreamState::kTombstoned;
        }
        streams_.find(stream)->second.info.updated_at = NowMicros();
        // A snapshot folds the deleted events: a re-opened stream must not start from it.
        if (auto snap = snapshots_.find(stream); snap != snapshots_.end()) snapshots_.erase(snap);
        return Status::Ok();
    }

    Status SaveSnapshot(const Snapshot& snapshot) override {
        std::unique_lock lock(mu_);
        Snapshot s = snapshot;
        s.recorded_at = NowMicros();
        snapshots_[s.stream_id] = std::move(s);
        return Status::Ok();
    }

    Result<std::optional<Snapshot>> LoadSnapshot(std::string_view stream) override {
        std::shared_lock lock(mu_);
        auto it = snapshots_.find(stream);
        if (it == snapshots_.end()) return std::optional<Snapshot>();
        return std::optional<Snapshot>(it->second);
    }

    Result<std::optional<int64_t>> LoadCheckpoint(std::string_view name) override {
        std::shared_lock lock(mu_);
        auto it = checkpoints_.find(name);
        if (it == checkpoints_.end()) return std::optional<int64_t>();
        return std::optional<int64_t>(it->second.position);
    }

    Status SaveCheckpoint(std::string_view name, int64_t position) override {
        std::unique_lock lock(mu_);
        checkpoints_[std::string(name)] = CheckpointInfo{std::string(name), position, NowMicros()};
        return Status::Ok();
    }

    Result<StoreStats> Stats() override {
        std::shared_lock lock(mu_);
        StoreStats st;
        st.backend = "memory";
        st.events = static_cast<int64_t>(events_.size());
        st.streams = static_cast<int64_t>(streams_.size());
        st.head_position = static_cast<int64_t>(events_.size());
        for (const auto& [name, cp] : checkpoints_) st.checkpoints.push_back(cp);
        return st;
    }

private:
    struct Stream {
        StreamInfo info;
        std::vector<size_t> indices;  // version -> index into events_
    };

    static Status Tombstoned(std::string_view stream) {
        return Status::StreamDeleted(fmt::format("stream '{}' was hard-deleted (tombstoned)", stream));
    }

    Stream& Touch(std::string_view stream) {
        auto it = streams_.find(stream);
        if (it == streams_.end()) {
            it = streams_.emplace(std::string(stream), Stream{}).first;
            it->second.info.stream_id = std::string(stream);
        }
        return it->second;
    }

    Result<AppendResult> AppendOne(const AppendRequest& r) {
        auto it = streams_.find(r.stream);
        const StreamInfo* info = it == streams_.end() ? nullptr : &it->second.info;
        auto lookup = [this](const Uuid& id) -> Result<std::optional<StoredEventRef>> {
            auto found = by_id_.find(id);
            if (found == by_id_.end()) return std::optional<StoredEventRef>();
            const RecordedEvent& e = events_[found->second];
            return std::optional<StoredEventRef>(
                StoredEventRef{e.global_position, e.stream_id, e.stream_version, e.type, e.data, e.metadata});
        };
        const bool any_known = std::any_of(r.events.begin(), r.events.end(),
                                           [&](const EventData& e) { return by_id_.count(e.event_id) != 0; });
        Status expected_ok = CheckExpected(r.stream, r.expected, info);
        if (!expected_ok.ok() || any_known) {
            if (any_known) {
                auto replay = MatchStoredAppend(r.stream, r.expected, r.events, lookup);
                if (!replay.ok()) return replay.status();
                if (replay->has_value()) return **replay;
            }
            return expected_ok;
        }
        Stream& s = Touch(r.stream);
        const int64_t now = std::max(NowMicros(), last_recorded_at_);
        last_recorded_at_ = now;
        AppendResult result;
        for (const EventData& d : r.events) {
            RecordedEvent e;
            e.global_position = static_cast<int64_t>(events_.size()) + 1;
            e.event_id = d.event_id;
            e.stream_id = s.info.stream_id;
            e.stream_version = s.info.version + 1;
            e.type = d.type;
            e.data = d.data;
            e.metadata = d.metadata;
            e.recorded_at = now;
            by_id_.emplace(e.event_id, events_.size());
            s.indices.push_back(events_.size());
            s.info.version = e.stream_version;
            if (result.first_position == 0) result.first_position = e.global_position;
            result.last_position = e.global_position;
            events_.push_back(std::move(e));
        }
        s.info.state = StreamState::kActive;
        s.info.updated_at = now;
        result.next_expected_version = s.info.version;
        return result;
    }

    std::shared_mutex mu_;
    std::vector<RecordedEvent> events_;
    std::unordered_map<Uuid, size_t> by_id_;
    std::map<std::string, Stream, std::less<>> streams_;
    std::map<std::string, Snapshot, std::less<>> snapshots_;
    std::map<std::string, CheckpointInfo, std::less<>> checkpoints_;
    int64_t last_recorded_at_ = 0;
};

}  // namespace

Result<std::unique_ptr<StoreBackend>> OpenMemoryBackend(const ParsedUri& uri, const StoreOptions&) {
    if (!uri.rest.empty() || !uri.query.empty()) {
        return Status::InvalidArgument("the memory store URI is just 'memory:' (it takes no path or parameters)");
    }
    return std::unique_ptr<StoreBackend>(std::make_unique<MemoryBackend>());
}

}  // namespace keel::detail
