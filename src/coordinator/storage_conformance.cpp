#include "coordinator/storage_conformance.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <set>
#include <thread>

#include <unistd.h>

namespace keel::coordinator::testing {

std::string StorageBackendName(const ::testing::TestParamInfo<StorageBackend>& info) {
    return info.param.name;
}

StorageBackend SqliteFileBackend(std::function<Result<std::unique_ptr<Storage>>(const std::string& uri)> open) {
    StorageBackend b;
    b.name = "sqlite";
    b.make_location = [] {
        static std::atomic<int> counter{0};
        const std::filesystem::path path =
            std::filesystem::path(::testing::TempDir()) /
            ("keel-coord-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + ".db");
        std::filesystem::remove(path);
        return "sqlite://" + std::filesystem::absolute(path).string();
    };
    b.open = std::move(open);
    b.remove_location = [](const std::string& uri) {
        const std::string path = uri.substr(std::string("sqlite://").size());
        std::error_code ec;
        for (const char* suffix : {"", "-wal", "-shm", ".keeld-lock"}) std::filesystem::remove(path + suffix, ec);
    };
    b.shared = false;
    return b;
}

void StorageConformance::SetUp() {
    location_ = GetParam().make_location();
    auto s = GetParam().open(location_);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
}

void StorageConformance::TearDown() {
    store_.reset();
    if (GetParam().remove_location) GetParam().remove_location(location_);
}

std::unique_ptr<Storage> StorageConformance::OpenAgain() {
    auto s = GetParam().open(location_);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(*s) : nullptr;
}

namespace {

// A fixed base time (ms since the epoch) for the rows the tests write; "now" is passed explicitly where the
// contract takes it.
constexpr int64_t kT0 = 1'700'000'000'000;
constexpr int64_t kMinute = 60'000;
constexpr int64_t kHour = 60 * kMinute;

int64_t NowMs() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

Global MakeGlobal(const std::string& gid, const std::string& status = kPrepared, int64_t next_cron_time = kT0,
                  const std::string& trans_type = "saga") {
    Global g;
    g.gid = gid;
    g.trans_type = trans_type;
    g.status = status;
    g.create_time = kT0;
    g.update_time = kT0;
    g.next_cron_time = next_cron_time;
    g.next_cron_interval = 10;
    return g;
}

Branch MakeBranch(const std::string& gid, const std::string& branch_id, const std::string& op,
                  std::string data = "{}") {
    Branch b;
    b.gid = gid;
    b.url = "http://127.0.0.1:8081/api/" + op;
    b.bin_data = std::move(data);
    b.branch_id = branch_id;
    b.op = op;
    b.status = kPrepared;
    return b;
}

GlobalChange Change(const std::string& from, const std::string& to) {
    GlobalChange c;
    c.from = from;
    c.to = to;
    return c;
}

std::string AllBytes() {
    std::string s;
    for (int i = 0; i < 256; ++i) s.push_back(static_cast<char>(i));
    return s;
}

void ExpectSameOptions(const TransOptions& a, const TransOptions& b) {
    EXPECT_EQ(a.wait_result, b.wait_result);
    EXPECT_EQ(a.timeout_to_fail, b.timeout_to_fail);
    EXPECT_EQ(a.retry_interval, b.retry_interval);
    EXPECT_EQ(a.request_timeout, b.request_timeout);
    EXPECT_EQ(a.retry_limit, b.retry_limit);
    EXPECT_EQ(a.concurrent, b.concurrent);
    EXPECT_EQ(a.branch_headers, b.branch_headers);
}

// Every field, ids included.
void ExpectSameGlobal(const Global& a, const Global& b) {
    EXPECT_EQ(a.id, b.id);
    EXPECT_EQ(a.gid, b.gid);
    EXPECT_EQ(a.trans_type, b.trans_type);
    EXPECT_EQ(a.status, b.status);
    EXPECT_EQ(a.query_prepared, b.query_prepared);
    EXPECT_EQ(a.protocol, b.protocol);
    EXPECT_EQ(a.custom_data, b.custom_data);
    EXPECT_EQ(a.rollback_reason, b.rollback_reason);
    EXPECT_EQ(a.result, b.result);
    ExpectSameOptions(a.options, b.options);
    EXPECT_EQ(a.create_time, b.create_time);
    EXPECT_EQ(a.update_time, b.update_time);
    EXPECT_EQ(a.finish_time, b.finish_time);
    EXPECT_EQ(a.rollback_time, b.rollback_time);
    EXPECT_EQ(a.next_cron_time, b.next_cron_time);
    EXPECT_EQ(a.next_cron_interval, b.next_cron_interval);
    EXPECT_EQ(a.owner, b.owner);
}

void ExpectSameBranch(const Branch& a, const Branch& b) {
    EXPECT_EQ(a.id, b.id);
    EXPECT_EQ(a.gid, b.gid);
    EXPECT_EQ(a.url, b.url);
    EXPECT_EQ(a.bin_data, b.bin_data);
    EXPECT_EQ(a.branch_id, b.branch_id);
    EXPECT_EQ(a.op, b.op);
    EXPECT_EQ(a.status, b.status);
    EXPECT_EQ(a.create_time, b.create_time);
    EXPECT_EQ(a.update_time, b.update_time);
    EXPECT_EQ(a.finish_time, b.finish_time);
    EXPECT_EQ(a.rollback_time, b.rollback_time);
}

void ExpectSameBranches(const std::vector<Branch>& a, const std::vector<Branch>& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
        SCOPED_TRACE("branch " + std::to_string(i));
        ExpectSameBranch(a[i], b[i]);
    }
}

Global Find(Storage& s, const std::string& gid) {
    auto g = s.FindGlobal(gid);
    EXPECT_TRUE(g.ok()) << g.status().ToString();
    EXPECT_TRUE(g.ok() && g->has_value()) << "no global " << gid;
    return g.ok() && g->has_value() ? **g : Global{};
}

std::vector<Branch> Branches(Storage& s, const std::string& gid) {
    auto b = s.FindBranches(gid);
    EXPECT_TRUE(b.ok()) << b.status().ToString();
    return b.ok() ? *b : std::vector<Branch>{};
}

std::vector<std::string> Gids(const std::vector<Global>& globals) {
    std::vector<std::string> out;
    for (const auto& g : globals) out.push_back(g.gid);
    return out;
}

// A ListFilter set field by field (designated initializers that skip members warn under -Wextra).
struct Filter {
    ListFilter f;
    Filter& Gid(std::string v) { return f.gid = std::move(v), *this; }
    Filter& InStatus(std::string v) { return f.status = std::move(v), *this; }
    Filter& Type(std::string v) { return f.trans_type = std::move(v), *this; }
    Filter& From(int64_t v) { return f.create_time_start = v, *this; }
    Filter& To(int64_t v) { return f.create_time_end = v, *this; }
    Filter& Position(int64_t v) { return f.position = v, *this; }
    Filter& Limit(int64_t v) { return f.limit = v, *this; }
    operator ListFilter() const { return f; }  // NOLINT(google-explicit-constructor)
};

std::vector<Global> ListAll(Storage& s, ListFilter f) {
    auto r = s.List(f);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : std::vector<Global>{};
}

#define KEEL_ASSERT_OK(expr)                               \
    do {                                                   \
        const ::keel::Status keel_st_ = (expr);            \
        ASSERT_TRUE(keel_st_.ok()) << keel_st_.ToString(); \
    } while (0)

}  // namespace

// ---- SaveNew, FindGlobal, FindBranches ------------------------------------------------------------------------------

TEST_P(StorageConformance, SaveNewThenFindRoundTripsEveryField) {
    Global g = MakeGlobal("gid-1", kSubmitted, kT0 + 7);
    g.query_prepared = "http://127.0.0.1:8081/api/queryprepared";
    g.protocol = "http";
    g.custom_data = R"({"concurrent":false})";
    g.rollback_reason = "no reason";
    g.result = "a result";
    g.create_time = kT0 + 1;
    g.update_time = kT0 + 2;
    g.next_cron_interval = 20;
    g.owner = "keeld-a";
    g.options.timeout_to_fail = 35;
    std::vector<Branch> branches = {MakeBranch("gid-1", "01", "compensate", "c1"),
                                    MakeBranch("gid-1", "01", "action", "a1"),
                                    MakeBranch("gid-1", "02", "compensate", "c2")};
    branches[2].status = kSucceed;
    const int64_t before = NowMs();
    KEEL_ASSERT_OK(store_->SaveNew(g, branches));
    const int64_t after = NowMs();

    Global got = Find(*store_, "gid-1");
    EXPECT_GT(got.id, 0);
    g.id = got.id;
    ExpectSameGlobal(got, g);

    auto got_branches = Branches(*store_, "gid-1");
    ASSERT_EQ(got_branches.size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
        SCOPED_TRACE("branch " + std::to_string(i));
        const Branch& b = got_branches[i];
        if (i > 0) {
            EXPECT_GT(b.id, got_branches[i - 1].id) << "insertion order";
        }
        EXPECT_EQ(b.gid, "gid-1");
        EXPECT_EQ(b.url, branches[i].url);
        EXPECT_EQ(b.bin_data, branches[i].bin_data);
        EXPECT_EQ(b.branch_id, branches[i].branch_id);
        EXPECT_EQ(b.op, branches[i].op);
        EXPECT_EQ(b.status, branches[i].status);
        EXPECT_GE(b.create_time, before);
        EXPECT_LE(b.create_time, after);
        EXPECT_EQ(b.finish_time, 0);
        EXPECT_EQ(b.rollback_time, 0);
    }
}

TEST_P(StorageConformance, FindUnknownGidReturnsNothing) {
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("known"), {MakeBranch("known", "01", "action")}));
    auto g = store_->FindGlobal("unknown");
    ASSERT_TRUE(g.ok()) << g.status().ToString();
    EXPECT_FALSE(g->has_value());
    auto b = store_->FindBranches("unknown");
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    EXPECT_TRUE(b->empty());
}

