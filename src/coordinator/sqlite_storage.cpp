#include "coordinator/sqlite_storage.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>

#include "store/sqlite/sqlite_db.hpp"

namespace keel::coordinator {
namespace {

using sqlite::Db;
using sqlite::Stmt;

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS keel_trans_global (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    gid TEXT NOT NULL UNIQUE,
    trans_type TEXT NOT NULL,
    status TEXT NOT NULL,
    query_prepared TEXT NOT NULL DEFAULT '',
    protocol TEXT NOT NULL DEFAULT 'http',
    custom_data TEXT NOT NULL DEFAULT '',
    rollback_reason TEXT NOT NULL DEFAULT '',
    result TEXT NOT NULL DEFAULT '',
    options TEXT NOT NULL DEFAULT '{}',
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    finish_time INTEGER NOT NULL DEFAULT 0,
    rollback_time INTEGER NOT NULL DEFAULT 0,
    next_cron_time INTEGER NOT NULL,
    next_cron_interval INTEGER NOT NULL,
    owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS keel_trans_global_due ON keel_trans_global (status, next_cron_time);
CREATE INDEX IF NOT EXISTS keel_trans_global_create ON keel_trans_global (create_time);
CREATE TABLE IF NOT EXISTS keel_trans_branch_op (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    gid TEXT NOT NULL,
    url TEXT NOT NULL,
    bin_data BLOB NOT NULL,
    branch_id TEXT NOT NULL,
    op TEXT NOT NULL,
    status TEXT NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    finish_time INTEGER NOT NULL DEFAULT 0,
    rollback_time INTEGER NOT NULL DEFAULT 0,
    UNIQUE (gid, branch_id, op)
);
)sql";

constexpr const char* kGlobalColumns =
    "id, gid, trans_type, status, query_prepared, protocol, custom_data, rollback_reason, result, options, "
    "create_time, update_time, finish_time, rollback_time, next_cron_time, next_cron_interval, owner";

int64_t NowMs() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

Global ReadGlobal(const Stmt& s) {
    Global g;
    g.id = s.Int(0);
    g.gid = std::string(s.Text(1));
    g.trans_type = std::string(s.Text(2));
    g.status = std::string(s.Text(3));
    g.query_prepared = std::string(s.Text(4));
    g.protocol = std::string(s.Text(5));
    g.custom_data = std::string(s.Text(6));
    g.rollback_reason = std::string(s.Text(7));
    g.result = std::string(s.Text(8));
    g.options = DecodeOptions(s.Text(9));
    g.create_time = s.Int(10);
    g.update_time = s.Int(11);
    g.finish_time = s.Int(12);
    g.rollback_time = s.Int(13);
    g.next_cron_time = s.Int(14);
    g.next_cron_interval = s.Int(15);
    g.owner = std::string(s.Text(16));
    return g;
}

Status StepAll(Stmt& s, std::string_view what) { return s.Exec(what); }

class SqliteStorage final : public Storage {
public:
    static Result<std::unique_ptr<Storage>> Open(const std::string& path) {
        std::string lock_path = path + ".keeld-lock";
        int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) return Status::Unavailable("cannot open lock file '" + lock_path + "': " + strerror(errno));
        if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
            ::close(fd);
            return Status::FailedPrecondition("another keeld uses '" + path + "' (lock file '" + lock_path +
                                              "' is held); use postgresql:// storage to run several keeld processes");
        }
        auto st = std::unique_ptr<SqliteStorage>(new SqliteStorage(fd));
        const int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
        KEEL_ASSIGN_OR_RETURN(st->writer_, Db::Open(path, flags));
        KEEL_RETURN_IF_ERROR(st->writer_->Exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
                                               "PRAGMA busy_timeout=5000; PRAGMA foreign_keys=OFF;"));
        KEEL_RETURN_IF_ERROR(st->writer_->Exec(kSchema));
        for (int i = 0; i < 4; ++i) {
            KEEL_ASSIGN_OR_RETURN(auto r, Db::Open(path, SQLITE_OPEN_READONLY));
            KEEL_RETURN_IF_ERROR(r->Exec("PRAGMA busy_timeout=5000;"));
            st->readers_.push_back(std::move(r));
        }
        return std::unique_ptr<Storage>(std::move(st));
    }

    ~SqliteStorage() override {
        writer_.reset();
        readers_.clear();
        ::close(lock_fd_);
    }

    Status SaveNew(const Global& g, const std::vector<Branch>& branches) override {
        return Write([&](Db& db) -> Status {
            KEEL_ASSIGN_OR_RETURN(auto s, db.PreparePersistent(
                                              "INSERT INTO keel_trans_global (gid, trans_type, status, query_prepared, "
                                              "protocol, custom_data, rollback_reason, result, options, create_time, "
                                              "update_time, next_cron_time, next_cron_interval, owner) VALUES "
                                              "(?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (gid) DO NOTHING"));
            std::string options = EncodeOptions(g.options);
            s.Bind(1, g.gid).Bind(2, g.trans_type).Bind(3, g.status).Bind(4, g.query_prepared).Bind(5, g.protocol);
            s.Bind(6, g.custom_data).Bind(7, g.rollback_reason).Bind(8, g.result).Bind(9, options);
            s.Bind(10, g.create_time).Bind(11, g.update_time).Bind(12, g.next_cron_time);
            s.Bind(13, g.next_cron_interval).Bind(14, g.owner);
            KEEL_RETURN_IF_ERROR(StepAll(s, "insert global transaction"));
            if (sqlite3_changes(db.get()) == 0) {
                return Status::AlreadyExists("global transaction '" + g.gid + "' exists");
            }
            return InsertBranches(db, branches);
        });
    }

    Result<std::optional<Global>> FindGlobal(std::string_view gid) override {
        return Read([&](Db& db) -> Result<std::optional<Global>> {
            KEEL_ASSIGN_OR_RETURN(auto s, db.PreparePersistent(std::string("SELECT ") + kGlobalColumns +
                                                               " FROM keel_trans_global WHERE gid = ?"));
            s.Bind(1, gid);
            int rc = s.Step();
            if (rc == SQLITE_DONE) return std::optional<Global>();
            if (rc != SQLITE_ROW) return sqlite::ToStatus(rc, db.get(), "read global transaction");
            return std::optional<Global>(ReadGlobal(s));
        });
    }

    Result<std::vector<Branch>> FindBranches(std::string_view gid) override {
        return Read([&](Db& db) -> Result<std::vector<Branch>> {
            KEEL_ASSIGN_OR_RETURN(auto s, db.PreparePersistent(
                                              "SELECT id, gid, url, bin_data, branch_id, op, status, create_time, "
                                              "update_time, finish_time, rollback_time FROM keel_trans_branch_op "
                                              "WHERE gid = ? ORDER BY id"));
            s.Bind(1, gid);
            std::vector<Branch> out;
            int rc;
            while ((rc = s.Step()) == SQLITE_ROW) {
                Branch b;
                b.id = s.Int(0);
                b.gid = std::string(s.Text(1));
                b.url = std::string(s.Text(2));
                b.bin_data = std::string(s.Blob(3));
                b.branch_id = std::string(s.Text(4));
                b.op = std::string(s.Text(5));
                b.status = std::string(s.Text(6));
                b.create_time = s.Int(7);
                b.update_time = s.Int(8);
                b.finish_time = s.Int(9);
                b.rollback_time = s.Int(10);
                out.push_back(std::move(b));
            }
            if (rc != SQLITE_DONE) return sqlite::ToStatus(rc, db.get(), "read branches");
            return out;
        });
    }

    Result<bool> ChangeStatus(std::string_view gid, const GlobalChange& change) override {
        bool applied = false;
        if (Status st = Write([&](Db& db) -> Status {
            KEEL_ASSIGN_OR_RETURN(applied, ApplyChange(db, gid, change));
            return Status::Ok();
            });
            !st.ok()) {
            return st;
        }
        return applied;
    }

    Result<bool> UpdateBranches(std::string_view gid, const std::vector<Branch>& branches,
                                const std::optional<GlobalChange>& change) override {
        bool applied = true;
        if (Status st = Write([&](Db& db) -> Status {
            if (change) {
                KEEL_ASSIGN_OR_RETURN(applied, ApplyChange(db, gid, *change));
                if (!applied) return Status::Ok();
            }
            KEEL_ASSIGN_OR_RETURN(auto s, db.PreparePersistent(
                                              "UPDATE keel_trans_branch_op SET status = ?, update_time = ?, "
                                              "finish_time = CASE WHEN ? THEN ? ELSE finish_time END, "
                                              "rollback_time = CASE WHEN ? THEN ? ELSE rollback_time END "
                                              "WHERE gid = ? AND branch_id = ? AND op = ?"));
            int64_t now = NowMs();
            for (const auto& b : branches) {
                sqlite::StmtReset reset(s);
                bool finished = b.status == kSucceed;
                bool rolled_back = b.status == kFailed;
                s.Bind(1, b.status).Bind(2, now).Bind(3, int64_t{finished}).Bind(4, now);
                s.Bind(5, int64_t{rolled_back}).Bind(6, now).Bind(7, gid).Bind(8, b.branch_id).Bind(9, b.op);
                KEEL_RETURN_IF_ERROR(StepAll(s, "update branch"));
            }
            return Status::Ok();
            });
            !st.ok()) {
            return st;
        }
        return applied;
    }

    Status AddBranches(std::string_view gid, std::string_view expected_status,
                       const std::vector<Branch>& branches) override {
        return Write([&](Db& db) -> Status {
            KEEL_ASSIGN_OR_RETURN(auto s,
                                  db.PreparePersistent("SELECT status FROM keel_trans_global WHERE gid = ?"));
            s.Bind(1, gid);
            int rc = s.Step();
            if (rc != SQLITE_ROW || s.Text(0) != expected_status) {
                s.Reset();
                if (rc != SQLITE_ROW && rc != SQLITE_DONE) return sqlite::ToStatus(rc, db.get(), "read global");
                return Status::FailedPrecondition("no trans with gid: " + std::string(gid) + " status: " +
                                                  std::string(expected_status) + " found");
            }
            s.Reset();
            return InsertBranches(db, branches);
        });
    }

    Result<std::optional<Global>> ClaimDue(std::string_view owner, int64_t now_ms, int64_t lease_ms) override {
        std::optional<Global> claimed;
        if (Status st = Write([&](Db& db) -> Status {
            KEEL_ASSIGN_OR_RETURN(auto pick, db.PreparePersistent(
                                                 std::string("SELECT ") + kGlobalColumns +
                                                 " FROM keel_trans_global WHERE status IN ('prepared','submitted',"
                                                 "'aborting') AND next_cron_time <= ? ORDER BY next_cron_time LIMIT 1"));
            pick.Bind(1, now_ms);
            int rc = pick.Step();
            if (rc == SQLITE_DONE) {
                pick.Reset();
                return Status::Ok();
            }
            if (rc != SQLITE_ROW) {
                Status err = sqlite::ToStatus(rc, db.get(), "pick a due transaction");
                pick.Reset();
                return err;
            }
            Global g = ReadGlobal(pick);
            pick.Reset();
            KEEL_ASSIGN_OR_RETURN(auto s, db.PreparePersistent(
                                              "UPDATE keel_trans_global SET owner = ?, next_cron_time = ?, "
                                              "update_time = ? WHERE id = ?"));
            g.owner = std::string(owner);
            g.next_cron_time = now_ms + lease_ms;
            s.Bind(1, owner).Bind(2, g.next_cron_time).Bind(3, now_ms).Bind(4, g.id);
            KEEL_RETURN_IF_ERROR(StepAll(s, "claim a due transaction"));
            claimed = std::move(g);
            return Status::Ok();
            });
            !st.ok()) {
            return st;
        }
        return claimed;
    }

    Result<bool> Schedule(std::string_view gid, int64_t next_cron_time, int64_t next_cron_interval) override {
        bool applied = false;
        if (Status st = Write([&](Db& db) -> Status {
            KEEL_ASSIGN_OR_RETURN(auto s, db.PreparePersistent(
                                              "UPDATE keel_trans_global SET next_cron_time = ?, next_cron_interval = "
                                              "?, update_time = ?, owner = '' WHERE gid = ?"));
            s.Bind(1, next_cron_time).Bind(2, next_cron_interval).Bind(3, NowMs()).Bind(4, gid);
            KEEL_RETURN_IF_ERROR(StepAll(s, "schedule"));
            applied = sqlite3_changes(db.get()) > 0;
            return Status::Ok();
            });
            !st.ok()) {
            return st;
        }
        return applied;
    }

    Result<std::vector<Global>> List(const ListFilter& f) override {
        return Read([&](Db& db) -> Result<std::vector<Global>> {
            KEEL_ASSIGN_OR_RETURN(auto s, db.PreparePersistent(
                                              std::string("SELECT ") + kGlobalColumns +
                                              " FROM keel_trans_global WHERE (? = '' OR gid = ?) AND (? = '' OR "
                                              "status = ?) AND (? = '' OR trans_type = ?) AND (? = 0 OR create_time "
                                              ">= ?) AND (? = 0 OR create_time <= ?) AND (? = 0 OR id < ?) ORDER BY "
                                              "id DESC LIMIT ?"));
            s.Bind(1, f.gid).Bind(2, f.gid).Bind(3, f.status).Bind(4, f.status).Bind(5, f.trans_type);
            s.Bind(6, f.trans_type).Bind(7, f.create_time_start).Bind(8, f.create_time_start);
            s.Bind(9, f.create_time_end).Bind(10, f.create_time_end).Bind(11, f.position).Bind(12, f.position);
            s.Bind(13, f.limit);
            std::vector<Global> out;
            int rc;
            while ((rc = s.Step()) == SQLITE_ROW) out.push_back(ReadGlobal(s));
            if (rc != SQLITE_DONE) return sqlite::ToStatus(rc, db.get(), "list global transactions");
            return out;
        });
    }

    Result<std::pair<int64_t, bool>> ResetCronTime(int64_t now_ms, int64_t timeout_ms, int64_t limit) override {
        std::pair<int64_t, bool> out{0, false};
        if (Status st = Write([&](Db& db) -> Status {
            KEEL_ASSIGN_OR_RETURN(auto s, db.PreparePersistent(
                                              "UPDATE keel_trans_global SET next_cron_time = ?, update_time = ? "
                                              "WHERE id IN (SELECT id FROM keel_trans_global WHERE status IN "
                                              "('prepared','submitted','aborting') AND next_cron_time > ? LIMIT ?)"));
            s.Bind(1, now_ms).Bind(2, now_ms).Bind(3, now_ms + timeout_ms).Bind(4, limit);
            KEEL_RETURN_IF_ERROR(StepAll(s, "reset cron time"));
            out.first = sqlite3_changes(db.get());
            KEEL_ASSIGN_OR_RETURN(auto more, db.PreparePersistent(
                                                 "SELECT EXISTS (SELECT 1 FROM keel_trans_global WHERE status IN "
                                                 "('prepared','submitted','aborting') AND next_cron_time > ?)"));
            more.Bind(1, now_ms + timeout_ms);
            sqlite::StmtReset reset(more);
            if (more.Step() == SQLITE_ROW) out.second = more.Int(0) != 0;
            return Status::Ok();
            });
            !st.ok()) {
            return st;
        }
        return out;
    }

    Result<int64_t> ReleaseAllLeases(int64_t now_ms) override {
        int64_t n = 0;
        if (Status st = Write([&](Db& db) -> Status {
            KEEL_ASSIGN_OR_RETURN(auto s, db.Prepare(
                                              "UPDATE keel_trans_global SET next_cron_time = ?, owner = '' WHERE "
                                              "status IN ('prepared','submitted','aborting') AND owner <> ''"));
            s.Bind(1, now_ms);
            KEEL_RETURN_IF_ERROR(StepAll(s, "release leases"));
            n = sqlite3_changes(db.get());
            return Status::Ok();
            });
            !st.ok()) {
            return st;
        }
        return n;
    }

