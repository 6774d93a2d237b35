// local: — the embedded broker: a durable queue in an SQLite database (WAL), usable by several processes at once.
//
// Model (docs/brokers.md has the full story and the schema):
// - a publish inserts the message once into keel_broker_messages and one row per group declared at that moment into
//   keel_broker_deliveries (the group's own delivery state: head flag, visible_at, attempt);
// - per group and key only the oldest undone delivery is the key's *head*; only heads whose visible_at has passed
//   can be received, so a key never has two deliveries in flight and its messages go out in publish order;
// - Receive sets visible_at = now + visibility timeout and attempt + 1 (ReceiveBatch does so for several heads in
//   one transaction); Ack deletes the delivery and makes the next delivery of the key its head (AckBatch: several in
//   one transaction); Nack moves visible_at; DeadLetter copies the message to keel_broker_dead_letters;
// - a message row is deleted when its last group is done with it (`pending` counts the groups).
//
// One connection per Broker object, shared by its consumers and guarded by one mutex: calls of one process never
// contend inside SQLite, and other processes are kept out by BEGIN IMMEDIATE with a busy timeout.

#include <algorithm>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <sqlite3.h>

#include "broker/backends.hpp"
#include "broker/local/local_schema.hpp"
#include "broker/names.hpp"
#include "store/sqlite/sqlite_db.hpp"