TEST_P(StorageConformance, SaveNewWithoutBranches) {
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("tcc-1", kPrepared, kT0, "tcc"), {}));
    EXPECT_EQ(Find(*store_, "tcc-1").trans_type, "tcc");
    EXPECT_TRUE(Branches(*store_, "tcc-1").empty());
}

TEST_P(StorageConformance, SaveNewAssignsIncreasingIds) {
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("a"), {}));
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("b"), {}));
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("c"), {}));
    const int64_t a = Find(*store_, "a").id, b = Find(*store_, "b").id, c = Find(*store_, "c").id;
    EXPECT_GT(a, 0);
    EXPECT_LT(a, b);
    EXPECT_LT(b, c);
}

TEST_P(StorageConformance, SaveNewDuplicateGidIsAlreadyExistsAndWritesNothing) {
    Global first = MakeGlobal("dup", kPrepared);
    first.custom_data = "first";
    KEEL_ASSERT_OK(store_->SaveNew(first, {MakeBranch("dup", "01", "action", "first")}));
    const Global stored = Find(*store_, "dup");
    const auto stored_branches = Branches(*store_, "dup");

    Global second = MakeGlobal("dup", kSubmitted, kT0 + kHour, "msg");
    second.custom_data = "second";
    second.owner = "someone";
    Status s = store_->SaveNew(
        second, {MakeBranch("dup", "01", "action", "second"), MakeBranch("dup", "02", "action", "second")});
    EXPECT_EQ(s.code(), StatusCode::kAlreadyExists) << s.ToString();

    ExpectSameGlobal(Find(*store_, "dup"), stored);
    ExpectSameBranches(Branches(*store_, "dup"), stored_branches);
}