private:
    explicit SqliteStorage(int fd) : lock_fd_(fd) {}

    static Status InsertBranches(Db& db, const std::vector<Branch>& branches) {
        if (branches.empty()) return Status::Ok();
        KEEL_ASSIGN_OR_RETURN(auto s, db.PreparePersistent(
                                          "INSERT INTO keel_trans_branch_op (gid, url, bin_data, branch_id, op, "
                                          "status, create_time, update_time) VALUES (?,?,?,?,?,?,?,?)"));
        int64_t now = NowMs();
        for (const auto& b : branches) {
            sqlite::StmtReset reset(s);
            s.Bind(1, b.gid).Bind(2, b.url).BindBlob(3, b.bin_data).Bind(4, b.branch_id).Bind(5, b.op);
            s.Bind(6, b.status).Bind(7, now).Bind(8, now);
            int rc = s.Step();
            if (rc == SQLITE_CONSTRAINT) {
                return Status::AlreadyExists("branch (gid " + b.gid + ", branch_id " + b.branch_id + ", op " + b.op +
                                             ") exists");
            }
            if (rc != SQLITE_DONE) return sqlite::ToStatus(rc, db.get(), "insert branch");
        }
        return Status::Ok();
    }

    static Result<bool> ApplyChange(Db& db, std::string_view gid, const GlobalChange& c) {
        KEEL_ASSIGN_OR_RETURN(auto s, db.PreparePersistent(
                                          "UPDATE keel_trans_global SET status = ?, update_time = ?, "
                                          "rollback_reason = CASE WHEN ? THEN ? ELSE rollback_reason END, "
                                          "next_cron_time = CASE WHEN ? THEN ? ELSE next_cron_time END, "
                                          "next_cron_interval = CASE WHEN ? THEN ? ELSE next_cron_interval END, "
                                          "finish_time = CASE WHEN ? THEN ? ELSE finish_time END, "
                                          "rollback_time = CASE WHEN ? THEN ? ELSE rollback_time END, "
                                          "owner = CASE WHEN ? THEN ? ELSE owner END "
                                          "WHERE gid = ? AND status = ?"));
        int64_t now = NowMs();
        std::string reason = c.rollback_reason.value_or("");
        s.Bind(1, c.to).Bind(2, now);
        s.Bind(3, int64_t{c.rollback_reason.has_value()}).Bind(4, reason);
        s.Bind(5, int64_t{c.next_cron_time.has_value()}).Bind(6, c.next_cron_time.value_or(0));
        s.Bind(7, int64_t{c.next_cron_interval.has_value()}).Bind(8, c.next_cron_interval.value_or(0));
        s.Bind(9, int64_t{c.set_finish_time}).Bind(10, now);
        s.Bind(11, int64_t{c.set_rollback_time}).Bind(12, now);
        std::string owner = c.owner.value_or("");
        s.Bind(13, int64_t{c.owner.has_value()}).Bind(14, owner);
        s.Bind(15, gid).Bind(16, c.from);
        KEEL_RETURN_IF_ERROR(StepAll(s, "change global status"));
        return sqlite3_changes(db.get()) > 0;
    }

    // Group commit: callers queue their change; whoever finds no batch running writes the queue in one transaction,
    // each change in its own savepoint (a change that fails is rolled back alone and reports its own error).
    struct Op {
        const std::function<Status(Db&)>* fn;
        Status result;
        bool done = false;
    };

    Status Write(const std::function<Status(Db&)>& fn) {
        Op op{&fn, Status::Ok()};
        std::unique_lock lock(mu_);
        queue_.push_back(&op);
        while (!op.done) {
            if (writing_) {
                cv_.wait(lock);
                continue;
            }
            writing_ = true;
            std::vector<Op*> batch;
            batch.swap(queue_);
            lock.unlock();
            RunBatch(batch);
            lock.lock();
            for (Op* o : batch) o->done = true;
            writing_ = false;
            cv_.notify_all();
        }
        return op.result;
    }

    void RunBatch(const std::vector<Op*>& batch) {
        Db& db = *writer_;
        Status begin = db.Exec("BEGIN IMMEDIATE");
        if (!begin.ok()) {
            for (Op* o : batch) o->result = begin;
            return;
        }
        for (Op* o : batch) {
            Status sp = db.Exec("SAVEPOINT op");
            if (!sp.ok()) {
                o->result = sp;
                continue;
            }
            o->result = (*o->fn)(db);
            if (!o->result.ok()) (void)db.Exec("ROLLBACK TO op");
            (void)db.Exec("RELEASE op");
        }
        Status commit = db.Exec("COMMIT");
        if (!commit.ok()) {
            (void)db.Exec("ROLLBACK");
            for (Op* o : batch) o->result = commit;
        }
    }

    template <class F>
    auto Read(F&& f) -> decltype(f(std::declval<Db&>())) {
        std::unique_ptr<Db> db;
        {
            std::unique_lock lock(read_mu_);
            read_cv_.wait(lock, [&] { return !readers_.empty(); });
            db = std::move(readers_.back());
            readers_.pop_back();
        }
        auto result = f(*db);
        {
            std::lock_guard lock(read_mu_);
            readers_.push_back(std::move(db));
        }
        read_cv_.notify_one();
        return result;
    }

    int lock_fd_;
    std::unique_ptr<Db> writer_;
    std::mutex mu_;
    std::condition_variable cv_;
    bool writing_ = false;
    std::vector<Op*> queue_;
    std::mutex read_mu_;
    std::condition_variable read_cv_;
    std::vector<std::unique_ptr<Db>> readers_;
};

}  // namespace

Result<std::unique_ptr<Storage>> OpenSqliteStorage(const std::string& path) { return SqliteStorage::Open(path); }

}  // namespace keel::coordinator