namespace keel::detail {
namespace {

using sqlite::Db;
using sqlite::Stmt;
using sqlite::StmtReset;
using sqlite::ToStatus;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

constexpr int64_t kSchemaVersion = static_cast<int64_t>(local_broker_schema::kMigrations.size());
// How long a write waits for another process's transaction (publishes wait at most their own timeout instead).
constexpr milliseconds kBusyTimeout{5000};
// A waiting Receive looks for work from other processes at least this often (the default of ?poll_ms=).
constexpr milliseconds kDefaultMaxPoll{20};
constexpr milliseconds kMinPoll{1};
// Visibility timeouts and nack delays are capped here (about 10 years), so that deadlines in µs cannot overflow.
constexpr milliseconds kMaxDelay{315'360'000'000};

int64_t NowMicros() {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string Shorten(std::string_view s) {
    return s.size() <= 64 ? std::string(s) : fmt::format("{}…", s.substr(0, 64));
}

// Destination and group names: broker/names.hpp.
Status CheckName(std::string_view what, std::string_view name) {
    return ValidateBrokerName(what, name);
}

Status CheckMessage(const Message& m) {
    KEEL_RETURN_IF_ERROR(CheckName("destination", m.destination));
    if (m.message_id.is_nil()) {
        return Status::InvalidArgument(
            fmt::format("message to '{}' with key '{}' has a nil message_id", m.destination, Shorten(m.key)));
    }
    return Status::Ok();
}

// Headers on disk: for each header, a 4-byte little-endian length and the name's bytes, then the same for the value.
void PutU32(std::string& out, size_t n) {
    for (int shift = 0; shift < 32; shift += 8) out.push_back(static_cast<char>((n >> shift) & 0xFF));
}

std::string EncodeHeaders(const Headers& headers) {
    std::string out;
    for (const auto& [name, value] : headers) {
        PutU32(out, name.size());
        out += name;
        PutU32(out, value.size());
        out += value;
    }
    return out;
}

Result<Headers> DecodeHeaders(std::string_view in) {
    Headers out;
    auto take = [&in](std::string& field) -> bool {
        if (in.size() < 4) return false;
        size_t n = 0;
        for (int i = 0; i < 4; ++i)
            n |= static_cast<size_t>(static_cast<unsigned char>(in[static_cast<size_t>(i)])) << (8 * i);
        in.remove_prefix(4);
        if (in.size() < n) return false;
        field.assign(in.substr(0, n));
        in.remove_prefix(n);
        return true;
    };
    while (!in.empty()) {
        std::string name, value;
        if (!take(name) || !take(value)) return Status::Corruption("stored message headers are truncated");
        out.emplace_back(std::move(name), std::move(value));
    }
    return out;
}

bool LooksLikeSqlite(const std::string& path, bool& empty) {
    std::ifstream in(path, std::ios::binary);
    char header[16] = {};
    in.read(header, sizeof header);
    empty = in.gcount() == 0;
    return in.gcount() == 16 && std::string_view(header, 16) == std::string_view("SQLite format 3\0", 16);
}

// Steps a statement that returns at most one row (e.g. DML with RETURNING) and runs it to completion; `row` is
// called with the statement positioned on the row, if there is one. Returns SQLITE_ROW, SQLITE_DONE or an error.
template <class F>
int StepOne(Stmt& st, F&& row) {
    int rc = st.Step();
    if (rc == SQLITE_ROW) {
        row(st);
        const int done = st.Step();
        if (done != SQLITE_DONE && done != SQLITE_ROW) rc = done;
    }
    return rc;
}

Status Migrate(Db& db, const std::string& path) {
    auto app_id = db.QueryInt("PRAGMA application_id");
    if (!app_id.ok()) {
        return app_id.status().code() == StatusCode::kCorruption
                   ? Status::Corruption(
                         fmt::format("'{}' is not a keel broker database: {}", path, app_id.status().message()))
                   : app_id.status();
    }
    if (*app_id != 0 && *app_id != local_broker_schema::kApplicationId) {
        return Status::Corruption(
            fmt::format("'{}' is not a keel broker database: it is an SQLite database of another "
                        "application (application_id 0x{:08x})",
                        path, *app_id));
    }
    KEEL_RETURN_IF_ERROR(db.Exec("BEGIN IMMEDIATE").WithContext(fmt::format("opening broker database '{}'", path)));
    auto body = [&]() -> Status {
        KEEL_RETURN_IF_ERROR(db.Exec(local_broker_schema::kCreateSchemaTable));
        int64_t version = 0;
        auto v = db.QueryInt(
            fmt::format("SELECT version FROM keel_schema WHERE component = '{}'", local_broker_schema::kComponent));
        if (v.ok()) {
            version = *v;
        } else if (v.status().code() != StatusCode::kNotFound) {
            return v.status();
        }
        if (version > kSchemaVersion) {
            return Status::NotSupported(
                fmt::format("'{}' has broker schema version {}, newer than this keel build supports ({}); upgrade keel",
                            path, version, kSchemaVersion));
        }
        for (int64_t from = version; from < kSchemaVersion; ++from) {
            KEEL_RETURN_IF_ERROR(db.Exec(local_broker_schema::kMigrations[static_cast<size_t>(from)])
                                     .WithContext(fmt::format("migrating broker schema {} -> {}", from, from + 1)));
        }
        if (version != kSchemaVersion) {
            KEEL_RETURN_IF_ERROR(db.Exec(fmt::format(
                "INSERT INTO keel_schema (component, version, updated_at) VALUES ('{}', {}, {}) "
                "ON CONFLICT (component) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
                local_broker_schema::kComponent, kSchemaVersion, NowMicros())));
        }
        if (*app_id == 0) {
            KEEL_RETURN_IF_ERROR(
                db.Exec(fmt::format("PRAGMA application_id = {}", local_broker_schema::kApplicationId)));
        }
        return Status::Ok();
    };
    Status s = body();
    if (!s.ok()) {
        (void)db.Exec("ROLLBACK");
        return s;
    }
    return db.Exec("COMMIT");
}

// Wake-ups for Receive calls waiting in this process, shared by every Broker object of the process on the same
// file (so a consumer hears of a publish made through another Broker object at once): bumped after every commit that
// may make work visible. Other processes' commits are found by polling (poll_ms).
struct Wake {
    std::mutex mu;
    std::condition_variable cv;
    uint64_t generation = 0;
};

std::shared_ptr<Wake> WakeFor(const std::string& path) {
    static std::mutex registry_mu;
    static std::map<std::string, std::weak_ptr<Wake>> registry;
    std::error_code ec;
    std::string key = std::filesystem::weakly_canonical(path, ec).string();
    if (ec || key.empty()) key = path;
    std::lock_guard lock(registry_mu);
    for (auto it = registry.begin(); it != registry.end();) {  // forget files no Broker object has open
        it = it->second.expired() ? registry.erase(it) : std::next(it);
    }
    std::weak_ptr<Wake>& slot = registry[key];
    std::shared_ptr<Wake> wake = slot.lock();
    if (!wake) {
        wake = std::make_shared<Wake>();
        slot = wake;
    }
    return wake;
}

// What a Broker object and its consumers share: the connection, its statements, and the wake-up signal.
struct Core {
    std::mutex mu;  // guards everything below down to the statements
    std::unique_ptr<Db> db;
    std::string path;
    bool full_durability = true;  // ?durability=full: publishes and admin commits are fsynced
    bool sync_is_full = false;    // the connection's current PRAGMA synchronous
    Status sticky;                // set when a commit failed at the storage level
    Stmt begin, commit, rollback;
    Stmt find_destination, insert_destination, find_group, insert_group, groups_of;
    Stmt insert_message, insert_delivery, peek_fresh, peek_returning, claim, get_message;
    Stmt remove_delivery, advance_head, release_message, delete_message, nack, release;
    Stmt insert_dead_letter, list_dead_letters, dead_letter_ids, replay_dead_letter, delete_dead_letter;

    milliseconds max_poll = kDefaultMaxPoll;
    std::shared_ptr<Wake> wake;

    // The busy handler's state (guarded by mu, as every use of the connection): how long a write waits for another
    // connection's transaction, and when the current wait began.
    steady_clock::duration busy_timeout = kBusyTimeout;
    steady_clock::time_point busy_since;

    uint64_t Generation() {
        std::lock_guard lock(wake->mu);
        return wake->generation;
    }
    void Notify() {
        {
            std::lock_guard lock(wake->mu);
            ++wake->generation;
        }
        wake->cv.notify_all();
    }
    void WaitFor(uint64_t seen, steady_clock::time_point until) {
        std::unique_lock lock(wake->mu);
        wake->cv.wait_until(lock, until, [&] { return wake->generation != seen; });
    }

    // SQLite's own busy timeout sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms between tries: a consumer
    // waiting for a publish's fsync (another Broker object or process on the file) would often sleep far longer than
    // the fsync takes. This one tries again after 50 µs, growing by 50 µs up to 1 ms.
    static int BusyHandler(void* arg, int count) {
        Core& core = *static_cast<Core*>(arg);
        const auto now = steady_clock::now();
        if (count == 0) core.busy_since = now;
        if (now - core.busy_since >= core.busy_timeout) return 0;
        std::this_thread::sleep_for(std::chrono::microseconds(std::min(50 * (count + 1), 1000)));
        return 1;
    }
    void SetBusyTimeout(steady_clock::duration t) { busy_timeout = t; }

    Status Prepare() {
        struct {
            Stmt* stmt;
            std::string_view sql;
        } stmts[] = {
            {&begin, "BEGIN IMMEDIATE"},
            {&commit, "COMMIT"},
            {&rollback, "ROLLBACK"},
            {&find_destination, "SELECT id FROM keel_broker_destinations WHERE name = ?1"},
            {&insert_destination,
             "INSERT INTO keel_broker_destinations (name, created_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING"},
            {&find_group,
             "SELECT g.id, g.destination_id FROM keel_broker_groups g JOIN keel_broker_destinations d "
             "ON d.id = g.destination_id WHERE d.name = ?1 AND g.name = ?2"},
            {&insert_group,
             "INSERT INTO keel_broker_groups (destination_id, name, created_at) VALUES (?1, ?2, ?3) "
             "ON CONFLICT (destination_id, name) DO NOTHING"},
            {&groups_of, "SELECT id FROM keel_broker_groups WHERE destination_id = ?1 ORDER BY id"},
            {&insert_message,
             "INSERT INTO keel_broker_messages (destination_id, message_id, replay, key, payload, headers, "
             "published_at, pending) VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?7) "
             "ON CONFLICT (destination_id, message_id) WHERE replay = 0 DO NOTHING"},
            {&insert_delivery,
             "INSERT INTO keel_broker_deliveries (group_id, seq, key, head, visible_at, attempt) VALUES (?1, ?2, ?3, "
             "?3 = '' OR NOT EXISTS (SELECT 1 FROM keel_broker_deliveries WHERE group_id = ?1 AND key = ?3), 0, 0)"},
            // The oldest receivable delivery is the older of: the oldest never-delivered (or released) head, and
            // the oldest head whose lease or nack delay has run out. Two indexes keep both lookups short however
            // many deliveries are in flight or queued.
            {&peek_fresh,
             "SELECT seq FROM keel_broker_deliveries INDEXED BY keel_broker_deliveries_fresh "
             "WHERE group_id = ?1 AND head = 1 AND visible_at = 0 ORDER BY seq LIMIT 1"},
            {&peek_returning,
             "SELECT min(seq) FROM keel_broker_deliveries INDEXED BY keel_broker_deliveries_returning "
             "WHERE group_id = ?1 AND head = 1 AND visible_at > 0 AND visible_at <= ?2"},
            {&claim,
             "UPDATE keel_broker_deliveries SET visible_at = ?3, attempt = attempt + 1 "
             "WHERE group_id = ?1 AND seq = ?2 RETURNING attempt"},
            {&get_message, "SELECT message_id, key, payload, headers FROM keel_broker_messages WHERE seq = ?1"},
            {&remove_delivery,
             "DELETE FROM keel_broker_deliveries WHERE group_id = ?1 AND seq = ?2 AND attempt = ?3 RETURNING key"},
            {&advance_head,
             "UPDATE keel_broker_deliveries SET head = 1 WHERE group_id = ?1 AND seq = "
             "(SELECT MIN(seq) FROM keel_broker_deliveries WHERE group_id = ?1 AND key = ?2)"},
            {&release_message,
             "UPDATE keel_broker_messages SET pending = pending - 1 WHERE seq = ?1 RETURNING pending"},
            {&delete_message, "DELETE FROM keel_broker_messages WHERE seq = ?1"},
            {&nack,
             "UPDATE keel_broker_deliveries SET visible_at = ?4 WHERE group_id = ?1 AND seq = ?2 AND attempt = ?3"},
            {&release,
             "UPDATE keel_broker_deliveries SET visible_at = 0 WHERE group_id = ?1 AND seq = ?2 AND attempt = ?3"},
            {&insert_dead_letter,
             "INSERT INTO keel_broker_dead_letters (group_id, message_id, key, payload, headers, error, attempts, "
             "dead_lettered_at) SELECT ?1, message_id, key, payload, headers, ?3, ?4, ?5 FROM keel_broker_messages "
             "WHERE seq = ?2"},
            {&list_dead_letters,
             "SELECT id, message_id, key, payload, headers, error, attempts, dead_lettered_at "
             "FROM keel_broker_dead_letters WHERE group_id = ?1 ORDER BY id LIMIT ?2"},
            {&dead_letter_ids, "SELECT id FROM keel_broker_dead_letters WHERE group_id = ?1 ORDER BY id"},
            {&replay_dead_letter,
             "INSERT INTO keel_broker_messages (destination_id, message_id, replay, key, payload, headers, "
             "published_at, pending) SELECT ?3, message_id, 1, key, payload, headers, ?4, 1 "
             "FROM keel_broker_dead_letters WHERE id = ?1 AND group_id = ?2 RETURNING seq, key"},
            {&delete_dead_letter, "DELETE FROM keel_broker_dead_letters WHERE id = ?1"},
        };
        for (auto& s : stmts) {
            auto st = db->PreparePersistent(s.sql);
            if (!st.ok()) return st.status();
            *s.stmt = std::move(*st);
        }
        return Status::Ok();
    }

    // Runs `body` in one BEGIN IMMEDIATE transaction; commits when it returns OK, rolls back otherwise. The caller
    // holds `mu`. `durable`: the commit is fsynced when the broker's durability is full (publishes, declarations,
    // replays). Consumer bookkeeping (receive, ack, nack, dead-letter) commits with synchronous=NORMAL: it survives a
    // process crash, and what a power loss takes back is only redelivered (at least once).
    template <class F>
    Status InWriteTxn(bool durable, std::string_view what, F&& body) {
        if (!sticky.ok()) return sticky;
        const bool want_full = durable && full_durability;
        if (want_full != sync_is_full) {
            // Not a cached statement: SQLite applies PRAGMA synchronous when the statement is prepared.
            KEEL_RETURN_IF_ERROR(db->Exec(want_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL"));
            sync_is_full = want_full;
        }
        if (Status s = begin.Exec("BEGIN IMMEDIATE"); !s.ok())
            return s.WithContext(fmt::format("{} on '{}'", what, path));
        Status s = body();
        if (!s.ok()) {
            (void)rollback.Exec("ROLLBACK");
            return s;
        }
        const int rc = commit.Step();
        if (rc == SQLITE_DONE) {
            commit.Reset();
            return Status::Ok();
        }
        Status failed = ToStatus(rc, db->get(), fmt::format("{}: COMMIT on '{}'", what, path));
        commit.Reset();
        if (sqlite3_get_autocommit(db->get()) == 0) (void)rollback.Exec("ROLLBACK");
        if ((rc & 0xFF) != SQLITE_BUSY) {
            sticky = Status::FailedPrecondition(fmt::format(
                "broker database '{}' refuses further writes until it is reopened: {}", path, failed.message()));
        }
        return failed;
    }
};

struct GroupRow {
    int64_t id = 0;
    int64_t destination_id = 0;
};

// Caller holds core.mu.
Result<GroupRow> FindGroup(Core& core, std::string_view destination, std::string_view group) {
    StmtReset reset(core.find_group);
    core.find_group.Bind(1, destination).Bind(2, group);
    const int rc = core.find_group.Step();
    if (rc == SQLITE_ROW) return GroupRow{core.find_group.Int(0), core.find_group.Int(1)};
    if (rc == SQLITE_DONE) {
        return Status::NotFound(fmt::format(
            "consumer group '{}' of destination '{}' is not declared (call Declare first)", group, destination));
    }
    return ToStatus(rc, core.db->get(), fmt::format("looking up group '{}' of '{}'", group, destination));
}

Status HeldError(std::string_view group, const Delivery& d) {
    return Status::FailedPrecondition(fmt::format(
        "the delivery of message {} (attempt {}) is no longer held by group '{}': it was already "
        "acknowledged, nacked or dead-lettered, or its visibility timeout passed and it was delivered again",
        d.message.message_id.ToString(), d.attempt, group));
}

class LocalConsumer final : public BrokerConsumer {
public:
    LocalConsumer(std::shared_ptr<Core> core, std::string destination, std::string group, int64_t group_id,
                  milliseconds visibility)
        : core_(std::move(core)),
          destination_(std::move(destination)),
          group_(std::move(group)),
          group_id_(group_id),
          visibility_us_(std::min(visibility, kMaxDelay).count() * 1000) {}

    // Gives back what this consumer still holds, as a disconnecting RabbitMQ consumer would: it is delivered again at
    // once instead of after its visibility timeout.
    ~LocalConsumer() override {
        if (held_.empty()) return;
        {
            std::lock_guard lock(core_->mu);
            (void)core_->InWriteTxn(false, "releasing unacknowledged deliveries", [&]() -> Status {
                for (const auto& [seq, attempt] : held_) {
                    StmtReset reset(core_->release);
                    core_->release.Bind(1, group_id_).Bind(2, static_cast<int64_t>(seq)).Bind(3, attempt);
                    KEEL_RETURN_IF_ERROR(core_->release.Exec("releasing a delivery"));
                }
                return Status::Ok();
            });
        }
        core_->Notify();
    }

    Result<std::optional<Delivery>> Receive(milliseconds timeout) override {
        auto got = Wait(1, timeout);
        if (!got.ok()) return got.status();
        if (got->empty()) return std::optional<Delivery>();
        return std::optional<Delivery>(std::move(got->front()));
    }

    // Claims the whole batch in one transaction (one write-lock turn instead of one per delivery).
    Result<std::vector<Delivery>> ReceiveBatch(size_t max, milliseconds timeout) override {
        return Wait(std::max<size_t>(max, 1), timeout);
    }

    Status Ack(const Delivery& delivery) override { return Finish(delivery, nullptr); }

    // Settles the deliveries in one transaction. A delivery no longer held gets kFailedPrecondition and changes
    // nothing; the others are acknowledged. A database error fails them all (nothing is acknowledged).
    std::vector<Status> AckBatch(std::span<const Delivery> deliveries) override {
        std::vector<Status> out(deliveries.size());
        if (deliveries.empty()) return out;
        Status s;
        {
            std::lock_guard lock(core_->mu);
            s = core_->InWriteTxn(false, "acknowledging", [&]() -> Status {
                for (size_t i = 0; i < deliveries.size(); ++i) {
                    bool held = false;
                    KEEL_RETURN_IF_ERROR(Settle(deliveries[i], nullptr, held));
                    out[i] = held ? Status::Ok() : HeldError(group_, deliveries[i]);
                }
                return Status::Ok();
            });
            if (s.ok()) {
                for (size_t i = 0; i < deliveries.size(); ++i) {
                    if (out[i].ok()) held_.erase(deliveries[i].tag);
                }
            }
        }
        if (!s.ok()) {
            std::fill(out.begin(), out.end(), s);
            return out;
        }
        core_->Notify();
        return out;
    }

    Status Nack(const Delivery& delivery, milliseconds delay) override {
        const int64_t delay_us = std::clamp(delay, milliseconds(0), kMaxDelay).count() * 1000;
        Status s;
        {
            std::lock_guard lock(core_->mu);
            s = core_->InWriteTxn(false, "nacking a delivery", [&]() -> Status {
                StmtReset reset(core_->nack);
                core_->nack.Bind(1, group_id_)
                    .Bind(2, static_cast<int64_t>(delivery.tag))
                    .Bind(3, static_cast<int64_t>(delivery.attempt))
                    .Bind(4, NowMicros() + delay_us);
                KEEL_RETURN_IF_ERROR(core_->nack.Exec("nacking a delivery"));
                if (sqlite3_changes(core_->db->get()) == 0) return HeldError(group_, delivery);
                return Status::Ok();
            });
            if (s.ok()) held_.erase(delivery.tag);
        }
        if (s.ok()) core_->Notify();
        return s;
    }

    Status DeadLetter(const Delivery& delivery, std::string_view error) override { return Finish(delivery, &error); }

private:
    // Waits up to `timeout` for receivable deliveries and claims up to `max` of them.
    Result<std::vector<Delivery>> Wait(size_t max, milliseconds timeout) {
        const auto deadline = steady_clock::now() + std::max(timeout, milliseconds(0));
        milliseconds poll = kMinPoll;
        for (;;) {
            const uint64_t seen = core_->Generation();
            auto got = TryClaim(max);
            if (!got.ok() || !got->empty()) return got;
            const auto now = steady_clock::now();
            if (now >= deadline) return got;
            core_->WaitFor(seen, std::min(deadline, now + poll));
            poll = std::min(poll * 2, core_->max_poll);
        }
    }

    // Claims up to `max` receivable deliveries, oldest first, in one transaction.
    Result<std::vector<Delivery>> TryClaim(size_t max) {
        std::lock_guard lock(core_->mu);
        if (!core_->sticky.ok()) return core_->sticky;
        std::vector<Delivery> out;
        // A read without the write lock first, so that idle consumers do not keep taking it.
        auto ready = Peek();
        if (!ready.ok()) return ready.status();
        if (!*ready) return out;

        Status s = core_->InWriteTxn(false, "receiving", [&]() -> Status {
            out.clear();
            while (out.size() < max) {
                // Again, inside the transaction: another process may have taken it. A claimed delivery is no longer
                // receivable, so the next Peek finds the next one.
                auto seq = Peek();
                if (!seq.ok()) return seq.status();
                if (!*seq) break;
                // With a visibility timeout shorter than this loop, a delivery claimed above could be due again.
                if (std::any_of(out.begin(), out.end(),
                                [&](const Delivery& c) { return c.tag == static_cast<uint64_t>(**seq); })) {
                    break;
                }
                auto d = Claim(**seq);
                if (!d.ok()) return d.status();
                out.push_back(std::move(*d));
            }
            return Status::Ok();
        });
        if (!s.ok()) return s;
        for (const Delivery& d : out) held_[d.tag] = d.attempt;
        return out;
    }

    // Claims delivery `seq` and reads its message (caller holds mu, in a write transaction).
    Result<Delivery> Claim(int64_t seq) {
        Delivery d;
        d.tag = static_cast<uint64_t>(seq);
        int64_t attempt = 0;
        {
            StmtReset reset(core_->claim);
            core_->claim.Bind(1, group_id_).Bind(2, seq).Bind(3, NowMicros() + visibility_us_);
            const int rc = StepOne(core_->claim, [&](const Stmt& st) { attempt = st.Int(0); });
            if (rc != SQLITE_ROW) return ToStatus(rc, core_->db->get(), "claiming a delivery");
        }
        d.attempt = static_cast<int>(attempt);
        StmtReset reset(core_->get_message);
        core_->get_message.Bind(1, seq);
        const int rc = core_->get_message.Step();
        if (rc == SQLITE_DONE) {
            return Status::Corruption(fmt::format("broker database '{}': delivery {} of group '{}' has no message",
                                                  core_->path, seq, group_));
        }
        if (rc != SQLITE_ROW) return ToStatus(rc, core_->db->get(), "reading a message");
        auto id = Uuid::FromBytes(core_->get_message.Blob(0));
        if (!id.ok()) {
            return Status::Corruption(fmt::format("broker database '{}': message {} has a malformed message_id: {}",
                                                  core_->path, seq, id.status().message()));
        }
        auto headers = DecodeHeaders(core_->get_message.Blob(3));
        if (!headers.ok()) {
            return Status::Corruption(
                fmt::format("broker database '{}': message {}: {}", core_->path, seq, headers.status().message()));
        }
        d.message.destination = destination_;
        d.message.message_id = *id;
        d.message.key = std::string(core_->get_message.Text(1));
        d.message.payload = std::string(core_->get_message.Blob(2));
        d.message.headers = std::move(*headers);
        return d;
    }

    // The oldest receivable delivery of the group (caller holds mu).
    Result<std::optional<int64_t>> Peek() {
        std::optional<int64_t> best;
        for (Stmt* st : {&core_->peek_fresh, &core_->peek_returning}) {
            StmtReset reset(*st);
            st->Bind(1, group_id_);
            if (st == &core_->peek_returning) st->Bind(2, NowMicros());
            const int rc = st->Step();
            if (rc == SQLITE_ROW && !st->IsNull(0)) {
                if (!best || st->Int(0) < *best) best = st->Int(0);
            } else if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
                return ToStatus(rc, core_->db->get(),
                                fmt::format("receiving: looking for deliveries of group '{}'", group_));
            }
        }
        return best;
    }

    // Ack, or DeadLetter when `error` is set: the delivery leaves the group (see Settle).
    Status Finish(const Delivery& delivery, const std::string_view* error) {
        Status s;
        {
            std::lock_guard lock(core_->mu);
            s = core_->InWriteTxn(false, error ? "dead-lettering" : "acknowledging", [&]() -> Status {
                bool held = false;
                KEEL_RETURN_IF_ERROR(Settle(delivery, error, held));
                if (!held) return HeldError(group_, delivery);
                return Status::Ok();
            });
            if (s.ok()) held_.erase(delivery.tag);
        }
        if (s.ok()) core_->Notify();
        return s;
    }

    // Inside a write transaction (caller holds mu): removes the delivery if this consumer still holds it (`held`
    // tells), writes its dead letter when `error` is set, makes the next delivery of its key the key's head, and
    // deletes the message row when no group needs it any more. Errors are the database's.
    Status Settle(const Delivery& delivery, const std::string_view* error, bool& held) {
        const auto seq = static_cast<int64_t>(delivery.tag);
        std::string key;
        held = false;
        {
            StmtReset reset(core_->remove_delivery);
            core_->remove_delivery.Bind(1, group_id_).Bind(2, seq).Bind(3, static_cast<int64_t>(delivery.attempt));
            const int rc = StepOne(core_->remove_delivery, [&](const Stmt& st) {
                key = std::string(st.Text(0));
                held = true;
            });
            if (rc != SQLITE_ROW && rc != SQLITE_DONE) return ToStatus(rc, core_->db->get(), "removing a delivery");
        }
        if (!held) return Status::Ok();
        if (error != nullptr) {
            StmtReset reset(core_->insert_dead_letter);
            core_->insert_dead_letter.Bind(1, group_id_)
                .Bind(2, seq)
                .Bind(3, *error)
                .Bind(4, static_cast<int64_t>(delivery.attempt))
                .Bind(5, NowMicros());
            KEEL_RETURN_IF_ERROR(core_->insert_dead_letter.Exec("writing a dead letter"));
            if (sqlite3_changes(core_->db->get()) != 1) {
                return Status::Corruption(
                    fmt::format("broker database '{}': delivery {} has no message", core_->path, seq));
            }
        }
        if (!key.empty()) {
            StmtReset reset(core_->advance_head);
            core_->advance_head.Bind(1, group_id_).Bind(2, key);
            KEEL_RETURN_IF_ERROR(core_->advance_head.Exec("advancing the key's head"));
        }
        int64_t pending = 0;
        {
            StmtReset reset(core_->release_message);
            core_->release_message.Bind(1, seq);
            const int rc = StepOne(core_->release_message, [&](const Stmt& st) { pending = st.Int(0); });
            if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
                return ToStatus(rc, core_->db->get(), "updating the message's pending groups");
            }
        }
        if (pending <= 0) {
            StmtReset reset(core_->delete_message);
            core_->delete_message.Bind(1, seq);
            KEEL_RETURN_IF_ERROR(core_->delete_message.Exec("deleting a message"));
        }
        return Status::Ok();
    }

    std::shared_ptr<Core> core_;
    std::string destination_;
    std::string group_;
    int64_t group_id_;
    int64_t visibility_us_;
    std::map<uint64_t, int64_t> held_;  // seq → attempt of the deliveries this consumer holds
};

class LocalBroker final : public Broker {
public:
    explicit LocalBroker(std::shared_ptr<Core> core) : core_(std::move(core)) {}

    Status Declare(std::string_view destination, std::string_view group) override {
        KEEL_RETURN_IF_ERROR(CheckName("destination", destination));
        KEEL_RETURN_IF_ERROR(CheckName("group", group));
        std::lock_guard lock(core_->mu);
        return core_->InWriteTxn(true, "declaring a group", [&]() -> Status {
            const int64_t now = NowMicros();
            {
                StmtReset reset(core_->insert_destination);
                core_->insert_destination.Bind(1, destination).Bind(2, now);
                KEEL_RETURN_IF_ERROR(core_->insert_destination.Exec("declaring a destination"));
            }
            int64_t destination_id = 0;
            {
                StmtReset reset(core_->find_destination);
                core_->find_destination.Bind(1, destination);
                const int rc = core_->find_destination.Step();
                if (rc != SQLITE_ROW) return ToStatus(rc, core_->db->get(), "looking up a destination");
                destination_id = core_->find_destination.Int(0);
            }
            StmtReset reset(core_->insert_group);
            core_->insert_group.Bind(1, destination_id).Bind(2, group).Bind(3, now);
            return core_->insert_group.Exec("declaring a group");
        });
    }

    Status PublishReliable(const Message& message, milliseconds timeout) override {
        return PublishBatch(std::span<const Message>(&message, 1), 1, timeout).front();
    }

    std::vector<Status> PublishBatch(std::span<const Message> messages, size_t window, milliseconds timeout) override {
        std::vector<Status> out(messages.size());
        if (messages.empty()) return out;
        if (window == 0) {
            std::fill(out.begin(), out.end(), Status::InvalidArgument("PublishBatch: the window must be at least 1"));
            return out;
        }
        const auto deadline = steady_clock::now() + std::max(timeout, milliseconds(0));
        // A message whose key had an earlier failure in this batch is not published: that would break the key's order.
        std::map<std::pair<std::string_view, std::string_view>, size_t> failed_keys;
        std::vector<size_t> todo;
        todo.reserve(messages.size());
        for (size_t i = 0; i < messages.size(); ++i) {
            const Message& m = messages[i];
            if (!m.key.empty()) {
                auto it = failed_keys.find({m.destination, m.key});
                if (it != failed_keys.end()) {
                    out[i] = Status::FailedPrecondition(fmt::format(
                        "message {} was not published: message #{} of the same key '{}' failed earlier in this batch",
                        m.message_id.ToString(), it->second, Shorten(m.key)));
                    continue;
                }
            }
            out[i] = CheckMessage(m);
            if (!out[i].ok()) {
                if (!m.key.empty())
                    failed_keys.emplace(std::pair<std::string_view, std::string_view>(m.destination, m.key), i);
                continue;
            }
            todo.push_back(i);
        }
        bool published = false;
        for (size_t start = 0; start < todo.size(); start += window) {
            const size_t end = std::min(todo.size(), start + window);
            const std::span<const size_t> chunk(todo.data() + start, end - start);
            Status s;
            if (start > 0 && steady_clock::now() >= deadline) {
                s = Status::DeadlineExceeded("the publish timeout passed before this message's window was written");
            } else {
                s = PublishWindow(messages, chunk, deadline);
            }
            if (s.ok()) {
                published = true;
                continue;
            }
            for (size_t i : chunk) out[i] = s;
            for (size_t j = end; j < todo.size(); ++j) {
                out[todo[j]] =
                    s.code() == StatusCode::kDeadlineExceeded
                        ? s
                        : Status(s.code(), fmt::format("not published: an earlier window failed: {}", s.message()));
            }
            break;
        }
        if (published) core_->Notify();
        return out;
    }

    Result<std::unique_ptr<BrokerConsumer>> Consume(std::string_view destination, std::string_view group,
                                                    const ConsumeOptions& options) override {
        KEEL_RETURN_IF_ERROR(CheckName("destination", destination));
        KEEL_RETURN_IF_ERROR(CheckName("group", group));
        if (options.visibility_timeout.count() <= 0) {
            return Status::InvalidArgument(
                fmt::format("the visibility timeout must be positive (got {} ms)", options.visibility_timeout.count()));
        }
        std::lock_guard lock(core_->mu);
        auto row = FindGroup(*core_, destination, group);
        if (!row.ok()) return row.status();
        return std::unique_ptr<BrokerConsumer>(std::make_unique<LocalConsumer>(
            core_, std::string(destination), std::string(group), row->id, options.visibility_timeout));
    }

    Result<std::vector<DeadLetter>> ListDeadLetters(std::string_view destination, std::string_view group,
                                                    size_t limit) override {
        KEEL_RETURN_IF_ERROR(CheckName("destination", destination));
        KEEL_RETURN_IF_ERROR(CheckName("group", group));
        std::lock_guard lock(core_->mu);
        auto row = FindGroup(*core_, destination, group);
        if (!row.ok()) return row.status();
        std::vector<DeadLetter> out;
        Stmt& st = core_->list_dead_letters;
        StmtReset reset(st);
        st.Bind(1, row->id).Bind(2, limit == 0 ? int64_t{-1} : static_cast<int64_t>(limit));
        int rc;
        while ((rc = st.Step()) == SQLITE_ROW) {
            DeadLetter dl;
            dl.id = std::to_string(st.Int(0));
            auto id = Uuid::FromBytes(st.Blob(1));
            if (!id.ok()) {
                return Status::Corruption(
                    fmt::format("broker database '{}': dead letter {} has a malformed message_id", core_->path, dl.id));
            }
            auto headers = DecodeHeaders(st.Blob(4));
            if (!headers.ok()) {
                return Status::Corruption(fmt::format("broker database '{}': dead letter {}: {}", core_->path, dl.id,
                                                      headers.status().message()));
            }
            dl.message.destination = std::string(destination);
            dl.message.message_id = *id;
            dl.message.key = std::string(st.Text(2));
            dl.message.payload = std::string(st.Blob(3));
            dl.message.headers = std::move(*headers);
            dl.error = std::string(st.Text(5));
            dl.attempts = static_cast<int>(st.Int(6));
            dl.dead_lettered_at = st.Int(7);
            out.push_back(std::move(dl));
        }
        if (rc != SQLITE_DONE) return ToStatus(rc, core_->db->get(), "listing dead letters");
        return out;
    }

    Result<size_t> ReplayDeadLetters(std::string_view destination, std::string_view group,
                                     std::span<const std::string> ids) override {
        KEEL_RETURN_IF_ERROR(CheckName("destination", destination));
        KEEL_RETURN_IF_ERROR(CheckName("group", group));
        std::vector<int64_t> wanted;
        for (const std::string& id : ids) {
            int64_t v = 0;
            auto [p, ec] = std::from_chars(id.data(), id.data() + id.size(), v);
            if (ec != std::errc() || p != id.data() + id.size() || v <= 0) {
                return Status::InvalidArgument(
                    fmt::format("'{}' is not a dead-letter id of the local: broker", Shorten(id)));
            }
            wanted.push_back(v);
        }
        size_t replayed = 0;
        {
            std::lock_guard lock(core_->mu);
            auto row = FindGroup(*core_, destination, group);
            if (!row.ok()) return row.status();
            Status s = core_->InWriteTxn(true, "replaying dead letters", [&]() -> Status {
                replayed = 0;
                if (ids.empty()) {
                    wanted.clear();
                    StmtReset reset(core_->dead_letter_ids);
                    core_->dead_letter_ids.Bind(1, row->id);
                    int rc;
                    while ((rc = core_->dead_letter_ids.Step()) == SQLITE_ROW)
                        wanted.push_back(core_->dead_letter_ids.Int(0));
                    if (rc != SQLITE_DONE) return ToStatus(rc, core_->db->get(), "listing dead letters");
                }
                const int64_t now = NowMicros();
                for (int64_t id : wanted) {
                    int64_t seq = 0;
                    std::string key;
                    {
                        StmtReset reset(core_->replay_dead_letter);
                        core_->replay_dead_letter.Bind(1, id)
                            .Bind(2, row->id)
                            .Bind(3, row->destination_id)
                            .Bind(4, now);
                        const int rc = StepOne(core_->replay_dead_letter, [&](const Stmt& st) {
                            seq = st.Int(0);
                            key = std::string(st.Text(1));
                        });
                        if (rc == SQLITE_DONE) continue;  // not a dead letter of this group (or listed twice)
                        if (rc != SQLITE_ROW) return ToStatus(rc, core_->db->get(), "replaying a dead letter");
                    }
                    {
                        StmtReset reset(core_->insert_delivery);
                        core_->insert_delivery.Bind(1, row->id).Bind(2, seq).Bind(3, key);
                        KEEL_RETURN_IF_ERROR(core_->insert_delivery.Exec("queueing a replayed dead letter"));
                    }
                    StmtReset reset(core_->delete_dead_letter);
                    core_->delete_dead_letter.Bind(1, id);
                    KEEL_RETURN_IF_ERROR(core_->delete_dead_letter.Exec("deleting a replayed dead letter"));
                    ++replayed;
                }
                return Status::Ok();
            });
            if (!s.ok()) return s;
        }
        if (replayed > 0) core_->Notify();
        return replayed;
    }

private:
    struct DestinationInfo {
        int64_t id = 0;
        std::vector<int64_t> groups;
    };

    // One window: one transaction, one commit (one fsync with durability=full).
    Status PublishWindow(std::span<const Message> messages, std::span<const size_t> chunk,
                         steady_clock::time_point deadline) {
        std::lock_guard lock(core_->mu);
        core_->SetBusyTimeout(std::max(deadline - steady_clock::now(), steady_clock::duration::zero()));
        std::unordered_map<std::string_view, DestinationInfo> destinations;
        Status s = core_->InWriteTxn(true, "publishing", [&]() -> Status {
            const int64_t now = NowMicros();
            std::string headers;
            for (size_t i : chunk) {
                const Message& m = messages[i];
                auto it = destinations.find(m.destination);
                if (it == destinations.end()) {
                    auto info = LookupDestination(m.destination);
                    if (!info.ok()) return info.status();
                    it = destinations.emplace(m.destination, std::move(*info)).first;
                }
                const DestinationInfo& dest = it->second;
                if (dest.groups.empty()) continue;  // no group declared: nobody is to receive it
                headers = EncodeHeaders(m.headers);
                {
                    StmtReset reset(core_->insert_message);
                    core_->insert_message.Bind(1, dest.id)
                        .BindBlob(2, m.message_id.bytes_view())
                        .Bind(3, m.key)
                        .BindBlob(4, m.payload)
                        .BindBlob(5, headers)
                        .Bind(6, now)
                        .Bind(7, static_cast<int64_t>(dest.groups.size()));
                    KEEL_RETURN_IF_ERROR(core_->insert_message.Exec("storing a message"));
                }
                if (sqlite3_changes(core_->db->get()) == 0) continue;  // the same message_id is stored already
                const int64_t seq = sqlite3_last_insert_rowid(core_->db->get());
                for (int64_t group_id : dest.groups) {
                    StmtReset reset(core_->insert_delivery);
                    core_->insert_delivery.Bind(1, group_id).Bind(2, seq).Bind(3, m.key);
                    KEEL_RETURN_IF_ERROR(core_->insert_delivery.Exec("queueing a message for a group"));
                }
            }
            return Status::Ok();
        });
        core_->SetBusyTimeout(kBusyTimeout);
        if (!s.ok() && s.code() == StatusCode::kUnavailable && steady_clock::now() >= deadline) {
            return Status::DeadlineExceeded(fmt::format("publish timed out: {}", s.message()));
        }
        return s;
    }

    // Caller holds mu, inside the publish transaction (so the group list cannot change before the commit).
    Result<DestinationInfo> LookupDestination(std::string_view name) {
        DestinationInfo info;
        {
            StmtReset reset(core_->find_destination);
            core_->find_destination.Bind(1, name);
            const int rc = core_->find_destination.Step();
            if (rc == SQLITE_DONE) return info;
            if (rc != SQLITE_ROW) return ToStatus(rc, core_->db->get(), "looking up a destination");
            info.id = core_->find_destination.Int(0);
        }
        StmtReset reset(core_->groups_of);
        core_->groups_of.Bind(1, info.id);
        int rc;
        while ((rc = core_->groups_of.Step()) == SQLITE_ROW) info.groups.push_back(core_->groups_of.Int(0));
        if (rc != SQLITE_DONE) return ToStatus(rc, core_->db->get(), "listing a destination's groups");
        return info;
    }

    std::shared_ptr<Core> core_;
};

Result<std::string> LocalPath(const ParsedUri& uri) {
    std::string_view rest = uri.rest;
    if (rest.starts_with("//")) rest.remove_prefix(2);  // local:///abs → /abs ; local://rel → rel
    if (rest.empty()) {
        return Status::InvalidArgument(
            "local: broker URI has no path; use local:///absolute/path.db or local://relative/path.db");
    }
    return std::string(rest);
}

}  // namespace

Result<std::unique_ptr<Broker>> OpenLocalBroker(const ParsedUri& uri, const BrokerOptions& /*options*/) {
    auto path = LocalPath(uri);
    if (!path.ok()) return path.status();
    auto core = std::make_shared<Core>();
    core->path = *path;
    std::string vfs;
    for (const auto& [key, value] : uri.query) {
        if (key == "durability" && (value == "full" || value == "normal")) {
            core->full_durability = value == "full";
        } else if (key == "vfs" && !value.empty()) {
            vfs = value;  // a registered SQLite VFS: fault-injection tests use one
        } else if (key == "poll_ms") {
            int64_t ms = 0;
            auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), ms);
            if (ec != std::errc() || p != value.data() + value.size() || ms < 1 || ms > 60'000) {
                return Status::InvalidArgument(
                    fmt::format("local: broker URI parameter 'poll_ms={}' must be 1..60000 (milliseconds)", value));
            }
            core->max_poll = milliseconds(ms);
        } else {
            return Status::InvalidArgument(fmt::format(
                "local: broker URI parameter '{}={}' is not understood; known: durability=full|normal, poll_ms=N, "
                "vfs=NAME",
                key, value));
        }
    }
    bool empty = false;
    if (!LooksLikeSqlite(*path, empty) && !empty) {
        return Status::Corruption(
            fmt::format("'{}' is not a keel broker database: the file is not an SQLite database", *path));
    }
    auto db = Db::Open(*path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, vfs);
    if (!db.ok()) return db.status().WithContext("opening the local: broker");
    core->db = std::move(*db);
    core->wake = WakeFor(*path);
    sqlite3_busy_handler(core->db->get(), &Core::BusyHandler, core.get());
    auto mode = core->db->QueryText("PRAGMA journal_mode = WAL");
    if (!mode.ok()) {
        return mode.status().code() == StatusCode::kCorruption
                   ? Status::Corruption(
                         fmt::format("'{}' is not a keel broker database: {}", *path, mode.status().message()))
                   : mode.status();
    }
    if (*mode != "wal") {
        return Status::NotSupported(fmt::format("'{}': cannot switch to WAL journal mode (got '{}')", *path, *mode));
    }
    KEEL_RETURN_IF_ERROR(
        core->db->Exec(core->full_durability ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL"));
    core->sync_is_full = core->full_durability;
    KEEL_RETURN_IF_ERROR(Migrate(*core->db, *path));
    KEEL_RETURN_IF_ERROR(core->Prepare());
    return std::unique_ptr<Broker>(std::make_unique<LocalBroker>(std::move(core)));
}

}  // namespace keel::detail