TEST_P(StorageConformance, SaveNewWithTwoEqualBranchesWritesNothing) {
    Status s = store_->SaveNew(MakeGlobal("twice"),
                               {MakeBranch("twice", "01", "action"), MakeBranch("twice", "01", "action")});
    EXPECT_FALSE(s.ok());
    auto g = store_->FindGlobal("twice");
    ASSERT_TRUE(g.ok()) << g.status().ToString();
    EXPECT_FALSE(g->has_value()) << "the global was written without its branches";
    EXPECT_TRUE(Branches(*store_, "twice").empty());
    // The gid is still free.
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("twice"), {MakeBranch("twice", "01", "action")}));
}

TEST_P(StorageConformance, OptionsRoundTripIncludingBranchHeaders) {
    Global g = MakeGlobal("opts");
    g.options.wait_result = true;
    g.options.timeout_to_fail = 61;
    g.options.retry_interval = 17;
    g.options.request_timeout = 4;
    g.options.retry_limit = 3;
    g.options.concurrent = true;
    g.options.branch_headers = {
        {"Authorization", "Bearer abc.def"}, {"X-Trace", "\"quoted\" \\ and \xc3\xbc"}, {"empty", ""}};
    KEEL_ASSERT_OK(store_->SaveNew(g, {}));
    ExpectSameOptions(Find(*store_, "opts").options, g.options);

    // Defaults stay defaults.
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("plain"), {}));
    ExpectSameOptions(Find(*store_, "plain").options, TransOptions{});

    // Status changes keep the options.
    GlobalChange c = Change(kPrepared, kSubmitted);
    auto applied = store_->ChangeStatus("opts", c);
    ASSERT_TRUE(applied.ok() && *applied);
    ExpectSameOptions(Find(*store_, "opts").options, g.options);
}

TEST_P(StorageConformance, BinaryPayloadsWithNulBytesRoundTrip) {
    std::string big(1 << 20, '\0');
    for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 131 + i / 7) & 0xFF);
    const std::vector<std::string> payloads = {AllBytes(), std::string("\0\0\0", 3), std::string(), "\xff\xfe\x00x",
                                               big};
    std::vector<Branch> branches;
    for (size_t i = 0; i < payloads.size(); ++i) {
        branches.push_back(MakeBranch("bin", "0" + std::to_string(i), "action", payloads[i]));
    }
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("bin", kPrepared, kT0, "tcc"), branches));
    KEEL_ASSERT_OK(
        store_->AddBranches("bin", kPrepared, {MakeBranch("bin", "09", "confirm", AllBytes() + AllBytes())}));

    auto got = Branches(*store_, "bin");
    ASSERT_EQ(got.size(), payloads.size() + 1);
    for (size_t i = 0; i < payloads.size(); ++i) {
        EXPECT_EQ(got[i].bin_data.size(), payloads[i].size()) << "payload " << i;
        EXPECT_TRUE(got[i].bin_data == payloads[i]) << "payload " << i << " differs";
    }
    EXPECT_TRUE(got.back().bin_data == AllBytes() + AllBytes());
}

TEST_P(StorageConformance, TextWithQuotesAndUnicodeRoundTrips) {
    const std::string tricky = "it's \"quoted\" \\ $1 ? %s '; DROP TABLE keel_trans_global; -- \xc3\xbc \xe2\x82\xac";
    Global g = MakeGlobal("gid-'\xc3\xbc'");
    g.custom_data = tricky;
    g.rollback_reason = tricky;
    g.result = tricky;
    g.query_prepared = "http://127.0.0.1:8081/q?a='1'&b=$2";
    KEEL_ASSERT_OK(store_->SaveNew(g, {MakeBranch(g.gid, "b'1", "action", tricky)}));
    Global got = Find(*store_, g.gid);
    EXPECT_EQ(got.custom_data, tricky);
    EXPECT_EQ(got.rollback_reason, tricky);
    EXPECT_EQ(got.result, tricky);
    EXPECT_EQ(got.query_prepared, g.query_prepared);
    auto b = Branches(*store_, g.gid);
    ASSERT_EQ(b.size(), 1u);
    EXPECT_EQ(b[0].branch_id, "b'1");
    EXPECT_EQ(b[0].bin_data, tricky);
    EXPECT_EQ(ListAll(*store_, Filter().Gid(g.gid)).size(), 1u);
}

// ---- ChangeStatus ---------------------------------------------------------------------------------------------------

TEST_P(StorageConformance, ChangeStatusAppliesEveryGivenField) {
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("cs"), {}));
    GlobalChange c;
    c.from = kPrepared;
    c.to = kAborting;
    c.rollback_reason = "branch said FAILURE";
    c.next_cron_time = kT0 + 5 * kMinute;
    c.next_cron_interval = 40;
    c.owner = "keeld-b";
    c.set_finish_time = true;
    c.set_rollback_time = true;
    const int64_t before = NowMs();
    auto applied = store_->ChangeStatus("cs", c);
    const int64_t after = NowMs();
    ASSERT_TRUE(applied.ok()) << applied.status().ToString();
    EXPECT_TRUE(*applied);

    Global g = Find(*store_, "cs");
    EXPECT_EQ(g.status, kAborting);
    EXPECT_EQ(g.rollback_reason, "branch said FAILURE");
    EXPECT_EQ(g.next_cron_time, kT0 + 5 * kMinute);
    EXPECT_EQ(g.next_cron_interval, 40);
    EXPECT_EQ(g.owner, "keeld-b");
    EXPECT_GE(g.finish_time, before);
    EXPECT_LE(g.finish_time, after);
    EXPECT_GE(g.rollback_time, before);
    EXPECT_LE(g.rollback_time, after);
    EXPECT_GE(g.update_time, before);
    EXPECT_LE(g.update_time, after);
    EXPECT_EQ(g.create_time, kT0);
}

TEST_P(StorageConformance, ChangeStatusLeavesUnsetFieldsAlone) {
    Global orig = MakeGlobal("keep", kPrepared, kT0 + 3);
    orig.rollback_reason = "earlier";
    orig.owner = "keeld-a";
    orig.next_cron_interval = 12;
    KEEL_ASSERT_OK(store_->SaveNew(orig, {}));
    auto applied = store_->ChangeStatus("keep", Change(kPrepared, kSubmitted));
    ASSERT_TRUE(applied.ok() && *applied);
    Global g = Find(*store_, "keep");
    EXPECT_EQ(g.status, kSubmitted);
    EXPECT_EQ(g.rollback_reason, "earlier");
    EXPECT_EQ(g.owner, "keeld-a");
    EXPECT_EQ(g.next_cron_time, kT0 + 3);
    EXPECT_EQ(g.next_cron_interval, 12);
    EXPECT_EQ(g.finish_time, 0);
    EXPECT_EQ(g.rollback_time, 0);

    // An empty owner and reason are values, not "unset".
    GlobalChange clear = Change(kSubmitted, kSubmitted);
    clear.owner = "";
    clear.rollback_reason = "";
    applied = store_->ChangeStatus("keep", clear);
    ASSERT_TRUE(applied.ok() && *applied);
    g = Find(*store_, "keep");
    EXPECT_EQ(g.owner, "");
    EXPECT_EQ(g.rollback_reason, "");
}

TEST_P(StorageConformance, ChangeStatusMissReturnsFalseAndChangesNothing) {
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("miss", kSubmitted), {}));
    const Global before = Find(*store_, "miss");
    GlobalChange c = Change(kPrepared, kFailed);
    c.rollback_reason = "x";
    c.owner = "y";
    c.next_cron_time = kT0 + kHour;
    c.set_finish_time = true;
    auto applied = store_->ChangeStatus("miss", c);
    ASSERT_TRUE(applied.ok()) << applied.status().ToString();
    EXPECT_FALSE(*applied);
    ExpectSameGlobal(Find(*store_, "miss"), before);

    applied = store_->ChangeStatus("no-such-gid", Change(kPrepared, kSubmitted));
    ASSERT_TRUE(applied.ok()) << applied.status().ToString();
    EXPECT_FALSE(*applied);
}

TEST_P(StorageConformance, ConcurrentChangeStatusAppliesExactlyOnce) {
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("race"), {}));
    std::atomic<int> applied{0}, errors{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&, t] {
            GlobalChange c = Change(kPrepared, t % 2 == 0 ? kSubmitted : kAborting);
            c.owner = "thread-" + std::to_string(t);
            auto r = store_->ChangeStatus("race", c);
            if (!r.ok()) {
                ++errors;
            } else if (*r) {
                ++applied;
            }
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(errors.load(), 0);
    EXPECT_EQ(applied.load(), 1);
    Global g = Find(*store_, "race");
    const int winner = std::stoi(g.owner.substr(std::string("thread-").size()));
    EXPECT_EQ(g.status, winner % 2 == 0 ? kSubmitted : kAborting);
}

// ---- UpdateBranches -------------------------------------------------------------------------------------------------

TEST_P(StorageConformance, UpdateBranchesWithoutChangeSetsStatusAndTimes) {
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("ub", kSubmitted),
                                   {MakeBranch("ub", "01", "compensate"), MakeBranch("ub", "01", "action"),
                                    MakeBranch("ub", "02", "compensate"), MakeBranch("ub", "02", "action")}));
    const auto before_rows = Branches(*store_, "ub");
    Branch ok = MakeBranch("ub", "01", "action");
    ok.status = kSucceed;
    Branch failed = MakeBranch("ub", "02", "action");
    failed.status = kFailed;
    const int64_t before = NowMs();
    auto r = store_->UpdateBranches("ub", {ok, failed}, std::nullopt);
    const int64_t after = NowMs();
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_TRUE(*r);

    auto rows = Branches(*store_, "ub");
    ASSERT_EQ(rows.size(), 4u);
    ExpectSameBranch(rows[0], before_rows[0]);  // 01 compensate untouched
    ExpectSameBranch(rows[2], before_rows[2]);  // 02 compensate untouched
    EXPECT_EQ(rows[1].status, kSucceed);
    EXPECT_GE(rows[1].finish_time, before);
    EXPECT_LE(rows[1].finish_time, after);
    EXPECT_EQ(rows[1].rollback_time, 0);
    EXPECT_GE(rows[1].update_time, before);
    EXPECT_EQ(rows[3].status, kFailed);
    EXPECT_GE(rows[3].rollback_time, before);
    EXPECT_LE(rows[3].rollback_time, after);
    EXPECT_EQ(rows[3].finish_time, 0);
    EXPECT_EQ(rows[1].id, before_rows[1].id);
    EXPECT_EQ(rows[1].bin_data, before_rows[1].bin_data);
    EXPECT_EQ(rows[1].url, before_rows[1].url);
    EXPECT_EQ(Find(*store_, "ub").status, kSubmitted);
}

TEST_P(StorageConformance, UpdateBranchesWithChangeWritesBoth) {
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("ubc", kSubmitted), {MakeBranch("ubc", "01", "action")}));
    Branch done = MakeBranch("ubc", "01", "action");
    done.status = kSucceed;
    GlobalChange c = Change(kSubmitted, kSucceed);
    c.set_finish_time = true;
    c.owner = "";
    auto r = store_->UpdateBranches("ubc", {done}, c);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_TRUE(*r);
    Global g = Find(*store_, "ubc");
    EXPECT_EQ(g.status, kSucceed);
    EXPECT_GT(g.finish_time, 0);
    auto rows = Branches(*store_, "ubc");
    ASSERT_EQ(rows.size(), 1u);
    EXPECT_EQ(rows[0].status, kSucceed);
    EXPECT_GT(rows[0].finish_time, 0);
}

TEST_P(StorageConformance, UpdateBranchesWithMissedChangeWritesNothing) {
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("ubm", kAborting),
                                   {MakeBranch("ubm", "01", "action"), MakeBranch("ubm", "01", "compensate")}));
    const Global g_before = Find(*store_, "ubm");
    const auto rows_before = Branches(*store_, "ubm");
    Branch a = MakeBranch("ubm", "01", "action");
    a.status = kSucceed;
    Branch c = MakeBranch("ubm", "01", "compensate");
    c.status = kFailed;
    GlobalChange change = Change(kSubmitted, kSucceed);
    change.set_finish_time = true;
    auto r = store_->UpdateBranches("ubm", {a, c}, change);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_FALSE(*r);
    ExpectSameGlobal(Find(*store_, "ubm"), g_before);
    ExpectSameBranches(Branches(*store_, "ubm"), rows_before);

    // Unknown gid: false as well.
    r = store_->UpdateBranches("nope", {a}, Change(kSubmitted, kSucceed));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_FALSE(*r);
}

// ---- AddBranches ----------------------------------------------------------------------------------------------------

TEST_P(StorageConformance, AddBranchesAppendsInOrder) {
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("tcc", kPrepared, kT0, "tcc"), {MakeBranch("tcc", "01", "try")}));
    KEEL_ASSERT_OK(store_->AddBranches(
        "tcc", kPrepared, {MakeBranch("tcc", "02", "cancel", "c"), MakeBranch("tcc", "02", "confirm", "f")}));
    KEEL_ASSERT_OK(store_->AddBranches("tcc", kPrepared, {MakeBranch("tcc", "03", "cancel", "c3")}));
    KEEL_ASSERT_OK(store_->AddBranches("tcc", kPrepared, {}));
    auto rows = Branches(*store_, "tcc");
    ASSERT_EQ(rows.size(), 4u);
    EXPECT_EQ(rows[1].branch_id + "/" + rows[1].op, "02/cancel");
    EXPECT_EQ(rows[2].branch_id + "/" + rows[2].op, "02/confirm");
    EXPECT_EQ(rows[3].branch_id + "/" + rows[3].op, "03/cancel");
    EXPECT_EQ(rows[2].bin_data, "f");
    EXPECT_EQ(rows[2].status, kPrepared);
    EXPECT_EQ(rows[2].gid, "tcc");
    EXPECT_LT(rows[0].id, rows[1].id);
    EXPECT_LT(rows[1].id, rows[2].id);
    EXPECT_LT(rows[2].id, rows[3].id);
}

TEST_P(StorageConformance, AddBranchesInAnotherStatusIsFailedPreconditionAndWritesNothing) {
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("sub", kSubmitted, kT0, "tcc"), {}));
    Status s = store_->AddBranches("sub", kPrepared, {MakeBranch("sub", "01", "cancel")});
    EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
    EXPECT_TRUE(Branches(*store_, "sub").empty());

    s = store_->AddBranches("unknown", kPrepared, {MakeBranch("unknown", "01", "cancel")});
    EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
    EXPECT_TRUE(Branches(*store_, "unknown").empty());
}

TEST_P(StorageConformance, AddBranchesDuplicateIsAlreadyExistsAndWritesNothing) {
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("d", kPrepared, kT0, "tcc"), {}));
    KEEL_ASSERT_OK(store_->AddBranches("d", kPrepared, {MakeBranch("d", "01", "cancel", "first")}));
    Status s = store_->AddBranches("d", kPrepared,
                                   {MakeBranch("d", "02", "cancel", "new"), MakeBranch("d", "01", "cancel", "again")});
    EXPECT_EQ(s.code(), StatusCode::kAlreadyExists) << s.ToString();
    auto rows = Branches(*store_, "d");
    ASSERT_EQ(rows.size(), 1u) << "a partial batch was written";
    EXPECT_EQ(rows[0].bin_data, "first");
    // Same branch_id with another op is a different row.
    KEEL_ASSERT_OK(store_->AddBranches("d", kPrepared, {MakeBranch("d", "01", "confirm")}));
    EXPECT_EQ(Branches(*store_, "d").size(), 2u);
}

TEST_P(StorageConformance, BranchesOfOneGidDoNotCollideWithAnother) {
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("x"), {MakeBranch("x", "01", "action")}));
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("y"), {MakeBranch("y", "01", "action")}));
    EXPECT_EQ(Branches(*store_, "x").size(), 1u);
    EXPECT_EQ(Branches(*store_, "y").size(), 1u);
}

// ---- ClaimDue, Schedule, ReleaseAllLeases, ResetCronTime
// -------------------------------------------------------------

TEST_P(StorageConformance, ClaimDueTakesOnlyDueNonFinalRows) {
    const int64_t now = kT0 + kMinute;
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("due-prepared", kPrepared, kT0), {}));
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("due-submitted", kSubmitted, now), {}));  // due exactly now
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("due-aborting", kAborting, kT0 - kHour), {}));
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("final-succeed", kSucceed, kT0), {}));
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("final-failed", kFailed, kT0), {}));
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("later", kSubmitted, now + 1), {}));

    const int64_t lease = 30'000;
    std::set<std::string> claimed;
    for (int i = 0; i < 10; ++i) {
        auto r = store_->ClaimDue("keeld-1", now, lease);
        ASSERT_TRUE(r.ok()) << r.status().ToString();
        if (!r->has_value()) break;
        const Global& g = **r;
        EXPECT_EQ(g.owner, "keeld-1");
        EXPECT_EQ(g.next_cron_time, now + lease);
        EXPECT_TRUE(claimed.insert(g.gid).second) << g.gid << " claimed twice within its lease";
        Global stored = Find(*store_, g.gid);
        EXPECT_EQ(stored.owner, "keeld-1");
        EXPECT_EQ(stored.next_cron_time, now + lease);
        EXPECT_EQ(stored.status, g.status);
        EXPECT_EQ(stored.id, g.id);
        EXPECT_EQ(stored.create_time, kT0);
    }
    EXPECT_EQ(claimed, (std::set<std::string>{"due-prepared", "due-submitted", "due-aborting"}));
    EXPECT_EQ(Find(*store_, "later").owner, "");
    EXPECT_EQ(Find(*store_, "later").next_cron_time, now + 1);
    EXPECT_EQ(Find(*store_, "final-succeed").owner, "");
    EXPECT_EQ(Find(*store_, "final-failed").next_cron_time, kT0);
}

TEST_P(StorageConformance, ClaimDueAgainAfterTheLeaseExpires) {
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("one", kSubmitted, kT0), {}));
    auto first = store_->ClaimDue("a", kT0, 10'000);
    ASSERT_TRUE(first.ok() && first->has_value());
    auto during = store_->ClaimDue("b", kT0 + 9'999, 10'000);
    ASSERT_TRUE(during.ok()) << during.status().ToString();
    EXPECT_FALSE(during->has_value()) << "claimed within the lease of another owner";
    auto after = store_->ClaimDue("b", kT0 + 10'000, 10'000);
    ASSERT_TRUE(after.ok() && after->has_value());
    EXPECT_EQ((*after)->gid, "one");
    EXPECT_EQ((*after)->owner, "b");
    EXPECT_EQ(Find(*store_, "one").next_cron_time, kT0 + 20'000);

    // A row that became final is never claimed again.
    auto done = store_->ChangeStatus("one", Change(kSubmitted, kSucceed));
    ASSERT_TRUE(done.ok() && *done);
    auto none = store_->ClaimDue("c", kT0 + kHour, 10'000);
    ASSERT_TRUE(none.ok());
    EXPECT_FALSE(none->has_value());
}

TEST_P(StorageConformance, ConcurrentClaimsNeverShareARowWithinALease) {
    constexpr int kRows = 64;
    constexpr int kThreads = 8;
    for (int i = 0; i < kRows; ++i) {
        const char* status = i % 3 == 0 ? kPrepared : i % 3 == 1 ? kSubmitted : kAborting;
        KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("c-" + std::to_string(i), status, kT0 + i), {}));
    }
    // With a shared backend half of the threads claim through a second Storage (a second keeld process).
    std::unique_ptr<Storage> other;
    if (GetParam().shared) {
        other = OpenAgain();
        ASSERT_NE(other, nullptr);
    }
    std::mutex mu;
    std::vector<std::string> claimed;
    std::vector<std::string> errors;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        Storage* s = other != nullptr && t % 2 == 1 ? other.get() : store_.get();
        threads.emplace_back([&, s, t] {
            for (;;) {
                auto r = s->ClaimDue("owner-" + std::to_string(t), kT0 + kRows, kHour);
                std::lock_guard lock(mu);
                if (!r.ok()) {
                    errors.push_back(r.status().ToString());
                    if (errors.size() > 20) return;
                    continue;
                }
                if (!r->has_value()) return;
                claimed.push_back((*r)->gid);
            }
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_TRUE(errors.empty()) << errors.front();
    std::set<std::string> unique(claimed.begin(), claimed.end());
    EXPECT_EQ(claimed.size(), unique.size()) << "a row was claimed twice within one lease";
    EXPECT_EQ(unique.size(), static_cast<size_t>(kRows));
    auto again = store_->ClaimDue("late", kT0 + kRows, kHour);
    ASSERT_TRUE(again.ok());
    EXPECT_FALSE(again->has_value());
}

TEST_P(StorageConformance, ScheduleSetsCronAndEndsTheLease) {
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("s", kSubmitted, kT0), {}));
    auto c = store_->ClaimDue("keeld-1", kT0, kHour);
    ASSERT_TRUE(c.ok() && c->has_value());
    auto r = store_->Schedule("s", kT0 + 20'000, 20);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_TRUE(*r);
    Global g = Find(*store_, "s");
    EXPECT_EQ(g.next_cron_time, kT0 + 20'000);
    EXPECT_EQ(g.next_cron_interval, 20);
    EXPECT_EQ(g.owner, "");
    EXPECT_EQ(g.status, kSubmitted);
    // Due again at the scheduled time, for anyone.
    auto early = store_->ClaimDue("keeld-2", kT0 + 19'999, kHour);
    ASSERT_TRUE(early.ok());
    EXPECT_FALSE(early->has_value());
    auto due = store_->ClaimDue("keeld-2", kT0 + 20'000, kHour);
    ASSERT_TRUE(due.ok() && due->has_value());
    EXPECT_EQ((*due)->gid, "s");

    r = store_->Schedule("unknown", kT0, 10);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_FALSE(*r);
}

TEST_P(StorageConformance, ReleaseAllLeasesMakesLeasedRowsDueNow) {
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("l1", kSubmitted, kT0), {}));
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("l2", kPrepared, kT0), {}));
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("free", kSubmitted, kT0 + kHour), {}));
    Global final_row = MakeGlobal("final", kSucceed, kT0 + kHour);
    final_row.owner = "old-owner";
    KEEL_ASSERT_OK(store_->SaveNew(final_row, {}));
    for (int i = 0; i < 2; ++i) {
        auto c = store_->ClaimDue("dead-keeld", kT0, kHour);
        ASSERT_TRUE(c.ok() && c->has_value());
    }
    auto n = store_->ReleaseAllLeases(kT0 + 5);
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    EXPECT_EQ(*n, 2);
    for (const char* gid : {"l1", "l2"}) {
        Global g = Find(*store_, gid);
        EXPECT_EQ(g.owner, "") << gid;
        EXPECT_EQ(g.next_cron_time, kT0 + 5) << gid;
    }
    EXPECT_EQ(Find(*store_, "free").next_cron_time, kT0 + kHour);
    EXPECT_EQ(Find(*store_, "final").owner, "old-owner");
    EXPECT_EQ(Find(*store_, "final").next_cron_time, kT0 + kHour);
    n = store_->ReleaseAllLeases(kT0 + 6);
    ASSERT_TRUE(n.ok());
    EXPECT_EQ(*n, 0);
    auto c = store_->ClaimDue("new-keeld", kT0 + 5, kHour);
    ASSERT_TRUE(c.ok() && c->has_value());
}

TEST_P(StorageConformance, ResetCronTimeResetsUpToLimitAndReportsWhatRemains) {
    const int64_t now = kT0;
    const int64_t timeout = kMinute;
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("far-1", kPrepared, now + 10 * kMinute), {}));
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("far-2", kSubmitted, now + 10 * kMinute), {}));
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("far-3", kAborting, now + 10 * kMinute), {}));
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("near", kSubmitted, now + timeout), {}));  // not later than now + timeout
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("final-1", kSucceed, now + 10 * kMinute), {}));
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("final-2", kFailed, now + 10 * kMinute), {}));

    auto r = store_->ResetCronTime(now, timeout, 2);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->first, 2);
    EXPECT_TRUE(r->second);
    r = store_->ResetCronTime(now, timeout, 2);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->first, 1);
    EXPECT_FALSE(r->second);
    r = store_->ResetCronTime(now, timeout, 2);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->first, 0);
    EXPECT_FALSE(r->second);

    for (const char* gid : {"far-1", "far-2", "far-3"}) EXPECT_EQ(Find(*store_, gid).next_cron_time, now) << gid;
    EXPECT_EQ(Find(*store_, "near").next_cron_time, now + timeout);
    EXPECT_EQ(Find(*store_, "final-1").next_cron_time, now + 10 * kMinute);
    EXPECT_EQ(Find(*store_, "final-2").next_cron_time, now + 10 * kMinute);
}

// ---- List -----------------------------------------------------------------------------------------------------------

TEST_P(StorageConformance, ListIsNewestFirstAndPagesByPosition) {
    for (int i = 0; i < 7; ++i) KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("p" + std::to_string(i)), {}));
    auto all = ListAll(*store_, ListFilter{});
    EXPECT_EQ(Gids(all), (std::vector<std::string>{"p6", "p5", "p4", "p3", "p2", "p1", "p0"}));
    for (size_t i = 1; i < all.size(); ++i) EXPECT_GT(all[i - 1].id, all[i].id);

    std::vector<std::string> paged;
    ListFilter f;
    f.limit = 3;
    for (int page = 0; page < 5; ++page) {
        auto rows = ListAll(*store_, f);
        EXPECT_LE(rows.size(), 3u);
        if (rows.empty()) break;
        for (const auto& g : rows) paged.push_back(g.gid);
        f.position = rows.back().id;
    }
    EXPECT_EQ(paged, Gids(all));

    // Rows come back whole.
    ExpectSameGlobal(all.front(), Find(*store_, "p6"));
}

TEST_P(StorageConformance, ListFilters) {
    auto save = [&](const std::string& gid, const char* status, const std::string& type, int64_t create_time) {
        Global g = MakeGlobal(gid, status, kT0, type);
        g.create_time = create_time;
        KEEL_ASSERT_OK(store_->SaveNew(g, {}));
    };
    save("m1", kSubmitted, "msg", kT0);
    save("s1", kSubmitted, "saga", kT0 + 1000);
    save("s2", kFailed, "saga", kT0 + 2000);
    save("t1", kPrepared, "tcc", kT0 + 3000);
    save("m2", kSucceed, "msg", kT0 + 4000);

    EXPECT_EQ(Gids(ListAll(*store_, Filter().Gid("s2"))), (std::vector<std::string>{"s2"}));
    EXPECT_TRUE(ListAll(*store_, Filter().Gid("s")).empty()) << "gid is an exact match";
    EXPECT_EQ(Gids(ListAll(*store_, Filter().InStatus(kSubmitted))), (std::vector<std::string>{"s1", "m1"}));
    EXPECT_EQ(Gids(ListAll(*store_, Filter().Type("msg"))), (std::vector<std::string>{"m2", "m1"}));
    EXPECT_EQ(Gids(ListAll(*store_, Filter().InStatus(kSubmitted).Type("saga"))), (std::vector<std::string>{"s1"}));
    // The time range includes both ends.
    EXPECT_EQ(Gids(ListAll(*store_, Filter().From(kT0 + 1000).To(kT0 + 3000))),
              (std::vector<std::string>{"t1", "s2", "s1"}));
    EXPECT_EQ(Gids(ListAll(*store_, Filter().From(kT0 + 3500))), (std::vector<std::string>{"m2"}));
    EXPECT_EQ(Gids(ListAll(*store_, Filter().To(kT0))), (std::vector<std::string>{"m1"}));
    // Filters and paging together.
    auto first = ListAll(*store_, Filter().Type("saga").Limit(1));
    ASSERT_EQ(Gids(first), (std::vector<std::string>{"s2"}));
    EXPECT_EQ(Gids(ListAll(*store_, Filter().Type("saga").Position(first[0].id).Limit(1))),
              (std::vector<std::string>{"s1"}));
    EXPECT_TRUE(ListAll(*store_, Filter().InStatus(kAborting)).empty());
}

// ---- durability -----------------------------------------------------------------------------------------------------

TEST_P(StorageConformance, DataSurvivesReopen) {
    Global g = MakeGlobal("kept", kSubmitted, kT0 + 9);
    g.options.branch_headers = {{"k", "v"}};
    KEEL_ASSERT_OK(store_->SaveNew(g, {MakeBranch("kept", "01", "action", AllBytes())}));
    const Global before = Find(*store_, "kept");
    const auto branches = Branches(*store_, "kept");
    store_.reset();
    store_ = OpenAgain();
    ASSERT_NE(store_, nullptr);
    ExpectSameGlobal(Find(*store_, "kept"), before);
    ExpectSameBranches(Branches(*store_, "kept"), branches);
    KEEL_ASSERT_OK(store_->SaveNew(MakeGlobal("after-reopen"), {}));
    EXPECT_GT(Find(*store_, "after-reopen").id, before.id);
}

}  // namespace keel::coordinator::testing
